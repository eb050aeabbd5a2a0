package chartcheck

import (
	"cmp"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestHTTPSListeners: TLS_LISTEN_CERT_FILE, wherever the env maps set it
// for a component, makes its listeners HTTPS only (docs/webhook-security.md),
// so its probes, its ServiceMonitor endpoint and the ingest's URL in
// NOTES.txt use https; the components without it keep http.
func TestHTTPSListeners(t *testing.T) {
	tlsEnv := map[string]any{"TLS_LISTEN_CERT_FILE": "/tls/tls.crt", "TLS_LISTEN_KEY_FILE": "/tls/tls.key"}
	off := map[string]any{"TLS_LISTEN_CERT_FILE": "", "TLS_LISTEN_KEY_FILE": ""}
	twoGroups := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}, "env": tlsEnv},
		map[string]any{"name": "ai", "destinations": []any{"ai"}},
	)
	tests := []struct {
		name   string
		values map[string]any
		want   map[string]string // component: scheme
	}{
		{"none", required(), map[string]string{"ingest": "http", "forwarder-default": "http"}},
		{"every component (env)", merged(required(), map[string]any{"env": tlsEnv}),
			map[string]string{"ingest": "https", "forwarder-default": "https"}},
		{"the ingest only (ingest.env)", merged(required(), map[string]any{"ingest": map[string]any{"env": tlsEnv}}),
			map[string]string{"ingest": "https", "forwarder-default": "http"}},
		{"the forwarders only (forwarderDefaults.env)", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": tlsEnv}}),
			map[string]string{"ingest": "http", "forwarder-default": "https"}},
		{"one group (forwarders[].env)", twoGroups,
			map[string]string{"ingest": "http", "forwarder-archive": "https", "forwarder-ai": "http"}},
		{"env, undone by ingest.env", merged(required(), map[string]any{"env": tlsEnv, "ingest": map[string]any{"env": off}}),
			map[string]string{"ingest": "http", "forwarder-default": "https"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := merged(tt.values, map[string]any{"serviceMonitor": map[string]any{
				"enabled": true, "tlsConfig": map[string]any{"insecureSkipVerify": true},
			}})
			objs := render(t, values)
			checkSelectors(t, objs) // the ServiceMonitor's endpoints against the pods' env
			got := map[string]string{}
			for _, d := range of[*appsv1.Deployment](objs) {
				got[component(d.Labels)] = probesScheme(t, d)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("probe schemes %v, want %v", got, tt.want)
			}
			sm := of[*monitoringv1.ServiceMonitor](objs)[0]
			got = map[string]string{}
			for _, s := range of[*corev1.Service](objs) {
				for _, ep := range sm.Spec.Endpoints {
					if endpointKeeps(t, ep, component(s.Labels)) {
						got[component(s.Labels)] = cmp.Or(ep.Scheme.String(), "http")
						// tlsConfig only where there is TLS.
						if tls := ep.TLSConfig != nil && ep.TLSConfig.InsecureSkipVerify != nil && *ep.TLSConfig.InsecureSkipVerify; tls != (got[component(s.Labels)] == "https") {
							t.Errorf("service %s: scheme %s with serviceMonitor.tlsConfig applied: %v", s.Name, got[component(s.Labels)], tls)
						}
					}
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("ServiceMonitor schemes %v, want %v", got, tt.want)
			}
			notes := renderNotes(t, values)
			for _, u := range []string{`"IngestUrl":   "` + tt.want["ingest"] + "://", "open " + tt.want["ingest"] + "://localhost"} {
				if !strings.Contains(notes, u) {
					t.Errorf("NOTES.txt lacks %q:\n%s", u, notes)
				}
			}
		})
	}
}

// probesScheme is the scheme of a Deployment's probes, lower case; the
// test fails when they differ.
func probesScheme(t *testing.T, d *appsv1.Deployment) string {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	schemes := map[string]bool{}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("deployment %s: a probe without httpGet", d.Name)
		}
		schemes[strings.ToLower(string(cmp.Or(p.HTTPGet.Scheme, corev1.URISchemeHTTP)))] = true
	}
	if len(schemes) != 1 {
		t.Errorf("deployment %s: probes with schemes %v, want one", d.Name, schemes)
	}
	for s := range schemes {
		return s
	}
	return ""
}

// TestNotesWarnWhenOrthancMayBeShutOut: the install notes warn of two
// ways the ingest refuses Orthanc's posts.
//   - The ingest's NetworkPolicy lets in only the pods of its own
//     namespace unless networkPolicy.ingestFrom says otherwise. An Orthanc
//     elsewhere then has its posts dropped, and each one holds Orthanc's
//     REST API until the Lua script's time-out; the notes say so whenever
//     no peer outside the namespace is listed.
//   - With INGEST_HMAC_SECRET the ingest refuses unsigned posts, and
//     Orthanc's Lua script, which the notes tell to post to it, cannot sign
//     (docs/webhook-security.md).
func TestNotesWarnWhenOrthancMayBeShutOut(t *testing.T) {
	const (
		policyWarning = "Orthanc must run in namespace"
		hmacWarning   = "Orthanc's Lua script cannot sign"
	)
	policy := func(np map[string]any) map[string]any { return map[string]any{"networkPolicy": np} }
	secrets := func(s map[string]any) map[string]any { return map[string]any{"secrets": s} }
	tests := []struct {
		name    string
		values  map[string]any // merged over the required values
		warning string
		warn    bool
	}{
		{"policy: the default", nil, policyWarning, true},
		{"policy: pods of this namespace only", policy(map[string]any{"ingestFrom": []any{map[string]any{"podSelector": map[string]any{"matchLabels": map[string]any{"app": "orthanc"}}}}}), policyWarning, true},
		{"policy: Orthanc's namespace", policy(map[string]any{"ingestFrom": []any{map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "pacs"}}}}}), policyWarning, false},
		{"policy: an address block", policy(map[string]any{"ingestFrom": []any{map[string]any{"ipBlock": map[string]any{"cidr": "10.20.0.0/16"}}}}), policyWarning, false},
		{"policy: no NetworkPolicy", policy(map[string]any{"enabled": false}), policyWarning, false},
		{"HMAC: no secret", nil, hmacWarning, false},
		{"HMAC: in the chart's Secret", secrets(map[string]any{"values": map[string]any{"INGEST_HMAC_SECRET": "hmac-secret-0123456789abcdef0123456789"}}), hmacWarning, true},
		{"HMAC: in an existing Secret", secrets(map[string]any{"existingSecret": "mine", "existingSecretKeys": []any{"INGEST_TOKEN", "ORTHANC_PASSWORD", "INGEST_HMAC_SECRET"}}), hmacWarning, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := required()
			if tt.values != nil {
				v = merged(v, tt.values)
			}
			notes := renderNotes(t, v)
			if got := strings.Contains(notes, tt.warning); got != tt.warn {
				t.Errorf("notes warn %q = %v, want %v:\n%s", tt.warning, got, tt.warn, notes)
			}
		})
	}
}

// TestNotesWarnWhenPrometheusMayBeShutOut: with the ServiceMonitor and the
// NetworkPolicies on and networkPolicy.metricsFrom empty (the default),
// only pods of the release's namespace may scrape /metrics; a Prometheus
// elsewhere (kube-prometheus-stack's own namespace, as a rule) finds every
// target down with nothing saying why. The notes say so.
func TestNotesWarnWhenPrometheusMayBeShutOut(t *testing.T) {
	const warning = "Prometheus must run in namespace"
	monitoring := []any{map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "monitoring"}}}}
	tests := []struct {
		name   string
		values map[string]any // merged over the required values
		warn   bool
	}{
		{"no ServiceMonitor", nil, false},
		{"ServiceMonitor, metricsFrom empty", map[string]any{"serviceMonitor": map[string]any{"enabled": true}}, true},
		{"ServiceMonitor, metricsFrom set", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "networkPolicy": map[string]any{"metricsFrom": monitoring}}, false},
		{"ServiceMonitor, both peers outside", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "networkPolicy": map[string]any{"ingestFrom": monitoring, "forwarderFrom": monitoring}}, false},
		{"ServiceMonitor, no NetworkPolicy", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "networkPolicy": map[string]any{"enabled": false}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			notes := renderNotes(t, merged(required(), tt.values))
			if got := strings.Contains(notes, warning); got != tt.warn {
				t.Errorf("notes warn %q = %v, want %v:\n%s", warning, got, tt.warn, notes)
			}
		})
	}
}

// TestNotesWarnWhenMonitoringUnlabelled: kube-prometheus-stack's
// Prometheus selects ServiceMonitors and PrometheusRules by its release
// label; without labels, enabling them (as operations.md's example did)
// gave no metrics and, worse, no alerts, with nothing saying so. The
// notes say so.
func TestNotesWarnWhenMonitoringUnlabelled(t *testing.T) {
	const warning = ".labels is empty"
	labels := map[string]any{"release": "kube-prometheus-stack"}
	tests := []struct {
		name   string
		values map[string]any // merged over the required values
		want   string         // "": no warning
	}{
		{"neither enabled", nil, ""},
		{"ServiceMonitor without labels", map[string]any{"serviceMonitor": map[string]any{"enabled": true}}, "serviceMonitor.labels is empty"},
		{"both without labels", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true}}, "serviceMonitor.labels and prometheusRule.labels are empty"},
		{"rule without labels", map[string]any{"serviceMonitor": map[string]any{"enabled": true, "labels": labels}, "prometheusRule": map[string]any{"enabled": true}}, "prometheusRule.labels is empty"},
		{"both labelled", map[string]any{"serviceMonitor": map[string]any{"enabled": true, "labels": labels}, "prometheusRule": map[string]any{"enabled": true, "labels": labels}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			notes := renderNotes(t, merged(required(), tt.values))
			if tt.want == "" && strings.Contains(notes, warning) || tt.want != "" && !strings.Contains(notes, tt.want) {
				t.Errorf("notes, want a warning %q:\n%s", tt.want, notes)
			}
		})
	}
}

// TestNotesNameTheSource: with orthanc.sourceName, the forwarders serve
// events of that source only (ORTHANC_SOURCE_NAME), and an Orthanc set up
// from the notes without Stowline.Source posts its own Name: every
// webhook event was dead-lettered as of an unknown source.
func TestNotesNameTheSource(t *testing.T) {
	for _, tt := range []struct{ sourceName, want string }{{"", ""}, {"orthanc-main", "orthanc-main"}} {
		t.Run(tt.sourceName, func(t *testing.T) {
			notes := renderNotes(t, merged(required(), map[string]any{"orthanc": map[string]any{"sourceName": tt.sourceName}}))
			_, block, _ := strings.Cut(notes, `"Stowline": `)
			block, _, _ = strings.Cut(block, "\n  }")
			var section struct{ IngestURL, IngestToken, Source string }
			if err := json.Unmarshal([]byte(block+"}"), &section); err != nil {
				t.Fatalf("the notes' Stowline section is not JSON: %v\n%s", err, notes)
			}
			if section.IngestToken == "" || section.Source != tt.want {
				t.Errorf("Stowline section %+v, want Source %q:\n%s", section, tt.want, notes)
			}
		})
	}
}

// renderNotes renders the chart with values and returns its NOTES.txt.
func renderNotes(t *testing.T, values map[string]any) string {
	t.Helper()
	files, err := renderFiles(t, values)
	if err != nil {
		t.Fatal(err)
	}
	return files["stowline/templates/NOTES.txt"]
}
