package chartcheck

import (
	"fmt"
	"testing"

	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/fake"
)

// secretsCluster is the Secrets of the release's namespace a render's
// lookup finds: name -> key -> value.
type secretsCluster map[string]map[string]string

// GetClientFor serves the templates' lookup from a fake dynamic client
// holding the Secrets.
func (c secretsCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	if apiVersion != "v1" || kind != "Secret" {
		return nil, false, fmt.Errorf("lookup of %s %s: only Secrets are served", apiVersion, kind)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, false, err
	}
	objs := make([]runtime.Object, 0, len(c))
	for name, data := range c {
		s := &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: release.Namespace},
			Data:       map[string][]byte{},
		}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		objs = append(objs, s)
	}
	return fake.NewSimpleDynamicClient(scheme, objs...).Resource(corev1.SchemeGroupVersion.WithResource("secrets")), true, nil
}

// podAnnotations renders values against cluster (nil: none, as `helm
// template`) and returns each Deployment's pod annotations, by component.
func podAnnotations(t *testing.T, values map[string]any, cluster secretsCluster) map[string]map[string]string {
	t.Helper()
	var provider engine.ClientProvider
	if cluster != nil {
		provider = cluster
	}
	files, err := renderChartWith(loadChart(t), values, provider)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	out := map[string]map[string]string{}
	for _, d := range of[*appsv1.Deployment](decodeFiles(t, files)) {
		out[component(d.Labels)] = d.Spec.Template.Annotations
	}
	return out
}

// TestChangedSecretFilesRollThePods: a forwarder reads most key files
// (DEIDENTIFY_KEY_FILE, TLS_CA_FILE...) at startup only, and their
// Secrets are not the chart's: checksum/secrets did not cover them, so a
// `helm upgrade` after a key changed left the pods on the old one. The
// pods of the group that mounts a key roll when that key changes (read
// from the cluster at upgrade), not when a key they do not mount does;
// other groups' and the ingest's pods do not.
func TestChangedSecretFilesRollThePods(t *testing.T) {
	values := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}},
		map[string]any{"name": "ai", "destinations": []any{"ai"}},
	)
	ai := values["destinations"].([]any)[1].(map[string]any)
	ai["env"].(map[string]any)["STOW_DEIDENTIFY"] = "basic"
	ai["secretFiles"] = []any{
		map[string]any{"secretName": "ai-deid", "key": "key", "env": "DEIDENTIFY_KEY_FILE"},
		map[string]any{"secretName": "ai-tls", "key": "ca.pem", "env": "TLS_CA_FILE"},
	}
	before := secretsCluster{
		"ai-deid": {"key": "first key"},
		"ai-tls":  {"ca.pem": "first CA", "unused.pem": "not mounted"},
	}
	for _, tt := range []struct {
		name   string
		after  secretsCluster
		rolled []string // components whose pods must roll
	}{
		{"de-identification key changed", secretsCluster{
			"ai-deid": {"key": "second key"},
			"ai-tls":  before["ai-tls"],
		}, []string{"forwarder-ai"}},
		{"CA changed", secretsCluster{
			"ai-deid": before["ai-deid"],
			"ai-tls":  {"ca.pem": "second CA", "unused.pem": "not mounted"},
		}, []string{"forwarder-ai"}},
		{"a key not mounted changed", secretsCluster{
			"ai-deid": before["ai-deid"],
			"ai-tls":  {"ca.pem": "first CA", "unused.pem": "changed"},
		}, nil},
		{"unchanged", before, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			was, is := podAnnotations(t, values, before), podAnnotations(t, values, tt.after)
			if was["forwarder-ai"]["checksum/secret-files"] == "" {
				t.Fatalf("forwarder-ai's pods have no checksum/secret-files annotation: %v", was["forwarder-ai"])
			}
			for _, c := range []string{"ingest", "forwarder-archive", "forwarder-ai"} {
				want := false
				for _, r := range tt.rolled {
					want = want || r == c
				}
				if rolled := fmt.Sprint(was[c]) != fmt.Sprint(is[c]); rolled != want {
					t.Errorf("%s's pods rolled %v, want %v: annotations %v, then %v", c, rolled, want, was[c], is[c])
				}
			}
		})
	}
	// `helm template` reads no cluster: the render works, the same each time.
	if a, b := podAnnotations(t, values, nil), podAnnotations(t, values, nil); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("renders without a cluster differ: %v, then %v", a, b)
	}
}
