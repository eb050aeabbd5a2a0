package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/tracing"
)

// TracingVars are the OpenTelemetry variables stowline's tracing follows
// (docs/tracing.md documents each). The OpenTelemetry SDK and its OTLP/HTTP
// exporter read them from the process environment themselves, so they are
// not part of internal/config; deploy/compose_test.go accepts exactly
// these in the compose file.
var TracingVars = []string{
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
	"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_COMPRESSION",
	"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY",
	"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
	"OTEL_EXPORTER_OTLP_INSECURE",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
	"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
	"OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
	"OTEL_SDK_DISABLED",
}

// tracingShutdownTimeout bounds the flush of the spans still buffered when
// a process stops.
const tracingShutdownTimeout = 5 * time.Second

// tracingEnabled reports whether OpenTelemetry tracing is on: an OTLP
// endpoint is set and not empty, and OTEL_SDK_DISABLED is not true. An
// empty value is off, so a compose file can pass ${VAR:-} through.
func tracingEnabled(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	return strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) != "" ||
		strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) != ""
}

// startTracing returns the process's TracerProvider, exporting over
// OTLP/HTTP in batches, and the function that flushes and stops it; a nil
// provider (every span a no-op, nothing exported) when tracing is off.
// service is the default service.name, which OTEL_SERVICE_NAME overrides.
//
// Everything is read from the process environment, as the SDK does (it
// cannot be given another), not from the getenv the configuration comes
// from. The sampler is the SDK's: OTEL_TRACES_SAMPLER, by default
// parentbased_always_on. No global is set: the provider is passed down.
func startTracing(ctx context.Context, service string, log *slog.Logger) (trace.TracerProvider, func(), error) {
	if !tracingEnabled(os.Getenv) {
		return nil, func() {}, nil
	}
	protocol := cmp.Or(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
	if protocol != "http/protobuf" && protocol != "http/json" {
		// The exporter would fall back to http/protobuf against what may
		// be a gRPC port, and every export would fail.
		return nil, nil, &usageError{fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: stowline exports traces over OTLP/HTTP: want http/protobuf (the default) or http/json, and the collector's OTLP/HTTP port (4318)", protocol)}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"} {
		if err := checkOTLPHeaders(name, os.Getenv(name)); err != nil {
			return nil, nil, &usageError{err}
		}
	}
	// The SDK reads both of each pair, the TRACES_ one winning; a bad
	// one is refused even when the other would win, since the SDK would
	// still print it, credentials included.
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if err := checkOTLPEndpoint(name, os.Getenv(name)); err != nil {
			return nil, nil, &usageError{err}
		}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"} {
		if err := checkOTLPCertificate(name, os.Getenv(name)); err != nil {
			return nil, nil, &usageError{err}
		}
	}
	for _, prefix := range []string{"OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_"} {
		if err := checkOTLPClientCertificate(prefix+"CLIENT_CERTIFICATE", prefix+"CLIENT_KEY"); err != nil {
			return nil, nil, &usageError{err}
		}
	}
	if err := checkSampler(os.Getenv("OTEL_TRACES_SAMPLER"), os.Getenv("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		return nil, nil, &usageError{err}
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	// Later detectors win: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
	// override the default name.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithHost(),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, nil, fmt.Errorf("tracing: resource (OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	exporter := &loggedExporter{SpanExporter: exp, log: log, failures: repeatlog.Failures{Every: time.Minute}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	log.Info("tracing on: spans are exported with OTLP/HTTP", "protocol", protocol,
		"service_name", serviceName(res, service), "sampler", cmp.Or(os.Getenv("OTEL_TRACES_SAMPLER"), "parentbased_always_on"))
	stop := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingShutdownTimeout)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("tracing: spans not flushed at shutdown", "err", err)
		}
	}
	return tp, stop, nil
}

// loggedExporter reports failed exports in the process's JSON log. The
// SDK hands an exporter's error to OpenTelemetry's global handler, which
// prints a plain line on stderr for every batch (every 5 s while the
// collector is down), outside the JSON a site's log pipeline parses. A
// failed batch is dropped, as the SDK would: the first failure is a
// warning, then one a minute with the count, and the return is logged.
type loggedExporter struct {
	sdktrace.SpanExporter
	log *slog.Logger

	failures repeatlog.Failures // batches
	// dropped counts the spans in the failed batches. Spans the batch
	// processor drops, its queue full, never reach the exporter and are
	// not counted (docs/tracing.md says so).
	dropped atomic.Int64
}

func (e *loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := e.SpanExporter.ExportSpans(ctx, spans); err != nil {
		dropped := e.dropped.Add(int64(len(spans)))
		if n, ok := e.failures.Failed(); ok {
			e.log.Warn("tracing: spans not exported, dropped", "err", err, "failed_batches", n, "dropped_spans", dropped)
		}
		return nil
	}
	if n := e.failures.Succeeded(); n > 0 {
		e.log.Info("tracing: exports resumed", "failed_batches", n, "dropped_spans", e.dropped.Swap(0))
	}
	return nil
}

// serviceName is the resource's service.name, for the startup log.
func serviceName(res *resource.Resource, fallback string) string {
	if v, ok := res.Set().Value("service.name"); ok {
		return v.AsString()
	}
	return fallback
}

// publishTraced runs publish, which stores ev, in a span that starts a
// trace of its own (the forwarders continue it from the message's
// traceparent), as the ingest does for a webhook event. destination is ""
// for an event every destination takes; msgID is the dedupe ID publish
// gives it. Without tp it only publishes.
func publishTraced(ctx context.Context, tp trace.TracerProvider, name, origin, destination string, ev *events.StudyStable, msgID string,
	publish func(context.Context) (*jetstream.PubAck, error)) (*jetstream.PubAck, error) {
	if tp == nil {
		return publish(ctx)
	}
	ctx, span := tp.Tracer("github.com/stowline/stowline/internal/app").Start(ctx, name,
		trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(tracing.Event(ev)...)
		span.SetAttributes(tracing.Origin.String(origin), tracing.MessageID.String(msgID))
		if destination != "" {
			span.SetAttributes(tracing.Destination.String(destination))
		}
	}
	ack, err := publish(ctx)
	if err != nil {
		span.SetStatus(codes.Error, "JetStream did not acknowledge")
		return ack, err
	}
	span.SetAttributes(tracing.StreamSeq.Int64(int64(ack.Sequence)), tracing.Duplicate.Bool(ack.Duplicate))
	return ack, nil
}

// checkSampler refuses a sampler the SDK does not know, or a ratio it
// cannot use: it would print a line outside the log and fall back to
// tracing every study, while the start's log named the sampler asked for.
func checkSampler(sampler, arg string) error {
	// As the SDK reads them (sdk/trace/sampler_env.go).
	sampler, arg = strings.ToLower(strings.TrimSpace(sampler)), strings.TrimSpace(arg)
	switch sampler {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
		return nil
	case "traceidratio", "parentbased_traceidratio":
		if arg == "" {
			return nil // the SDK's default ratio, 1
		}
		// Written so that NaN, which ParseFloat accepts, is refused too.
		if r, err := strconv.ParseFloat(arg, 64); err != nil || !(r >= 0 && r <= 1) {
			return fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1 (0.1: one study in ten)", arg)
		}
		return nil
	}
	return fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio, parentbased_always_on (the default), parentbased_always_off or parentbased_traceidratio", sampler)
}

// checkOTLPHeaders checks an OTLP headers variable (key=value pairs,
// comma-separated, values URL-encoded) as the SDK reads it. The SDK
// prints a malformed value on stderr, credential included, and exports
// without it; the error here names the pair by its place only, since its
// key may hold part of the value ("Authorization: Bearer …" for
// "Authorization=Bearer%20…").
func checkOTLPHeaders(name, raw string) error {
	for i, pair := range strings.Split(raw, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		key, value, ok := strings.Cut(pair, "=")
		key = strings.TrimSpace(key)
		_, unescapeErr := url.PathUnescape(value)
		switch {
		case !ok:
			return fmt.Errorf("%s: pair %d has no '=': want key=value pairs, comma-separated (e.g. Authorization=Bearer%%20<token>)", name, i+1)
		case key == "" || strings.ContainsAny(key, " \t:\"(),/;<>?@[]{}"):
			return fmt.Errorf("%s: pair %d: its key is not a header name", name, i+1)
		case unescapeErr != nil:
			return fmt.Errorf("%s: pair %d: its value is not URL-encoded (a %% not followed by two hex digits)", name, i+1)
		}
	}
	return nil
}

// checkOTLPEndpoint checks an OTLP endpoint variable as the SDK reads it
// (trimmed, empty ignored). A value without a scheme
// ("otel-collector:4318") parses with the host as its scheme and no
// host, and every export fails; one that does not parse the SDK prints,
// credentials included, and exports to https://localhost:4318 instead.
// The error never quotes the value: it may hold user:password.
func checkOTLPEndpoint(name, raw string) error {
	v := strings.TrimSpace(raw)
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return fmt.Errorf("%s is not a URL: want http://<host>:4318 or https://<host>:4318", name)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%s has no http:// or https:// scheme (host:port alone is read as a scheme): want http://<host>:4318 or https://<host>:4318", name)
	case u.Hostname() == "":
		return fmt.Errorf("%s has no host: want http://<host>:4318 or https://<host>:4318", name)
	}
	return nil
}

// checkOTLPCertificate checks an OTLP CA file variable as the SDK reads
// it: a file it cannot read, or without a PEM certificate, it prints
// and trusts the system's CAs instead.
func checkOTLPCertificate(name, raw string) error {
	path := strings.TrimSpace(raw)
	if path == "" {
		return nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: read the receiver's CA certificate: %w", name, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: %s holds no PEM certificate", name, path)
	}
	return nil
}

// checkOTLPClientCertificate checks an OTLP client certificate and key
// pair as the SDK reads it: with one of the two unset it ignores the
// other silently, and with a file it cannot read or pair it prints an
// error; either way it connects without a client certificate, and a
// receiver that asks for one refuses every export.
func checkOTLPClientCertificate(certName, keyName string) error {
	certPath, keyPath := strings.TrimSpace(os.Getenv(certName)), strings.TrimSpace(os.Getenv(keyName))
	switch {
	case certPath == "" && keyPath == "":
		return nil
	case certPath == "":
		return fmt.Errorf("%s is set without %s: set both for mutual TLS, or neither", keyName, certName)
	case keyPath == "":
		return fmt.Errorf("%s is set without %s: set both for mutual TLS, or neither", certName, keyName)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		return fmt.Errorf("%s and %s: load the client certificate: %w", certName, keyName, err)
	}
	return nil
}
