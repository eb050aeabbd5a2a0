package forward

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// The spans of one delivery, in the trace its publisher started:
//
//	queue wait              from the event's publish to this delivery
//	forward study           the attempt at this destination, its outcome
//	  orthanc list instances
//	  route                 the destination's rules (they may read Orthanc)
//	  stow request          one STOW-RS request
//	    destination token   (auth) cached, or waiting for a token fetch
//	    orthanc read batch  the instance files the request streamed, and
//	                        how many Orthanc converted (transcode.go)
//
// Attributes follow internal/tracing: IDs, UIDs, counts, sizes, statuses
// and classes; error texts stay in the logs, which carry the trace_id.

// noSpan is the span where tracing is off: starting none costs nothing.
var noSpan = trace.SpanFromContext(context.Background())

// startSpan starts a span, or none when tracing is off.
func (f *Forwarder) startSpan(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if f.tracer == nil {
		return ctx, noSpan
	}
	return f.tracer.Start(ctx, name, trace.WithSpanKind(kind))
}

// startAttempt starts the spans of one delivery: "queue wait", from when
// JetStream stored the event to now, in the trace of the message's
// traceparent (a new trace when it has none: a replay, an event published
// with tracing off), and under it "forward study", the attempt, which the
// caller ends. For a redelivery the queue wait also covers the earlier
// attempts and their backoff: JetStream keeps only the publish time.
func (f *Forwarder) startAttempt(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) (context.Context, trace.Span) {
	if f.tracer == nil {
		return ctx, noSpan
	}
	now := time.Now()
	ctx = tracing.Extract(ctx, msg.Headers())
	dest := tracing.Destination.String(f.opts.DestinationName)
	if meta != nil {
		// Clocks differ between the NATS server and this host: a wait
		// never starts after it ended.
		start := meta.Timestamp
		if start.After(now) {
			start = now
		}
		var q trace.Span
		ctx, q = f.tracer.Start(ctx, "queue wait", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithTimestamp(start))
		if q.IsRecording() {
			q.SetAttributes(dest, tracing.StreamSeq.Int64(int64(meta.Sequence.Stream)),
				tracing.Attempt.Int64(int64(meta.NumDelivered)), tracing.Pending.Int64(int64(meta.NumPending)))
		}
		q.End(trace.WithTimestamp(now))
	}
	ctx, span := f.tracer.Start(ctx, "forward study")
	if span.IsRecording() && meta != nil {
		span.SetAttributes(dest, tracing.StreamSeq.Int64(int64(meta.Sequence.Stream)), tracing.Attempt.Int64(int64(meta.NumDelivered)))
	}
	return ctx, span
}

// endSpan ends span, marking it failed with err's class and type, never
// its text: a server or Orthanc wrote part of it.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		class := Classify(err)
		span.SetAttributes(tracing.FailureClass.String(string(class)), tracing.ErrorType.String(errorType(err)))
		span.SetStatus(codes.Error, string(class))
	}
	span.End()
}

// endPanicked, deferred after a span's start, ends it as failed by a
// panic when its code did not end it: only a panic skips the endSpan of
// every path, and the span of the request that crashed is the one the
// trace needs. It does not recover: the panic goes on to the recover
// that makes the study a crash failure, its frames as they were.
func endPanicked(span trace.Span) {
	if !span.IsRecording() {
		return // ended, or never recorded
	}
	span.SetAttributes(tracing.FailureClass.String(string(Crash)), tracing.ErrorType.String("panic"))
	span.SetStatus(codes.Error, string(Crash))
	span.End()
}

// resultParked is the result on the span of an attempt whose study was
// parked (sourcepark.go) until its source answers. A span's result only,
// not a label of stowline_forwarder_studies_total: a parked study is
// counted there when it is given back (retry, interrupted).
const resultParked Result = "parked"

// recordOutcome puts an attempt's result and what it sent on its span.
func recordOutcome(span trace.Span, result Result, class Class, rep Report) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(tracing.Result.String(string(result)),
		tracing.Listed.Int(rep.Listed), tracing.Selected.Int(rep.Selected),
		tracing.Instances.Int(rep.Instances), tracing.Bytes.Int64(rep.Bytes), tracing.Requests.Int(rep.Requests),
		tracing.AlreadyStored.Int(rep.AlreadyStored), tracing.Resent.Int(rep.Resent))
	switch result {
	case ResultForwarded, ResultNotSelected, ResultInterrupted, ResultAlreadyForwarded:
	default:
		if class != "" {
			span.SetAttributes(tracing.FailureClass.String(string(class)))
		}
		span.SetStatus(codes.Error, string(result))
	}
}

// errorType is a bounded word for what failed: the destination's HTTP
// status, or the kind of failure.
func errorType(err error) string {
	var (
		he *dicomweb.HTTPError
		te *auth.TokenError
		oe *orthancapi.Error
		ce *crashError
		ne net.Error
	)
	switch {
	case errors.As(err, &he):
		return strconv.Itoa(he.StatusCode)
	case errors.As(err, &te):
		return "token"
	case errors.As(err, &oe):
		return "orthanc_" + strconv.Itoa(oe.StatusCode)
	case errors.As(err, &ce):
		return "panic"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &ne):
		return "network"
	}
	return "_OTHER"
}

// store sends one STOW-RS request in a "stow request" span, with what it
// read from Orthanc as the child "orthanc read batch".
func (f *Forwarder) store(ctx context.Context, batch []dicomweb.Part, put bool) (*dicomweb.Result, error) {
	do := f.opts.Destination.Store
	if put {
		// ConflictPolicy.check made sure of it.
		do = f.opts.Destination.(Upserter).Upsert
	}
	if f.tracer == nil {
		return do(ctx, batch)
	}
	ctx, span := f.tracer.Start(ctx, "stow request", trace.WithSpanKind(trace.SpanKindClient))
	if !span.IsRecording() {
		// Not sampled: measure nothing.
		defer span.End()
		return do(ctx, batch)
	}
	span.SetAttributes(tracing.Destination.String(f.opts.DestinationName), tracing.Instances.Int(len(batch)))
	reads := &batchReads{}
	defer func() {
		if span.IsRecording() { // a panic
			reads.record(ctx, f.tracer)
			endPanicked(span)
		}
	}()
	res, err := do(ctx, reads.wrap(batch))
	reads.record(ctx, f.tracer)
	answer := res
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		span.SetAttributes(tracing.HTTPStatus.Int(he.StatusCode))
		answer = he.Result
	}
	if answer != nil {
		span.SetAttributes(tracing.HTTPStatus.Int(answer.StatusCode), tracing.Bytes.Int64(answer.BytesSent),
			tracing.Stored.Int(len(answer.Stored)),
			tracing.Failed.Int(len(answer.Failed)+len(answer.OtherFailures)))
	}
	endSpan(span, err)
	return res, err
}

// batchReads measures what one STOW-RS request read from Orthanc: the
// files it opened, their bytes and the time spent waiting on Orthanc,
// from the first open to the last close, and the conversions among them.
// One span a request, not one an instance: a study can have thousands,
// and a span each filled the exporter's queue, dropping other studies'.
type batchReads struct {
	mu          sync.Mutex
	first, last time.Time
	opened      int
	bytes       int64
	wait        time.Duration
	err         error
	// converted and conversionFailed count the opens Orthanc answered
	// converted to syntax, or could not convert; convertWait is their
	// part of wait, until each one's first bytes.
	converted, conversionFailed int
	convertWait                 time.Duration
	syntax                      string
}

// wrap returns batch with each Open measured (a copy: the caller's parts
// are re-sent as they are).
func (b *batchReads) wrap(batch []dicomweb.Part) []dicomweb.Part {
	out := make([]dicomweb.Part, len(batch))
	for i, p := range batch {
		open := p.Open
		p.Open = func(ctx context.Context) (io.ReadCloser, error) {
			start := time.Now()
			rc, err := open(ctx)
			took := time.Since(start)
			b.mu.Lock()
			if b.opened == 0 {
				b.first = start
			}
			b.opened++
			b.wait += took
			b.last = time.Now()
			if err != nil && b.err == nil {
				b.err = err
			}
			var ce *conversionError
			if cf, ok := rc.(*convertedFile); ok {
				b.converted++
				b.convertWait += took
				b.syntax = cf.syntax
			} else if errors.As(err, &ce) {
				b.conversionFailed++
				b.convertWait += took
			}
			b.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return &timedReader{rc: rc, b: b}, nil
		}
		out[i] = p
	}
	return out
}

// record adds the "orthanc read batch" span under ctx's span, unless
// nothing was read (the request failed before its first part).
func (b *batchReads) record(ctx context.Context, tracer trace.Tracer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.opened == 0 {
		return
	}
	_, span := tracer.Start(ctx, "orthanc read batch", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(b.first))
	span.SetAttributes(tracing.Instances.Int(b.opened), tracing.Bytes.Int64(b.bytes), tracing.WaitMillis.Float64(float64(b.wait.Microseconds())/1000))
	if b.converted+b.conversionFailed > 0 {
		span.SetAttributes(tracing.Converted.Int(b.converted), tracing.ConversionFailed.Int(b.conversionFailed),
			tracing.ConvertMillis.Float64(float64(b.convertWait.Microseconds())/1000))
		if b.syntax != "" {
			span.SetAttributes(tracing.TransferSyntax.String(b.syntax))
		}
	}
	if b.err != nil {
		class := Classify(b.err)
		span.SetAttributes(tracing.FailureClass.String(string(class)), tracing.ErrorType.String(errorType(b.err)))
		span.SetStatus(codes.Error, string(class))
	}
	span.End(trace.WithTimestamp(b.last))
}

// timedReader counts an instance file's bytes and the time its reads
// waited, and adds them to the batch when closed.
type timedReader struct {
	rc    io.ReadCloser
	b     *batchReads
	n     int64
	wait  time.Duration
	close sync.Once
}

func (r *timedReader) Read(p []byte) (int, error) {
	start := time.Now()
	n, err := r.rc.Read(p)
	r.wait += time.Since(start)
	r.n += int64(n)
	return n, err
}

func (r *timedReader) Close() error {
	err := r.rc.Close()
	r.close.Do(func() {
		r.b.mu.Lock()
		r.b.bytes += r.n
		r.b.wait += r.wait
		r.b.last = time.Now()
		r.b.mu.Unlock()
	})
	return err
}
