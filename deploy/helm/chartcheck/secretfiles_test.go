package chartcheck

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// mountedSecrets are the Secret keys a Deployment's pods mount
// ("secret/key"), each with the path of its file.
func mountedSecrets(d *appsv1.Deployment) map[string]string {
	dirs := map[string]string{}
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		dirs[m.Name] = m.MountPath
	}
	out := map[string]string{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil || dirs[v.Name] == "" {
			continue
		}
		for _, it := range v.Secret.Items {
			out[v.Secret.SecretName+"/"+it.Key] = dirs[v.Name] + "/" + it.Path
		}
	}
	return out
}

func ingestDeployment(t *testing.T, objs objects) *appsv1.Deployment {
	t.Helper()
	for _, d := range of[*appsv1.Deployment](objs) {
		if component(d.Labels) == "ingest" {
			return d
		}
	}
	t.Fatal("no ingest deployment")
	return nil
}

// TestSecretFilesReachTheirGroupOnly: a destination's key files
// (de-identification key, client assertion key, mTLS key...) went through
// extraVolumes, mounted in every pod, the webhook-facing ingest's
// included. destinations[].secretFiles mounts each in the pods of the
// group serving the destination only, its DESTINATION_<NAME>_ variable
// naming the file; a group's secretFiles (the one destination) in that
// group's pods only.
func TestSecretFilesReachTheirGroupOnly(t *testing.T) {
	withFiles := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}},
		map[string]any{"name": "ai", "destinations": []any{"ai"}},
	)
	ai := withFiles["destinations"].([]any)[1].(map[string]any)
	// A key file without STOW_DEIDENTIFY is refused at start.
	ai["env"].(map[string]any)["STOW_DEIDENTIFY"] = "basic"
	ai["secretFiles"] = []any{
		map[string]any{"secretName": "ai-deid", "key": "key", "env": "DEIDENTIFY_KEY_FILE"},
		map[string]any{"secretName": "ai-mtls", "key": "tls.key", "env": "TLS_KEY_FILE"},
		map[string]any{"secretName": "ai-mtls", "key": "tls.crt", "env": "TLS_CERT_FILE"},
		map[string]any{"secretName": "ai-gcp", "key": "sa.json", "env": "GOOGLE_APPLICATION_CREDENTIALS"},
		// A key YAML would read as a number, the Secret's name too.
		map[string]any{"secretName": "0", "key": "2024", "env": "TLS_CA_FILE"},
	}
	oneDestination := merged(required(), map[string]any{"forwarderDefaults": map[string]any{
		"env": map[string]any{"STOW_DEIDENTIFY": "basic"},
		"secretFiles": []any{
			map[string]any{"secretName": "site-deid", "key": "key", "env": "DEIDENTIFY_KEY_FILE"},
		}}})
	// A group's secretFiles, even empty, replaces forwarderDefaults'
	// (a review feared mergeOverwrite kept the defaults' for an empty
	// list: it does not, and this keeps it so).
	optedOut := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}, "secretFiles": []any{}},
		map[string]any{"name": "ai", "destinations": []any{"ai"}},
	)
	optedOut["forwarderDefaults"] = map[string]any{"secretFiles": []any{
		map[string]any{"secretName": "site-ca", "key": "ca.pem", "env": "OTEL_EXPORTER_OTLP_CERTIFICATE"},
	}}
	tests := []struct {
		name   string
		values map[string]any
		group  string
		want   map[string]string // variable -> its file
		others []string          // groups that must mount none of them
	}{
		{"destination", withFiles, "ai", map[string]string{
			"DESTINATION_AI_DEIDENTIFY_KEY_FILE":            "ai-deid/key",
			"DESTINATION_AI_TLS_KEY_FILE":                   "ai-mtls/tls.key",
			"DESTINATION_AI_TLS_CERT_FILE":                  "ai-mtls/tls.crt",
			"DESTINATION_AI_GOOGLE_APPLICATION_CREDENTIALS": "ai-gcp/sa.json",
			"DESTINATION_AI_TLS_CA_FILE":                    "0/2024",
		}, []string{"archive"}},
		{"group", oneDestination, "default", map[string]string{"DEIDENTIFY_KEY_FILE": "site-deid/key"}, nil},
		{"group opted out of the defaults", optedOut, "ai", map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": "site-ca/ca.pem"}, []string{"archive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, tt.values)
			// Every _FILE variable names an item of a mounted volume.
			checkRelease(t, objs)
			d := forwarderDeployment(t, objs, tt.group)
			env, mounted := envOf(d), mountedSecrets(d)
			for v, file := range tt.want {
				path, ok := mounted[file]
				if !ok {
					t.Errorf("group %s: %s not mounted (mounts %v)", tt.group, file, mounted)
					continue
				}
				if env[v] != path {
					t.Errorf("group %s: %s = %q, want %s", tt.group, v, env[v], path)
				}
			}
			for _, other := range append([]*appsv1.Deployment{ingestDeployment(t, objs)}, groups(t, objs, tt.others)...) {
				env, mounted := envOf(other), mountedSecrets(other)
				for v, file := range tt.want {
					if _, ok := mounted[file]; ok {
						t.Errorf("%s mounts %s, for a destination it does not send to", other.Name, file)
					}
					if env[v] != "" {
						t.Errorf("%s: %s set", other.Name, v)
					}
				}
			}
		})
	}
}

func groups(t *testing.T, objs objects, names []string) []*appsv1.Deployment {
	t.Helper()
	var out []*appsv1.Deployment
	for _, n := range names {
		out = append(out, forwarderDeployment(t, objs, n))
	}
	return out
}

// TestSecretFilesRefused: an entry missing a part, a variable given with
// its prefix, the client secret, or one set twice is refused, naming it.
func TestSecretFilesRefused(t *testing.T) {
	destination := func(files ...any) map[string]any {
		v := withDestinations(map[string]any{"name": "all"})
		ai := v["destinations"].([]any)[1].(map[string]any)
		ai["secretFiles"] = files
		return v
	}
	file := func(env string) map[string]any {
		return map[string]any{"secretName": "ai-keys", "key": "k", "env": env}
	}
	group := func(files ...any) map[string]any {
		return merged(required(), map[string]any{"forwarderDefaults": map[string]any{"secretFiles": files}})
	}
	withDupEnv := destination(file("TLS_KEY_FILE"))
	withDupEnv["destinations"].([]any)[1].(map[string]any)["env"].(map[string]any)["TLS_KEY_FILE"] = "/etc/k"
	groupWithDestinations := destination()
	groupWithDestinations["forwarders"] = []any{map[string]any{"name": "all", "secretFiles": []any{file("DEIDENTIFY_KEY_FILE")}}}
	tests := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"no env", destination(map[string]any{"secretName": "ai-keys", "key": "k"}), "missing property 'env'"},
		{"env in lower case", destination(file("tls_key_file")), "/destinations/1/secretFiles/0/env"},
		{"prefixed", destination(file("DESTINATION_AI_TLS_KEY_FILE")), "destinations[ai].secretFiles[0]: env DESTINATION_AI_TLS_KEY_FILE: give the variable without the prefix"},
		{"client secret", destination(file("OAUTH_CLIENT_SECRET_FILE")), "the client secret with clientSecret"},
		{"twice", destination(file("TLS_KEY_FILE"), file("TLS_KEY_FILE")), "destinations[ai].secretFiles[1]: TLS_KEY_FILE is set by destinations[ai].secretFiles[0] too"},
		{"in env too", withDupEnv, "destinations[ai].secretFiles[0]: TLS_KEY_FILE is set in destinations[ai].env too"},
		{"group's set by the chart", group(file("DICOMWEB_URL")), "forwarders[default].secretFiles[0]: DICOMWEB_URL is set by the chart"},
		{"group's destination variable with destinations", groupWithDestinations, "forwarders[all].secretFiles[0]: DEIDENTIFY_KEY_FILE is a destination's variable"},
		{"group's in env too", merged(group(file("DEIDENTIFY_KEY_FILE")), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"DEIDENTIFY_KEY_FILE": "/k"}}}),
			"DEIDENTIFY_KEY_FILE is set in env, forwarderDefaults.env or forwarders[default].env too"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
		})
	}
	// Without the schema (helm --skip-schema-validation), the templates
	// name the entry missing a part.
	checkRenderErrorWithoutSchema(t, destination(map[string]any{"secretName": "ai-keys", "key": "k"}),
		"destinations[ai].secretFiles[0]: secretName, key and env are required")
	checkRenderErrorWithoutSchema(t, group(map[string]any{"secretName": "keys", "env": "TLS_KEY_FILE"}),
		"forwarders[default].secretFiles[0]: secretName, key and env are required")
}

// TestSecretNamesLikeNumbers: a Secret's name or key that YAML reads as a
// number (a clientSecret key "1", a Secret "2024") was written unquoted,
// and the Deployment did not decode: KeyToPath.key and secretName are
// strings.
func TestSecretNamesLikeNumbers(t *testing.T) {
	values := withDestinations(map[string]any{"name": "all"})
	values["destinations"].([]any)[0].(map[string]any)["clientSecret"] = map[string]any{"secretName": "2024", "key": "1"}
	values["nats"] = map[string]any{"url": "nats://nats.nats.svc.cluster.local:4222", "credsSecret": "42"}
	objs := render(t, values)
	checkRelease(t, objs)
	mounted := mountedSecrets(forwarderDeployment(t, objs, "all"))
	for _, want := range []string{"2024/1", "42/nats.creds"} {
		if _, ok := mounted[want]; !ok {
			t.Errorf("%s not mounted: %v", want, mounted)
		}
	}
}
