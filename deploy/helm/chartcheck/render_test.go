package chartcheck

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// repoRoot is the repository, three levels up from this module.
const repoRoot = "../../.."

// chartDir is the chart under test.
var chartDir = filepath.Join(repoRoot, "deploy", "helm", "stowline")

// release is the release every render uses.
var release = common.ReleaseOptions{Name: "site", Namespace: "imaging", Revision: 1, IsInstall: true}

// object is one rendered Kubernetes object: decoded into its Go type, and
// kept as YAML for the schema checks.
type object struct {
	file string // template that rendered it
	meta metav1.TypeMeta
	name string
	obj  any // *appsv1.Deployment, *corev1.Service..., or *scaledObject
	yaml []byte
}

// objects is a rendered release.
type objects []object

// required are the values the chart cannot do without.
func required() map[string]any {
	return map[string]any{
		"nats":    map[string]any{"url": "nats://nats.nats.svc.cluster.local:4222"},
		"orthanc": map[string]any{"url": "http://orthanc.pacs.svc:8042", "username": "stowline", "sourceName": "orthanc-main"},
		"secrets": map[string]any{"values": map[string]any{
			"INGEST_TOKEN":        "ingest-token-0123456789abcdef",
			"ADMIN_TOKEN":         "admin-token-0123456789abcdef",
			"ORTHANC_PASSWORD":    "orthanc-password",
			"OAUTH_CLIENT_SECRET": "client-secret",
		}},
		"forwarders": []any{map[string]any{
			"name":        "default",
			"dicomwebURL": "https://dicom.example.org/v1",
			"env": map[string]any{
				"OAUTH_TOKEN_URL": "https://login.example.org/token",
				"OAUTH_CLIENT_ID": "stowline",
			},
		}},
	}
}

// merged returns base with over merged in (maps recursively, Helm's way).
func merged(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, bok := out[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			out[k] = merged(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

// renderFiles renders the chart with values over its defaults, as
// `helm template` does: the values are first validated against the
// chart's values.schema.json, so every values set a test renders is one
// the schema accepts.
func renderFiles(t *testing.T, values map[string]any) (map[string]string, error) {
	t.Helper()
	return renderChart(loadChart(t), values)
}

func renderChart(ch *chart.Chart, values map[string]any) (map[string]string, error) {
	return renderChartWith(ch, values, nil)
}

// renderChartWith is renderChart with the cluster the templates' lookup
// reads (nil: none, as `helm template`).
func renderChartWith(ch *chart.Chart, values map[string]any, cluster engine.ClientProvider) (map[string]string, error) {
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(ch, values, release, common.DefaultCapabilities, false)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	if cluster != nil {
		return engine.RenderWithClientProvider(ch, vals, cluster)
	}
	return engine.Render(ch, vals)
}

// checkRenderError renders the chart with values and checks its error:
// none when want is empty, else one containing want.
func checkRenderError(t *testing.T, values map[string]any, want string) {
	t.Helper()
	_, err := renderFiles(t, values)
	checkError(t, err, want)
}

// checkRenderErrorWithoutSchema is checkRenderError without the schema,
// as `helm install --skip-schema-validation` renders: the templates' own
// checks.
func checkRenderErrorWithoutSchema(t *testing.T, values map[string]any, want string) {
	t.Helper()
	ch := loadChart(t)
	ch.Schema = nil
	_, err := renderChart(ch, values)
	checkError(t, err, want)
}

func checkError(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("render error %v, want none", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("render error %v, want one containing %q", err, want)
	}
}

// render renders the chart and decodes every object strictly: a field
// the Go type does not have, or a key given twice, fails the test.
func render(t *testing.T, values map[string]any) objects {
	t.Helper()
	files, err := renderFiles(t, values)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return decodeFiles(t, files)
}

// decodeFiles decodes the objects of rendered templates as render does.
func decodeFiles(t *testing.T, files map[string]string) objects {
	t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var out objects
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			if strings.TrimSpace(files[name]) == "" {
				t.Errorf("%s renders empty", name)
			}
			continue
		}
		docs, err := splitYAML(files[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, doc := range docs {
			o, err := decode(doc)
			if err != nil {
				t.Errorf("%s: %v\n%s", name, err, doc)
				continue
			}
			o.file = name
			out = append(out, o)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// splitYAML returns the documents of a multi-document YAML stream that
// hold something besides comments.
func splitYAML(s string) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(s)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if hasContent(doc) {
			docs = append(docs, doc)
		}
	}
}

func hasContent(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		l := bytes.TrimSpace(line)
		if len(l) > 0 && l[0] != '#' && string(l) != "---" {
			return true
		}
	}
	return false
}

// scaledObject is a KEDA ScaledObject: checked against KEDA's CRD schema
// (keda_test.go), decoded here for the fields the tests read.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Name     string            `json:"name"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// newObject returns the Go type of an apiVersion and kind.
func newObject(tm metav1.TypeMeta) (any, bool) {
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 Secret":
		return &corev1.Secret{}, true
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	case "monitoring.coreos.com/v1 PrometheusRule":
		return &monitoringv1.PrometheusRule{}, true
	case "keda.sh/v1alpha1 ScaledObject":
		return &scaledObject{}, true
	}
	return nil, false
}

// decode decodes one document strictly into its Go type.
func decode(doc []byte) (object, error) {
	var tm metav1.TypeMeta
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		return object{}, fmt.Errorf("apiVersion and kind: %w", err)
	}
	obj, ok := newObject(tm)
	if !ok {
		return object{}, fmt.Errorf("%s %s: no Go type known to this test", tm.APIVersion, tm.Kind)
	}
	// Strict: an unknown (misspelt) field or a duplicate key is an error.
	if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
		return object{}, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	var om struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := sigsyaml.Unmarshal(doc, &om); err != nil {
		return object{}, err
	}
	if om.Metadata.Name == "" {
		return object{}, fmt.Errorf("%s %s: no metadata.name", tm.APIVersion, tm.Kind)
	}
	return object{meta: tm, name: om.Metadata.Name, obj: obj, yaml: doc}, nil
}

// of returns the objects of one kind.
func of[T any](objs objects) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// kinds counts the objects by kind.
func (objs objects) kinds() map[string]int {
	out := map[string]int{}
	for _, o := range objs {
		out[o.meta.Kind]++
	}
	return out
}
