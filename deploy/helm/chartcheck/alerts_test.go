package chartcheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// TestPrometheusRuleIsTheAlertsFile: the chart's PrometheusRule holds
// deploy/alerts.yml's groups unchanged (the file promtool tests; the
// chart's files/alerts.yml is a copy of it, to update with it), with
// Prometheus's {{ $labels... }} templates left for Prometheus: rendered
// by Helm, they would fail the release or come out empty.
func TestPrometheusRuleIsTheAlertsFile(t *testing.T) {
	objs := render(t, merged(required(), map[string]any{"prometheusRule": map[string]any{"enabled": true}, "serviceMonitor": map[string]any{"enabled": true}}))
	rules := of[*monitoringv1.PrometheusRule](objs)
	if len(rules) != 1 {
		t.Fatalf("%d PrometheusRules, want 1", len(rules))
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var want monitoringv1.PrometheusRuleSpec
	if err := sigsyaml.UnmarshalStrict(b, &want); err != nil {
		t.Fatalf("deploy/alerts.yml: %v", err)
	}
	if len(want.Groups) == 0 || len(want.Groups[0].Rules) == 0 {
		t.Fatal("deploy/alerts.yml holds no rules")
	}
	if got := rules[0].Spec; !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("PrometheusRule spec differs from deploy/alerts.yml:\n%s\nwant\n%s", g, w)
	}
	if len(of[*monitoringv1.PrometheusRule](render(t, required()))) != 0 {
		t.Error("a PrometheusRule by default; want none unless prometheusRule.enabled")
	}
}
