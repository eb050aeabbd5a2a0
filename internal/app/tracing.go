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
	"sync"
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
	"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
	"OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
	"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY",
	"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
	"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
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
// A tracing variable the SDK would misread stops the start as other bad
// configuration does, program's "invalid configuration" naming it.
//
// Everything is read from the process environment, as the SDK does (it
// cannot be given another), not from the getenv the configuration comes
// from. The sampler is the SDK's: OTEL_TRACES_SAMPLER, by default
// parentbased_always_on. No global is set: the provider is passed down.
func startTracing(ctx context.Context, program, service string, log *slog.Logger) (trace.TracerProvider, func(), error) {
	if !tracingEnabled(os.Getenv) {
		return nil, func() {}, nil
	}
	if err := refuseTracingEnv(program, os.Getenv); err != nil {
		return nil, nil, err
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
	if err != nil {
		// A partial resource too: checkResourceAttributes refused what
		// would make one.
		return nil, nil, fmt.Errorf("tracing: resource (OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	exporter := &loggedExporter{SpanExporter: exp, log: log, failures: repeatlog.Failures{Every: time.Minute}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	log.Info("tracing on: spans are exported with OTLP/HTTP", "protocol", otlpProtocol(os.Getenv),
		"service_name", serviceName(res, service), "sampler", cmp.Or(os.Getenv("OTEL_TRACES_SAMPLER"), "parentbased_always_on"))
	// Once: a process's close flushes, and its Run's defer is then a no-op.
	stop := sync.OnceFunc(func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingShutdownTimeout)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("tracing: spans not flushed at shutdown", "err", err)
		}
	})
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

// refuseTracingEnv returns program's usage error naming each tracing
// variable of getenv checkTracingEnv refuses, nil when tracing is off or
// none is.
func refuseTracingEnv(program string, getenv func(string) string) error {
	if !tracingEnabled(getenv) {
		return nil
	}
	if err := checkTracingEnv(getenv); err != nil {
		return &usageError{fmt.Errorf("%s: invalid configuration:\n%w\n(docs/tracing.md lists the OTEL_* variables)", program, err)}
	}
	return nil
}

// checkTracingEnv returns, joined, an error for each tracing variable
// of getenv the SDK or its exporter would misread (checked as they read
// them): one they would print a line about outside the log and replace
// with a default, ignore silently, or panic on.
func checkTracingEnv(getenv func(string) string) error {
	var errs []error
	if protocol := otlpProtocol(getenv); protocol != "http/protobuf" && protocol != "http/json" {
		// The exporter would fall back to http/protobuf against what may
		// be a gRPC port, and every export would fail.
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: stowline exports traces over OTLP/HTTP: want http/protobuf (the default) or http/json, and the collector's OTLP/HTTP port (4318)", protocol))
	}
	// The SDK reads both of each pair, the TRACES_ one winning; a bad
	// one is refused even when the other would win, since the SDK would
	// still print it, credentials included.
	for _, prefix := range []string{"OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_"} {
		errs = append(errs,
			checkOTLPHeaders(prefix+"HEADERS", getenv(prefix+"HEADERS")),
			checkOTLPEndpoint(prefix+"ENDPOINT", getenv(prefix+"ENDPOINT")),
			checkOTLPCertificate(prefix+"CERTIFICATE", getenv(prefix+"CERTIFICATE")),
			checkOTLPClientCertificate(getenv, prefix+"CLIENT_CERTIFICATE", prefix+"CLIENT_KEY"),
			checkOTLPTimeout(prefix+"TIMEOUT", getenv(prefix+"TIMEOUT")),
			checkOTLPCompression(prefix+"COMPRESSION", getenv(prefix+"COMPRESSION")),
		)
	}
	errs = append(errs, checkOTLPTransport(getenv))
	errs = append(errs, checkSampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")))
	errs = append(errs, checkResourceAttributes(getenv("OTEL_RESOURCE_ATTRIBUTES")))
	errs = append(errs, checkBatchSpanProcessor(getenv)...)
	return errors.Join(errs...)
}

// otlpProtocol is the OTLP protocol the exporter is asked for.
func otlpProtocol(getenv func(string) string) string {
	return cmp.Or(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
}

const (
	// maxTracingMillis bounds the tracing delays and timeouts: an hour
	// is more than any needs, and far from the overflow of
	// time.Duration a larger number of milliseconds reaches.
	maxTracingMillis = 3_600_000
	// maxBatchSpans bounds the batch span processor's sizes. A queued
	// span keeps its attributes, about 1.3 KB with stowline's (250,000
	// grew the heap by 311 MB): while the collector hangs the queue stays
	// full, and a queue of a million held more than a forwarder pod's
	// memory limit. 32,768 hold about 43 MB.
	// OTEL_BSP_MAX_QUEUE_SIZE=99999999999 ran out of memory at start.
	maxBatchSpans = 32_768
)

// checkBatchSpanProcessor checks the OTEL_BSP_* variables as the SDK
// reads them (sdk/trace/internal/env): strconv.Atoi of the value as it
// is, spaces included, empty for the default. A negative size panicked
// in sdktrace.NewBatchSpanProcessor; a value that is not a number it
// replaces with its default without a word; a schedule delay of 0 spins
// a core; a batch larger than the queue it lowers silently.
func checkBatchSpanProcessor(getenv func(string) string) []error {
	var errs []error
	value := func(name string, lo, hi int, want string) (int, bool) {
		raw := getenv(name)
		if raw == "" {
			return 0, false
		}
		n, err := strconv.Atoi(raw)
		if err != nil || n < lo || n > hi {
			errs = append(errs, fmt.Errorf("%s=%q: want %s: a whole number from %d to %d, without spaces or a unit", name, raw, want, lo, hi))
			return 0, false
		}
		return n, true
	}
	value("OTEL_BSP_SCHEDULE_DELAY", 1, maxTracingMillis, "the milliseconds between exports")
	value("OTEL_BSP_EXPORT_TIMEOUT", 0, maxTracingMillis, "the milliseconds one export may take (0: no limit)")
	queue, ok := value("OTEL_BSP_MAX_QUEUE_SIZE", 1, maxBatchSpans, "the spans buffered for export")
	if !ok {
		queue = sdktrace.DefaultMaxQueueSize
	}
	if batch, ok := value("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1, maxBatchSpans, "the spans in one export"); ok && batch > queue {
		errs = append(errs, fmt.Errorf("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=%d is more than the queue holds (OTEL_BSP_MAX_QUEUE_SIZE, %d): the SDK would export smaller batches", batch, queue))
	}
	return errs
}

// checkOTLPTimeout checks an OTLP timeout variable as the exporter reads
// it (trimmed, strconv.Atoi, milliseconds, 0 no limit): a value that is
// not a number it prints on stderr and exports with its 10 s default.
func checkOTLPTimeout(name, raw string) error {
	v := strings.TrimSpace(raw)
	if v == "" {
		return nil
	}
	if n, err := strconv.Atoi(v); err != nil || n < 0 || n > maxTracingMillis {
		return fmt.Errorf("%s=%q: want the milliseconds one export may take, from 0 (no limit) to %d (10000: 10 s, the default)", name, v, maxTracingMillis)
	}
	return nil
}

// checkOTLPCompression checks an OTLP compression variable as the
// exporter reads it (trimmed): anything but gzip, zstd and GZIP
// included, it takes for none without a word.
func checkOTLPCompression(name, raw string) error {
	switch v := strings.TrimSpace(raw); v {
	case "", "gzip", "none":
		return nil
	default:
		return fmt.Errorf("%s=%q: want gzip or none (the default), lower case", name, v)
	}
}

// checkResourceAttributes checks OTEL_RESOURCE_ATTRIBUTES as the SDK
// reads it (sdk/resource/env.go: trimmed, key=value pairs,
// comma-separated, values URL-encoded). A pair without '=' made a
// partial resource, which the SDK printed on stderr and started without;
// a value it cannot decode it prints and keeps encoded; a pair without
// a key it drops. The error names the pair by its place, as for headers.
func checkResourceAttributes(raw string) error {
	const name = "OTEL_RESOURCE_ATTRIBUTES"
	v := strings.TrimSpace(raw)
	if v == "" {
		return nil
	}
	for i, pair := range strings.Split(v, ",") {
		key, value, ok := strings.Cut(pair, "=")
		_, unescapeErr := url.PathUnescape(strings.TrimSpace(value))
		switch {
		case !ok:
			return fmt.Errorf("%s: pair %d has no '=' (a trailing comma counts as an empty pair): want key=value pairs, comma-separated (e.g. deployment.environment=prod)", name, i+1)
		case strings.TrimSpace(key) == "":
			return fmt.Errorf("%s: pair %d has no key", name, i+1)
		case unescapeErr != nil:
			return fmt.Errorf("%s: pair %d: its value is not URL-encoded (a %% not followed by two hex digits)", name, i+1)
		}
	}
	return nil
}

// checkSampler refuses a sampler the SDK does not know, or a ratio it
// cannot use: it would print a line outside the log and fall back to
// tracing every study, while the start's log named the sampler asked for.
func checkSampler(sampler, arg string) error {
	// As the SDK reads them (sdk/trace/sampler_env.go).
	sampler, arg = strings.ToLower(strings.TrimSpace(sampler)), strings.TrimSpace(arg)
	switch sampler {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
		if arg != "" {
			// Ignored by these samplers: every study would still be traced.
			return fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q is a ratio only traceidratio and parentbased_traceidratio read, and OTEL_TRACES_SAMPLER is %s: set OTEL_TRACES_SAMPLER=parentbased_traceidratio, or unset the ratio", arg, cmp.Or(sampler, "parentbased_always_on (the default)"))
		}
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
// The exporter keeps only the scheme, host and path: a user and
// password, or a query (a vendor's key), it drops without a word, and
// every export is refused (an empty query or a fragment, which carry
// nothing, pass). The error never quotes the value: it may hold
// user:password.
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
	case u.User != nil, u.RawQuery != "":
		return fmt.Errorf("%s holds a user or a query, which the exporter drops: give the collector's credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. Authorization=Bearer%%20<token>)", name)
	}
	return nil
}

// checkOTLPTransport checks whether the exporter speaks TLS as the
// endpoint's scheme says. The SDK takes http:// or https:// from the
// endpoint (the TRACES_ one winning), then lets a set
// OTEL_EXPORTER_OTLP_(TRACES_)INSECURE decide whatever the scheme:
// "false" (the default written out) or any value but "true" ("1") made
// it speak TLS to a plain collector, every export failing, and "true"
// sent the spans and OTEL_EXPORTER_OTLP_HEADERS (a vendor's key) in
// clear text to an https:// one. A value that agrees with the scheme
// passes. With TLS off, a CA or client certificate failed the
// exporter's start with no variable named.
func checkOTLPTransport(getenv func(string) string) error {
	var errs []error
	endpoint := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
	if endpoint == "" {
		endpoint = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil // checkOTLPEndpoint names it
	}
	plain := u.Scheme == "http"
	insecure, value := "", ""
	for _, name := range []string{"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE"} {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			// As the SDK reads it: anything but true (1, yes) is false.
			insecure, value, plain = name, v, strings.EqualFold(v, "true")
		}
	}
	if insecure != "" && plain != (u.Scheme == "http") {
		if plain {
			errs = append(errs, fmt.Errorf("%s=true with an https:// endpoint: the exporter would send the spans, and OTEL_EXPORTER_OTLP_HEADERS, unencrypted: leave it unset (the endpoint's scheme decides)", insecure))
		} else {
			errs = append(errs, fmt.Errorf("%s=%q with an http:// endpoint: the exporter reads anything but true as false, would speak TLS to it, and every export would fail: leave it unset (the endpoint's scheme decides)", insecure, value))
		}
		return errors.Join(errs...)
	}
	if plain {
		for _, name := range []string{"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
			"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"} {
			if strings.TrimSpace(getenv(name)) != "" {
				errs = append(errs, fmt.Errorf("%s is set with an http:// endpoint, which the exporter refuses: give the collector's https:// URL, or unset it", name))
			}
		}
	}
	return errors.Join(errs...)
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
func checkOTLPClientCertificate(getenv func(string) string, certName, keyName string) error {
	certPath, keyPath := strings.TrimSpace(getenv(certName)), strings.TrimSpace(getenv(keyName))
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
