// Package forward moves stable studies from an Orthanc source to a
// DICOMweb destination: it pulls events from the durable JetStream
// consumer shared by every forwarder replica, streams the study's
// instances into STOW-RS requests, and acks an event only once every
// instance is stored.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/orthancapi"
	"github.com/stowline/stowline/stow"
)

// Source is the Orthanc a study is read from.
type Source interface {
	StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error)
	OpenInstanceFile(ctx context.Context, instanceID string) (io.ReadCloser, int64, error)
}

// Destination stores instances with STOW-RS.
type Destination interface {
	Store(ctx context.Context, parts []stow.Part) (*stow.Result, error)
}

// Options configures a Forwarder.
type Options struct {
	// Consumer is the durable consumer shared by all replicas.
	Consumer jetstream.Consumer
	// SourceFor returns the Orthanc that an event's source names.
	SourceFor   func(source string) (Source, error)
	Destination Destination
	// Concurrency is the number of studies this process sends at once.
	Concurrency int
	// MaxInstances and MaxBytes bound one STOW-RS request.
	MaxInstances int
	MaxBytes     int64
	// AckWait is the consumer's ack wait; progress is signalled every
	// third of it while a study uploads.
	AckWait time.Duration
	// RetryDelay is the first retry delay, doubled each attempt up to
	// RetryMaxDelay, with full jitter.
	RetryDelay, RetryMaxDelay time.Duration
	// ShutdownGrace is how long in-flight studies may go on after
	// shutdown starts before they are returned to the queue.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Forwarder runs the workers.
type Forwarder struct {
	opts Options
	log  *slog.Logger
	m    *metrics
}

// New validates opts and returns a Forwarder.
func New(opts Options) (*Forwarder, error) {
	var errs []error
	if opts.SourceFor == nil {
		errs = append(errs, errors.New("a source is required"))
	}
	if opts.Destination == nil {
		errs = append(errs, errors.New("a destination is required"))
	}
	if opts.Concurrency < 1 {
		errs = append(errs, errors.New("concurrency must be at least 1"))
	}
	if opts.MaxInstances < 1 || opts.MaxBytes < 1 {
		errs = append(errs, errors.New("request limits must be positive"))
	}
	if opts.AckWait <= 0 {
		errs = append(errs, errors.New("ack wait must be positive"))
	}
	if opts.RetryDelay <= 0 || opts.RetryMaxDelay < opts.RetryDelay {
		errs = append(errs, errors.New("retry delays must satisfy 0 < delay <= max delay"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Forwarder{opts: opts, log: log, m: m}, nil
}

// Run pulls and forwards events until ctx ends. Then it stops pulling,
// lets in-flight studies finish for up to ShutdownGrace, and returns the
// rest to the queue (NAK) so another replica takes them at once.
func (f *Forwarder) Run(ctx context.Context) error {
	if f.opts.Consumer == nil {
		return errors.New("forward: no consumer")
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() {
		time.AfterFunc(f.opts.ShutdownGrace, cancelWork)
	})
	defer stopGrace()

	var wg sync.WaitGroup
	for range f.opts.Concurrency {
		wg.Go(func() { f.worker(ctx, workCtx) })
	}
	wg.Wait()
	return nil
}

// worker pulls one event at a time, only when it is free, so no event waits
// in a client-side buffer while its ack wait runs out.
func (f *Forwarder) worker(ctx, workCtx context.Context) {
	for ctx.Err() == nil {
		pullCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		msg, err := f.opts.Consumer.Next(jetstream.FetchContext(pullCtx))
		cancel()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			f.log.Warn("pull from JetStream failed; retrying", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		f.handle(workCtx, msg)
	}
}

func (f *Forwarder) handle(ctx context.Context, msg jetstream.Msg) {
	attempt := uint64(1)
	if meta, err := msg.Metadata(); err == nil {
		attempt = meta.NumDelivered
	}
	ev, err := events.Decode(msg.Data())
	if err != nil {
		// A message this build can't read would loop forever: stop it,
		// with the reason, where an operator can see it.
		f.log.Error("undecodable event terminated", "subject", msg.Subject(), "err", err)
		f.m.studies.WithLabelValues("undecodable").Inc()
		if err := msg.TermWithReason("undecodable event: " + err.Error()); err != nil {
			f.log.Warn("terminate undecodable event", "err", err)
		}
		return
	}
	log := f.log.With("source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
		"study_instance_uid", ev.StudyInstanceUID, "last_update", ev.LastUpdate, "attempt", attempt)

	f.m.inFlight.Inc()
	stopProgress := keepAlive(msg, f.opts.AckWait/3, log)
	start := time.Now()
	rep, err := f.Forward(ctx, ev)
	stopProgress()
	f.m.inFlight.Dec()
	elapsed := time.Since(start)

	switch {
	case err == nil:
		ackCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// DoubleAck waits for the server's confirmation: the event is
		// done only once JetStream knows it is.
		if err := msg.DoubleAck(ackCtx); err != nil {
			log.Error("study stored but the ack was not confirmed; it will be delivered again", "err", err)
			f.m.studies.WithLabelValues("ack_failed").Inc()
			return
		}
		f.m.studies.WithLabelValues("forwarded").Inc()
		f.m.duration.Observe(elapsed.Seconds())
		log.Info("study forwarded", "instances", rep.Instances, "bytes", rep.Bytes,
			"requests", rep.Requests, "duration_ms", elapsed.Milliseconds())
	case ctx.Err() != nil:
		log.Warn("shutdown: study returned to the queue", "instances_sent", rep.Instances)
		f.m.studies.WithLabelValues("interrupted").Inc()
		if err := msg.Nak(); err != nil {
			log.Warn("nak on shutdown", "err", err)
		}
	default:
		delay := f.backoff(attempt)
		log.Warn("study not forwarded; will retry", "err", err, "retry_in", delay.String(),
			"instances_sent", rep.Instances, "duration_ms", elapsed.Milliseconds())
		f.m.studies.WithLabelValues("retry").Inc()
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("nak failed; JetStream redelivers after the ack wait", "err", err)
		}
	}
}

// backoff is exponential with full jitter, so studies that failed together
// (a destination outage) don't all come back at the same instant.
func (f *Forwarder) backoff(attempt uint64) time.Duration {
	d := f.opts.RetryDelay
	for i := uint64(1); i < attempt && d < f.opts.RetryMaxDelay; i++ {
		d *= 2
	}
	d = min(d, f.opts.RetryMaxDelay)
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// Report says what one Forward call sent.
type Report struct {
	Instances int
	Bytes     int64
	Requests  int
}

// Forward sends every instance of the event's study to the destination. It
// returns nil only when the destination confirmed every SOP instance.
func (f *Forwarder) Forward(ctx context.Context, ev *events.StudyStable) (Report, error) {
	var rep Report
	src, err := f.opts.SourceFor(ev.Source)
	if err != nil {
		return rep, err
	}
	instances, err := src.StudyInstances(ctx, ev.OrthancStudyID)
	if err != nil {
		return rep, fmt.Errorf("list instances of study %s: %w", ev.OrthancStudyID, err)
	}
	if len(instances) == 0 {
		return rep, fmt.Errorf("study %s has no instances in Orthanc", ev.OrthancStudyID)
	}
	parts := make([]stow.Part, len(instances))
	for i, inst := range instances {
		parts[i] = stow.Part{
			SOPInstanceUID: inst.SOPInstanceUID,
			Size:           inst.FileSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				rc, _, err := src.OpenInstanceFile(ctx, inst.ID)
				return rc, err
			},
		}
	}
	for _, batch := range stow.Batches(parts, f.opts.MaxInstances, f.opts.MaxBytes) {
		res, err := f.opts.Destination.Store(ctx, batch)
		rep.Requests++
		if err != nil {
			return rep, fmt.Errorf("STOW-RS request %d: %w", rep.Requests, err)
		}
		sent := make([]string, len(batch))
		for i, p := range batch {
			sent[i] = p.SOPInstanceUID
		}
		if missing := res.Missing(sent); len(missing) > 0 {
			return rep, fmt.Errorf("STOW-RS request %d: destination answered %d but did not confirm %d of %d instances (first: %s)%s",
				rep.Requests, res.StatusCode, len(missing), len(sent), missing[0], failureSummary(res))
		}
		rep.Instances += len(batch)
		rep.Bytes += res.BytesSent
		f.m.instances.Add(float64(len(batch)))
		f.m.bytes.Add(float64(res.BytesSent))
	}
	return rep, nil
}

func failureSummary(res *stow.Result) string {
	if len(res.Failed) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; failed:")
	for i, fi := range res.Failed {
		if i == 5 {
			fmt.Fprintf(&b, " and %d more", len(res.Failed)-i)
			break
		}
		fmt.Fprintf(&b, " %s reason 0x%04X", fi.SOPInstanceUID, fi.FailureReason)
	}
	return b.String()
}

// keepAlive tells JetStream every interval that msg is still being worked
// on, so a long upload is not redelivered to another replica.
func keepAlive(msg jetstream.Msg, interval time.Duration, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := msg.InProgress(); err != nil {
					log.Warn("in-progress signal failed", "err", err)
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
