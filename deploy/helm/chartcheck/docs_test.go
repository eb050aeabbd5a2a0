package chartcheck

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// operationsExample returns the values of `cat > file <<'YAML'` in
// docs/operations.md.
func operationsExample(t *testing.T, file string) map[string]any {
	t.Helper()
	return docExample(t, "operations.md", file)
}

// docExample returns the values of `cat > file <<'YAML'` in docs/doc.
func docExample(t *testing.T, doc, file string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", doc))
	if err != nil {
		t.Fatal(err)
	}
	start, end := "cat > "+file+" <<'YAML'\n", "\nYAML\n"
	_, rest, ok := strings.Cut(string(b), start)
	example, _, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("docs/%s has no %q ... YAML block", doc, strings.TrimSpace(start))
	}
	var values map[string]any
	if err := sigsyaml.UnmarshalStrict([]byte(example), &values); err != nil {
		t.Fatalf("the example's YAML: %v", err)
	}
	return values
}

// TestOperationsDestinationsExample renders the site-destinations.yaml of
// docs/operations.md (section Kubernetes, Several destinations): two
// groups, each scaled on its destination's routine and stat-lane
// consumers, with the ceilings
// the section gives.
func TestOperationsDestinationsExample(t *testing.T) {
	objs := render(t, operationsExample(t, "site-destinations.yaml"))
	checkRelease(t, objs)
	src := readGoFacts(t)
	for group, want := range map[string]int32{"archive": 11, "ai": 11} {
		so := scaledObjectOf(t, objs, forwarderDeployment(t, objs, group))
		if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != want {
			t.Errorf("group %s: maxReplicaCount %v, want %d (as the section says)", group, so.Spec.MaxReplicaCount, want)
		}
		if got, want := consumersOf(so), src.triggeredConsumers(group); !slices.Equal(got, want) {
			t.Errorf("group %s: triggers on %v, want exactly %v", group, got, want)
		}
	}
}

// TestOperationsExample renders the site.yaml of docs/operations.md
// (section Kubernetes, Install) and runs every check on it, so the
// documented example keeps working.
func TestOperationsExample(t *testing.T) {
	values := operationsExample(t, "site.yaml")
	objs := render(t, values)
	checkRelease(t, objs)
	so := of[*scaledObject](objs)
	if len(so) != 1 || so[0].Spec.MaxReplicaCount == nil || *so[0].Spec.MaxReplicaCount != 11 {
		t.Errorf("the example's ScaledObjects %+v, want one with maxReplicaCount 11 (as the section says)", so)
	}
	// kube-prometheus-stack's Prometheus ignores them without its label.
	for _, o := range objs {
		if k := o.meta.Kind; k == "ServiceMonitor" || k == "PrometheusRule" {
			if _, ok := o.obj.(interface{ GetLabels() map[string]string }).GetLabels()["release"]; !ok {
				t.Errorf("the example's %s %s has no release label: kube-prometheus-stack's Prometheus would ignore it", k, o.name)
			}
		}
	}
}

// valuesDestinationExample returns the commented destination of
// values.yaml (after `destinations: []`), uncommented.
func valuesDestinationExample(t *testing.T) []any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, example, _ := strings.Cut(string(b), "\ndestinations: []\n")
	example, _, _ = strings.Cut(example, "\n\n")
	var lines []string
	for _, line := range strings.Split(example, "\n") {
		lines = append(lines, strings.TrimPrefix(line, "#"))
	}
	var dests []any
	if err := sigsyaml.UnmarshalStrict([]byte(strings.Join(lines, "\n")), &dests); err != nil || len(dests) != 1 {
		t.Fatalf("values.yaml's destination example: %v, %d destinations", err, len(dests))
	}
	return dests
}

// TestValuesDestinationExample: values.yaml's commented destination,
// uncommented as an operator would, renders a release whose forwarder
// starts. It set a DEIDENTIFY_KEY_FILE without STOW_DEIDENTIFY, which the
// forwarder refuses (exit 2).
func TestValuesDestinationExample(t *testing.T) {
	values := required()
	delete(values["secrets"].(map[string]any)["values"].(map[string]any), "OAUTH_CLIENT_SECRET") // the one destination's
	values["destinations"] = valuesDestinationExample(t)
	values["forwarders"] = []any{map[string]any{"name": "all"}}
	objs := render(t, values)
	checkRelease(t, objs)
}

// TestOperationsExamplesCreateTheirSecrets: every Secret key the rendered
// examples of docs/operations.md mount is created by the example's own
// kubectl lines. The several-destinations example mounted
// DESTINATION_AI_OAUTH_CLIENT_SECRET and archive-oauth's key, which it
// never created: its pods stayed in ContainerCreating (FailedMount).
func TestOperationsExamplesCreateTheirSecrets(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"site.yaml", "site-destinations.yaml"} {
		t.Run(file, func(t *testing.T) {
			// The shell block that writes the file, up to that line.
			before, _, ok := strings.Cut(string(b), "cat > "+file+" <<'YAML'\n")
			if !ok {
				t.Fatalf("docs/operations.md writes no %s", file)
			}
			block := before[strings.LastIndex(before, "```sh\n"):]
			created := map[string]bool{} // "secret/key"
			for cmd := range strings.SplitSeq(strings.ReplaceAll(block, "\\\n", " "), "\n") {
				_, rest, ok := strings.Cut(cmd, "create secret generic ")
				if !ok {
					continue
				}
				fields := strings.Fields(rest)
				for _, f := range fields[1:] {
					for _, flag := range []string{"--from-literal=", "--from-file="} {
						if kv, ok := strings.CutPrefix(f, flag); ok {
							key, _, _ := strings.Cut(kv, "=")
							created[fields[0]+"/"+key] = true
						}
					}
				}
			}
			objs := render(t, operationsExample(t, file))
			for _, d := range of[*appsv1.Deployment](objs) {
				for _, v := range d.Spec.Template.Spec.Volumes {
					if v.Secret == nil {
						continue
					}
					for _, it := range v.Secret.Items {
						if !created[v.Secret.SecretName+"/"+it.Key] {
							t.Errorf("%s mounts key %s of Secret %s, which the example does not create (it creates %v)", d.Name, it.Key, v.Secret.SecretName, slices.Sorted(maps.Keys(created)))
						}
					}
				}
			}
		})
	}
}

// TestAKSWorkloadIdentityExample renders the aks-workload-identity.yaml
// of docs/auth.md over the required values (without a client secret, as
// the section says): the service account carries the client-id
// annotation and the forwarder pods the use label, which make the AKS
// webhook inject its variables; with those added, the forwarder's
// configuration loads (it was refused: AZURE_TENANT_ID without a secret).
func TestAKSWorkloadIdentityExample(t *testing.T) {
	values := merged(required(), docExample(t, "auth.md", "aks-workload-identity.yaml"))
	secrets := values["secrets"].(map[string]any)["values"].(map[string]any)
	delete(secrets, "OAUTH_CLIENT_SECRET")
	objs := render(t, values)
	checkRelease(t, objs)

	const clientID = "00001111-aaaa-2222-bbbb-3333cccc4444"
	accounts := of[*corev1.ServiceAccount](objs)
	if len(accounts) != 1 || accounts[0].Annotations["azure.workload.identity/client-id"] != clientID {
		t.Fatalf("service accounts %+v, want one annotated azure.workload.identity/client-id: %s", accounts, clientID)
	}
	d := forwarderDeployment(t, objs, "default")
	if got := d.Spec.Template.Labels["azure.workload.identity/use"]; got != "true" {
		t.Errorf("forwarder pod label azure.workload.identity/use = %q, want \"true\"", got)
	}
	if d.Spec.Template.Spec.ServiceAccountName != accounts[0].Name {
		t.Errorf("forwarder pods run as %q, not the annotated %q", d.Spec.Template.Spec.ServiceAccountName, accounts[0].Name)
	}
	env := envOf(d)
	if env["OAUTH_PROVIDER"] != "azure" || env["OAUTH_CLIENT_ID"] != clientID {
		t.Errorf("forwarder env OAUTH_PROVIDER %q, OAUTH_CLIENT_ID %q", env["OAUTH_PROVIDER"], env["OAUTH_CLIENT_ID"])
	}
	// What the webhook adds to the container.
	env["AZURE_CLIENT_ID"] = clientID
	env["AZURE_TENANT_ID"] = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	env["AZURE_FEDERATED_TOKEN_FILE"] = "/var/run/secrets/azure/tokens/azure-identity-token"
	env["AZURE_AUTHORITY_HOST"] = "https://login.microsoftonline.com/"
	configLoads(t, "forwarder", env)
}
