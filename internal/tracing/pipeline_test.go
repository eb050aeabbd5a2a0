package tracing_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testidp"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/internal/web"
	"github.com/stowline/stowline/orthancapi"
)

// The synthetic patient of the study: neither may appear in any span.
const (
	patientName = "Tracer^Synthetic"
	patientID   = "TRACE-PID-4711"
)

// memOrthanc is an Orthanc source in memory serving real DICOM files.
type memOrthanc struct {
	instances []orthancapi.Instance
	files     map[string][]byte
}

func newMemOrthanc(t *testing.T, n int) *memOrthanc {
	t.Helper()
	o := &memOrthanc{files: map[string][]byte{}}
	study, series := dicomgen.NewUID(), dicomgen.NewUID()
	for i := range n {
		var b bytes.Buffer
		uid := dicomgen.NewUID()
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: study, SeriesInstanceUID: series, SOPInstanceUID: uid,
			PatientName: patientName, PatientID: patientID, InstanceNumber: i + 1, Rows: 16, Columns: 16}); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%08x-11111111-22222222-33333333-44444444", i)
		o.instances = append(o.instances, orthancapi.Instance{ID: id, SOPInstanceUID: uid, FileSize: int64(b.Len())})
		o.files[id] = b.Bytes()
	}
	return o
}

func (o *memOrthanc) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return o.instances, nil
}

func (o *memOrthanc) OpenInstanceFile(_ context.Context, id string) (io.ReadCloser, int64, error) {
	return io.NopCloser(bytes.NewReader(o.files[id])), int64(len(o.files[id])), nil
}

// TestTraceOfOneForwardedStudy runs the real parts between Orthanc and the
// destination (the webhook, embedded JetStream, the forwarder, the token
// source against a real OAuth2 server, the STOW-RS client against a gated
// STOW-RS server; only Orthanc is in memory) with the SDK's in-memory
// recorder, and checks the tree of one forwarded study and that no span
// carries patient data or a credential.
func TestTraceOfOneForwardedStudy(t *testing.T) {
	const (
		ingestToken  = "pipeline-ingest-token-0123456789"
		clientID     = "tracing-test"
		clientSecret = "tracing-client-secret-abcdef"
		instances    = 10
	)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	ns := testnats.Start(t)
	idp := testidp.Start(t, testidp.WithClient(clientID, clientSecret))
	dest := httptest.NewServer(stowsink.New(stowsink.Options{}))
	t.Cleanup(dest.Close)
	gate := idp.Gate(t, dest.URL)

	// The ingest.
	hook, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{ingestToken}, Publisher: natsjs.Publisher{JS: ns.JS}, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	router := chi.NewRouter()
	hook.Mount(router)

	// The forwarder of the default destination.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ep, err := auth.ClientCredentials(auth.Config{TokenURL: idp.TokenURL, ClientID: clientID, ClientSecret: clientSecret})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := auth.NewSource(ctx, ep, auth.WithTracerProvider(tp, tracing.Destination.String("default")))
	if err != nil {
		t.Fatal(err)
	}
	stow, err := dicomweb.New(gate.URL, &http.Client{Transport: auth.Transport(tokens, nil)})
	if err != nil {
		t.Fatal(err)
	}
	topo := natsjs.DefaultTopology()
	cons, err := topo.EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	src := newMemOrthanc(t, instances)
	fw, err := forward.New(forward.Options{
		DestinationName: natsjs.DefaultDestination, Lanes: []forward.Lane{{Priority: events.PriorityRoutine, Consumer: cons}},
		SourceFor:   func(string) (forward.Source, error) { return src, nil },
		Destination: stow, Concurrency: 1, MaxInstances: 4, MaxBytes: 1 << 20, RequestConcurrency: 2, MinRequestConcurrency: 2,
		AckWait: 10 * time.Second, RetryDelay: time.Second, RetryMaxDelay: 2 * time.Second,
		ShutdownGrace: time.Second, TracerProvider: tp,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.Run(ctx) }()

	// Orthanc's Lua script posts the event.
	body := `{"type":"orthanc.study.stable","version":1,"source":"orthanc-a",
		"orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988",
		"studyInstanceUid":"1.2.826.0.1.3680043.8.498.1","lastUpdate":"20261126T101500"}`
	req := httptest.NewRequest(http.MethodPost, web.WebhookPath, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+ingestToken)
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	router.ServeHTTP(w, req)
	if w.Code != http.StatusAccepted {
		t.Fatalf("webhook answered %d: %s", w.Code, w.Body)
	}
	waitAcked(t, cons)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	spans := rec.Ended()
	logTree(t, spans)
	ingest := one(t, spans, "webhook event", nil)
	if ingest.Parent().IsValid() {
		t.Errorf("webhook event has a parent %v: want a new trace", ingest.Parent())
	}
	wantAttrs(t, ingest, tracing.Origin.String("webhook"), tracing.OrthancStudyID.String("27f7126f-4f66fb14-03f4081b-f9341db2-53925988"),
		tracing.StreamSeq.Int64(1), tracing.Duplicate.Bool(false))
	queue := one(t, spans, "queue wait", ingest)
	wantAttrs(t, queue, tracing.Destination.String("default"), tracing.Attempt.Int64(1))
	study := one(t, spans, "forward study", queue)
	wantAttrs(t, study, tracing.Result.String("forwarded"), tracing.Instances.Int(instances), tracing.Listed.Int(instances),
		tracing.StudyInstanceUID.String("1.2.826.0.1.3680043.8.498.1"), tracing.Source.String("orthanc-a"))
	list := one(t, spans, "orthanc list instances", study)
	wantAttrs(t, list, tracing.Instances.Int(instances))

	requests := children(spans, "stow request", study)
	// 10 instances, at most 4 a request, 2 at once (a fixed limit): 4
	// requests.
	if len(requests) != 4 {
		t.Fatalf("%d stow request spans under the study, want 4", len(requests))
	}
	read, stored, fetches := 0, 0, 0
	for _, r := range requests {
		wantAttrs(t, r, tracing.HTTPStatus.Int(http.StatusOK))
		stored += int(attr(r, "stowline.instances.stored").AsInt64())
		b := one(t, spans, "orthanc read batch", r)
		read += int(attr(b, string(tracing.Instances)).AsInt64())
		if attr(b, string(tracing.Bytes)).AsInt64() == 0 {
			t.Errorf("orthanc read batch %v read no bytes", b.SpanContext().SpanID())
		}
		tok := one(t, spans, "destination token", r)
		for _, f := range children(spans, "token fetch", tok) {
			fetches++
			wantAttrs(t, f, attribute.String("auth.provider", "generic"))
		}
	}
	if read != instances || stored != instances {
		t.Errorf("read batches read %d instances, requests stored %d; want %d each", read, stored, instances)
	}
	// The first request fetched the token; the others found it cached
	// or waited for that fetch.
	if fetches != 1 {
		t.Errorf("%d token fetch spans under the study's requests, want 1", fetches)
	}
	for _, s := range spans {
		if s.SpanContext().TraceID() != ingest.SpanContext().TraceID() {
			t.Errorf("span %q is in trace %v, not the study's %v", s.Name(), s.SpanContext().TraceID(), ingest.SpanContext().TraceID())
		}
	}

	tok, err := tokens.Token()
	if err != nil {
		t.Fatal(err)
	}
	scanSpans(t, spans, patientName, patientID, "Tracer", tok.AccessToken, "eyJ", clientSecret, ingestToken, "Bearer")
}

// scanSpans fails for any span name, attribute, event, link or status that
// contains one of secrets.
func scanSpans(t *testing.T, spans []sdktrace.ReadOnlySpan, secrets ...string) {
	t.Helper()
	check := func(s sdktrace.ReadOnlySpan, where, text string) {
		for _, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("span %q: %s holds %q", s.Name(), where, secret)
			}
		}
	}
	for _, s := range spans {
		check(s, "name", s.Name())
		check(s, "status", s.Status().Description)
		for _, kv := range append(s.Attributes(), s.Resource().Attributes()...) {
			check(s, "attribute "+string(kv.Key), kv.Value.String())
		}
		for _, e := range s.Events() {
			check(s, "event", e.Name)
			for _, kv := range e.Attributes {
				check(s, "event attribute "+string(kv.Key), kv.Value.String())
			}
		}
		for _, l := range s.Links() {
			for _, kv := range l.Attributes {
				check(s, "link attribute "+string(kv.Key), kv.Value.String())
			}
		}
	}
}

func waitAcked(t *testing.T, c jetstream.Consumer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.Info(context.Background())
		if err == nil && info.AckFloor.Stream >= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event was never acked: %+v (err %v)", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTree logs the spans as a tree, with their attributes.
func logTree(t *testing.T, spans []sdktrace.ReadOnlySpan) {
	t.Helper()
	var b strings.Builder
	var walk func(parent trace.SpanID, depth int)
	walk = func(parent trace.SpanID, depth int) {
		for _, s := range spans {
			if s.Parent().SpanID() != parent {
				continue
			}
			fmt.Fprintf(&b, "%s%s %s", strings.Repeat("  ", depth), s.Name(), s.EndTime().Sub(s.StartTime()).Round(time.Microsecond))
			for _, kv := range s.Attributes() {
				fmt.Fprintf(&b, " %s=%s", kv.Key, kv.Value.String())
			}
			b.WriteString("\n")
			walk(s.SpanContext().SpanID(), depth+1)
		}
	}
	walk(trace.SpanID{}, 0)
	t.Logf("spans:\n%s", b.String())
}

// children returns the spans called name whose parent is parent.
func children(spans []sdktrace.ReadOnlySpan, name string, parent sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name && s.Parent().SpanID() == parent.SpanContext().SpanID() {
			out = append(out, s)
		}
	}
	return out
}

// one returns the one span called name under parent (nil: anywhere).
func one(t *testing.T, spans []sdktrace.ReadOnlySpan, name string, parent sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	if parent != nil {
		found = children(spans, name, parent)
	} else {
		for _, s := range spans {
			if s.Name() == name {
				found = append(found, s)
			}
		}
	}
	if len(found) != 1 {
		var names []string
		for _, s := range spans {
			names = append(names, fmt.Sprintf("%s(%s<-%s)", s.Name(), s.SpanContext().SpanID(), s.Parent().SpanID()))
		}
		t.Fatalf("%d spans %q, want 1; spans: %s", len(found), name, strings.Join(names, " "))
	}
	return found[0]
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want ...attribute.KeyValue) {
	t.Helper()
	for _, kv := range want {
		if got := attr(s, string(kv.Key)); got != kv.Value {
			t.Errorf("span %q: %s = %v, want %v", s.Name(), kv.Key, got.String(), kv.Value.String())
		}
	}
}

// TestTraceContextInHeaders checks the W3C header names on a NATS message
// and that a context without a span adds nothing.
func TestTraceContextInHeaders(t *testing.T) {
	h := nats.Header{}
	tracing.Inject(context.Background(), h)
	if len(h) != 0 {
		t.Errorf("no span, headers %v: want none", h)
	}
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("test").Start(context.Background(), "publish")
	tracing.Inject(ctx, h)
	span.End()
	if v := h["traceparent"]; len(v) != 1 || !strings.Contains(v[0], span.SpanContext().TraceID().String()) {
		t.Fatalf("traceparent %v, want the span's trace ID %v (headers %v)", v, span.SpanContext().TraceID(), h)
	}
	got := trace.SpanContextFromContext(tracing.Extract(context.Background(), h))
	if got.TraceID() != span.SpanContext().TraceID() || got.SpanID() != span.SpanContext().SpanID() || !got.IsRemote() {
		t.Errorf("extracted %+v, want the remote span %+v", got, span.SpanContext())
	}
	if c := trace.SpanContextFromContext(tracing.Extract(context.Background(), nil)); c.IsValid() {
		t.Errorf("nil headers gave span context %v", c)
	}
}
