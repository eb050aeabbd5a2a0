package chartcheck

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	appsv1 "k8s.io/api/apps/v1"
)

// TestChartSetVarsRefused: a variable the chart sets itself, put in an
// env map, would silently win over the value it comes from (ingest.env
// and the forwarders' env are applied last) or be silently ignored (env
// is applied first); the chart refuses it, naming the value to set. Empty
// too, naming the value to leave empty to leave it unset, or saying the
// chart needs it.
func TestChartSetVarsRefused(t *testing.T) {
	set := func(v map[string]any, f func(v map[string]any)) map[string]any { f(v); return v }
	groupEnv := func(k, val string) func(v map[string]any) {
		return func(v map[string]any) { v["forwarders"].([]any)[0].(map[string]any)["env"].(map[string]any)[k] = val }
	}
	twoGroups := func() map[string]any {
		return withDestinations(
			map[string]any{"name": "archive", "destinations": []any{"archive"}},
			map[string]any{"name": "ai", "destinations": []any{"ai"}, "env": map[string]any{}},
		)
	}
	tests := []struct {
		name   string
		values map[string]any
		want   string // "": rendered
	}{
		{"STOW_PARALLEL_REQUESTS in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"STOW_PARALLEL_REQUESTS": "64"}}}),
			"forwarderDefaults.env: STOW_PARALLEL_REQUESTS is set by the chart, from forwarderDefaults.stowParallelRequests"},
		{"FORWARDER_CONCURRENCY in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"FORWARDER_CONCURRENCY": "8"}}}),
			"forwarderDefaults.env: FORWARDER_CONCURRENCY is set by the chart, from forwarderDefaults.concurrency"},
		{"FORWARDER_ADDR in a group's env", set(required(), groupEnv("FORWARDER_ADDR", ":9000")),
			"forwarders[default].env: FORWARDER_ADDR is set by the chart, from forwarderDefaults.port"},
		{"DICOMWEB_URL in a group's env", set(required(), groupEnv("DICOMWEB_URL", "https://x.example.org")),
			"forwarders[default].env: DICOMWEB_URL is set by the chart, from forwarders[].dicomwebURL"},
		{"INGEST_ADDR in ingest.env", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"INGEST_ADDR": ":9000"}}}),
			"ingest.env: INGEST_ADDR is set by the chart, from ingest.port"},
		{"INGEST_ADDR in env", merged(required(), map[string]any{"env": map[string]any{"INGEST_ADDR": ":9000"}}),
			"env: INGEST_ADDR is set by the chart, from ingest.port"},
		{"NATS_URL in env", merged(required(), map[string]any{"env": map[string]any{"NATS_URL": "nats://x:4222"}}),
			"env: NATS_URL is set by the chart, from nats.url"},
		{"NATS_REPLICAS in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"NATS_REPLICAS": "1"}}}),
			"NATS_REPLICAS is set by the chart, from nats.replicas"},
		{"ORTHANC_URL in ingest.env", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"ORTHANC_URL": "http://o:8042"}}}),
			"ingest.env: ORTHANC_URL is set by the chart, from orthanc.url"},
		{"ORTHANC_SOURCE_NAME in env", merged(required(), map[string]any{"env": map[string]any{"ORTHANC_SOURCE_NAME": "x"}}),
			"ORTHANC_SOURCE_NAME is set by the chart, from orthanc.sourceName"},
		{"a secret's _FILE the chart mounts", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"INGEST_TOKEN_FILE": "/x"}}}),
			"INGEST_TOKEN_FILE is set by the chart, from the Secret's INGEST_TOKEN key"},
		{"NATS_CREDS_FILE with nats.credsSecret", merged(required(), map[string]any{"nats": map[string]any{"credsSecret": "c"}, "env": map[string]any{"NATS_CREDS_FILE": "/x"}}),
			"NATS_CREDS_FILE is set by the chart, from nats.credsSecret"},
		{"OTEL_TRACES_SAMPLER with tracing.otlpEndpoint", merged(required(), map[string]any{"tracing": map[string]any{"otlpEndpoint": "http://c:4318"}, "env": map[string]any{"OTEL_TRACES_SAMPLER": "always_on"}}),
			"OTEL_TRACES_SAMPLER is set by the chart, from tracing.sampler"},
		// The commands refuse it at start: the default sampler ignores the
		// ratio and traces every study.
		{"a ratio with the default sampler", merged(required(), map[string]any{"tracing": map[string]any{"otlpEndpoint": "http://c:4318", "samplerArg": "0.1"}}),
			"tracing.samplerArg (0.1) is a ratio only tracing.sampler traceidratio or parentbased_traceidratio reads"},
		{"a ratio with always_on", merged(required(), map[string]any{"tracing": map[string]any{"otlpEndpoint": "http://c:4318", "sampler": "always_on", "samplerArg": 0.25}}),
			"tracing.sampler is \"always_on\""},
		{"DESTINATIONS in forwarderDefaults.env", set(twoGroups(), func(v map[string]any) {
			v["forwarderDefaults"] = map[string]any{"env": map[string]any{"DESTINATIONS": "archive"}}
		}), "DESTINATIONS is set by the chart, from destinations"},
		{"FORWARDER_DESTINATIONS in a group's env", set(twoGroups(), func(v map[string]any) {
			v["forwarders"].([]any)[1].(map[string]any)["env"] = map[string]any{"FORWARDER_DESTINATIONS": "ai,archive"}
		}), "forwarders[ai].env: FORWARDER_DESTINATIONS is set by the chart, from forwarders[].destinations"},
		{"a destination's variable in forwarderDefaults.env", set(twoGroups(), func(v map[string]any) {
			v["forwarderDefaults"] = map[string]any{"env": map[string]any{"DESTINATION_AI_OAUTH_CLIENT_ID": "x"}}
		}), "DESTINATION_AI_OAUTH_CLIENT_ID is set by the chart, from destinations[ai]"},
		// Empty, as one leaves any other variable unset: it would not be
		// (env is applied before the chart's value; the others after would
		// drop one the chart needs). The message says what to empty
		// instead, or that the chart needs it; it said "set that instead".
		{"ORTHANC_USERNAME empty in env", merged(required(), map[string]any{"env": map[string]any{"ORTHANC_USERNAME": ""}}),
			"env: ORTHANC_USERNAME is set by the chart, from orthanc.username: an empty value here does not leave it unset; leave orthanc.username empty instead"},
		{"ORTHANC_SOURCE_NAME without a value in ingest.env", valuesFile(t, "ingest:\n  env:\n    ORTHANC_SOURCE_NAME:\n"),
			"ingest.env: ORTHANC_SOURCE_NAME is set by the chart, from orthanc.sourceName: an empty value here does not leave it unset; leave orthanc.sourceName empty instead"},
		{"NATS_URL empty in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"NATS_URL": ""}}}),
			"forwarderDefaults.env: NATS_URL is set by the chart, from nats.url, which it needs: it cannot be left unset; take it out of forwarderDefaults.env"},
		{"the ingest's port empty in ingest.env", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"INGEST_ADDR": ""}}}),
			"ingest.env: INGEST_ADDR is set by the chart, from ingest.port, which it needs: it cannot be left unset"},
		{"NATS_CREDS_FILE empty with nats.credsSecret", merged(required(), map[string]any{"nats": map[string]any{"credsSecret": "c"}, "env": map[string]any{"NATS_CREDS_FILE": ""}}),
			"env: NATS_CREDS_FILE is set by the chart, from nats.credsSecret: an empty value here does not leave it unset; leave nats.credsSecret empty instead"},
		{"a secret's _FILE empty in ingest.env", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"INGEST_TOKEN_FILE": ""}}}),
			"ingest.env: INGEST_TOKEN_FILE is set by the chart, from the Secret's INGEST_TOKEN key (secrets, mounted as a file): an empty value here does not leave it unset; take the INGEST_TOKEN key out of the Secret instead"},
		{"orthanc.username empty, as that message says", merged(required(), map[string]any{"orthanc": map[string]any{"username": ""}}), ""},
		// The processes refuse to start with the user alone.
		{"orthanc.username without ORTHANC_PASSWORD", merged(required(), map[string]any{"secrets": map[string]any{"values": map[string]any{"ORTHANC_PASSWORD": ""}}}),
			"orthanc.username is set without its password: add ORTHANC_PASSWORD to secrets"},
		{"orthanc.username, ORTHANC_PASSWORD from the operator's Secret", merged(required(), map[string]any{
			"secrets": map[string]any{"values": map[string]any{"ORTHANC_PASSWORD": ""}},
			"ingest":  map[string]any{"env": map[string]any{"ORTHANC_PASSWORD": map[string]any{"valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "orthanc", "key": "password"}}}}},
		}), ""},
		// Set by nothing else: these pass.
		{"NATS_CREDS_FILE without nats.credsSecret", merged(required(), map[string]any{"env": map[string]any{"NATS_CREDS_FILE": "/etc/nats/nats.creds"}}), ""},
		{"a collector in env without tracing.otlpEndpoint", merged(required(), map[string]any{"env": map[string]any{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}}), ""},
		// `samplerArg:` written without a value is unset, not a ratio.
		{"an empty samplerArg", merged(required(), map[string]any{"tracing": map[string]any{"otlpEndpoint": "http://c:4318", "samplerArg": nil}}), ""},
		{"a secret's _FILE the Secret does not hold", merged(required(), map[string]any{"env": map[string]any{"NATS_PASSWORD_FILE": "/etc/nats/password"}}), ""},
		{"tuning in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"FORWARDER_ACK_WAIT": "2m", "STOW_MAX_BYTES": "100000000"}}}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
		})
	}
}

// TestEveryChartSetVarRefused: every variable a render sets that no env
// map gave is the chart's own, and is refused in the env maps of the
// component it reaches; so a variable the chart comes to set is covered
// without a list to keep up to date here.
func TestEveryChartSetVarRefused(t *testing.T) {
	configs := map[string]map[string]any{
		"one destination": merged(required(), map[string]any{
			"nats":    map[string]any{"credsSecret": "stowline-nats"},
			"tracing": map[string]any{"otlpEndpoint": "http://otel-collector.observability.svc:4318", "sampler": "parentbased_traceidratio", "samplerArg": "0.5"},
		}),
		"destinations": withDestinations(
			map[string]any{"name": "archive", "destinations": []any{"archive"}},
			map[string]any{"name": "ai", "destinations": []any{"ai"}},
		),
	}
	for name, values := range configs {
		t.Run(name, func(t *testing.T) {
			given := map[string]bool{}
			for _, env := range append(envMaps(values), envMaps(loadChart(t).Values)...) { // and the chart's defaults
				for k := range env {
					given[k] = true
				}
			}
			chartSet := map[string][]string{} // variable: the env maps to try it in
			for _, d := range of[*appsv1.Deployment](render(t, values)) {
				where := "forwarderDefaults"
				if component(d.Labels) == "ingest" {
					where = "ingest"
				}
				for k := range envOf(d) {
					if !given[k] && !slices.Contains(chartSet[k], where) {
						chartSet[k] = append(chartSet[k], where)
					}
				}
			}
			if len(chartSet) < 10 {
				t.Fatalf("only %d variables set by the chart: %v", len(chartSet), chartSet)
			}
			for _, k := range slices.Sorted(maps.Keys(chartSet)) {
				for _, where := range append(chartSet[k], "") {
					v := merged(values, nil)
					if where == "" {
						v["env"] = map[string]any{k: "x"}
						where = "env"
					} else {
						v[where] = map[string]any{"env": map[string]any{k: "x"}}
						where += ".env"
					}
					if _, err := renderFiles(t, v); err == nil || !strings.Contains(err.Error(), k+" is set by the chart") {
						t.Errorf("%s in %s: render error %v, want it refused", k, where, err)
					}
				}
			}
		})
	}
}

// envMaps are the env maps of values: env, ingest.env, forwarderDefaults.env,
// each group's and each destination's.
func envMaps(values map[string]any) []map[string]any {
	var out []map[string]any
	add := func(m any) {
		if mm, ok := m.(map[string]any); ok {
			if env, ok := mm["env"].(map[string]any); ok {
				out = append(out, env)
			}
		}
	}
	add(values)
	add(values["ingest"])
	add(values["forwarderDefaults"])
	for _, key := range []string{"forwarders", "destinations"} {
		list, _ := values[key].([]any)
		for _, e := range list {
			add(e)
		}
	}
	return out
}

// TestStreamSettingsOnlyInSharedEnv: EVENTS_RETENTION and
// EVENTS_DEDUPE_WINDOW set the event stream, which the ingest and every
// forwarder create or update to their own values when they start. Given
// to some of them only (ingest.env, forwarderDefaults.env, a group's env),
// each restart would flip the stream between two values, and the shorter
// retention removes at once the events older than it, waiting or not.
// The chart takes them in env only.
func TestStreamSettingsOnlyInSharedEnv(t *testing.T) {
	twoGroups := func(groupEnv map[string]any) map[string]any {
		return withDestinations(
			map[string]any{"name": "archive", "destinations": []any{"archive"}},
			map[string]any{"name": "ai", "destinations": []any{"ai"}, "env": groupEnv},
		)
	}
	tests := []struct {
		name   string
		values map[string]any
		want   string // "": rendered
	}{
		{"EVENTS_RETENTION in ingest.env", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"EVENTS_RETENTION": "720h"}}}),
			"ingest.env: EVENTS_RETENTION sets the event stream"},
		{"EVENTS_RETENTION in forwarderDefaults.env", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"EVENTS_RETENTION": "720h"}}}),
			"forwarderDefaults.env: EVENTS_RETENTION sets the event stream"},
		{"EVENTS_DEDUPE_WINDOW in a group's env", twoGroups(map[string]any{"EVENTS_DEDUPE_WINDOW": "1h"}),
			"forwarders[ai].env: EVENTS_DEDUPE_WINDOW sets the event stream"},
		{"EVENTS_RETENTION in a group's env", twoGroups(map[string]any{"EVENTS_RETENTION": "720h"}),
			"forwarders[ai].env: EVENTS_RETENTION sets the event stream"},
		{"both in env", merged(required(), map[string]any{"env": map[string]any{"EVENTS_RETENTION": "720h", "EVENTS_DEDUPE_WINDOW": "12h"}}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
		})
	}
}

// TestSecretValuesMustBeStrings: Helm reads an unquoted number in
// values.yaml as a float, so a numeric password (ORTHANC_PASSWORD:
// 20240612093015123) would reach the Secret as "2.0240612093015124e+16":
// a credential that is silently not the one configured in Orthanc. The
// chart refuses a secret value that is not a string: values.schema.json
// first (TestSchemaRefuses), and the templates too, without it (helm
// install --skip-schema-validation), which this checks.
func TestSecretValuesMustBeStrings(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // "": rendered
	}{
		{"a number", "secrets:\n  values:\n    ORTHANC_PASSWORD: 20240612093015123\n",
			"secrets.values.ORTHANC_PASSWORD: write the value in quotes"},
		{"a boolean", "secrets:\n  values:\n    NATS_PASSWORD: true\n",
			"secrets.values.NATS_PASSWORD: write the value in quotes"},
		{"a quoted number", "secrets:\n  values:\n    ORTHANC_PASSWORD: \"20240612093015123\"\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderErrorWithoutSchema(t, valuesFile(t, tt.yaml), tt.want)
		})
	}
}

// TestEnvNumbersAsWritten: Helm reads an unquoted number in a values file
// as a float, which printed as it is turns 104857600 into "1.048576e+08"
// (the forwarder refuses it as no size, naming a value nobody wrote) and
// a 21-digit OAuth client ID into another number. Whole numbers reach the
// container as written; one too long for a float to hold exactly is
// refused, naming the variable.
func TestEnvNumbersAsWritten(t *testing.T) {
	tests := []struct {
		name, yaml string
		variable   string // rendered into the forwarder's env
		want       string // its value; or the render error with variable ""
	}{
		{"a size in bytes", "forwarderDefaults:\n  env:\n    STOW_MAX_BYTES: 104857600\n", "STOW_MAX_BYTES", "104857600"},
		{"a million", "forwarderDefaults:\n  env:\n    STOW_MAX_BYTES_PER_SECOND: 1000000\n", "STOW_MAX_BYTES_PER_SECOND", "1000000"},
		{"a fraction", "tracing:\n  otlpEndpoint: http://otel.observability.svc:4318\n  sampler: parentbased_traceidratio\n  samplerArg: 0.1\n", "OTEL_TRACES_SAMPLER_ARG", "0.1"},
		{"a quoted number", "forwarderDefaults:\n  env:\n    STOW_MAX_BYTES: \"104857600\"\n", "STOW_MAX_BYTES", "104857600"},
		{"a long client ID", "forwarders:\n  - name: default\n    dicomwebURL: https://dicom.example.org/v1\n    env:\n      OAUTH_TOKEN_URL: https://login.example.org/token\n      OAUTH_CLIENT_ID: 123456789012345678901\n",
			"", "OAUTH_CLIENT_ID: write the value in quotes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := valuesFile(t, tt.yaml)
			if tt.variable == "" {
				checkRenderError(t, values, tt.want)
				return
			}
			d := forwarderDeployment(t, render(t, values), "default")
			if got := envOf(d)[tt.variable]; got != tt.want {
				t.Errorf("%s = %q, want %q", tt.variable, got, tt.want)
			}
		})
	}
}

// TestEnvEmptyLeftUnset: a variable written without a value (`KEY:`,
// YAML's null) in an env map reached the container as the text "<nil>":
// OTEL_SERVICE_NAME named the service "<nil>", and a duration or a size
// was refused as "<nil>", which nobody wrote. Left empty, as set to "",
// it is left unset and the command's default applies.
func TestEnvEmptyLeftUnset(t *testing.T) {
	inMaps := valuesFile(t, "env:\n  OTEL_SERVICE_NAME:\ningest:\n  env:\n    RECONCILE_POLL_INTERVAL:\nforwarderDefaults:\n  env:\n    FORWARDER_MAX_DELIVERIES:\n")
	destinations := withDestinations(map[string]any{"name": "all", "env": map[string]any{"FORWARDER_ACK_WAIT": nil}})
	destinations["destinations"].([]any)[1].(map[string]any)["env"].(map[string]any)["STOW_MAX_BYTES"] = nil
	for name, values := range map[string]map[string]any{"env maps": inMaps, "a group's and a destination's env": destinations} {
		t.Run(name, func(t *testing.T) {
			for _, d := range of[*appsv1.Deployment](render(t, values)) {
				for _, e := range d.Spec.Template.Spec.Containers[0].Env {
					if e.Value == "<nil>" || e.Value == "" {
						t.Errorf("deployment %s: %s = %q, want it left unset", d.Name, e.Name, e.Value)
					}
				}
			}
		})
	}
}

// TestIngestGraceCoversPreStop: the kubelet counts the preStop sleep in
// terminationGracePeriodSeconds; a longer sleep (a load balancer's
// deregistration delay) without a longer grace had the ingest killed in
// the middle of its own shutdown grace, app.IngestShutdownGrace.
func TestIngestGraceCoversPreStop(t *testing.T) {
	grace := int((readGoFacts(t).ingestShutdownGrace + ingestSettle).Seconds())
	ingest := func(sleep, termination int) map[string]any {
		return merged(required(), map[string]any{"ingest": map[string]any{"preStopSleepSeconds": sleep, "terminationGracePeriodSeconds": termination}})
	}
	checkRenderError(t, ingest(15, 15+grace), fmt.Sprintf("ingest.terminationGracePeriodSeconds %d: want more than preStopSleepSeconds 15", 15+grace))
	checkRenderError(t, ingest(0, grace), "want more than preStopSleepSeconds 0")
	checkRenderError(t, ingest(15, 15+grace+1), "")
	checkRenderError(t, ingest(0, grace+1), "")
}

// ingestSettle is what the ingest takes after its grace: draining its
// NATS connection (up to 5 s) and flushing its traces (up to 5 s). The
// chart allowed none: a stop could be killed mid-drain.
const ingestSettle = 10 * time.Second

// TestIngestGraceCoversPublishTimeout: a webhook request in flight at a
// stop waits up to INGEST_PUBLISH_TIMEOUT for JetStream before it is
// answered; the ingest's stop grace grows with it, so the chart wants a
// terminationGracePeriodSeconds that covers the value set, in ingest.env
// or env. It refused 65 s or less whatever the value, even 5s.
func TestIngestGraceCoversPublishTimeout(t *testing.T) {
	facts := readGoFacts(t)
	if g := facts.ingestGrace(facts.maxIngestPublishTimeout); g > facts.ingestMaxShutdownGrace {
		t.Errorf("with the longest publish timeout the ingest takes %v to stop, more than app.IngestMaxShutdownGrace %v", g, facts.ingestMaxShutdownGrace)
	}
	const sleep = 5
	ingest := func(where, timeout string, termination int) map[string]any {
		values := merged(required(), map[string]any{"ingest": map[string]any{"preStopSleepSeconds": sleep, "terminationGracePeriodSeconds": termination}})
		if where == "ingest.env" {
			values["ingest"].(map[string]any)["env"] = map[string]any{"INGEST_PUBLISH_TIMEOUT": timeout}
		} else if where == "env" {
			values["env"] = map[string]any{"INGEST_PUBLISH_TIMEOUT": timeout}
		}
		return values
	}
	checkRenderError(t, ingest("", "", sleep+int((facts.ingestShutdownGrace+ingestSettle).Seconds())+1), "")
	for _, where := range []string{"ingest.env", "env"} {
		// Written without a value, or empty: left unset, the default.
		for _, unset := range []any{nil, ""} {
			values := ingest(where, "", sleep+int((facts.ingestShutdownGrace+ingestSettle).Seconds())+1)
			if where == "env" {
				values["env"].(map[string]any)["INGEST_PUBLISH_TIMEOUT"] = unset
			} else {
				values["ingest"].(map[string]any)["env"].(map[string]any)["INGEST_PUBLISH_TIMEOUT"] = unset
			}
			checkRenderError(t, values, "")
		}
		for _, timeout := range []string{"5s", "500ms", "13s", "13500ms", "14s", "20s", "40s", "0.5m", "50s", "49s999ms", "1.5s", "+20s"} {
			d, err := time.ParseDuration(timeout)
			if err != nil {
				t.Fatal(err)
			}
			grace := facts.ingestGrace(d)
			// The shortest whole number of seconds longer than the
			// preStop sleep and the grace, and the one below it.
			least := int((sleep*time.Second+grace+ingestSettle)/time.Second) + 1
			checkRenderError(t, ingest(where, timeout, least), "")
			checkRenderError(t, ingest(where, timeout, least-1),
				fmt.Sprintf("ingest.terminationGracePeriodSeconds %d: want more than preStopSleepSeconds %d + the ingest's %v s shutdown grace", least-1, sleep, grace.Seconds()))
		}
		// Values the command would refuse are refused here, before a
		// rollout whose pods would not start.
		for timeout, want := range map[string]string{
			"5":     `INGEST_PUBLISH_TIMEOUT "5": want a Go duration`,
			"fast":  `INGEST_PUBLISH_TIMEOUT "fast": want a Go duration`,
			"5 s":   `INGEST_PUBLISH_TIMEOUT "5 s": want a Go duration`,
			"1m30s": `INGEST_PUBLISH_TIMEOUT "1m30s": want 100ms to 50s`,
			"50ms":  `INGEST_PUBLISH_TIMEOUT "50ms": want 100ms to 50s`,
			"0":     `INGEST_PUBLISH_TIMEOUT "0": want 100ms to 50s`,
			// Below 100ms however it rounds.
			"99.5ms": `INGEST_PUBLISH_TIMEOUT "99.5ms": want 100ms to 50s`,
		} {
			checkRenderError(t, ingest(where, timeout, 600), want)
		}
	}
}

// TestUnreadSecretKeysRefused: a Secret key no container reads, a
// misspelt ORTHANC_PASWORD or the client secret of a destination not
// declared, was silently mounted nowhere: Orthanc then answered 401, or
// the token endpoint refused the client, far from the cause. The chart
// refuses it, listing what the containers read.
func TestUnreadSecretKeysRefused(t *testing.T) {
	existing := func(keys ...any) map[string]any {
		return map[string]any{"secrets": map[string]any{"existingSecret": "mine", "existingSecretKeys": keys}}
	}
	values := func(k, v string) map[string]any {
		return map[string]any{"secrets": map[string]any{"values": map[string]any{k: v}}}
	}
	set := func(v map[string]any, f func(v map[string]any)) map[string]any { f(v); return v }
	tests := []struct {
		name   string
		values map[string]any
		want   string // "": rendered
	}{
		{"a misspelt key in values", merged(required(), values("ORTHANC_PASWORD", "x")), "secrets: ORTHANC_PASWORD is no secret a stowline container reads"},
		{"a misspelt key in an existing Secret", merged(required(), existing("INGEST_TOKEN", "ORTHANC_PASSWORD", "OAUTH_CLIENT_SECRTE")), "secrets: OAUTH_CLIENT_SECRTE is no secret"},
		{"an undeclared destination's", set(withDestinations(map[string]any{"name": "all"}), func(v map[string]any) {
			v["secrets"].(map[string]any)["values"].(map[string]any)["DESTINATION_PACS_OAUTH_CLIENT_SECRET"] = "x"
		}), "secrets: DESTINATION_PACS_OAUTH_CLIENT_SECRET is no secret"},
		{"a source's password", merged(required(), map[string]any{
			"orthanc": map[string]any{"url": "", "username": "", "sourceName": ""},
			"env":     map[string]any{"ORTHANC_SOURCES": "pacs-2", "ORTHANC_PACS_2_URL": "http://orthanc-2.pacs.svc:8042"},
			"secrets": map[string]any{"values": map[string]any{"ORTHANC_PASSWORD": "", "ORTHANC_PACS_2_PASSWORD": "x"}},
		}), ""},
		{"every key the commands read", merged(required(), existing("INGEST_TOKEN", "INGEST_TOKEN_PREVIOUS", "INGEST_HMAC_SECRET", "ADMIN_TOKEN", "ORTHANC_PASSWORD", "NATS_PASSWORD", "OAUTH_CLIENT_SECRET")), ""},
		{"a destination's", withDestinations(map[string]any{"name": "all"}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
		})
	}
}

// TestQuotedFlagsRefused: a switch written "false" (quoted, or set with
// helm's --set-string) is a non-empty string, which a template's if takes
// as true: networkPolicy.enabled: "false" kept the
// policies, keda.enabled: "false" rendered a ScaledObject. The chart
// refuses a switch that is not a boolean: values.schema.json first
// (TestSchemaRefuses), and the templates too, without it (helm install
// --skip-schema-validation), which this checks.
func TestQuotedFlagsRefused(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // "": rendered
	}{
		{"networkPolicy.enabled quoted", "networkPolicy:\n  enabled: \"false\"\n", `networkPolicy.enabled: write true or false without quotes: Helm read the string "false", which the chart would take as true`},
		{"keda.enabled quoted", "keda:\n  enabled: \"false\"\n", "keda.enabled: write true or false without quotes"},
		{"egress quoted", "networkPolicy:\n  egress:\n    enabled: \"no\"\n", "networkPolicy.egress.enabled: write true or false"},
		{"serviceAccount.create quoted", "serviceAccount:\n  create: \"true\"\n", "serviceAccount.create: write true or false"},
		{"booleans", "networkPolicy:\n  enabled: false\nkeda:\n  enabled: false\nserviceMonitor:\n  enabled: true\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderErrorWithoutSchema(t, valuesFile(t, tt.yaml), tt.want)
		})
	}
}

// valuesFile reads yaml as Helm reads a values file, over the required
// values.
func valuesFile(t *testing.T, yaml string) map[string]any {
	t.Helper()
	over, err := common.ReadValues([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return merged(required(), over.AsMap())
}

// TestForwarderGraceCoversShutdownGrace: at a stop a forwarder gives the
// studies in flight FORWARDER_SHUTDOWN_GRACE, its HTTP server
// app.HTTPShutdownGrace alongside. The chart wants each group's
// terminationGracePeriodSeconds above both, from wherever the group's env
// takes the variable, and refuses a value the forwarder would refuse.
// It checked nothing: a longer grace was cut at 50 s.
func TestForwarderGraceCoversShutdownGrace(t *testing.T) {
	facts := readGoFacts(t)
	group := func(where, grace string, termination int) map[string]any {
		values := required()
		fwd := maps.Clone(values["forwarders"].([]any)[0].(map[string]any))
		fwd["env"] = maps.Clone(fwd["env"].(map[string]any))
		fwd["terminationGracePeriodSeconds"] = termination
		switch where {
		case "forwarderDefaults.env":
			values["forwarderDefaults"] = map[string]any{"env": map[string]any{"FORWARDER_SHUTDOWN_GRACE": grace}}
		case "forwarders[].env":
			fwd["env"].(map[string]any)["FORWARDER_SHUTDOWN_GRACE"] = grace
		}
		values["forwarders"] = []any{fwd}
		return values
	}
	// The grace and its 15 s, in whole seconds: 45 fits the default (as
	// the docs once said to set).
	least := func(grace time.Duration) int {
		return int(math.Ceil((grace + facts.httpShutdownGrace).Seconds()))
	}
	checkRenderError(t, group("", "", least(facts.forwarderShutdownGrace)), "")
	checkRenderError(t, group("", "", least(facts.forwarderShutdownGrace)-1),
		fmt.Sprintf("forwarders[default].terminationGracePeriodSeconds %d: want at least the forwarder's %v s shutdown grace", least(facts.forwarderShutdownGrace)-1, (facts.forwarderShutdownGrace+facts.httpShutdownGrace).Seconds()))
	for _, where := range []string{"forwarderDefaults.env", "forwarders[].env"} {
		t.Run(where, func(t *testing.T) {
			for _, grace := range []string{"1s", "30s", "2m", "90s", "1m30s", "10m", "1h", "2.5s"} {
				d, err := time.ParseDuration(grace)
				if err != nil {
					t.Fatal(err)
				}
				n := least(d)
				// Rendered, every Deployment is checked against the grace set.
				checkRelease(t, render(t, group(where, grace, n)))
				checkRenderError(t, group(where, grace, n-1),
					fmt.Sprintf("forwarders[default].terminationGracePeriodSeconds %d: want at least the forwarder's %v s shutdown grace (FORWARDER_SHUTDOWN_GRACE %s", n-1, (d+facts.httpShutdownGrace).Seconds(), grace))
			}
			// Empty: left unset, the default.
			checkRenderError(t, group(where, "", least(facts.forwarderShutdownGrace)), "")
			for grace, want := range map[string]string{
				"30":    `FORWARDER_SHUTDOWN_GRACE "30": want a Go duration`,
				"soon":  `FORWARDER_SHUTDOWN_GRACE "soon": want a Go duration`,
				"0":     `FORWARDER_SHUTDOWN_GRACE "0": want 1s to 1h`,
				"500ms": `FORWARDER_SHUTDOWN_GRACE "500ms": want 1s to 1h`,
				"61m":   `FORWARDER_SHUTDOWN_GRACE "61m": want 1s to 1h`,
			} {
				checkRenderError(t, group(where, grace, 4000), want)
			}
		})
	}
	if facts.maxForwarderShutdownGrace != time.Hour {
		t.Errorf("config.MaxForwarderShutdownGrace is %v; the chart refuses FORWARDER_SHUTDOWN_GRACE above 1h", facts.maxForwarderShutdownGrace)
	}
}

// TestEnvValueFromSecret: the env maps took literal values only, so a
// tracing vendor's key in OTEL_EXPORTER_OTLP_HEADERS was written in clear
// in the Deployments and the release. A {valueFrom: {secretKeyRef}} entry
// renders as Kubernetes' own reference; the variables the chart reads
// itself cannot come from a Secret, and any other form is refused.
func TestEnvValueFromSecret(t *testing.T) {
	ref := func(name, key string) map[string]any {
		return map[string]any{"valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": name, "key": key}}}
	}
	values := merged(required(), map[string]any{
		"env":    map[string]any{"OTEL_EXPORTER_OTLP_HEADERS": ref("otel-vendor", "headers")},
		"ingest": map[string]any{"env": map[string]any{"OTEL_EXPORTER_OTLP_TRACES_HEADERS": ref("otel-vendor", "traces-headers")}},
	})
	objs := render(t, values)
	checkRelease(t, objs)
	for _, d := range of[*appsv1.Deployment](objs) {
		want := map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "otel-vendor/headers"}
		if component(d.Labels) == "ingest" {
			want["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = "otel-vendor/traces-headers"
		}
		got := map[string]string{}
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				got[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("deployment %s: variables from Secrets %v, want %v", d.Name, got, want)
		}
	}

	tests := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"publish timeout", merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{"INGEST_PUBLISH_TIMEOUT": ref("s", "k")}}}),
			"ingest.env: INGEST_PUBLISH_TIMEOUT: the chart reads this variable"},
		{"shutdown grace", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"FORWARDER_SHUTDOWN_GRACE": ref("s", "k")}}}),
			"forwarderDefaults.env: FORWARDER_SHUTDOWN_GRACE: the chart reads this variable"},
		{"a source's URL", merged(required(), map[string]any{"env": map[string]any{"ORTHANC_PACS_URL": ref("s", "k")}}),
			"env: ORTHANC_PACS_URL: the chart reads this variable"},
		{"listener certificate", merged(required(), map[string]any{"env": map[string]any{"TLS_LISTEN_CERT_FILE": ref("s", "k")}}),
			"env: TLS_LISTEN_CERT_FILE: the chart reads this variable"},
		// The network policy opens the token endpoint's port: it read
		// the reference as a URL and failed to render, naming nothing.
		{"token endpoint", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"OAUTH_TOKEN_URL": ref("s", "k")}}}),
			"forwarderDefaults.env: OAUTH_TOKEN_URL: the chart reads this variable"},
		{"issuer", merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"OAUTH_ISSUER_URL": ref("s", "k")}}}),
			"forwarderDefaults.env: OAUTH_ISSUER_URL: the chart reads this variable"},
		{"set by the chart", merged(required(), map[string]any{"env": map[string]any{"NATS_URL": ref("s", "k")}}),
			"NATS_URL is set by the chart"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
		})
	}
	// Other forms: the schema refuses them, and without it the templates.
	for name, v := range map[string]any{
		"configMapKeyRef":    map[string]any{"valueFrom": map[string]any{"configMapKeyRef": map[string]any{"name": "c", "key": "k"}}},
		"without valueFrom":  map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}},
		"without a key":      map[string]any{"valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s"}}},
		"valueFrom a string": map[string]any{"valueFrom": "s"},
		"destination's env":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			if v == nil {
				values := withDestinations(map[string]any{"name": "all"})
				values["destinations"].([]any)[1].(map[string]any)["env"].(map[string]any)["OAUTH_SCOPES"] = ref("s", "k")
				checkRenderError(t, values, "/destinations/1/env/OAUTH_SCOPES")
				return
			}
			values := merged(required(), map[string]any{"env": map[string]any{"OTEL_EXPORTER_OTLP_HEADERS": v}})
			checkRenderError(t, values, "/env/OTEL_EXPORTER_OTLP_HEADERS")
			checkRenderErrorWithoutSchema(t, values, "env: OTEL_EXPORTER_OTLP_HEADERS: a variable from a Secret is {valueFrom: {secretKeyRef: {name: SECRET, key: KEY}}}")
		})
	}
}

// TestSecretsRefusedInEnvMaps: a stowline secret (the code's
// secret:"true" variables, read from internal/config) written in an env
// map was rendered as a literal value in the Deployments, readable by
// anyone who can read those. The chart refuses it in every env map,
// naming the variable and `secrets`; from a Secret ({valueFrom}) or empty
// (nothing rendered) it passes.
func TestSecretsRefusedInEnvMaps(t *testing.T) {
	src := readGoFacts(t)
	var names []string
	for _, v := range src.secretVars {
		names = append(names, strings.ReplaceAll(v, "<NAME>", "PACS_2"))
	}
	// A destination's secrets, as DESTINATION_<NAME>_ + the variable.
	for _, v := range slices.Sorted(maps.Keys(src.destinationVars)) {
		if src.destinationVars[v] {
			names = append(names, "DESTINATION_ARCHIVE_"+v)
		}
	}
	for _, want := range []string{"ADMIN_TOKEN", "NATS_PASSWORD", "ORTHANC_PACS_2_PASSWORD", "DESTINATION_ARCHIVE_OAUTH_CLIENT_SECRET"} {
		if !slices.Contains(names, want) {
			t.Fatalf("secret variables read from internal/config %v lack %s", names, want)
		}
	}
	ref := map[string]any{"valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}}}
	in := map[string]func(k string, v any) map[string]any{
		"env": func(k string, v any) map[string]any { return map[string]any{"env": map[string]any{k: v}} },
		"ingest.env": func(k string, v any) map[string]any {
			return map[string]any{"ingest": map[string]any{"env": map[string]any{k: v}}}
		},
		"forwarderDefaults.env": func(k string, v any) map[string]any {
			return map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{k: v}}}
		},
		"forwarders[default].env": func(k string, v any) map[string]any {
			values := required()
			values["forwarders"].([]any)[0].(map[string]any)["env"].(map[string]any)[k] = v
			return values
		},
	}
	for _, where := range slices.Sorted(maps.Keys(in)) {
		for _, k := range names {
			values := func(v any) map[string]any { return merged(required(), in[where](k, v)) }
			// From a Secret, the other role's secret is refused as
			// any of its variables (TestOtherRoleVarsRefused).
			fromRef := ""
			if otherRole(where, k) {
				fromRef = where + ": " + k + " is read by the "
			}
			t.Run(where+"/"+k, func(t *testing.T) {
				checkRenderError(t, values("x"), where+": "+k+" is a secret")
				checkRenderError(t, values(12345), where+": "+k+" is a secret")
				checkRenderError(t, values(ref), fromRef)
				checkRenderError(t, values(""), "")
			})
		}
	}
	// destinations[].env: the destination's secrets, without the prefix.
	for _, k := range slices.Sorted(maps.Keys(src.destinationVars)) {
		if !src.destinationVars[k] {
			continue
		}
		values := withDestinations(map[string]any{"name": "all"})
		values["destinations"].([]any)[1].(map[string]any)["env"].(map[string]any)[k] = "x"
		checkRenderError(t, values, "destinations[ai].env: "+k+": give the variable without the prefix")
	}
}

// otherRole reports whether the secret variable k belongs to the role the
// env map where does not configure.
func otherRole(where, k string) bool {
	switch where {
	case "ingest.env":
		return strings.HasPrefix(k, "OAUTH_") || strings.HasPrefix(k, "DESTINATION_")
	case "forwarderDefaults.env", "forwarders[default].env":
		return strings.HasPrefix(k, "INGEST_")
	}
	return false
}

// TestOtherRoleVarsRefused: a variable only the other role reads, in a
// role's own env map, reached no process that reads it (a forwarder's
// PRIORITY_RULE left every stat study routine, an ingest's
// FORWARD_WINDOWS limited no lane), and the process said nothing: the
// chart refuses it there, naming the map to use; in env, which every pod
// gets, it passes. The variables come from internal/config's structs.
func TestOtherRoleVarsRefused(t *testing.T) {
	ingestOnly, err := structEnvVars("internal/config", "Ingest", "WebhookSecurity", "Priority", "Reconcile")
	if err != nil {
		t.Fatal(err)
	}
	forwarderAll, err := structEnvVars("internal/config", "Forwarder", "Lanes", "Destinations", "Destination", "DestinationAuth", "Deidentify", "TLSFiles")
	if err != nil {
		t.Fatal(err)
	}
	shared, err := structEnvVars("internal/config", "Log", "NATS", "NATSAuth", "Orthanc", "Admin", "ListenTLS")
	if err != nil {
		t.Fatal(err)
	}
	// Read by a cloud SDK or the Go runtime as well: a pod may carry
	// them for other reasons.
	sdk := regexp.MustCompile(`^(AZURE_|GOOGLE_|GCE_|AWS_|TZ$)`)
	var forwarderOnly []string
	for k := range forwarderAll {
		if _, both := shared[k]; !both && !sdk.MatchString(k) && !strings.Contains(k, "<") {
			forwarderOnly = append(forwarderOnly, k)
		}
	}
	slices.Sort(forwarderOnly)
	for _, want := range []string{"FORWARD_WINDOWS", "STOW_PARALLEL_REQUESTS", "OAUTH_TOKEN_URL", "DEADLETTER_RETENTION"} {
		if !slices.Contains(forwarderOnly, want) {
			t.Fatalf("forwarder variables read from internal/config %v lack %s", forwarderOnly, want)
		}
	}
	for _, want := range []string{"PRIORITY_RULE", "RECONCILE_POLL_INTERVAL", "INGEST_RATE_LIMIT"} {
		if _, ok := ingestOnly[want]; !ok {
			t.Fatalf("ingest variables read from internal/config %v lack %s", ingestOnly, want)
		}
	}
	inIngest := func(k string) map[string]any {
		return merged(required(), map[string]any{"ingest": map[string]any{"env": map[string]any{k: "x"}}})
	}
	inForwarders := func(k string) map[string]any {
		return merged(required(), map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{k: "x"}}})
	}
	inEnv := func(k string) map[string]any {
		return merged(required(), map[string]any{"env": map[string]any{k: "x"}})
	}
	for _, k := range slices.Sorted(maps.Keys(ingestOnly)) {
		if ingestOnly[k] {
			continue // a secret: refused everywhere as a literal (TestSecretsRefusedInEnvMaps)
		}
		t.Run("ingest/"+k, func(t *testing.T) {
			checkRenderError(t, inForwarders(k), "forwarderDefaults.env: "+k+" is read by the ingest alone, not by the pods forwarderDefaults.env configures: set it in ingest.env")
			_, err := renderFiles(t, inIngest(k))
			if err != nil && strings.Contains(err.Error(), "alone, not by the pods") {
				t.Errorf("in ingest.env: %v", err)
			}
		})
	}
	for _, k := range forwarderOnly {
		if forwarderAll[k] {
			continue // a secret
		}
		t.Run("forwarder/"+k, func(t *testing.T) {
			checkRenderError(t, inIngest(k), "ingest.env: "+k+" is read by the forwarders alone, not by the pods ingest.env configures: set it in forwarderDefaults.env or forwarders[].env")
			for where, values := range map[string]map[string]any{"forwarderDefaults.env": inForwarders(k), "env": inEnv(k)} {
				_, err := renderFiles(t, values)
				if err != nil && strings.Contains(err.Error(), "alone, not by the pods") {
					t.Errorf("in %s: %v", where, err)
				}
			}
		})
	}
}
