package chartcheck

import (
	"fmt"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

// withAIKeyFiles is a release of two groups, archive and ai, ai's
// destination mounting two key files: Secret ai-deid's key and ai-tls's
// ca.pem.
func withAIKeyFiles() map[string]any {
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
	return values
}

// secretsCluster is the Secrets of the release's namespace a render's
// lookup finds: name -> key -> value. Each Secret's uid is "uid-" and its
// name (fakeCluster for others).
type secretsCluster map[string]map[string]string

// GetClientFor serves the templates' lookup of the Secrets.
func (c secretsCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	return fakeCluster{secrets: c, uid: "uid-"}.GetClientFor(apiVersion, kind)
}

// fakeCluster serves lookup from a fake dynamic client holding secrets,
// each Secret's metadata.uid being uid and its name; with refuse set,
// every read of a Secret is refused with it instead.
type fakeCluster struct {
	secrets secretsCluster
	uid     string
	refuse  error
}

// GetClientFor serves the templates' lookup of Secrets.
func (c fakeCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	if apiVersion != "v1" || kind != "Secret" {
		return nil, false, fmt.Errorf("lookup of %s %s: only Secrets are served", apiVersion, kind)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, false, err
	}
	objs := make([]runtime.Object, 0, len(c.secrets))
	for name, data := range c.secrets {
		s := &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: release.Namespace, UID: types.UID(c.uid + name)},
			Data:       map[string][]byte{},
		}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		objs = append(objs, s)
	}
	client := fake.NewSimpleDynamicClient(scheme, objs...)
	if c.refuse != nil {
		client.PrependReactor("*", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, c.refuse
		})
	}
	return client.Resource(corev1.SchemeGroupVersion.WithResource("secrets")), true, nil
}

// podAnnotations renders values against cluster (nil: none, as `helm
// template`) and returns each Deployment's pod annotations, by component.
func podAnnotations(t *testing.T, values map[string]any, cluster engine.ClientProvider) map[string]map[string]string {
	t.Helper()
	files, err := renderChartWith(loadChart(t), values, cluster)
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
	values := withAIKeyFiles()
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

// TestSecretFilesChecksumIsSalted: checksum/secret-files was the sha256 of
// the Secrets' names, keys and data alone, so anyone who could read the
// pods (not the Secrets) could test guesses of a weak key against it.
// Each key is now hashed with its Secret's uid, which only those who may
// read the Secret see: the same keys in Secrets of other uids give
// another annotation.
func TestSecretFilesChecksumIsSalted(t *testing.T) {
	values := withAIKeyFiles()
	keys := secretsCluster{"ai-deid": {"key": "weak"}, "ai-tls": {"ca.pem": "CA"}}
	one := podAnnotations(t, values, fakeCluster{secrets: keys, uid: "one-"})["forwarder-ai"]["checksum/secret-files"]
	other := podAnnotations(t, values, fakeCluster{secrets: keys, uid: "other-"})["forwarder-ai"]["checksum/secret-files"]
	if one == "" || one == other {
		t.Errorf("checksum/secret-files is %q with one set of uids, %q with another: want two checksums", one, other)
	}
}

// TestSecretFilesChecksumOff: Helm's lookup fails the render on any
// refusal but NotFound, so an identity that may not get Secrets
// (HELM_DRIVER=configmap with least-privilege RBAC, Flux without Secret
// reads, --dry-run=server) could not render a release with secretFiles
// at all. secretFilesChecksum: false reads no Secret and sets no
// checksum/secret-files.
func TestSecretFilesChecksumOff(t *testing.T) {
	forbidden := fakeCluster{refuse: errors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "ai-deid", fmt.Errorf("helm may not read Secrets"))}
	for _, tt := range []struct {
		name     string
		checksum any    // secretFilesChecksum; nil: the chart's default
		fails    string // the render's error, "" for none
	}{
		{"default: the checksum, which needs the Secrets", nil, "forbidden"},
		{"on", true, "forbidden"},
		{"off", false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			values := withAIKeyFiles()
			if tt.checksum != nil {
				values["secretFilesChecksum"] = tt.checksum
			}
			files, err := renderChartWith(loadChart(t), values, forbidden)
			if tt.fails != "" {
				if err == nil || !strings.Contains(err.Error(), tt.fails) {
					t.Fatalf("render error = %v, want one containing %q", err, tt.fails)
				}
				return
			}
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			for _, d := range of[*appsv1.Deployment](decodeFiles(t, files)) {
				if sum, ok := d.Spec.Template.Annotations["checksum/secret-files"]; ok {
					t.Errorf("%s's pods have checksum/secret-files %q, want none", component(d.Labels), sum)
				}
			}
		})
	}
}
