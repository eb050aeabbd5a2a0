package reconcile_test

import (
	"context"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/testharness"
)

// TestPublishStartsATrace: an event the reconciler publishes starts a
// trace of its own ("reconcile event"), whose traceparent the stored
// message carries for the forwarders to continue.
func TestPublishStartsATrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	r := newRig(t, testharness.Release{}, "recon-trace")
	_, _, stop := r.start(t, "traced", func(o *reconcile.Options) { o.TracerProvider = tp })
	waitFirstCursor(t, r, "traced")
	upload(t, r.orthanc, writeStudy(t, 2))
	testharness.WaitFor(t, "the study's event", 30*time.Second, func() bool { return len(streamEvents(t, r.nats.JS)) == 1 })
	stop()

	var span sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "reconcile event" {
			span = s
		}
	}
	if span == nil {
		t.Fatalf("no reconcile event span in %v", rec.Ended())
	}
	if span.Parent().IsValid() {
		t.Error("reconcile event has a parent: want a new trace")
	}
	s, err := r.nats.JS.Stream(context.Background(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	tp0 := m.Header.Get("traceparent")
	if !strings.Contains(tp0, span.SpanContext().TraceID().String()+"-"+span.SpanContext().SpanID().String()) {
		t.Errorf("stored event's traceparent %q, want the reconcile event span %v", tp0, span.SpanContext())
	}
}
