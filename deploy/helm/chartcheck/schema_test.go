package chartcheck

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSchemaRefuses: without values.schema.json, Helm ignored a key the
// chart does not have (`forwarder:` for `forwarders:`,
// networkPolicy.enable, destinations[].clientSecrets, ingest.replica),
// and the site believed a setting applied that did not; and took a value
// of the wrong type wherever the templates had no check of their own.
// The schema refuses both, naming the key.
func TestSchemaRefuses(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string
	}{
		{"forwarder for forwarders", "forwarder:\n  - name: default\n    dicomwebURL: https://dicom.example.org/v1\n",
			"additional properties 'forwarder' not allowed"},
		{"networkPolicy.enable", "networkPolicy:\n  enable: false\n",
			"at '/networkPolicy': additional properties 'enable' not allowed"},
		{"destinations[].clientSecrets", "destinations:\n  - name: archive\n    url: https://archive.example.org/v2\n    clientSecrets: {secretName: archive-oauth, key: client-secret}\n",
			"at '/destinations/0': additional properties 'clientSecrets' not allowed"},
		{"ingest.replica", "ingest:\n  replica: 3\n",
			"at '/ingest': additional properties 'replica' not allowed"},
		{"forwarders[].dicomWebURL", "forwarders:\n  - name: default\n    dicomWebURL: https://dicom.example.org/v1\n",
			"at '/forwarders/0': additional properties 'dicomWebURL' not allowed"},
		{"forwarderDefaults.keda.maxReplicas", "forwarderDefaults:\n  keda:\n    maxReplicas: 4\n",
			"at '/forwarderDefaults/keda': additional properties 'maxReplicas' not allowed"},
		{"a group's KEDA setting in the top-level keda", "keda:\n  enabled: true\n  minReplicaCount: 2\n",
			"at '/keda': additional properties 'minReplicaCount' not allowed"},
		{"destinations[].clientSecret.name", "destinations:\n  - name: archive\n    clientSecret: {name: archive-oauth, key: client-secret}\n",
			"at '/destinations/0/clientSecret': additional properties 'name' not allowed"},
		{"a NetworkPolicy peer misspelt", "networkPolicy:\n  ingestFrom:\n    - namespaceSelecter: {matchLabels: {kubernetes.io/metadata.name: pacs}}\n",
			"at '/networkPolicy/ingestFrom/0': additional properties 'namespaceSelecter' not allowed"},
		{"an egress rule's protocol", "networkPolicy:\n  egress:\n    extra:\n      - ports: [{port: 53, protocol: udp}]\n",
			"at '/networkPolicy/egress/extra/0/ports/0/protocol'"},
		{"keda.behavior.scaleDown misspelt", "keda:\n  behavior:\n    scaledown: {stabilizationWindowSeconds: 600}\n",
			"invalid propertyName 'scaledown'"},
		{"a quoted switch", "keda:\n  enabled: \"false\"\n",
			"at '/keda/enabled': got string, want boolean"},
		{"a secret written as a number", "secrets:\n  values:\n    ORTHANC_PASSWORD: 20240612093015123\n",
			"at '/secrets/values/ORTHANC_PASSWORD': got number"},
		{"existingSecretKeys as one name", "secrets:\n  existingSecret: stowline-secrets\n  existingSecretKeys: INGEST_TOKEN\n",
			"at '/secrets/existingSecretKeys': got string, want array"},
		{"a word for a number", "ingest:\n  replicas: two\n",
			"at '/ingest/replicas'"},
		{"a fraction for a whole number", "forwarderDefaults:\n  concurrency: 2.5\n",
			"at '/forwarderDefaults/concurrency'"},
		{"a map as a variable", "env:\n  LOG_LEVEL: {level: debug}\n",
			"at '/env/LOG_LEVEL': got object"},
		{"a pull policy", "image:\n  pullPolicy: always\n",
			"at '/image/pullPolicy'"},
		{"a sampler the SDK does not have", "tracing:\n  otlpEndpoint: http://otel.observability.svc:4318\n  sampler: parentbased_traceidration\n",
			"at '/tracing/sampler'"},
		// The ingest and forwarder refuse it at start: a crash loop after
		// the upgrade, where helm can refuse it first.
		{"a collector without its scheme", "tracing:\n  otlpEndpoint: otel-collector.observability.svc:4318\n",
			"at '/tracing/otlpEndpoint'"},
		// The exporter drops them: every export refused by the collector.
		{"a collector's password in its URL", "tracing:\n  otlpEndpoint: https://user:pw@otel.example.org\n",
			"at '/tracing/otlpEndpoint'"},
		{"a collector's key in the query", "tracing:\n  otlpEndpoint: https://otel.example.org/otlp?api-key=k\n",
			"at '/tracing/otlpEndpoint'"},
		{"a Service type", "ingest:\n  service:\n    type: Headless\n",
			"at '/ingest/service/type'"},
		{"a scrape interval without its unit", "serviceMonitor:\n  interval: 30\n",
			"at '/serviceMonitor/interval': got number, want string"},
		{"a label written as a number", "forwarderDefaults:\n  podLabels:\n    version: 2\n",
			"at '/forwarderDefaults/podLabels/version': got number, want string"},
		{"a disruption budget as a word", "ingest:\n  maxUnavailable: half\n",
			"at '/ingest/maxUnavailable'"},
		// The commands refuse them at start (NATS_REPLICAS 1 to 5,
		// FORWARDER_CONCURRENCY 1 to 256, STOW_PARALLEL_REQUESTS 1 to
		// 64): a crash loop, or a division by zero in the KEDA ceiling;
		// a destination's 0 became the default 16 unsaid.
		{"no JetStream replica", "nats:\n  replicas: 0\n", "at '/nats/replicas'"},
		{"more JetStream replicas than NATS allows", "nats:\n  replicas: \"7\"\n", "at '/nats/replicas'"},
		{"no worker", "forwarderDefaults:\n  concurrency: 0\n", "at '/forwarderDefaults/concurrency'"},
		{"too many workers", "forwarders:\n  - name: default\n    dicomwebURL: https://dicom.example.org/v1\n    concurrency: \"300\"\n",
			"at '/forwarders/0/concurrency'"},
		{"no request in flight", "forwarderDefaults:\n  stowParallelRequests: 0\n", "at '/forwarderDefaults/stowParallelRequests'"},
		{"a destination's 0 requests", "destinations:\n  - name: archive\n    url: https://archive.example.org/v2\n    stowParallelRequests: 0\n",
			"at '/destinations/0/stowParallelRequests'"},
		{"a destination's 65 requests", "destinations:\n  - name: archive\n    url: https://archive.example.org/v2\n    stowParallelRequests: \"65\"\n",
			"at '/destinations/0/stowParallelRequests'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, valuesFile(t, tt.yaml), tt.want)
		})
	}
}

// TestSchemaAccepts: values the chart renders correctly (every object
// decoding strictly), which the schema must not refuse: numbers written as strings (--set-string, or quoted in
// a file), a percentage of pods, variables as numbers, booleans or null,
// OpenShift's null user and group, a parent chart's global values, a
// named port, and a destination written from values.yaml's example with
// its optional fields left empty.
func TestSchemaAccepts(t *testing.T) {
	emptyFields := withDestinations(map[string]any{"name": "all"})
	ai := emptyFields["destinations"].([]any)[1].(map[string]any)
	ai["match"], ai["instanceMatch"], ai["stowParallelRequests"], ai["clientSecret"] = nil, nil, nil, nil
	ai["env"].(map[string]any)["TLS_CA_FILE"] = nil
	emptyFields["forwarders"].([]any)[0].(map[string]any)["destinations"] = nil
	tests := []struct {
		name   string
		values map[string]any
	}{
		{"numbers as strings", valuesFile(t, "ingest:\n  port: \"9090\"\n  replicas: \"3\"\n  maxUnavailable: 50%\nnats:\n  replicas: \"3\"\nforwarderDefaults:\n  concurrency: \"8\"\n  keda:\n    maxReplicaCount: \"6\"\n")},
		{"variables as numbers, booleans and null", valuesFile(t, "env:\n  OTEL_SERVICE_NAME: null\ningest:\n  env:\n    RECONCILE_ENABLED: false\nforwarderDefaults:\n  env:\n    FORWARDER_MAX_DELIVERIES: 24\n")},
		{"OpenShift's user and group", valuesFile(t, "podSecurityContext:\n  runAsUser: null\n  runAsGroup: null\n  fsGroup: null\n")},
		{"a parent chart's global values", valuesFile(t, "global:\n  imageRegistry: registry.example.org\n")},
		{"named and numbered ports", valuesFile(t, "networkPolicy:\n  egress:\n    nats:\n      ports: [4222, nats-client]\n    dnsPorts: [53, 5353]\n")},
		{"a destination's optional fields empty", emptyFields},
		{"the bounds of the counts", valuesFile(t, "nats:\n  replicas: 5\nforwarderDefaults:\n  concurrency: \"256\"\n  stowParallelRequests: 64\n")},
		{"the least of the counts", valuesFile(t, "nats:\n  replicas: \"1\"\nforwarderDefaults:\n  concurrency: 1\n  stowParallelRequests: \"1\"\n")},
		{"a sampler and its ratio", valuesFile(t, "tracing:\n  otlpEndpoint: http://otel.observability.svc:4318\n  sampler: parentbased_traceidratio\n  samplerArg: 0.1\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			render(t, tt.values)
		})
	}
}

// TestSchemaMatchesValues: the schema describes the keys values.yaml
// documents, no fewer (each render validates the defaults: a key added to
// values.yaml alone fails every test) and no more: a key left in the
// schema after its value is gone from the chart would be accepted and
// ignored again. The keys of a forwarder group are forwarderDefaults' and
// its own; a destination's are those of values.yaml's commented example.
func TestSchemaMatchesValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	resolve := func(node map[string]any) map[string]any {
		if ref, ok := node["$ref"].(string); ok {
			name, _ := strings.CutPrefix(ref, "#/definitions/")
			def, _ := schema["definitions"].(map[string]any)[name].(map[string]any)
			if def == nil {
				t.Fatalf("values.schema.json: %s resolves to nothing", ref)
			}
			return def
		}
		return node
	}
	properties := func(node map[string]any) map[string]any {
		p, _ := resolve(node)["properties"].(map[string]any)
		return p
	}
	// Kubernetes' own objects, with keys values.yaml need not show.
	kubernetes := map[string]bool{"#/definitions/peer": true, "#/definitions/egressRule": true}
	var walk func(path string, node map[string]any, value any)
	walk = func(path string, node map[string]any, value any) {
		if ref, _ := node["$ref"].(string); kubernetes[ref] {
			return
		}
		node = resolve(node)
		switch v := value.(type) {
		case map[string]any:
			props, fixed := node["properties"].(map[string]any)
			if !fixed || node["additionalProperties"] != false {
				return // a free-form map: env, labels, resources...
			}
			for k := range props {
				if _, ok := v[k]; !ok && !(path == "" && k == "global") {
					t.Errorf("values.schema.json describes %s%s, which values.yaml has not", path, k)
				}
			}
			for k, sub := range v {
				if p, ok := props[k].(map[string]any); ok {
					walk(path+k+".", p, sub)
				}
			}
		case []any:
			if items, ok := node["items"].(map[string]any); ok && len(v) > 0 {
				walk(strings.TrimSuffix(path, ".")+"[].", items, v[0])
			}
		}
	}
	values := loadChart(t).Values
	top := properties(schema)
	for k, v := range values {
		if k == "forwarders" {
			continue // below: forwarderDefaults' keys and its own
		}
		if p, ok := top[k].(map[string]any); ok {
			walk(k+".", p, v)
		}
	}
	for k := range top {
		if _, ok := values[k]; !ok && k != "global" {
			t.Errorf("values.schema.json describes %s, which values.yaml has not", k)
		}
	}

	group := properties(top["forwarders"].(map[string]any)["items"].(map[string]any))
	want := maps.Clone(properties(top["forwarderDefaults"].(map[string]any)))
	for k := range values["forwarders"].([]any)[0].(map[string]any) {
		want[k] = true
	}
	if got, want := slices.Sorted(maps.Keys(group)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, want) {
		t.Errorf("values.schema.json: a forwarder group's keys %v, want forwarderDefaults' and values.yaml's forwarders[0]'s: %v", got, want)
	}

	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, example, _ := strings.Cut(string(raw), "\ndestinations: []\n")
	example, _, _ = strings.Cut(example, "\n\n")
	documented := map[string]bool{}
	for _, line := range strings.Split(example, "\n") {
		line = strings.TrimLeft(strings.TrimPrefix(line, "#"), " -")
		if k, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") && !strings.Contains(k, " ") {
			documented[k] = true
		}
	}
	dest := properties(top["destinations"].(map[string]any)["items"].(map[string]any))
	if got, want := slices.Sorted(maps.Keys(dest)), slices.Sorted(maps.Keys(documented)); !slices.Equal(got, want) {
		t.Errorf("values.schema.json: a destination's keys %v, want those of values.yaml's commented example: %v", got, want)
	}
}
