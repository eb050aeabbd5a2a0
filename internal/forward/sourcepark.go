package forward

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
// Parked messages count against the consumer's MaxAckPending, shared with
// every replica: Options.MaxParked bounds them in each process. Past it,
// and on an event's last delivery (its give-back would dead-letter it as
// a crash), the study holds its worker as with one source.

// sourceParking holds the parked studies by source.
type sourceParking struct {
	limit int // MaxParked
	mu    sync.Mutex
	// n counts the parked studies and the places reserved for studies
	// about to be (reservePark).
	n       int
	sources map[string][]*parkedStudy
	// watchers are the goroutines probing a source, one per source with
	// parked studies.
	watchers sync.WaitGroup
}

// parkedStudy is a study whose message is kept in progress while its
// source is unavailable.
type parkedStudy struct {
	msg          jetstream.Msg
	a            *Attempt
	rep          Report
	stopProgress func()
	log          *slog.Logger
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
// parks MaxParked already (or the study is on its last delivery). A
// reservation is used by park, which cancels it if it parks nothing.
func (f *Forwarder) reservePark(n uint64) bool {
	if f.parking == nil || (f.policy.maxDeliveries > 0 && n >= f.policy.maxDeliveries) {
		return false
	}
	f.parking.mu.Lock()
	defer f.parking.mu.Unlock()
	if f.parking.n >= f.parking.limit {
		return false
	}
	f.parking.n++
	return true
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
// shutdown has started.
func (f *Forwarder) park(p *parkedStudy, state string) bool {
	source := p.a.Event.Source
	f.parking.mu.Lock()
	if f.isStopping() {
		f.parking.n--
		f.parking.mu.Unlock()
		return false
	}
	list, watched := f.parking.sources[source]
	f.parking.sources[source] = append(list, p)
	if !watched {
		f.parking.watchers.Add(1)
		go f.watchParkedSource(source, state)
	}
	f.parking.mu.Unlock()
	f.m.sourceHeld.Inc()
	p.log.Warn("source Orthanc "+state+": the study is parked until it answers, and its worker takes other studies; the outage spends this one delivery",
		"instances_sent", p.rep.Instances)
	return true
}

// watchParkedSource probes source, at waits doubling from sourceHoldWait
// to sourceHoldMaxWait, until it answers or shutdown starts, and then
// gives its parked studies back to the queue.
func (f *Forwarder) watchParkedSource(source, state string) {
	defer f.parking.watchers.Done()
	start := time.Now()
	for wait := sourceHoldWait; ; wait = min(2*wait, sourceHoldMaxWait) {
		t := time.NewTimer(wait)
		select {
		case <-f.stopping:
			t.Stop()
			f.unpark(source, true)
			return
		case <-t.C:
		}
		// The probe ends with shutdown too.
		ctx, cancel := context.WithTimeout(context.Background(), sourceProbeTimeout)
		go func() {
			select {
			case <-f.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
		perr := f.opts.SourceProbe(ctx, source)
		cancel()
		if !sourceUnavailable(perr) {
			f.log.Info("source Orthanc answers again: its parked studies go back to the queue", "source", source, "was", state,
				"held_s", int(time.Since(start).Seconds()))
			f.unpark(source, false)
			return
		}
	}
}

// unpark gives source's parked studies back to the queue: at once, for
// a worker here or at another replica; at shutdown, as handBack does.
func (f *Forwarder) unpark(source string, shutdown bool) {
	f.parking.mu.Lock()
	list := f.parking.sources[source]
	delete(f.parking.sources, source)
	f.parking.n -= len(list)
	f.parking.mu.Unlock()
	for _, p := range list {
		p.stopProgress()
		result := ResultRetry
		if shutdown {
			handBack(p.msg, f.opts.Connected, p.rep, p.log)
			result = ResultInterrupted
		} else if err := p.msg.Nak(); err != nil {
			p.log.Warn("parked study not given back; JetStream sends it again after the ack wait", "err", err)
		} else {
			p.log.Info("parked study given back to the queue: its source Orthanc answers again")
		}
		f.m.sourceHeld.Dec()
		f.m.studies.WithLabelValues(string(result)).Inc()
		f.obs.Finished(p.a, result, p.rep)
		f.drop(p.a.Seq)
	}
}
