package main

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
)

// otlpSpan is one exported span with its resource's attributes.
type otlpSpan struct {
	*tracepb.Span
	resource []*commonpb.KeyValue
}

// collector is an OTLP/HTTP trace receiver: it decodes the protobuf
// export requests the program sends, as a collector or Jaeger would.
type collector struct {
	*httptest.Server
	mu       sync.Mutex
	spans    []otlpSpan
	requests int
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("collector: %s %s (%s): want POST /v1/traces of application/x-protobuf", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
			http.Error(w, "unexpected", http.StatusBadRequest)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = gz
		}
		b, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			t.Errorf("collector: undecodable export request: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.requests++
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					c.spans = append(c.spans, otlpSpan{Span: s, resource: rs.GetResource().GetAttributes()})
				}
			}
		}
		c.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *collector) all() []otlpSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]otlpSpan(nil), c.spans...)
}

// TestTracesOfAForwardedStudy runs the real program in single-host mode
// with OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP/HTTP receiver: a
// real Orthanc with the Lua script announces a study, which goes through
// a real OAuth2 token gate to a STOW-RS server. The export must hold the
// tree of that study, from the webhook to every STOW request, and no
// patient data or credential in any span or resource attribute.
//
// The SDK reads the OTEL_* variables from the process environment, so
// this test sets them there (and so cannot run in parallel).
func TestTracesOfAForwardedStudy(t *testing.T) {
	testharness.RequireBinary(t, "Orthanc")
	testharness.RequireBinary(t, "storescu")
	const (
		ingestToken  = "trace-ingest-token-0123456789"
		clientID     = "stowline-trace"
		clientSecret = "trace-client-secret-abcdef"
		instances    = 10
	)
	col := startCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", col.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")

	idp := testidp.Start(t, testidp.WithClient(clientID, clientSecret))
	sink := stowsink.New(stowsink.Options{})
	dest := httptest.NewServer(sink)
	t.Cleanup(dest.Close)
	gate := idp.Gate(t, dest.URL)

	ingestAddr, forwarderAddr := testharness.FreeAddr(t), testharness.FreeAddr(t)
	lua, err := filepath.Abs("../../lua/stowline.lua")
	if err != nil {
		t.Fatal(err)
	}
	src := testharness.StartOrthanc(t, testharness.OrthancOptions{
		Name:       "traced-source",
		LuaScripts: []string{lua},
		// The test wants one webhook, so one stable event: with 1 s, a
		// storescu pausing longer between instances on a loaded host
		// made the study stable twice and the script posted twice.
		StableAge: 3,
		Extra: map[string]any{"Stowline": map[string]any{
			"IngestUrl":   "http://" + ingestAddr + "/webhooks/orthanc",
			"IngestToken": "${STOWLINE_TEST_TOKEN}",
			"Source":      "orthanc-t",
		}},
		Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
	})
	prog := testharness.StartProgram(t, "stowline", run, map[string]string{
		"NATS_STORE_DIR":         t.TempDir(),
		"INGEST_ADDR":            ingestAddr,
		"INGEST_TOKEN":           ingestToken,
		"FORWARDER_ADDR":         forwarderAddr,
		"ORTHANC_URL":            src.URL,
		"ORTHANC_SOURCE_NAME":    "orthanc-t",
		"DICOMWEB_URL":           gate.URL,
		"OAUTH_TOKEN_URL":        idp.TokenURL,
		"OAUTH_CLIENT_ID":        clientID,
		"OAUTH_CLIENT_SECRET":    clientSecret,
		"STOW_MAX_INSTANCES":     "4",
		"STOW_PARALLEL_REQUESTS": "2",
		// One announcement a study: the Lua script's.
		"RECONCILE_ENABLED": "false",
	})
	// Not the forwarder's /readyz: it would fetch the destination token
	// outside any trace, and the study's first request is to fetch it.
	testharness.WaitHTTP(t, "http://"+ingestAddr+"/readyz", 30*time.Second)

	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		PatientID: "TRACE-PID-0042", PatientName: "Tracer^Synthetic", InstancesPerSeries: instances, Rows: 16, Columns: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := src.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu: %v", res.Failed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := sink.WaitDistinct(ctx, instances); err != nil {
		t.Fatal(err)
	}
	waitForwardedCount(t, "http://"+forwarderAddr+"/metrics", 1, 20*time.Second)
	// Stopping flushes the spans still buffered.
	if err := prog.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	spans := col.all()
	t.Logf("%d export requests, %d spans:\n%s", col.requests, len(spans), tree(spans))

	ingest := oneSpan(t, spans, "webhook event", nil)
	if len(ingest.ParentSpanId) != 0 {
		t.Error("webhook event has a parent: want the root of a new trace")
	}
	if got := attrOf(ingest.resource, "service.name"); got != "stowline" {
		t.Errorf("service.name %q, want stowline (the command's default)", got)
	}
	var studies []string
	src.GetJSON(t, "/studies", &studies)
	if len(studies) != 1 || attrOf(ingest.Attributes, "orthanc.study_id") != studies[0] {
		t.Errorf("webhook event of study %q, Orthanc holds %v", attrOf(ingest.Attributes, "orthanc.study_id"), studies)
	}
	queue := oneSpan(t, spans, "queue wait", ingest)
	study := oneSpan(t, spans, "forward study", queue)
	for k, want := range map[string]string{
		"stowline.result": "forwarded", "stowline.instances": fmt.Sprint(instances),
		"stowline.destination": "default", "stowline.source": "orthanc-t",
	} {
		if got := attrOf(study.Attributes, k); got != want {
			t.Errorf("forward study: %s = %q, want %q", k, got, want)
		}
	}
	oneSpan(t, spans, "orthanc list instances", study)
	requests := childSpans(spans, "stow request", study)
	if len(requests) < 2 {
		t.Fatalf("%d stow request spans, want one per batch of at most 4 of %d instances", len(requests), instances)
	}
	read, fetches := 0, 0
	for _, r := range requests {
		if got := attrOf(r.Attributes, "http.response.status_code"); got != "200" {
			t.Errorf("stow request status %q, want 200", got)
		}
		b := oneSpan(t, spans, "orthanc read batch", r)
		var n int
		fmt.Sscan(attrOf(b.Attributes, "stowline.instances"), &n)
		read += n
		tok := oneSpan(t, spans, "destination token", r)
		fetches += len(childSpans(spans, "token fetch", tok))
	}
	if read != instances {
		t.Errorf("orthanc read batches read %d instances, want %d", read, instances)
	}
	// The forwarder fetched its first token as it started, in a trace of
	// its own: the study's requests used it.
	if fetches != 0 {
		t.Errorf("%d token fetches in the study's trace, want none: the token was fetched at start", fetches)
	}
	atStart := 0
	for _, s := range spans {
		if s.Name == "token fetch" && len(s.ParentSpanId) == 0 {
			// 5 s tokens: a background refresh may come too.
			if attrOf(s.Attributes, "auth.background") != "true" {
				atStart++
			}
			continue
		}
		if hex.EncodeToString(s.TraceId) != hex.EncodeToString(ingest.TraceId) {
			t.Errorf("span %q is not in the study's trace", s.Name)
		}
	}
	if atStart != 1 {
		t.Errorf("%d token fetches as roots outside background refreshes, want the one at start", atStart)
	}

	// No patient data, no credential, anywhere in what was exported (the
	// access tokens are JWTs: "eyJ").
	secrets := append(patientNames(t, src), "Tracer", ingestToken, clientSecret, "eyJ", "Bearer")
	for _, s := range spans {
		texts := []string{s.Name, s.GetStatus().GetMessage()}
		for _, kv := range append(s.Attributes, s.resource...) {
			texts = append(texts, kv.Key+"="+valueOf(kv.Value))
		}
		for _, e := range s.Events {
			texts = append(texts, e.Name)
			for _, kv := range e.Attributes {
				texts = append(texts, kv.Key+"="+valueOf(kv.Value))
			}
		}
		for _, text := range texts {
			for _, secret := range secrets {
				if strings.Contains(text, secret) {
					t.Errorf("span %q carries %q in %q", s.Name, secret, text)
				}
			}
		}
	}
}

func waitForwardedCount(t *testing.T, url string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if got, _ := testharness.Metric(t, url, `stowline_forwarder_studies_total{result="forwarded"}`); got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no forwarded study counted within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func childSpans(spans []otlpSpan, name string, parent *otlpSpan) []*otlpSpan {
	var out []*otlpSpan
	for i := range spans {
		s := &spans[i]
		if s.Name == name && (parent == nil || hex.EncodeToString(s.ParentSpanId) == hex.EncodeToString(parent.SpanId)) {
			out = append(out, s)
		}
	}
	return out
}

func oneSpan(t *testing.T, spans []otlpSpan, name string, parent *otlpSpan) *otlpSpan {
	t.Helper()
	found := childSpans(spans, name, parent)
	if len(found) != 1 {
		t.Fatalf("%d spans %q under %v, want 1", len(found), name, parent.GetName())
	}
	return found[0]
}

func attrOf(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.Key == key {
			return valueOf(kv.Value)
		}
	}
	return ""
}

func valueOf(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	}
	return v.String()
}

// tree renders the spans as an indented tree, for the log.
func tree(spans []otlpSpan) string {
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, s := range spans {
			if hex.EncodeToString(s.ParentSpanId) != parent {
				continue
			}
			fmt.Fprintf(&b, "%s%s %s\n", strings.Repeat("  ", depth), s.Name,
				time.Duration(s.EndTimeUnixNano-s.StartTimeUnixNano).Round(time.Microsecond))
			walk(hex.EncodeToString(s.SpanId), depth+1)
		}
	}
	walk("", 0)
	return b.String()
}
