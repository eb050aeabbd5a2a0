package chartcheck

import (
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// withDestinations are the required values with two destinations, the
// archive (its client secret from a Secret of its own) and an AI vendor
// whose rules read instance metadata (its client secret in the release's
// Secret), and the given forwarder groups.
func withDestinations(groups ...any) map[string]any {
	v := required()
	v["secrets"] = map[string]any{"values": map[string]any{
		"INGEST_TOKEN":                       "ingest-token-0123456789abcdef",
		"ADMIN_TOKEN":                        "admin-token-0123456789abcdef",
		"ORTHANC_PASSWORD":                   "orthanc-password",
		"DESTINATION_AI_OAUTH_CLIENT_SECRET": "ai-client-secret",
	}}
	v["destinations"] = []any{
		map[string]any{
			"name": "archive",
			"url":  "https://myworkspace-mydicom.dicom.azurehealthcareapis.com/v2",
			"env": map[string]any{
				"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
				"OAUTH_CLIENT_ID": "00001111-aaaa-2222-bbbb-3333cccc4444",
			},
			"clientSecret": map[string]any{"secretName": "archive-oauth", "key": "client-secret"},
		},
		map[string]any{
			"name":          "ai",
			"url":           "https://dicomweb.ai-vendor.example.com/v1",
			"match":         "'MR' in study.modalities && size(study.sopClasses) > 0",
			"instanceMatch": "!(instance.modality in ['SR', 'KO', 'PR'])",
			"env": map[string]any{
				"OAUTH_TOKEN_URL": "https://auth.ai-vendor.example.com/oauth2/token", "OAUTH_CLIENT_ID": "imaging-center-42",
			},
		},
	}
	v["forwarders"] = groups
	return v
}

func forwarderDeployment(t *testing.T, objs objects, group string) *appsv1.Deployment {
	t.Helper()
	for _, d := range of[*appsv1.Deployment](objs) {
		if component(d.Labels) == "forwarder-"+group {
			return d
		}
	}
	t.Fatalf("no forwarder deployment for group %s", group)
	return nil
}

func scaledObjectOf(t *testing.T, objs objects, d *appsv1.Deployment) *scaledObject {
	t.Helper()
	for _, so := range of[*scaledObject](objs) {
		if so.Spec.ScaleTargetRef.Name == d.Name {
			return so
		}
	}
	t.Fatalf("no ScaledObject for %s", d.Name)
	return nil
}

// TestDestinations renders two destinations served by two forwarder
// groups with KEDA: each group gets every destination's settings, the
// client secret of its own only, serves its own (FORWARDER_DESTINATIONS),
// and scales on its
// destination's routine and stat-lane consumers, under a ceiling from the connections its
// destination's requests and rules keep open to Orthanc.
func TestDestinations(t *testing.T) {
	values := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}},
		map[string]any{"name": "ai", "destinations": []any{"ai"}, "concurrency": 2},
	)
	values = merged(values, map[string]any{
		"keda":    map[string]any{"enabled": true},
		"orthanc": map[string]any{"httpThreadsCount": 200, "reservedThreads": 10},
	})
	objs := render(t, values)
	checkRelease(t, objs)
	if got := objs.kinds(); got["Deployment"] != 3 || got["ScaledObject"] != 2 {
		t.Errorf("objects %v, want the ingest and two forwarder groups, each with a ScaledObject", got)
	}
	src := readGoFacts(t)
	for group, want := range map[string]struct {
		consumers []string
		max       int32
		secret    string // the client secret's variable, read from a file
		notSecret string // the other destination's
		volume    bool   // the archive's own Secret mounted
	}{
		// (200-10) / (4 x 4): the archive sends 4 requests a study.
		"archive": {src.triggeredConsumers("archive"), 11, "DESTINATION_ARCHIVE_OAUTH_CLIENT_SECRET_FILE", "DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE", true},
		// (200-10) / (2 x 8): the AI rules read metadata, 8 at a time.
		"ai": {src.triggeredConsumers("ai"), 11, "DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE", "DESTINATION_ARCHIVE_OAUTH_CLIENT_SECRET_FILE", false},
	} {
		d := forwarderDeployment(t, objs, group)
		env := envOf(d)
		if env["FORWARDER_DESTINATIONS"] != group || env["DESTINATIONS"] != "archive,ai" {
			t.Errorf("group %s: FORWARDER_DESTINATIONS %q DESTINATIONS %q", group, env["FORWARDER_DESTINATIONS"], env["DESTINATIONS"])
		}
		for _, k := range []string{want.secret, "DESTINATION_AI_MATCH", "DESTINATION_ARCHIVE_URL", "DESTINATION_AI_URL"} {
			if env[k] == "" {
				t.Errorf("group %s: %s not set", group, k)
			}
		}
		// Least privilege: the forwarder reads only the secrets of the
		// destinations it serves.
		if env[want.notSecret] != "" {
			t.Errorf("group %s: %s set, for a destination it does not serve", group, want.notSecret)
		}
		if env["DESTINATION_ARCHIVE_MATCH"] != "" || env["DICOMWEB_URL"] != "" || env["STOW_PARALLEL_REQUESTS"] != "" {
			t.Errorf("group %s: %v", group, env)
		}
		volumes := map[string]*corev1.SecretVolumeSource{}
		for _, v := range d.Spec.Template.Spec.Volumes {
			volumes[v.Name] = v.Secret
		}
		if v := volumes["destination-archive"]; want.volume && (v == nil || v.SecretName != "archive-oauth" || v.Items[0].Key != "client-secret") {
			t.Errorf("group %s: the archive's own Secret is not mounted: %+v", group, v)
		} else if !want.volume && v != nil {
			t.Errorf("group %s: the archive's own Secret is mounted, and the group does not serve it", group)
		}
		keys := map[string]bool{}
		if v := volumes["secrets"]; v != nil {
			for _, it := range v.Items {
				keys[it.Key] = true
			}
		}
		if inSecrets := keys["DESTINATION_AI_OAUTH_CLIENT_SECRET"]; inSecrets != (group == "ai") {
			t.Errorf("group %s: the release Secret's DESTINATION_AI_OAUTH_CLIENT_SECRET mounted: %v, want only where ai is served", group, inSecrets)
		}
		configLoads(t, "forwarder", env)
		so := scaledObjectOf(t, objs, d)
		if got := consumersOf(so); !slices.Equal(got, want.consumers) {
			t.Errorf("group %s: triggers on %v, want exactly %v", group, got, want.consumers)
		}
		if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != want.max {
			t.Errorf("group %s: maxReplicaCount %v, want %d", group, so.Spec.MaxReplicaCount, want.max)
		}
	}
}

// TestDestinationsOneGroup: one group that lists no destination serves
// all of them, without FORWARDER_DESTINATIONS, and scales on every
// destination's routine and stat-lane consumers; the destination named
// default keeps the consumer stowline-forwarder.
func TestDestinationsOneGroup(t *testing.T) {
	values := withDestinations(map[string]any{"name": "all"})
	values["destinations"] = append(values["destinations"].([]any), map[string]any{"name": "default", "url": "https://pacs.example.org/dicom-web"})
	values = merged(values, map[string]any{
		"keda":    map[string]any{"enabled": true},
		"orthanc": map[string]any{"httpThreadsCount": 200, "reservedThreads": 10},
	})
	objs := render(t, values)
	checkRelease(t, objs)
	d := forwarderDeployment(t, objs, "all")
	env := envOf(d)
	if env["FORWARDER_DESTINATIONS"] != "" || env["DESTINATIONS"] != "archive,ai,default" {
		t.Errorf("env %v", env)
	}
	configLoads(t, "forwarder", env)
	so := scaledObjectOf(t, objs, d)
	src := readGoFacts(t)
	consumers := consumersOf(so)
	if want := src.triggeredConsumers("default", "ai", "archive"); !slices.Equal(consumers, want) || !slices.Contains(consumers, src.forwarderConsumer) {
		t.Errorf("triggers on %v, want %v", consumers, want)
	}
	// (200-10) / (4 x (4 + 8 + 4)) = 2.
	if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != 2 {
		t.Errorf("maxReplicaCount %v, want 2", so.Spec.MaxReplicaCount)
	}
}

// TestDestinationsTriggerNames: a destination named like another's stat
// lane (rad and rad-stat) still gets triggers of distinct names
// (checkScaledObject).
func TestDestinationsTriggerNames(t *testing.T) {
	values := withDestinations(map[string]any{"name": "all"})
	values["destinations"] = append(values["destinations"].([]any),
		map[string]any{"name": "rad", "url": "https://rad.example.org/dicom-web"},
		map[string]any{"name": "rad-stat", "url": "https://rad-stat.example.org/dicom-web"})
	values = merged(values, map[string]any{
		"keda":    map[string]any{"enabled": true},
		"orthanc": map[string]any{"httpThreadsCount": 400, "reservedThreads": 10},
	})
	checkRelease(t, render(t, values))
}

// TestDestinationsRefused: values with destinations the chart must
// refuse, with a message that names what to fix.
func TestDestinationsRefused(t *testing.T) {
	two := func() []any {
		return []any{
			map[string]any{"name": "archive", "destinations": []any{"archive"}},
			map[string]any{"name": "ai", "destinations": []any{"ai"}},
		}
	}
	set := func(v map[string]any, f func(v map[string]any)) map[string]any { f(v); return v }
	dest := func(v map[string]any, i int) map[string]any { return v["destinations"].([]any)[i].(map[string]any) }
	tests := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"a destination served by no group", withDestinations(map[string]any{"name": "archive", "destinations": []any{"archive"}}), "served by 0 forwarder groups"},
		{"a destination served by two groups", withDestinations(two()[0], map[string]any{"name": "both", "destinations": []any{"archive", "ai"}}), "served by 2 forwarder groups"},
		{"several groups, one lists none", withDestinations(two()[0], map[string]any{"name": "rest"}), "each lists the destinations it serves"},
		{"an undeclared destination", withDestinations(map[string]any{"name": "x", "destinations": []any{"archive", "ai", "pacs"}}), `"pacs" is not a declared destination`},
		{"dicomwebURL with destinations", withDestinations(map[string]any{"name": "x", "dicomwebURL": "https://pacs.example.org"}), "each destination has its url"},
		{"a bad name", set(withDestinations(two()...), func(v map[string]any) { dest(v, 1)["name"] = "ai.vendor" }), "not a destination name"},
		{"two names, one prefix", set(withDestinations(map[string]any{"name": "x"}), func(v map[string]any) {
			v["destinations"] = append(v["destinations"].([]any), map[string]any{"name": "AI", "url": "https://x.example.org"})
		}), "would both be configured by DESTINATION_AI_"},
		{"no url", set(withDestinations(two()...), func(v map[string]any) { delete(dest(v, 1), "url") }), "destinations[ai].url is required"},
		{"a rule in env", set(withDestinations(two()...), func(v map[string]any) { dest(v, 1)["env"].(map[string]any)["MATCH"] = "true" }), "give the variable without the prefix"},
		{"the one destination's secret", set(withDestinations(two()...), func(v map[string]any) {
			v["secrets"].(map[string]any)["values"].(map[string]any)["OAUTH_CLIENT_SECRET"] = "s"
		}), "OAUTH_CLIENT_SECRET is the one destination's"},
		{"a client secret twice", set(withDestinations(two()...), func(v map[string]any) {
			dest(v, 1)["clientSecret"] = map[string]any{"secretName": "ai-oauth", "key": "s"}
		}), "both in clientSecret and in secrets"},
		{"ack wait per group", set(withDestinations(two()...), func(v map[string]any) {
			v["forwarders"].([]any)[1].(map[string]any)["env"] = map[string]any{"FORWARDER_ACK_WAIT": "2m"}
		}), "the same for every group"},
		{"dead-letter retention per group", set(withDestinations(two()...), func(v map[string]any) {
			v["forwarders"].([]any)[0].(map[string]any)["env"] = map[string]any{"DEADLETTER_RETENTION": "1440h"}
		}), "the same for every group"},
		// Two objects of one name: the one applied last replaces the
		// other, whose destinations then go unserved without a word.
		{"two groups of one name", withDestinations(map[string]any{"name": "archive", "destinations": []any{"archive"}},
			map[string]any{"name": "archive", "destinations": []any{"ai"}}), `forwarders: "archive" and "archive" would both be site-stowline-forwarder-archive`},
		{"two group names cut to one", withDestinations(
			map[string]any{"name": "archive-" + strings.Repeat("a", 40) + "-1", "destinations": []any{"archive"}},
			map[string]any{"name": "archive-" + strings.Repeat("a", 40) + "-2", "destinations": []any{"ai"}}), "would both be site-stowline-forwarder-archive-aaa"},
		{"a group name Kubernetes refuses", withDestinations(map[string]any{"name": "Archive_1"}), `forwarders[0].name "Archive_1"`},
		{"a group without a name", withDestinations(map[string]any{"destinations": []any{"archive", "ai"}}), `forwarders[0].name ""`},
		{"destinations on a group without destinations", set(required(), func(v map[string]any) {
			v["forwarders"].([]any)[0].(map[string]any)["destinations"] = []any{"ai"}
		}), "declare the destinations first"},
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

// TestDefaultDestinationVarsRefusedWithDestinations: with destinations,
// the chart refuses every variable of the one destination (the code's
// list, config.Destination) in the shared env maps, where the forwarder
// would refuse it at startup; the other variables pass.
func TestDefaultDestinationVarsRefusedWithDestinations(t *testing.T) {
	src := readGoFacts(t)
	for _, v := range slices.Sorted(maps.Keys(src.destinationVars)) {
		values := withDestinations(map[string]any{"name": "x"})
		values["forwarderDefaults"] = map[string]any{"env": map[string]any{v: "x"}}
		_, err := renderFiles(t, values)
		if err == nil || !strings.Contains(err.Error(), v+" is the one destination's variable") {
			t.Errorf("%s in forwarderDefaults.env with destinations: render error %v", v, err)
		}
	}
	values := withDestinations(map[string]any{"name": "x"})
	values["forwarderDefaults"] = map[string]any{"env": map[string]any{"TLS_LISTEN_CERT_FILE": "/tls/tls.crt", "TLS_LISTEN_KEY_FILE": "/tls/tls.key", "FORWARDER_MAX_DELIVERIES": "24"}}
	if _, err := renderFiles(t, values); err != nil {
		t.Errorf("variables of no destination refused: %v", err)
	}
}

// TestDestinationsNetworkPolicyPorts: each group's policy opens the ports
// of the destinations it serves, their URLs and token endpoints, and not
// those of another group's.
func TestDestinationsNetworkPolicyPorts(t *testing.T) {
	v := withDestinations(map[string]any{"name": "archive", "destinations": []any{"archive"}}, map[string]any{"name": "ai", "destinations": []any{"ai"}})
	ai := v["destinations"].([]any)[1].(map[string]any)
	ai["url"] = "https://dicomweb.ai-vendor.example.com:8443/v1"
	ai["env"].(map[string]any)["OAUTH_TOKEN_URL"] = "https://auth.ai-vendor.example.com:8444/oauth2/token"
	for _, np := range of[*networkingv1.NetworkPolicy](render(t, v)) {
		open := map[int32]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				open[p.Port.IntVal] = true
			}
		}
		serves := component(np.Labels) == "forwarder-ai"
		if open[8443] != serves || open[8444] != serves {
			t.Errorf("NetworkPolicy %s: 8443 open %v, 8444 open %v; want %v (the ai destination's ports)", np.Name, open[8443], open[8444], serves)
		}
	}
}

// TestDestinationsAKSWorkloadIdentity: with destinations, an Azure one
// uses AKS workload identity through its own
// DESTINATION_<NAME>_AZURE_FEDERATED_TOKEN_FILE (docs/auth.md); the
// variables the webhook adds to the pod are ignored, not refused, and the
// forwarder's configuration loads.
func TestDestinationsAKSWorkloadIdentity(t *testing.T) {
	const token = "/var/run/secrets/azure/tokens/azure-identity-token"
	values := withDestinations(map[string]any{"name": "all"})
	archive := values["destinations"].([]any)[0].(map[string]any)
	delete(archive, "clientSecret")
	archive["env"].(map[string]any)["AZURE_FEDERATED_TOKEN_FILE"] = token
	values = merged(values, map[string]any{"forwarderDefaults": map[string]any{"podLabels": map[string]any{"azure.workload.identity/use": "true"}}})
	objs := render(t, values)
	checkRelease(t, objs)
	env := envOf(forwarderDeployment(t, objs, "all"))
	if env["DESTINATION_ARCHIVE_AZURE_FEDERATED_TOKEN_FILE"] != token {
		t.Fatalf("env %v lacks DESTINATION_ARCHIVE_AZURE_FEDERATED_TOKEN_FILE", env)
	}
	env["AZURE_CLIENT_ID"] = "00001111-aaaa-2222-bbbb-3333cccc4444"
	env["AZURE_TENANT_ID"] = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	env["AZURE_FEDERATED_TOKEN_FILE"] = token
	env["AZURE_AUTHORITY_HOST"] = "https://login.microsoftonline.com/"
	configLoads(t, "forwarder", env)
}
