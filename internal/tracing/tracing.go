// Package tracing is what stowline's OpenTelemetry spans share: the
// attribute keys, which are the one list of what a span may carry, and the
// W3C trace context that JetStream message headers carry from whoever
// published an event (the ingest, the reconciler, the audit) to the
// forwarders.
//
// A span carries Orthanc IDs, DICOM UIDs, source and destination names,
// sizes, counts, HTTP statuses and failure classes. Never patient data (no
// PatientName, PatientID or descriptions), never error texts that a server
// wrote (they can echo DICOM attributes; the logs keep them, under the
// span's trace_id), never tokens, secrets or URLs with a query or
// credentials.
//
// The TracerProvider is built per process in internal/app and passed down
// in options; a nil one is a no-op, so tracing that is off costs a no-op
// span where a span would be and nothing on the per-instance path.
package tracing

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/stowline/stowline/events"
)

// Attribute keys. Semantic-convention names where one fits, stowline.*
// where none does.
const (
	// Source and Destination are configured names.
	Source      = attribute.Key("stowline.source")
	Destination = attribute.Key("stowline.destination")
	// Origin is who published an event: webhook, reconciler or audit.
	Origin = attribute.Key("stowline.origin")
	// OrthancStudyID, StudyInstanceUID and LastUpdate name the study
	// state an event announces (Orthanc's LastUpdate is a timestamp).
	OrthancStudyID   = attribute.Key("orthanc.study_id")
	StudyInstanceUID = attribute.Key("dicom.study_instance_uid")
	LastUpdate       = attribute.Key("orthanc.last_update")
	// MessageID is the event's JetStream dedupe ID (source/study/LastUpdate).
	MessageID = attribute.Key("messaging.message.id")
	// StreamSeq is the event's sequence in the event stream; Duplicate
	// says JetStream dropped a publish as a repeat.
	StreamSeq = attribute.Key("stowline.stream_seq")
	Duplicate = attribute.Key("stowline.duplicate")
	// Attempt counts the deliveries of an event to a destination, this
	// one included; Pending is how many events wait behind it.
	Attempt = attribute.Key("stowline.attempt")
	Pending = attribute.Key("stowline.pending")
	// Result is how an attempt ended (forwarded, not_selected, retry,
	// dead_lettered, interrupted, ack_failed, undecodable, newer_version,
	// unknown_source, already_forwarded, already_dead_lettered, parked) and
	// FailureClass the class of its failure (transient, partial,
	// permanent, source-missing, crash).
	Result       = attribute.Key("stowline.result")
	FailureClass = attribute.Key("stowline.failure_class")
	// DeadLetterSeq is the dead letter a failed attempt was kept as.
	DeadLetterSeq = attribute.Key("stowline.dead_letter_seq")
	// Counts and sizes.
	Listed        = attribute.Key("stowline.instances.listed")
	Selected      = attribute.Key("stowline.instances.selected")
	Instances     = attribute.Key("stowline.instances")
	AlreadyStored = attribute.Key("stowline.instances.already_stored")
	Stored        = attribute.Key("stowline.instances.stored")
	Resent        = attribute.Key("stowline.instances.resent")
	Failed        = attribute.Key("stowline.instances.failed")
	Bytes         = attribute.Key("stowline.bytes")
	Requests      = attribute.Key("stowline.requests")
	// Converted and ConversionFailed count the instances of a read that
	// Orthanc converted, or could not convert, to TransferSyntax.
	Converted        = attribute.Key("stowline.instances.converted")
	ConversionFailed = attribute.Key("stowline.instances.conversion_failed")
	TransferSyntax   = attribute.Key("dicom.transfer_syntax_uid")
	// WaitMillis is how long a read was blocked on Orthanc, ConvertMillis
	// the part of it spent waiting for conversions' first bytes.
	WaitMillis    = attribute.Key("stowline.orthanc.wait_ms")
	ConvertMillis = attribute.Key("stowline.orthanc.convert_ms")
	// HTTPStatus is an HTTP response's status; ErrorType a bounded word
	// for what failed (an HTTP status, "network", "timeout", ...).
	HTTPStatus = attribute.Key("http.response.status_code")
	ErrorType  = attribute.Key("error.type")
	// ServerAddress is a host (and port), never a URL.
	ServerAddress = attribute.Key("server.address")
)

// Tracer returns tp's tracer for a package (its import path), or a no-op
// tracer when tp is nil (tracing off).
func Tracer(tp trace.TracerProvider, pkg string) trace.Tracer {
	if tp == nil {
		return noop.NewTracerProvider().Tracer(pkg)
	}
	return tp.Tracer(pkg)
}

// Event returns the attributes naming the study an event announces.
func Event(ev *events.StudyStable) []attribute.KeyValue {
	return []attribute.KeyValue{
		Source.String(ev.Source),
		OrthancStudyID.String(ev.OrthancStudyID),
		StudyInstanceUID.String(ev.StudyInstanceUID),
		LastUpdate.String(ev.LastUpdate),
	}
}

// propagator is the W3C Trace Context format (traceparent, tracestate).
// Stateless: no global propagator is registered.
var propagator propagation.TraceContext

// Inject writes ctx's span context into h as W3C traceparent (and
// tracestate); nothing when ctx carries no span, as when tracing is off.
func Inject(ctx context.Context, h nats.Header) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	propagator.Inject(ctx, headerCarrier(h))
}

// Extract returns ctx with the remote span context that h carries, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return propagator.Extract(ctx, headerCarrier(h))
}

// IsContextHeader reports whether a message header key is one of the
// trace context's (traceparent, tracestate), in any case: a message
// copied into a new one (a replay) drops them to start a trace of its
// own.
func IsContextHeader(key string) bool {
	for _, f := range propagator.Fields() {
		if strings.EqualFold(key, f) {
			return true
		}
	}
	return false
}

// headerCarrier adapts NATS headers, whose keys are case-sensitive, to the
// propagator with the lower-case names W3C Trace Context gives them
// (http.Header would store "Traceparent").
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[key] = []string{value} }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
