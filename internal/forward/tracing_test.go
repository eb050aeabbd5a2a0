package forward

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/tracing"
)

// sameParts is a destination that checks it is handed the caller's parts
// themselves: with tracing off, nothing wraps or copies them.
type sameParts struct {
	t    *testing.T
	want []dicomweb.Part
}

func (d sameParts) Store(_ context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	if len(parts) == 0 || &parts[0] != &d.want[0] {
		d.t.Error("with tracing off, the parts were copied or wrapped before the STOW-RS request")
	}
	return &dicomweb.Result{StatusCode: http.StatusOK}, nil
}

// TestTracingOffCostsNothingPerInstance: without a TracerProvider a
// request's parts go to the destination untouched (no per-instance
// wrapper, no span), and no span is started for the attempt.
func TestTracingOffCostsNothingPerInstance(t *testing.T) {
	batch := []dicomweb.Part{{SOPInstanceUID: "1.2.3"}, {SOPInstanceUID: "1.2.4"}}
	f := &Forwarder{opts: Options{Destination: sameParts{t: t, want: batch}}}
	if _, err := f.store(context.Background(), batch, false); err != nil {
		t.Fatal(err)
	}
	ctx, span := f.startSpan(context.Background(), "x", 0)
	if span.IsRecording() || ctx != context.Background() {
		t.Error("tracing off started a span")
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = f.startSpan(ctx, "x", 0) }); n != 0 {
		t.Errorf("startSpan with tracing off allocates %v times", n)
	}
}

// TestTraceOfAFailedAttempt: a destination answering 503 makes the
// attempt a retry of class transient, and its STOW request span says 503.
func TestTraceOfAFailedAttempt(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ns := testnats.Start(t)
	var k sink
	k.status.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	f := newForwarder(t, newMemSource(3), srv.URL, cons, func(o *Options) { o.TracerProvider = tp; o.Concurrency = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	// The first attempt has ended once its span has.
	deadline := time.Now().Add(15 * time.Second)
	for !hasSpan(rec, "forward study") {
		if time.Now().After(deadline) {
			t.Fatal("no attempt ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done

	var study, stow sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "forward study":
			study = s
		case "stow request":
			stow = s
		case "queue wait":
			if s.Parent().IsValid() {
				t.Errorf("queue wait of an event published outside any trace has parent %v", s.Parent())
			}
		}
	}
	if study == nil || stow == nil {
		t.Fatalf("spans %v: want a forward study and a stow request", rec.Ended())
	}
	if study.Status().Code != codes.Error || stow.Status().Code != codes.Error {
		t.Errorf("statuses %v, %v: want errors", study.Status(), stow.Status())
	}
	got := map[string]string{}
	for _, s := range []sdktrace.ReadOnlySpan{study, stow} {
		for _, kv := range s.Attributes() {
			got[s.Name()+" "+string(kv.Key)] = kv.Value.String()
		}
	}
	for k, want := range map[string]string{
		"forward study stowline.result":          "retry",
		"forward study stowline.failure_class":   "transient",
		"stow request http.response.status_code": "503",
		"stow request error.type":                "503",
		"stow request stowline.failure_class":    "transient",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
}

func hasSpan(rec *tracetest.SpanRecorder, name string) bool {
	for _, s := range rec.Ended() {
		if s.Name() == name {
			return true
		}
	}
	return false
}

// An attempt's span has status error only for results that are failures:
// an older event acked because the study was forwarded already is none.
func TestSpanStatusByResult(t *testing.T) {
	for _, tt := range []struct {
		result Result
		failed bool
	}{
		{ResultForwarded, false}, {ResultNotSelected, false}, {ResultInterrupted, false}, {ResultAlreadyForwarded, false},
		{ResultRetry, true}, {ResultDeadLettered, true},
	} {
		rec := tracetest.NewSpanRecorder()
		_, span := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)).Tracer("t").Start(context.Background(), "forward study")
		recordOutcome(span, tt.result, "", Report{})
		span.End()
		if failed := rec.Ended()[0].Status().Code == codes.Error; failed != tt.failed {
			t.Errorf("%s: span status error %v, want %v", tt.result, failed, tt.failed)
		}
	}
}

// The span of an undecodable event says how it ended, whether a
// dead-letter store kept it or it was given back without one.
func TestTraceOfAnUndecodableEvent(t *testing.T) {
	for _, tt := range []struct {
		name  string
		store DeadLetterStore
		want  Result
	}{
		{"dead-lettered", &memDeadLetters{}, ResultUndecodable},
		{"given back without a dead-letter store", nil, ResultRetry},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			deliverRaw(t, []byte(`{"type":"something.else"}`), func(o *Options) {
				o.TracerProvider = tp
				o.DeadLetters = tt.store
			})
			deadline := time.Now().Add(15 * time.Second)
			for !hasSpan(rec, "forward study") {
				if time.Now().After(deadline) {
					t.Fatal("no attempt ended")
				}
				time.Sleep(20 * time.Millisecond)
			}
			for _, s := range rec.Ended() {
				if s.Name() != "forward study" {
					continue
				}
				var got string
				for _, a := range s.Attributes() {
					if a.Key == tracing.Result {
						got = a.Value.AsString()
					}
				}
				if got != string(tt.want) || s.Status().Code != codes.Error {
					t.Errorf("span result %q, status %v; want %q, error", got, s.Status().Code, tt.want)
				}
			}
		})
	}
}

// deliveredMsg is a delivery of testEvent, for handle, around a parkedMsg.
type deliveredMsg struct {
	*parkedMsg
	data []byte
}

func (m deliveredMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: 1, Sequence: jetstream.SequencePair{Stream: m.seq}, Timestamp: time.Now()}, nil
}
func (m deliveredMsg) Data() []byte         { return m.data }
func (m deliveredMsg) Headers() nats.Header { return nil }
func (m deliveredMsg) Subject() string      { return "stowline.events" }

// A study parked because its source is down ends its attempt's span with
// the result "parked": it ended with none, unlike every other outcome.
func TestTraceOfAParkedStudy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		// One study of source "a" parked, its source down for good: the
		// next is parked before any attempt.
		f, parked, _ := parkOne(t, []error{errSourceDown}, func(o *Options) { o.TracerProvider = tp })
		data, err := json.Marshal(testEvent())
		if err != nil {
			t.Fatal(err)
		}
		f.handle(t.Context(), deliveredMsg{parkedMsg: &parkedMsg{f: f, seq: parked.seq + 1}, data: data}, "")
		var got []string
		for _, s := range rec.Ended() {
			if s.Name() != "forward study" {
				continue
			}
			for _, a := range s.Attributes() {
				if a.Key == tracing.Result {
					got = append(got, a.Value.AsString())
				}
			}
		}
		if !slices.Equal(got, []string{"parked"}) {
			t.Errorf("forward study results %q, want [parked]", got)
		}
	})
}

// The study's lines from transfer and conflict went through the
// forwarder's logger with its study IDs added by hand: no stream_seq,
// attempt or trace_id, so with studies running at once they could not
// be tied to their delivery or trace. They carry the delivery's keys, as
// its "study forwarded" does, each once.
func TestStudyLinesCarryTheDeliveryKeys(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	for _, tt := range []struct {
		name      string
		msg       string // the line looked for
		conflicts ConflictPolicy
		reason    int // the first POST's 409 answers it for the instance
	}{
		{name: "transfer", msg: "re-sending instances the destination refused transiently", reason: 0xA700},
		{name: "conflict", msg: "replacing instances the destination held with other content",
			conflicts: ConflictPolicy{Action: ConflictReplace, Method: ReplacePut,
				Rules: []dicomweb.ConflictRule{{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF}}},
			reason: dicomweb.FailureAzureAlreadyExists},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost && posts.Add(1) == 1 {
					failedAnswer(w, http.StatusConflict, tt.reason, sop)
					return
				}
				storedAnswer(w, sop)
			}))
			t.Cleanup(srv.Close)
			var logs testharness.LogBuffer
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			f := newForwarder(t, newMemSource(1), srv.URL, cons, func(o *Options) {
				o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
				o.TracerProvider = sdktrace.NewTracerProvider()
				o.DeadLetters = &memDeadLetters{}
				o.Conflicts = tt.conflicts
				o.InstanceRetries = 1
				o.InstanceRetryDelay = time.Millisecond
			})
			f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")

			var line, done map[string]any
			for raw := range strings.Lines(logs.String()) {
				var rec map[string]any
				if err := json.Unmarshal([]byte(raw), &rec); err != nil {
					t.Fatalf("log line %q: %v", raw, err)
				}
				switch rec["msg"] {
				case tt.msg:
					line = rec
					if n := strings.Count(raw, `"orthanc_study_id"`); n != 1 {
						t.Errorf("orthanc_study_id %d times in %s", n, raw)
					}
				case "study forwarded":
					done = rec
				}
			}
			if line == nil || done == nil {
				t.Fatalf("want a %q line and a \"study forwarded\" line in:\n%s", tt.msg, logs.String())
			}
			for _, key := range []string{"destination", "source", "orthanc_study_id", "study_instance_uid", "last_update", "attempt", "stream_seq", "trace_id"} {
				if line[key] == nil || line[key] != done[key] {
					t.Errorf("%s = %v, want the delivery's %v", key, line[key], done[key])
				}
			}
		})
	}
}

// panickingDestination's Store panics, as a bug in parsing an answer would.
type panickingDestination struct{}

func (panickingDestination) Store(context.Context, []dicomweb.Part) (*dicomweb.Result, error) {
	panic("an answer parser bug")
}

// TestSpanOfAPanickedRequest: a request that panics ends its "stow
// request" span as a crash with error.type panic (it was left unended,
// missing from the trace of the very study to debug), and the panic goes
// on to the recover that dead-letters the study with its frames as they
// were, the panicking function first.
func TestSpanOfAPanickedRequest(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	f := &Forwarder{opts: Options{Destination: panickingDestination{}}, tracer: tp.Tracer("test")}
	var crash *crashError
	func() {
		defer func() {
			if v := recover(); v != nil {
				crash = newCrashError(v)
			}
		}()
		_, _ = f.store(context.Background(), []dicomweb.Part{{SOPInstanceUID: "1.2.3"}}, false)
	}()
	if crash == nil || len(crash.frames) == 0 || !strings.Contains(crash.frames[0], "panickingDestination.Store") {
		t.Fatalf("recovered %v: want the panic, its first frame the destination's Store", crash)
	}
	ended := rec.Ended()
	if len(ended) != 1 || ended[0].Name() != "stow request" {
		t.Fatalf("ended spans %v, want the stow request", ended)
	}
	got := map[string]string{}
	for _, kv := range ended[0].Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	if got["error.type"] != "panic" || got["stowline.failure_class"] != "crash" || ended[0].Status().Code != codes.Error {
		t.Errorf("stow request: attributes %v, status %v; want error.type panic, class crash, an error status", got, ended[0].Status())
	}
}
