package forward

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/repeatlog"
)

// Where several sources feed the forwarder (ORTHANC_SOURCES), a worker
// held for one unavailable source would leave the others' studies
// waiting, and a study retried as any transient failure spends a delivery
// at each attempt: a long outage of one Orthanc dead-lettered every study
// queued from it. Such a study is parked instead: its message is kept in
// progress without a worker, which goes on to the next study, and the
// study goes back to the queue once its source answers. The outage,
// however long, spends the one delivery in which the study was parked.
// Every other study of that source pulled meanwhile is parked before any
// work.
//
// The source must answer two probes in a row before its studies go back,
// so that a flapping Orthanc does not spend a delivery at each flap.
// Every give-back spends one all the same (a flap that passes both, a
// shutdown), and a message whose in-progress signals lapsed for longer
// than the ack wait (NATS unreachable) is left to JetStream, which has
// sent it again, rather than given back a second time.
//
// Parked messages count against the consumer's MaxAckPending, shared with
// every replica: Options.MaxParked bounds them over the replicas serving
// the destination (SetReplicas shares it). Past it, and on an event's
// last delivery (its give-back would dead-letter it as a crash), the
// study holds its worker as with one source; one of a source that
// refuses the forwarders, only while another worker is left
// (reserveHold): its Lua script goes on queuing studies the forwarders
// cannot read, which would otherwise take every worker once its parked
// studies reached the limit, and stop the other sources' studies until
// it was fixed. Past that such a study is retried as any transient
// failure, spending deliveries.

// sourceParking holds the parked studies by source.
type sourceParking struct {
	limit int // MaxParked, over every replica
	mu    sync.Mutex
	// replicas serving the destination, this one included (SetReplicas).
	replicas int
	// n counts the parked studies and the places reserved for studies
	// about to be (reservePark).
	n int
	// held counts the workers holding a study for its source
	// (reserveHold).
	held    int
	sources map[string][]*parkedStudy
	// watchers are the goroutines probing a source and keeping its
	// studies in progress, one per source with parked studies.
	watchers sync.WaitGroup
}

// share is this process's part of the limit.
func (p *sourceParking) share() int {
	return max(1, p.limit/max(p.replicas, 1))
}

// parkedStudy is a study whose message is kept in progress while its
// source is unavailable.
type parkedStudy struct {
	msg jetstream.Msg
	a   *Attempt
	rep Report
	log *slog.Logger
	// signalled is when JetStream last took an in-progress signal for it.
	signalled time.Time
	// unhold ends its hold on the lane's age (laneAgeGauge.retain): its
	// worker is done with it, but it is in hand until unparked.
	unhold func()
}

// parkError is holdForSource's answer where the study is to be parked
// rather than held: its source is unavailable, as the probe found.
type parkError struct {
	source string
	state  string // what the source does: "unreachable", "refusing ..."
	cause  error  // the attempt's failure
}

func (e *parkError) Error() string {
	return fmt.Sprintf("source Orthanc %q %s: %v", e.source, e.state, e.cause)
}

func (e *parkError) Unwrap() error { return e.cause }

// reservePark reserves a place to park a study on its delivery number
// n, rather than hold its worker: it reports false when the process
// parks its share of MaxParked already (or the study is on its last
// delivery). A reservation is used by park, which cancels it if it parks
// nothing.
func (f *Forwarder) reservePark(n uint64) bool {
	if f.parking == nil || (f.policy.maxDeliveries > 0 && n >= f.policy.maxDeliveries) {
		return false
	}
	f.parking.mu.Lock()
	defer f.parking.mu.Unlock()
	if f.parking.n >= f.parking.share() {
		return false
	}
	f.parking.n++
	return true
}

// reserveHold reserves a worker's hold of a study whose source is
// unavailable, and returns the function that ends it. Where several
// sources feed the forwarder, a source that refuses the forwarders
// (refuses true) may not take the last free worker: it reports false
// once every worker but one holds. An Orthanc down announces nothing
// new, so its held studies are bounded by what was queued, and each is
// held as before: retried, a long outage would dead-letter them.
func (f *Forwarder) reserveHold(refuses bool) (release func(), ok bool) {
	if f.parking == nil {
		return func() {}, true
	}
	f.parking.mu.Lock()
	defer f.parking.mu.Unlock()
	if refuses && f.parking.held >= f.opts.Concurrency-1 {
		return nil, false
	}
	f.parking.held++
	return sync.OnceFunc(func() {
		f.parking.mu.Lock()
		defer f.parking.mu.Unlock()
		f.parking.held--
	}), true
}

// isStopping reports whether shutdown has started.
func (f *Forwarder) isStopping() bool {
	select {
	case <-f.stopping:
		return true
	default:
		return false
	}
}

// parkedSourceDown reports whether studies of source are parked now: its
// next study is parked before any work.
func (f *Forwarder) parkedSourceDown(source string) bool {
	if f.parking == nil {
		return false
	}
	f.parking.mu.Lock()
	defer f.parking.mu.Unlock()
	_, ok := f.parking.sources[source]
	return ok
}

// park keeps p's message in progress until its source answers, and takes
// over its settlement, in the place reservePark reserved. It reports
// false, having cancelled the reservation and done nothing else, when
// shutdown has started, or, with whileParked, when the source's studies
// are no longer parked (it answered since parkedSourceDown).
func (f *Forwarder) park(p *parkedStudy, state string, whileParked bool) bool {
	source := p.a.Event.Source
	f.parking.mu.Lock()
	list, watched := f.parking.sources[source]
	if f.isStopping() || (whileParked && !watched) {
		f.parking.n--
		f.parking.mu.Unlock()
		return false
	}
	p.signalled = time.Now()
	p.unhold = f.m.laneAge.retain(p.a.Seq)
	f.parking.sources[source] = append(list, p)
	if !watched {
		f.parking.watchers.Add(1)
		go f.watchParkedSource(source, state)
	}
	f.parking.mu.Unlock()
	if o, ok := f.obs.(ParkObserver); ok {
		o.Parked(p.a, "parked: source Orthanc "+state)
	}
	f.m.sourceHeld.Inc()
	p.log.Warn("source Orthanc "+state+": the study is parked until it answers, and its worker takes other studies; the outage spends this one delivery",
		"instances_sent", p.rep.Instances)
	return true
}

// watchParkedSource keeps source's parked studies in progress and probes
// source, at waits doubling from sourceHoldWait to sourceHoldMaxWait,
// until it answers two probes in a row or shutdown starts, and then gives
// its parked studies back to the queue. The probe runs on its own, so
// that the signals go on while it waits for a source that does not
// answer (sourceProbeTimeout, longer than a short ack wait).
func (f *Forwarder) watchParkedSource(source, state string) {
	defer f.parking.watchers.Done()
	start := time.Now()
	signals := time.NewTicker(progressInterval(f.opts.AckWait))
	defer signals.Stop()
	failures := repeatlog.Failures{Every: time.Minute}
	answered := false // the last probe found the source back
	wait := sourceHoldWait
	probeAt := time.NewTimer(wait)
	defer probeAt.Stop()
	probed := make(chan error, 1)
	probing := false
	for {
		var err error
		select {
		case <-f.stopping:
			if probing {
				<-probed // ends with shutdown's start
			}
			f.unpark(source, true)
			return
		case <-signals.C:
			f.signalParked(source, &failures)
			continue
		case <-probeAt.C:
			probing = true
			go func() { probed <- f.probeUntilStopping(source) }()
			continue
		case err = <-probed:
			probing = false
		}
		if !sourceUnavailable(err) {
			if answered {
				f.log.Info("source Orthanc answers again: its parked studies go back to the queue", "source", source, "was", state,
					"held_s", int(time.Since(start).Seconds()))
				f.unpark(source, false)
				return
			}
			answered = true
			probeAt.Reset(sourceHoldWait)
			continue
		}
		answered = false
		wait = min(2*wait, sourceHoldMaxWait)
		probeAt.Reset(wait)
	}
}

// probeUntilStopping probes source, for at most sourceProbeTimeout and
// not past the start of shutdown.
func (f *Forwarder) probeUntilStopping(source string) error {
	ctx, cancel := context.WithTimeout(context.Background(), sourceProbeTimeout)
	defer cancel()
	go func() {
		select {
		case <-f.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return f.opts.SourceProbe(ctx, source)
}

// signalParked tells JetStream that source's parked studies are still in
// progress, one failure logged for all of them at a time.
func (f *Forwarder) signalParked(source string, failures *repeatlog.Failures) {
	f.parking.mu.Lock()
	list := slices.Clone(f.parking.sources[source])
	f.parking.mu.Unlock()
	var failed error
	for _, p := range list {
		if err := signalInProgress(p.msg, f.opts.Connected); err != nil {
			failed = err
			continue
		}
		f.parking.mu.Lock()
		p.signalled = time.Now()
		f.parking.mu.Unlock()
	}
	switch {
	case failed != nil:
		if n, ok := failures.Failed(); ok {
			f.log.Warn("in-progress signals of parked studies failed", "source", source, "studies", len(list), "err", failed, "failures", n)
		}
	case len(list) > 0:
		if n := failures.Succeeded(); n > 0 {
			f.log.Info("in-progress signals of parked studies resumed", "source", source, "failures", n)
		}
	}
}

// unpark gives source's parked studies back to the queue: at once, for
// a worker here or at another replica; at shutdown, as handBack does.
// One whose signals lapsed for longer than the ack wait is JetStream's
// again (sent to a worker meanwhile, perhaps at another replica): giving
// it back too would have it sent twice at once.
func (f *Forwarder) unpark(source string, shutdown bool) {
	f.parking.mu.Lock()
	list := f.parking.sources[source]
	delete(f.parking.sources, source)
	f.parking.n -= len(list)
	f.parking.mu.Unlock()
	// What a parked study's attempt stored and could not record (NATS
	// unreachable) is written before it goes back, as settle does for
	// the others: its next delivery would take those copies for
	// conflicts. All at once: each may wait out rememberTimeout, longer
	// than a short ack wait, so the studies are kept in progress
	// meanwhile (those whose signals lapsed already are JetStream's).
	var writes sync.WaitGroup
	for _, p := range list {
		if len(p.rep.unrecorded) == 0 {
			continue
		}
		writes.Go(func() {
			ctx, cancel := f.settleContext(context.Background(), rememberTimeout)
			defer cancel()
			if err := f.rememberStored(ctx, p.a.Event, p.rep.unrecorded); err != nil {
				p.log.Warn("remember what the parked study's attempt stored, before it goes back: a later delivery of the study may take those instances for conflicts",
					"instances", len(p.rep.unrecorded), "err", err)
			}
		})
	}
	written := make(chan struct{})
	go func() { writes.Wait(); close(written) }()
	signals := time.NewTicker(progressInterval(f.opts.AckWait))
	for waiting := true; waiting; {
		select {
		case <-written:
			waiting = false
		case <-signals.C:
			for _, p := range list {
				if time.Since(p.signalled) <= f.opts.AckWait && signalInProgress(p.msg, f.opts.Connected) == nil {
					p.signalled = time.Now()
				}
			}
		}
	}
	signals.Stop()
	for _, p := range list {
		// Dropped first: a worker here may get it at once, and would
		// leave it to this delivery if it were still in hand.
		f.drop(p.a.Seq)
		result := ResultRetry
		switch {
		case time.Since(p.signalled) > f.opts.AckWait:
			p.log.Warn("parked study's in-progress signals lapsed for longer than the ack wait: JetStream sends it again, it is not given back",
				"lapsed_s", int(time.Since(p.signalled).Seconds()))
		case shutdown:
			handBack(p.msg, f.opts.Connected, p.rep, p.log)
			result = ResultInterrupted
		default:
			if err := p.msg.Nak(); err != nil {
				p.log.Warn("parked study not given back; JetStream sends it again after the ack wait", "err", err)
			} else {
				p.log.Info("parked study given back to the queue: its source Orthanc answers again")
			}
		}
		p.unhold()
		f.m.sourceHeld.Dec()
		f.m.studies.WithLabelValues(string(result)).Inc()
		f.obs.Finished(p.a, result, p.rep)
	}
}
