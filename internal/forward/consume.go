package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// Run pulls and forwards events until ctx ends. Then it stops pulling,
// lets in-flight studies finish for up to ShutdownGrace, and returns the
// rest to the queue (NAK) so another replica takes them at once. It
// returns at most settleAfterGrace after the grace: the acks, NAKs and
// writes that settle the attempts stop then (settleContext).
func (f *Forwarder) Run(ctx context.Context) error {
	if len(f.opts.Lanes) == 0 {
		return errors.New("forward: no consumer")
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	// The source's request slots are shared with the other destinations
	// of the process: this one's requests take its share (ShareSlots).
	workCtx = orthancapi.ForSlotOwner(workCtx, f.opts.DestinationName)
	stopGrace := context.AfterFunc(ctx, func() {
		f.log.Info("shutdown: no more studies are pulled; those in progress have the grace to finish, the rest go back to the queue",
			"grace", f.opts.ShutdownGrace.String())
		time.AfterFunc(f.opts.ShutdownGrace, cancelWork)
		time.AfterFunc(f.opts.ShutdownGrace+settleAfterGrace, f.stopHard)
	})
	defer stopGrace()

	// Held studies go back to the queue as soon as shutdown starts:
	// they wait for the destination, not for work to finish.
	stopBreaker := context.AfterFunc(ctx, f.breaker.stop)
	defer stopBreaker()
	defer f.breaker.stop()
	stopHolds := context.AfterFunc(ctx, func() { f.stoppingOnce.Do(func() { close(f.stopping) }) })
	defer stopHolds()

	waitTrials := f.startTrialPulls(ctx, workCtx)
	var wg sync.WaitGroup
	for range f.opts.Concurrency {
		wg.Go(func() { f.worker(ctx, workCtx, false) })
	}
	wg.Go(func() { f.watchLanes(ctx) })
	// Stat workers take nothing but stat studies: one is free for a stat
	// study however long the backfill the others are sending.
	if f.plan.has(events.PriorityStat) {
		for range f.opts.StatWorkers {
			wg.Go(func() { f.worker(ctx, workCtx, true) })
		}
	}
	wg.Wait()
	waitTrials()
	if f.parking != nil {
		// Shutdown gave the parked studies back.
		f.parking.watchers.Wait()
	}
	return nil
}

// worker pulls one event at a time, only when it is free, so no event waits
// in a client-side buffer while its ack wait runs out; next decides from
// which lane.
func (f *Forwarder) worker(ctx, workCtx context.Context, statOnly bool) {
	for ctx.Err() == nil {
		// An open circuit breaker stops the pulls: the destination is
		// down, and an event pulled now would only wait.
		if f.breaker.waitClosed(ctx) != nil {
			continue
		}
		msg, lane, done := f.next(ctx, statOnly)
		if msg == nil {
			continue
		}
		if f.givenBackPaused(ctx, msg, lane) {
			done()
			continue
		}
		if f.plan.elsewhere(lane, msg.Subject()) {
			f.settleElsewhere(workCtx, msg, lane)
		} else {
			f.handle(workCtx, msg, lane)
		}
		done()
	}
}

// givenBackPaused gives back an event pulled while the forwarder is
// paused (Options.Paused), and reports whether it did: a pull made before
// the pause waits up to longPull on the server and may bring one. It is
// offered again after longPull, once every such pull has expired: one
// delivery spent, not one per worker. An event on its last delivery (or
// past it) is not given back: it would come back past
// FORWARDER_MAX_DELIVERIES and be dead-lettered as if forwarders had
// crashed on it. It is kept in hand, in progress, until the pause ends
// (then handled, false) or shutdown starts (then settled, true:
// pausedAtShutdown). Only
// those: the others, given back, stay free for another forwarder, and a
// pause may last hours.
func (f *Forwarder) givenBackPaused(ctx context.Context, msg jetstream.Msg, lane events.Priority) bool {
	if !f.plan.isPaused() {
		return false
	}
	var seq, n uint64
	if meta, err := msg.Metadata(); err == nil {
		seq, n = meta.Sequence.Stream, meta.NumDelivered
	}
	if limit := f.policy.maxDeliveries; limit > 0 && n >= limit {
		return f.keptWhilePaused(ctx, msg, lane, seq, n)
	}
	f.log.Info("event pulled as the forwarder paused: given back to the queue", "lane", lane, "stream_seq", seq)
	if err := msg.NakWithDelay(longPull); err != nil {
		f.log.Warn("give back an event pulled as the forwarder paused; JetStream offers it again after the ack wait", "lane", lane, "stream_seq", seq, "err", err)
	}
	return true
}

// keptWhilePaused keeps msg, on its last delivery n, in progress while the
// forwarder is paused; it settles it (pausedAtShutdown), and reports
// true, if ctx ends first.
func (f *Forwarder) keptWhilePaused(ctx context.Context, msg jetstream.Msg, lane events.Priority, seq, n uint64) bool {
	f.log.Info("event on its last delivery pulled as the forwarder paused: kept in progress until the pause ends, not given back",
		"lane", lane, "stream_seq", seq, "attempt", n)
	stop := keepAlive(msg, progressInterval(f.opts.AckWait), f.opts.Connected, f.log)
	defer stop()
	for f.plan.isPaused() {
		if ctx.Err() != nil {
			f.pausedAtShutdown(ctx, msg, lane, seq, n)
			return true
		}
		sleep(ctx, idlePull)
	}
	return false
}

// handle runs one delivery: it decodes the event, stops a poison study
// before any work, transfers the study while telling JetStream it is in
// progress, and settles the message by the outcome policy.
// newerVersionDelay is how long an event of a newer version waits before
// it is offered again. Each give-back spends a delivery: with the default
// FORWARDER_MAX_DELIVERIES (48) an upgrade may take 4 hours before a
// newer forwarder finds its budget spent.
const newerVersionDelay = 5 * time.Minute

func (f *Forwarder) handle(ctx context.Context, msg jetstream.Msg, lane events.Priority) {
	a := &Attempt{Destination: f.opts.DestinationName, Number: 1, lane: lane}
	parked := false // the message is in the parking's hands (sourcepark.go)
	meta, err := msg.Metadata()
	if err == nil {
		a.Number, a.Seq = meta.NumDelivered, meta.Sequence.Stream
		if !f.take(a.Seq) {
			// Its in-progress signals lapsed (NATS unreachable for longer
			// than the ack wait) and JetStream handed it out again. The
			// first delivery's signals and settlement cover the event
			// (JetStream keys them by stream sequence): leave this one
			// unsettled rather than send the study twice at once.
			f.log.Warn("event delivered again while this process still works on it; left to the first delivery",
				"subject", msg.Subject(), "stream_seq", a.Seq, "attempt", a.Number)
			return
		}
		defer func() {
			if !parked {
				f.drop(a.Seq)
			}
		}()
	}
	ctx, span := f.startAttempt(ctx, msg, meta)
	defer span.End()
	ev, err := events.Decode(msg.Data())
	if errors.Is(err, events.ErrNewerVersion) {
		// A rolling upgrade: a newer ingest wrote it, a newer forwarder
		// reads it. Terminated here it would be lost for this
		// destination: give it back (a delivery spent each time).
		f.log.Warn("event of a newer version given back for a newer forwarder", "subject", msg.Subject(), "stream_seq", a.Seq, "err", err)
		f.m.studies.WithLabelValues(string(ResultNewerVersion)).Inc()
		recordOutcome(span, ResultNewerVersion, "", Report{})
		if err := msg.NakWithDelay(newerVersionDelay); err != nil {
			f.log.Warn("give back an event of a newer version", "err", err)
		}
		return
	}
	if err != nil {
		f.undecodable(ctx, msg, a, err)
		return
	}
	a.Event = ev
	log := f.log.With("source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
		"study_instance_uid", ev.StudyInstanceUID, "last_update", ev.LastUpdate,
		"attempt", a.Number, "stream_seq", a.Seq)
	if span.IsRecording() {
		span.SetAttributes(tracing.Event(ev)...)
		log = log.With("trace_id", span.SpanContext().TraceID().String())
	}
	a.log = log
	f.obs.Started(a)

	if d, poison := f.policy.exhausted(a.Number); poison {
		f.settle(ctx, msg, a, d, Report{}, errors.New(d.reason), 0, log, nil)
		return
	}
	if _, err := f.opts.SourceFor(ev.Source); errors.Is(err, ErrUnknownSource) {
		f.unknownSource(ctx, msg, a, err, log)
		return
	}

	f.m.inFlight.Inc()
	stopProgress := keepAlive(msg, progressInterval(f.opts.AckWait), f.opts.Connected, log)
	start := time.Now()
	// parkHere hands the message to the parking (sourcepark.go), whose
	// watcher then keeps it in progress.
	parkHere := func(rep Report, state string, whileParked bool) bool {
		parked = f.park(&parkedStudy{msg: msg, a: a, rep: rep, log: log}, state, whileParked)
		if parked {
			stopProgress()
			f.m.inFlight.Dec()
		}
		return parked
	}
	// One attempt of a study at a time: another delivery of it (a newer
	// event, a backfill) sent meanwhile would find each instance the
	// other stored "already" there, and take it for a conflict.
	release, err := f.takeStudy(ctx, a, log)
	defer release()
	var rep Report
	// While its source's studies are parked, a study is parked before any
	// attempt.
	if err == nil && f.parkedSourceDown(ev.Source) && f.reservePark(a.Number) {
		if parkHere(Report{}, "unavailable (its other studies are parked)", true) {
			recordOutcome(span, resultParked, "", Report{})
			return
		}
		if f.isStopping() {
			err = errShutdown
		}
	}
	if !errors.Is(err, errShutdown) {
		rep, err = f.transferGuarded(ctx, a, log)
	}
	if err != nil && Classify(err) == SourceMissing {
		if gone, ok := f.deletedByBufferMode(ctx, a.Event, log); ok {
			rep, err = gone, nil
		}
	}
	if pe, ok := errors.AsType[*parkError](err); ok {
		if parkHere(rep, pe.state, false) {
			recordOutcome(span, resultParked, Classify(err), rep)
			// The attempt failed: counted, and its time kept for a
			// dead letter later, as a retry's are.
			f.m.failures.WithLabelValues(string(Classify(err))).Inc()
			f.recordFailure(ctx, a, log)
			return
		}
		if f.isStopping() {
			err = fmt.Errorf("%w: %w", pe, errShutdown)
		}
	}
	f.m.inFlight.Dec()
	var ce *crashError
	if errors.As(err, &ce) {
		log.Error("forwarding the study panicked; it is dead-lettered instead of crashing the forwarder",
			"panic", ce.value, "frames", strings.Join(ce.frames, " < "))
	}
	d := f.policy.decide(a.Number, err, ctx.Err() != nil || errors.Is(err, errShutdown))
	f.settle(ctx, msg, a, d, rep, err, time.Since(start), log, stopProgress)
}

// unknownSource settles a delivery whose event names a source this
// forwarder does not know. Mostly a source being added, which a
// forwarder on the new configuration serves: dead-lettered at once, every
// study of the new source sent meanwhile needed a replay. So it is given
// back, as an event of a newer version is, and dead-lettered as of an
// unknown source only past policy.unknownSource's bound.
func (f *Forwarder) unknownSource(ctx context.Context, msg jetstream.Msg, a *Attempt, err error, log *slog.Logger) {
	d := f.policy.unknownSource(a.Number, err)
	if d.action == retry && f.policy.canDeadLetter {
		if ok, share := f.unknown.take(time.Now(), d.delay); !ok {
			d = decision{action: deadLetter, class: Permanent, reason: fmt.Sprintf(
				"%s; not given back for a forwarder that knows the source: %d events of unknown sources wait given back already, this forwarder's share of the queue's in-flight window, which other sources' studies need: "+
					"add the source to the forwarders' ORTHANC_SOURCES, then replay", err, share)}
		}
	}
	if d.action != retry {
		f.settle(ctx, msg, a, d, Report{}, err, 0, log, nil)
		return
	}
	log.Warn("event of a source this forwarder does not know given back for a forwarder that knows it (a source being added: configure it in every forwarder)",
		"retry_in", d.delay.String(), "err", err)
	if nerr := msg.NakWithDelay(d.delay); nerr != nil {
		log.Warn("give back an event of an unknown source; JetStream offers it again after the ack wait", "err", nerr)
	}
	f.m.studies.WithLabelValues(string(ResultUnknownSource)).Inc()
	recordOutcome(trace.SpanFromContext(ctx), ResultUnknownSource, "", Report{})
	f.obs.Finished(a, ResultUnknownSource, Report{})
}

// deletedByBufferMode tells whether a study no longer in the source was
// deleted by buffer mode once done for this destination: its ledger
// records ev's state or a newer one as forwarded (Options.Forwarded) or as
// not selected by its rules (Options.RecordedNotSelected). ok is false
// otherwise, and when the ledger cannot be read: the study is
// dead-lettered as source-missing.
func (f *Forwarder) deletedByBufferMode(ctx context.Context, ev *events.StudyStable, log *slog.Logger) (rep Report, ok bool) {
	for _, c := range []struct {
		done func(context.Context, *events.StudyStable) (bool, error)
		rep  Report
	}{
		{f.opts.Forwarded, Report{forwardedBefore: true}},
		{f.opts.RecordedNotSelected, Report{NotSelected: true, deletedNotSelected: true}},
	} {
		if c.done == nil {
			continue
		}
		// Through a JetStream leader election, as the ledger's writes,
		// but not for ever: a read the NATS user may not make times out
		// alike, and the worker held the study's turn until shutdown.
		var done bool
		err := f.whileUnanswered(ctx, func() (err error) {
			done, err = c.done(ctx, ev)
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("study no longer in the source, and the destination's ledger could not be read to tell whether buffer mode deleted it", "err", err)
			}
			return Report{}, false
		}
		if done {
			return c.rep, true
		}
	}
	return Report{}, false
}

// take records that this process works on the event at stream sequence
// seq; it reports false if it already does.
func (f *Forwarder) take(seq uint64) bool {
	f.inHandMu.Lock()
	defer f.inHandMu.Unlock()
	if f.inHand[seq] {
		return false
	}
	f.inHand[seq] = true
	return true
}

// drop ends what take started.
func (f *Forwarder) drop(seq uint64) {
	f.inHandMu.Lock()
	defer f.inHandMu.Unlock()
	delete(f.inHand, seq)
}

// studyKey names a study for takeStudy: its source and Orthanc study ID
// (a Forwarder serves one destination).
func studyKey(ev *events.StudyStable) string { return ev.Source + "/" + ev.OrthancStudyID }

// studyTurn is a study's delivery being worked on in this process
// (takeStudy), by owner: done closes as it ends; held is closed while
// owner is held (for the destination or its source), and replaced as it
// leaves the hold.
type studyTurn struct {
	owner  *Attempt
	done   chan struct{}
	isHeld bool
	held   chan struct{}
}

// turnHeld tells a's turn of its study, if it has it, that a enters a
// hold (held) or leaves it: a trial of the study may go meanwhile.
func (f *Forwarder) turnHeld(a *Attempt, held bool) {
	f.inHandMu.Lock()
	defer f.inHandMu.Unlock()
	t := f.sendingStudy[studyKey(a.Event)]
	if t == nil || t.owner != a || t.isHeld == held {
		return
	}
	t.isHeld = held
	if held {
		close(t.held)
	} else {
		t.held = make(chan struct{})
	}
}

// takeStudy waits until no other delivery of a's study is being worked
// on in this process, and records a's. Meanwhile a's message is kept in
// progress (handle's keepAlive), as a held study's: no delivery is
// spent, and the newer event is sent once the older attempt ends (it may
// carry new instances). Shutdown ends the wait with errShutdown: the
// event goes back to the queue. release ends what takeStudy started; it
// is never nil.
//
// A trial pulled for the shut breaker waits only until the other is held
// (turnHeld), then goes beside it: a held study may be held for that
// very trial. Pulled once the breaker closed, it is an ordinary study.
// One still sending after a probe interval (a large study) gives up
// being the trial, so that the breaker chooses another and the workers
// waiting for it do not wait for that whole transfer; the event then
// waits as an ordinary study, in progress, spending no delivery.
func (f *Forwarder) takeStudy(ctx context.Context, a *Attempt, log *slog.Logger) (release func(), err error) {
	key := studyKey(a.Event)
	pt, pulled := ctx.Value(pulledTrialKey{}).(*pulledTrial)
	trial := pulled && !pt.used && f.breaker.shut()
	var trialWait <-chan time.Time
	if trial {
		tm := time.NewTimer(f.breaker.cfg.interval)
		defer tm.Stop()
		trialWait = tm.C
	}
	waited := false
	defer func() {
		if waited {
			f.held(a, "")
		}
	}()
	for {
		f.inHandMu.Lock()
		other, busy := f.sendingStudy[key]
		if !busy {
			t := &studyTurn{owner: a, done: make(chan struct{}), held: make(chan struct{})}
			f.sendingStudy[key] = t
			f.inHandMu.Unlock()
			return func() {
				f.inHandMu.Lock()
				delete(f.sendingStudy, key)
				f.inHandMu.Unlock()
				close(t.done)
			}, nil
		}
		if trial && other.isHeld {
			f.inHandMu.Unlock()
			log.Info("another delivery of the study is held here: this one, the circuit breaker's trial, is sent beside it")
			a.beside = true
			return func() {
				if a.lateTurn != nil {
					a.lateTurn()
				}
			}, nil
		}
		done, held := other.done, other.held
		f.inHandMu.Unlock()
		if !trial {
			held = nil // an ordinary study waits for the end
		}
		if pulled && !pt.used && !trial {
			// Pulled as the trial, it found the breaker closed (a study
			// stored meanwhile): no trial, it waits as any study, and
			// must not keep the breaker's pull while it does: should the
			// breaker open again, no held study could be the next trial
			// (pulling set), and the other delivery, held, would wait
			// for this one for good.
			pt.used, pt.released = true, true
			f.breaker.pulledTrialEnded(true, false)
		}
		if !waited {
			waited = true
			log.Info("another delivery of the study is being sent here: this one waits for it to end; no delivery is spent", "trial", trial)
			f.held(a, "waiting: another delivery of the study is being sent")
		}
		select {
		case <-done:
		case <-held:
		case <-trialWait:
			// As a pulled trial settled without a request: the breaker
			// pulls or picks the next, and this event is no trial.
			trial, trialWait = false, nil
			pt.used, pt.released = true, true
			f.breaker.pulledTrialEnded(true, false)
			log.Info("another delivery of the study is still being sent: this one is no longer the circuit breaker's trial and waits for it to end; no delivery is spent")
		case <-f.stopping:
			return func() {}, errShutdown
		case <-ctx.Done():
			return func() {}, errShutdown
		}
	}
}

// transferRecovering is transfer with a panic turned into a crash
// failure, so one bad study cannot take every replica down in turn.
func (f *Forwarder) transferRecovering(ctx context.Context, a *Attempt) (rep Report, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &Error{Class: Crash, Err: newCrashError(v)}
		}
	}()
	return f.transfer(ctx, a)
}

// crashError is a recovered panic: its value and the top frames of the
// panicking goroutine, function names and lines only (no arguments, so no
// patient data).
type crashError struct {
	value  string
	frames []string
}

// maxCrashFrames and maxPanicText bound what a dead letter keeps.
const (
	maxCrashFrames = 8
	maxPanicText   = 300
)

func newCrashError(v any) *crashError {
	text := fmt.Sprint(v)
	if len(text) > maxPanicText {
		text = text[:maxPanicText] + "…"
	}
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs) // skip Callers, newCrashError, the deferred func
	frames := runtime.CallersFrames(pcs[:n])
	var out []string
	for {
		fr, more := frames.Next()
		if !strings.HasPrefix(fr.Function, "runtime.") {
			out = append(out, fmt.Sprintf("%s (%s:%d)", fr.Function, trimPath(fr.File), fr.Line))
		}
		if !more || len(out) == maxCrashFrames {
			break
		}
	}
	return &crashError{value: text, frames: out}
}

func (e *crashError) Error() string {
	return "panic: " + e.value + " at " + strings.Join(e.frames, " < ")
}

// trimPath keeps the last two elements of a source path.
func trimPath(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		if j := strings.LastIndexByte(p[:i], '/'); j >= 0 {
			return p[j+1:]
		}
	}
	return p
}

// progressInterval is how often a study in hand is reported in progress:
// a third of this process's ack wait, and at most every second, since the
// consumer's own ack wait is whatever the replica that started last set
// (3 s at the least): a rollout that lowers FORWARDER_ACK_WAIT must not
// get long uploads redelivered to other workers.
func progressInterval(ackWait time.Duration) time.Duration {
	return min(ackWait/3, time.Second)
}

// keepAlive tells JetStream every interval that msg is still being worked
// on, so a long upload is not redelivered to another replica.
//
// While NATS is unreachable every signal fails, every second for every
// study in hand: the first failure is a warning, then one a minute with
// the count, and the signals' return is logged once. A signal the client
// only buffers while it reconnects (connected false; nil: not checked)
// counts as failed: JetStream does not get it, and the ack wait runs.
func keepAlive(msg jetstream.Msg, interval time.Duration, connected func() bool, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		failures := repeatlog.Failures{Every: time.Minute}
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := signalInProgress(msg, connected); err != nil {
					if n, ok := failures.Failed(); ok {
						log.Warn("in-progress signal failed", "err", err, "failures", n)
					}
				} else if n := failures.Succeeded(); n > 0 {
					log.Info("in-progress signals resumed", "failures", n)
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// signalInProgress tells JetStream that msg is still being worked on;
// one only buffered while the client reconnects fails (keepAlive).
func signalInProgress(msg jetstream.Msg, connected func() bool) error {
	if err := msg.InProgress(); err != nil {
		return err
	}
	if connected != nil && !connected() {
		return errNATSUnreachable
	}
	return nil
}

// errNATSUnreachable: a signal or NAK went to the client's reconnect
// buffer, not to JetStream.
var errNATSUnreachable = errors.New("NATS unreachable: the client holds the signal until it reconnects")

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
