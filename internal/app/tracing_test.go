package app

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/tracing"
)

func TestTracingEnabled(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		// compose passes ${OTEL_EXPORTER_OTLP_ENDPOINT:-}: empty is off.
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "false"}, true},
	} {
		if got := tracingEnabled(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("%v: enabled = %v, want %v", tc.env, got, tc.want)
		}
	}
}

// TestStartTracing: off, the provider is nil (every span a no-op); a
// protocol other than OTLP/HTTP is refused at startup, naming the
// variable; on, it flushes at stop.
func TestStartTracing(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	tp, stop, err := startTracing(context.Background(), "stowline-test", log)
	if err != nil || tp != nil {
		t.Fatalf("off: provider %v, err %v; want nil, nil", tp, err)
	}
	stop()

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	if _, _, err := startTracing(context.Background(), "stowline-test", log); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Errorf("grpc: err %v, want a usage error naming OTEL_EXPORTER_OTLP_PROTOCOL", err)
	}

	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	// A malformed headers variable: the SDK would print it, credential
	// included, and export without it.
	for name, headers := range map[string]string{
		"OTEL_EXPORTER_OTLP_HEADERS":        "Authorization: Bearer SUPERSECRETTOKEN",
		"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=a,Authorization=Bearer SUPERSECRET%zz",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, headers)
			_, _, err := startTracing(context.Background(), "stowline-test", log)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), "SUPERSECRET") {
				t.Errorf("err %v, want a usage error naming %s and not the value", err, name)
			}
		})
	}
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20token,x-tenant=a")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
	tp, stop, err = startTracing(context.Background(), "stowline-test", log)
	if err != nil || tp == nil {
		t.Fatalf("on: provider %v, err %v", tp, err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "span")
	if !span.IsRecording() {
		t.Error("on: the default sampler did not record a root span")
	}
	span.End()
	stop() // the export fails (nothing listens): stop still returns
}

// TestTracingVarsAreDocumented: every OTEL_* variable the compose test
// accepts is in docs/tracing.md, which the README links.
func TestTracingVarsAreDocumented(t *testing.T) {
	docs, err := os.ReadFile("../../docs/tracing.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range TracingVars {
		if !strings.Contains(string(docs), "`"+v+"`") {
			t.Errorf("docs/tracing.md does not document %s", v)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "(docs/tracing.md)") {
		t.Error("README.md does not link docs/tracing.md")
	}
}

// An audit's publish span names the dedupe ID it published with, as the
// webhook's and the reconciler's do: the audit's own IDs
// (…/audit/<destination>) are what tells its copies apart.
func TestPublishTracedNamesTheMessageID(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "src",
		OrthancStudyID: "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715", StudyInstanceUID: "1.2.3", LastUpdate: "20261204T055500"}
	msgID := ev.MsgID() + "/audit/ai"
	if _, err := publishTraced(context.Background(), tp, "audit enqueue", "audit", "ai", ev, msgID, func(context.Context) (*jetstream.PubAck, error) {
		return &jetstream.PubAck{Stream: "STOWLINE_EVENTS", Sequence: 7}, nil
	}); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans ended, want 1", len(spans))
	}
	attrs := map[attribute.Key]string{}
	for _, a := range spans[0].Attributes() {
		attrs[a.Key] = a.Value.String()
	}
	for k, want := range map[attribute.Key]string{tracing.MessageID: msgID, tracing.Origin: "audit", tracing.Destination: "ai", tracing.StreamSeq: "7"} {
		if attrs[k] != want {
			t.Errorf("%s = %q, want %q", k, attrs[k], want)
		}
	}
}
