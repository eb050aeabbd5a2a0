package chartcheck

import (
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// roleNATS is the NATS credential a role's pods should get: the Secret
// holding its nats.creds ("" for none) and the key of `secrets` mounted
// as its NATS_PASSWORD file.
type roleNATS struct{ creds, passwordKey string }

// TestNATSCredentialsPerRole: the chart gave every pod the one
// nats.credsSecret and NATS_PASSWORD, so the webhook-facing ingest held
// the forwarders' NATS rights ($JS.ACK..., the ledger's writes), against
// docs/nats-permissions.md's credential per service. ingest.nats and a
// forwarder group's nats (over forwarderDefaults.nats) give each role
// its own, mounted in its pods only; the global one stays for the roles
// without.
func TestNATSCredentialsPerRole(t *testing.T) {
	twoGroups := func(archive, ai map[string]any) map[string]any {
		return withDestinations(
			merged(map[string]any{"name": "archive", "destinations": []any{"archive"}}, archive),
			merged(map[string]any{"name": "ai", "destinations": []any{"ai"}}, ai),
		)
	}
	// Credentials files: the ingest's, the forwarders' default and the
	// archive group's own over the global one.
	credsPerRole := twoGroups(map[string]any{"nats": map[string]any{"credsSecret": "nats-archive"}}, nil)
	credsPerRole["nats"] = map[string]any{"url": "nats://nats.nats.svc.cluster.local:4222", "credsSecret": "nats-all"}
	credsPerRole["ingest"] = map[string]any{"nats": map[string]any{"credsSecret": "nats-ingest"}}
	credsPerRole["forwarderDefaults"] = map[string]any{"nats": map[string]any{"credsSecret": "nats-forwarder"}}

	// User and password: each role's user in its env, its password a key
	// of its own in `secrets`; the ai group keeps the global one.
	passwordPerRole := twoGroups(map[string]any{
		"nats": map[string]any{"passwordKey": "NATS_PASSWORD_ARCHIVE"},
		"env":  map[string]any{"NATS_USER": "stowline-archive"},
	}, nil)
	passwordPerRole["env"] = map[string]any{"NATS_USER": "stowline"}
	passwordPerRole["ingest"] = map[string]any{
		"nats": map[string]any{"passwordKey": "NATS_PASSWORD_INGEST"},
		"env":  map[string]any{"NATS_USER": "stowline-ingest"},
	}
	values := passwordPerRole["secrets"].(map[string]any)["values"].(map[string]any)
	for _, k := range []string{"NATS_PASSWORD", "NATS_PASSWORD_INGEST", "NATS_PASSWORD_ARCHIVE"} {
		values[k] = strings.ToLower(k) + "-0123456789"
	}

	globalCreds := merged(required(), map[string]any{"nats": map[string]any{"credsSecret": "nats-all"}})
	globalPassword := merged(required(), map[string]any{
		"env":     map[string]any{"NATS_USER": "stowline"},
		"secrets": map[string]any{"values": map[string]any{"NATS_PASSWORD": "nats-password-0123456789"}},
	})

	tests := []struct {
		name   string
		values map[string]any
		want   map[string]roleNATS // by component
	}{
		{"every role its own credentials file", credsPerRole, map[string]roleNATS{
			"ingest":            {creds: "nats-ingest"},
			"forwarder-archive": {creds: "nats-archive"},
			"forwarder-ai":      {creds: "nats-forwarder"},
		}},
		{"the ingest's own credentials file, the forwarders the global one", merged(globalCreds, map[string]any{"ingest": map[string]any{"nats": map[string]any{"credsSecret": "nats-ingest"}}}), map[string]roleNATS{
			"ingest":            {creds: "nats-ingest"},
			"forwarder-default": {creds: "nats-all"},
		}},
		{"the global credentials file only, as before", globalCreds, map[string]roleNATS{
			"ingest":            {creds: "nats-all"},
			"forwarder-default": {creds: "nats-all"},
		}},
		{"every role its own password", passwordPerRole, map[string]roleNATS{
			"ingest":            {passwordKey: "NATS_PASSWORD_INGEST"},
			"forwarder-archive": {passwordKey: "NATS_PASSWORD_ARCHIVE"},
			"forwarder-ai":      {passwordKey: "NATS_PASSWORD"},
		}},
		{"the global password only, as before", globalPassword, map[string]roleNATS{
			"ingest":            {passwordKey: "NATS_PASSWORD"},
			"forwarder-default": {passwordKey: "NATS_PASSWORD"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, tt.values)
			// Each pod's configuration loads with its environment.
			checkRelease(t, objs)
			deployments := map[string]*appsv1.Deployment{}
			for _, d := range of[*appsv1.Deployment](objs) {
				deployments[component(d.Labels)] = d
			}
			if len(deployments) != len(tt.want) {
				t.Fatalf("deployments %v, want %d", slices.Collect(maps.Keys(deployments)), len(tt.want))
			}
			for comp, want := range tt.want {
				d, ok := deployments[comp]
				if !ok {
					t.Fatalf("no deployment %s", comp)
				}
				env, mounted := envOf(d), mountedSecrets(d)
				if want.creds != "" {
					if path := mounted[want.creds+"/nats.creds"]; path == "" || env["NATS_CREDS_FILE"] != path {
						t.Errorf("%s: NATS_CREDS_FILE %q, want the mounted %s/nats.creds (mounts %v)", comp, env["NATS_CREDS_FILE"], want.creds, mounted)
					}
				}
				if want.passwordKey != "" && !mountsKeyAt(mounted, want.passwordKey, env["NATS_PASSWORD_FILE"]) {
					t.Errorf("%s: NATS_PASSWORD_FILE %q is not the mounted key %s (mounts %v)", comp, env["NATS_PASSWORD_FILE"], want.passwordKey, mounted)
				}
				// No other role's credentials file or password.
				for other, theirs := range tt.want {
					if theirs.creds != "" && theirs.creds != want.creds {
						if _, ok := mounted[theirs.creds+"/nats.creds"]; ok {
							t.Errorf("%s mounts %s's NATS credentials file, from %s", comp, other, theirs.creds)
						}
					}
					if theirs.passwordKey != "" && theirs.passwordKey != want.passwordKey && mountsKeyAt(mounted, theirs.passwordKey, "") {
						t.Errorf("%s mounts %s's NATS password, key %s", comp, other, theirs.passwordKey)
					}
				}
			}
		})
	}
}

// mountsKeyAt reports whether mounted ("secret/key" -> path) holds key of
// some Secret, at path unless path is "".
func mountsKeyAt(mounted map[string]string, key, path string) bool {
	for k, p := range mounted {
		if strings.HasSuffix(k, "/"+key) && (path == "" || p == path) {
			return true
		}
	}
	return false
}

// TestNATSPasswordKeyRefused: a role's passwordKey naming another of its
// secrets would be mounted as NATS_PASSWORD only, that secret missing.
func TestNATSPasswordKeyRefused(t *testing.T) {
	tests := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"the ingest's, its admin token", merged(required(), map[string]any{"ingest": map[string]any{"nats": map[string]any{"passwordKey": "ADMIN_TOKEN"}}}),
			`ingest.nats.passwordKey "ADMIN_TOKEN" is another secret`},
		{"a group's, its client secret", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"nats": map[string]any{"passwordKey": "OAUTH_CLIENT_SECRET"}}}),
			`forwarders[default].nats.passwordKey "OAUTH_CLIENT_SECRET" is another secret`},
		{"not a Secret key", merged(required(), map[string]any{"ingest": map[string]any{"nats": map[string]any{"passwordKey": "nats password"}}}),
			"passwordKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderFiles(t, tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
