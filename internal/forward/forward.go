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
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// Source is the Orthanc a study is read from.
type Source interface {
	StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error)
	OpenInstanceFile(ctx context.Context, instanceID string) (io.ReadCloser, int64, error)
}

// Destination stores instances with STOW-RS.
type Destination interface {
	Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error)
}

// SourceCleaner deletes forwarded instances from a source (buffer mode).
type SourceCleaner interface {
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
	DeleteInstance(ctx context.Context, instanceID string) error
}

// DeadLetterStore keeps studies that could not be forwarded.
type DeadLetterStore interface {
	Add(ctx context.Context, l *DeadLetter) (uint64, error)
}

// FailureLog remembers when an event first and last failed.
type FailureLog interface {
	Record(ctx context.Context, seq uint64, now time.Time) (FailureTimes, error)
	Forget(ctx context.Context, seq uint64) error
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
	// RequestConcurrency is how many STOW-RS requests one study sends at
	// once (0 or 1: one after the other). A destination that stores each
	// request on one thread (Orthanc) ingests faster with 2 or more.
	RequestConcurrency int
	// AckWait is the consumer's ack wait; progress is signalled every
	// third of it while a study uploads.
	AckWait time.Duration
	// RetryDelay is the first retry delay, doubled each attempt up to
	// RetryMaxDelay, with full jitter.
	RetryDelay, RetryMaxDelay time.Duration
	// DeadLetters receives the studies that failed for good or ran out of
	// deliveries. Without it, such studies are retried forever.
	DeadLetters DeadLetterStore
	// Failures, if set, remembers first and last failure times across
	// deliveries and replicas, for the dead letter.
	Failures FailureLog
	// MaxDeliveries is how many times an event is tried before it is
	// dead-lettered (0: no limit).
	MaxDeliveries int
	// InstanceRetries is how many extra rounds, within one delivery,
	// re-send only the instances a destination refused transiently
	// (FailedSOPSequence with e.g. A7xx or 0110).
	InstanceRetries int
	// InstanceRetryDelay is the pause before the first such round
	// (doubling each round).
	InstanceRetryDelay time.Duration
	// Completed, if set, is called after a study was stored and its event
	// acked, to record the completed forward (the audit reads it). An
	// error is logged; the study stays forwarded.
	Completed func(ctx context.Context, ev *events.StudyStable) error
	// CleanerFor, if set, turns on buffer mode: once a study is stored,
	// acked and recorded, the instances that were forwarded are deleted
	// from its source, unless the study changed since its event.
	CleanerFor func(source string) (SourceCleaner, error)
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
	if opts.MaxDeliveries < 0 || opts.InstanceRetries < 0 {
		return nil, errors.New("forward: max deliveries and instance retries must not be negative")
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	if opts.InstanceRetryDelay <= 0 {
		opts.InstanceRetryDelay = time.Second
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
		// Short pulls: a pull request outlives its cancelled context on
		// the server until it expires, and a message handed to it then
		// waits for the ack wait; 5 s bounds that at shutdown.
		pullCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
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
	attempt, seq := uint64(1), uint64(0)
	if meta, err := msg.Metadata(); err == nil {
		attempt, seq = meta.NumDelivered, meta.Sequence.Stream
	}
	ev, err := events.Decode(msg.Data())
	if err != nil {
		// A message this build can't read would loop forever: stop it,
		// with the reason, where an operator can see it.
		f.log.Error("undecodable event terminated", "subject", msg.Subject(), "stream_seq", seq, "err", err)
		f.m.studies.WithLabelValues("undecodable").Inc()
		if err := msg.TermWithReason("undecodable event: " + err.Error()); err != nil {
			f.log.Warn("terminate undecodable event", "err", err)
		}
		return
	}
	log := f.log.With("source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
		"study_instance_uid", ev.StudyInstanceUID, "last_update", ev.LastUpdate,
		"attempt", attempt, "stream_seq", seq)

	f.m.inFlight.Inc()
	stopProgress := keepAlive(msg, f.opts.AckWait/3, log)
	start := time.Now()
	rep, err := f.Forward(ctx, ev)
	stopProgress()
	f.m.inFlight.Dec()
	elapsed := time.Since(start)
	// Acks, NAKs and dead letters must go out even during shutdown.
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()

	switch {
	case err == nil:
		// DoubleAck waits for the server's confirmation: the event is
		// done only once JetStream knows it is.
		if err := msg.DoubleAck(finishCtx); err != nil {
			log.Error("study stored but the ack was not confirmed; it will be delivered again", "err", err)
			f.m.studies.WithLabelValues("ack_failed").Inc()
			return
		}
		f.m.studies.WithLabelValues("forwarded").Inc()
		f.m.duration.Observe(elapsed.Seconds())
		log.Info("study forwarded", "instances", rep.Instances, "bytes", rep.Bytes,
			"requests", rep.Requests, "already_stored", rep.AlreadyStored, "resent", rep.Resent,
			"duration_ms", elapsed.Milliseconds())
		if attempt > 1 && f.opts.Failures != nil {
			if err := f.opts.Failures.Forget(finishCtx, seq); err != nil {
				log.Warn("forget failure record", "err", err)
			}
		}
		if f.opts.Completed != nil {
			if err := f.opts.Completed(finishCtx, ev); err != nil {
				log.Warn("study forwarded but not recorded as completed", "err", err)
			}
		}
		if f.opts.CleanerFor != nil {
			f.deleteForwarded(ctx, ev, rep.forwarded, log)
		}
	case ctx.Err() != nil:
		log.Warn("shutdown: study returned to the queue", "instances_sent", rep.Instances)
		f.m.studies.WithLabelValues("interrupted").Inc()
		if err := msg.Nak(); err != nil {
			log.Warn("nak on shutdown", "err", err)
		}
	default:
		f.fail(finishCtx, msg, ev, seq, attempt, rep, err, elapsed, log)
	}
}

// fail records a failed attempt and either schedules a retry or
// dead-letters the study, by the failure's class.
func (f *Forwarder) fail(ctx context.Context, msg jetstream.Msg, ev *events.StudyStable, seq, attempt uint64, rep Report, ferr error, elapsed time.Duration, log *slog.Logger) {
	class := Classify(ferr)
	f.m.failures.WithLabelValues(string(class)).Inc()
	now := time.Now().UTC()
	times := FailureTimes{First: now, Last: now}
	if f.opts.Failures != nil {
		t, err := f.opts.Failures.Record(ctx, seq, now)
		if err != nil {
			log.Warn("record failure time", "err", err)
		} else {
			times = t
		}
	}
	outOfDeliveries := f.opts.MaxDeliveries > 0 && attempt >= uint64(f.opts.MaxDeliveries)
	if f.opts.DeadLetters == nil || (!class.DeadLetterNow() && !outOfDeliveries) {
		delay := f.retryDelay(attempt, ferr)
		log.Warn("study not forwarded; will retry", "class", class, "err", ferr, "retry_in", delay.String(),
			"instances_sent", rep.Instances, "duration_ms", elapsed.Milliseconds())
		f.m.studies.WithLabelValues("retry").Inc()
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("nak failed; JetStream redelivers after the ack wait", "err", err)
		}
		return
	}
	reason := ferr.Error()
	if outOfDeliveries && !class.DeadLetterNow() {
		reason = fmt.Sprintf("gave up after %d deliveries: %s", attempt, reason)
	}
	letter := &DeadLetter{
		Event:          *ev,
		Class:          class,
		Reason:         reason,
		Attempts:       attempt,
		FirstFailure:   times.First,
		LastFailure:    times.Last,
		OriginalSeq:    seq,
		DeadLetteredAt: now,
		LastResponse:   lastResponse(ferr),
	}
	var fe *Error
	if errors.As(ferr, &fe) {
		letter.Failures = fe.Instances
	}
	dlSeq, err := f.opts.DeadLetters.Add(ctx, letter)
	if err != nil {
		// Never drop a study: without its dead letter it stays queued.
		delay := f.retryDelay(attempt, nil)
		log.Error("dead letter not stored; the study stays queued", "class", class, "err", err, "retry_in", delay.String())
		f.m.studies.WithLabelValues("retry").Inc()
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("nak failed; JetStream redelivers after the ack wait", "err", err)
		}
		return
	}
	f.m.studies.WithLabelValues("dead_lettered").Inc()
	log.Error("study dead-lettered", "class", class, "err", ferr, "dead_letter_seq", dlSeq,
		"failed_instances", len(letter.Failures), "instances_stored", rep.Instances)
	if err := msg.TermWithReason(fmt.Sprintf("dead-lettered as %d (%s)", dlSeq, class)); err != nil {
		log.Warn("terminate dead-lettered event", "err", err)
	}
	if f.opts.Failures != nil {
		if err := f.opts.Failures.Forget(ctx, seq); err != nil {
			log.Warn("forget failure record", "err", err)
		}
	}
}

// lastResponse is the destination's answer kept with a dead letter.
func lastResponse(err error) string {
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		return fmt.Sprintf("HTTP %d %s: %s", he.StatusCode, he.ContentType, he.Body)
	}
	return ""
}

// retryDelay is exponential backoff with jitter in [d/2, d]: studies that
// failed together (a destination outage) don't all come back at once, and
// the floor keeps the request rate during an outage bounded. A server's
// Retry-After is honoured (up to an hour).
func (f *Forwarder) retryDelay(attempt uint64, err error) time.Duration {
	d := f.opts.RetryDelay
	for i := uint64(1); i < attempt && d < f.opts.RetryMaxDelay; i++ {
		d *= 2
	}
	d = min(d, f.opts.RetryMaxDelay)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	var he *dicomweb.HTTPError
	if errors.As(err, &he) && he.RetryAfter > d {
		d = min(he.RetryAfter, time.Hour)
	}
	return d
}

// Report says what one Forward call sent.
type Report struct {
	// Instances the destination confirmed (stored or already stored).
	Instances int
	Bytes     int64
	Requests  int
	// AlreadyStored counts instances the destination already had.
	AlreadyStored int
	// Resent counts instances sent again after a transient refusal.
	Resent int
	// forwarded are the instances sent, set only when the destination
	// confirmed every one (buffer mode deletes them).
	forwarded []orthancapi.Instance
}

// Forward sends every instance of the event's study to the destination.
// It returns nil only when the destination confirmed every SOP instance;
// otherwise an error that failure.Classify understands. Instances the
// destination refused transiently are re-sent alone, up to
// InstanceRetries rounds.
func (f *Forwarder) Forward(ctx context.Context, ev *events.StudyStable) (Report, error) {
	var rep Report
	src, err := f.opts.SourceFor(ev.Source)
	if err != nil {
		return rep, &Error{Class: Permanent, Err: err}
	}
	instances, err := src.StudyInstances(ctx, ev.OrthancStudyID)
	if err != nil {
		if errors.Is(err, orthancapi.ErrNotFound) {
			return rep, Errorf(SourceMissing, "study %s is no longer in Orthanc source %s: %w", ev.OrthancStudyID, ev.Source, err)
		}
		return rep, fmt.Errorf("list instances of study %s: %w", ev.OrthancStudyID, err)
	}
	if len(instances) == 0 {
		return rep, Errorf(SourceMissing, "study %s has no instances in Orthanc source %s", ev.OrthancStudyID, ev.Source)
	}
	pending := make([]dicomweb.Part, len(instances))
	for i, inst := range instances {
		pending[i] = dicomweb.Part{
			SOPInstanceUID: inst.SOPInstanceUID,
			Size:           inst.FileSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				rc, _, err := src.OpenInstanceFile(ctx, inst.ID)
				return rc, err
			},
		}
	}
	var rejected []Instance
	for round := 0; ; round++ {
		var retry []dicomweb.Part
		outs, err := f.sendAll(ctx, dicomweb.Batches(pending, f.requestSize(len(pending)), f.opts.MaxBytes), &rep)
		if err != nil {
			return rep, err
		}
		for _, out := range outs {
			retry = append(retry, out.retry...)
			rejected = append(rejected, out.rejected...)
		}
		if len(retry) == 0 {
			break
		}
		if round >= f.opts.InstanceRetries {
			return rep, fmt.Errorf("%d instances still refused transiently after %d rounds (first: %s)",
				len(retry), round+1, retry[0].SOPInstanceUID)
		}
		f.log.Warn("re-sending instances the destination refused transiently", "orthanc_study_id", ev.OrthancStudyID,
			"study_instance_uid", ev.StudyInstanceUID, "instances", len(retry), "round", round+1)
		sleep(ctx, f.opts.InstanceRetryDelay<<round)
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Resent += len(retry)
		f.m.resent.Add(float64(len(retry)))
		pending = retry
	}
	if len(rejected) > 0 {
		return rep, &Error{
			Class:     Partial,
			Err:       fmt.Errorf("destination refused %d of %d instances for good (first: %s: %s)", len(rejected), len(instances), rejected[0].SOPInstanceUID, rejected[0].Text),
			Instances: rejected,
		}
	}
	rep.forwarded = instances
	return rep, nil
}

// deleteForwarded is buffer mode: it deletes from the source exactly the
// instances this forward sent and the destination confirmed, so an
// instance that arrived since the study was listed is never deleted. A
// study whose LastUpdate moved since its event is left alone: its next
// event forwards it again (what the destination holds counts as stored)
// and deletes it then. Every failure leaves instances in Orthanc, never
// loses one; shutdown stops the deletes.
func (f *Forwarder) deleteForwarded(ctx context.Context, ev *events.StudyStable, instances []orthancapi.Instance, log *slog.Logger) {
	if len(instances) == 0 {
		return
	}
	c, err := f.opts.CleanerFor(ev.Source)
	if err != nil {
		log.Warn("forwarded study not deleted from the source", "err", err)
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(len(instances)))
		return
	}
	st, err := c.Study(ctx, ev.OrthancStudyID)
	if errors.Is(err, orthancapi.ErrNotFound) {
		return // deleted by someone else meanwhile
	}
	if err != nil {
		log.Warn("forwarded study not deleted from the source: its state could not be read", "err", err)
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(len(instances)))
		return
	}
	if st.LastUpdate != ev.LastUpdate {
		log.Info("forwarded study not deleted from the source: it changed since its event, its next event forwards and deletes it",
			"source_last_update", st.LastUpdate)
		f.m.sourceDeletes.WithLabelValues("skipped").Add(float64(len(instances)))
		return
	}
	deleted := 0
	var firstErr error
	for _, inst := range instances {
		if err := c.DeleteInstance(ctx, inst.ID); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if ctx.Err() != nil {
				break
			}
			continue
		}
		deleted++
	}
	f.m.sourceDeletes.WithLabelValues("deleted").Add(float64(deleted))
	if failed := len(instances) - deleted; failed > 0 {
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(failed))
		log.Warn("some forwarded instances were not deleted from the source; they stay in Orthanc", "deleted", deleted, "failed", failed, "err", firstErr)
		return
	}
	log.Info("forwarded instances deleted from the source", "deleted", deleted)
}

// requestSize spreads n instances over a multiple of RequestConcurrency
// requests of at most MaxInstances, so parallel requests finish together
// (300 instances, 100 a request, 2 at once: 4 requests of 75, not 3 of 100).
func (f *Forwarder) requestSize(n int) int {
	p := max(f.opts.RequestConcurrency, 1)
	reqs := (n + f.opts.MaxInstances - 1) / f.opts.MaxInstances
	reqs = (reqs + p - 1) / p * p
	return max((n+reqs-1)/max(reqs, 1), 1)
}

// sendAll sends the batches, up to RequestConcurrency at once, and returns
// their outcomes in batch order. The first error stops the requests still
// running (their context is cancelled) and is returned.
func (f *Forwarder) sendAll(ctx context.Context, batches [][]dicomweb.Part, rep *Report) ([]batchOutcome, error) {
	outs := make([]batchOutcome, len(batches))
	if f.opts.RequestConcurrency <= 1 {
		for i, batch := range batches {
			out, err := f.send(ctx, batch, rep)
			if err != nil {
				return nil, fmt.Errorf("STOW-RS request %d: %w", rep.Requests, err)
			}
			outs[i] = out
		}
		return outs, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, f.opts.RequestConcurrency)
	)
	for i, batch := range batches {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			var local Report
			out, err := f.send(ctx, batch, &local)
			mu.Lock()
			rep.add(local)
			mu.Unlock()
			if err != nil {
				cancel(fmt.Errorf("STOW-RS request for batch %d of %d: %w", i+1, len(batches), err))
				return
			}
			outs[i] = out
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return outs, nil
}

func (r *Report) add(o Report) {
	r.Instances += o.Instances
	r.Bytes += o.Bytes
	r.Requests += o.Requests
	r.AlreadyStored += o.AlreadyStored
	r.Resent += o.Resent
}

// batchOutcome sorts a request's instances by what to do next.
type batchOutcome struct {
	retry    []dicomweb.Part
	rejected []Instance
}

// send stores one batch and sorts its instances by the response. A 401 is
// retried once: the auth transport has dropped the refused token, so the
// retry carries a fresh one.
func (f *Forwarder) send(ctx context.Context, batch []dicomweb.Part, rep *Report) (batchOutcome, error) {
	rep.Requests++
	res, err := f.opts.Destination.Store(ctx, batch)
	var he *dicomweb.HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusUnauthorized {
		rep.Requests++
		f.m.authRetries.Inc()
		res, err = f.opts.Destination.Store(ctx, batch)
	}
	if err != nil {
		// A STOW response on an error status still says per instance
		// what happened (Orthanc answers 400 when one part is broken and
		// stores the rest; 409 lists conflicts).
		if !errors.As(err, &he) || he.Result == nil || len(he.Result.Stored)+len(he.Result.Failed) == 0 {
			return batchOutcome{}, err
		}
		res = he.Result
		res.StatusCode = he.StatusCode
	}
	stored := make(map[string]bool, len(res.Stored))
	for _, in := range res.Stored {
		stored[in.SOPInstanceUID] = true
	}
	failed := make(map[string]int, len(res.Failed))
	for _, fi := range append(res.Failed, res.OtherFailures...) {
		failed[fi.SOPInstanceUID] = fi.FailureReason
	}
	var out batchOutcome
	confirmed := 0
	for _, p := range batch {
		if stored[p.SOPInstanceUID] {
			confirmed++
			continue
		}
		reason, listed := failed[p.SOPInstanceUID]
		if !listed {
			// Neither stored nor failed: after a success status, send it
			// again; after an error status, the status decides.
			if ClassifyStatus(res.StatusCode) == Transient {
				out.retry = append(out.retry, p)
			} else {
				out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID,
					Text: fmt.Sprintf("not listed in the destination's HTTP %d response", res.StatusCode)})
			}
			continue
		}
		switch ClassifyInstance(reason) {
		case Stored:
			confirmed++
			rep.AlreadyStored++
			f.m.alreadyStored.Inc()
		case Retry:
			out.retry = append(out.retry, p)
		default:
			out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID,
				FailureReason: reason, Text: Describe(reason)})
		}
	}
	rep.Instances += confirmed
	rep.Bytes += res.BytesSent
	f.m.instances.Add(float64(confirmed))
	f.m.bytes.Add(float64(res.BytesSent))
	return out, nil
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
