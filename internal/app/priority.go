package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/routing"
	"github.com/stowline/stowline/orthancapi"
)

// priorityRuleTimeout bounds the reads of one study for PRIORITY_RULE, so
// that a slow source leaves the publish most of INGEST_PUBLISH_TIMEOUT.
const priorityRuleTimeout = 5 * time.Second

// prioritizer gives the events that name no priority the one
// PRIORITY_RULE picks: stat for a study the rule is true for, else
// routine. It sits in front of the publisher of the reconciler, and of
// the webhook (afterwards: see webhookPublisher), so whichever announces
// a study first puts it in its lane (the other's copy is dropped as a
// duplicate: the dedupe ID does not depend on the lane).
type prioritizer struct {
	next    events.Publisher
	js      jetstream.JetStream
	rule    *routing.StudyRule
	sources *Sources
	timeout time.Duration
	log     *slog.Logger
	events  *prometheus.CounterVec
	// notQueued counts the webhook events whose triage copy was stored
	// (Orthanc told 202) but whose store in a lane failed for budget:
	// with the reconciler off nothing else queues them, and an alert
	// must see them (the log line alone reached no one).
	notQueued prometheus.Counter
	// budget bounds how long triage tries to store an event in its lane
	// (triageBudget).
	budget time.Duration
	// triaging counts the webhook events still being triaged: the ingest
	// waits for them at shutdown (drainTriage), the webhook having
	// answered for them. Once drained (under mu) no triage starts: a
	// handler still running then leaves its event to the reconciler.
	mu       sync.Mutex
	drained  bool
	triaging sync.WaitGroup
	// pending counts the webhook events given a place in the triage
	// backlog (reserveTriage): waiting for a turn, being read or stored.
	pending atomic.Int64
	// backlog bounds pending (triageBacklog): each event waiting holds a
	// goroutine and the event, and a bulk migration under a rule that
	// reads metadata brings them faster than triageReads reads drain them.
	// backlogFull is set from the first event refused until pending is
	// back to nine tenths of backlog, so the fill is logged once, not per
	// event.
	backlog     int64
	backlogFull atomic.Bool
	// turns holds one token per study triage is reading (triageReads).
	turns chan struct{}
	// readsCut is cancelled when drainTriage stops waiting for the reads:
	// the studies still waiting for one, or being read, then go in the
	// routine lane unread, as for a rule that fails, rather than stay on
	// the triage subject only (RECONCILE_ENABLED=false leaves nothing
	// else to queue them); with the reconciler on they stay (reconciled).
	readsCut context.Context
	cutReads context.CancelFunc
	// reconciled: this ingest runs the reconciler, whose copy of a study
	// left on the triage subject goes through the rule after the restart
	// and takes its place; a study cut short is then left to it rather
	// than queued routine for good (a stat study would wait behind the
	// routine backlog).
	reconciled bool
}

// newPrioritizer wraps next; with no rule it only counts the events by
// priority.
func newPrioritizer(js jetstream.JetStream, expr string, sources *Sources, reg prometheus.Registerer, log *slog.Logger) (*prioritizer, error) {
	rule, err := routing.CompileStudyRule(expr)
	if err != nil {
		return nil, fmt.Errorf("PRIORITY_RULE: %w", err)
	}
	readsCut, cutReads := context.WithCancel(context.Background())
	p := &prioritizer{
		next: natsjs.Publisher{JS: js}, js: js, rule: rule, sources: sources, timeout: priorityRuleTimeout, log: log,
		turns: make(chan struct{}, triageReads), backlog: triageBacklog, readsCut: readsCut, cutReads: cutReads, budget: triageBudget,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_ingest_priority_total",
			Help: "Events the webhook and the reconciler stored (not their duplicates), by lane (priority: stat, routine, low) and by what chose it (by: event, rule, default; rule_error: PRIORITY_RULE failed and the study went routine; shutdown: the stopping ingest queued it routine without the rule's read; triage_full: the webhook's triage backlog was full and it went routine without the rule's read).",
		}, []string{"priority", "by"}),
		notQueued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stowline_ingest_triage_not_queued_total",
			Help: "Webhook events stored for PRIORITY_RULE's triage (answered 202) whose store in their lane then failed for 5 minutes: only the reconciler queues those studies, or `forwarder audit --enqueue --priority routine` when it is off.",
		}),
	}
	for _, c := range []prometheus.Collector{p.events, p.notQueued} {
		if err := reg.Register(c); err != nil {
			cutReads()
			return nil, err
		}
	}
	return p, nil
}

// Publish stores ev in the lane of its priority, or of the rule's.
func (p *prioritizer) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	by := "event"
	if ev.Priority == "" {
		by = "default"
		if !p.rule.All() {
			stat, err := p.matches(ctx, ev)
			switch {
			case err != nil && p.readsCut.Err() != nil && p.reconciled && p.polled(ev):
				return nil, errLeftToReconciler
			case err != nil && p.readsCut.Err() != nil:
				by = "shutdown"
				p.log.Warn("shutdown: a study goes in the routine lane without PRIORITY_RULE's read",
					"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID)
			case err != nil:
				// The study must not be lost over its priority.
				by = "rule_error"
				p.log.Warn("PRIORITY_RULE failed on a study; it goes in the routine lane",
					"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "err", err)
			case stat:
				by = "rule"
				e := *ev
				e.Priority = events.PriorityStat
				ev = &e
			default:
				by = "rule"
			}
		}
	}
	return p.store(ctx, ev, by)
}

// store publishes ev in the lane of its priority and counts it by what
// chose that lane.
func (p *prioritizer) store(ctx context.Context, ev *events.StudyStable, by string) (*jetstream.PubAck, error) {
	ack, err := p.next.Publish(ctx, ev)
	if err == nil && !ack.Duplicate {
		// Events, not publishes: the webhook's and the reconciler's copies
		// of a study are one.
		p.events.WithLabelValues(string(ev.Priority.Lane()), by).Inc()
	}
	return ack, err
}

// matches evaluates the rule on the study, read from its source.
func (p *prioritizer) matches(ctx context.Context, ev *events.StudyStable) (bool, error) {
	o, err := p.source(ev)
	if err != nil {
		return false, err
	}
	if p.readsCut.Err() != nil {
		return false, errReadsCut
	}
	// The publish that follows needs time too: the reads take at most
	// half of what is left of the caller's deadline (the reconciler's,
	// INGEST_PUBLISH_TIMEOUT, may be shorter than p.timeout), so a study
	// too slow to read still goes routine rather than failing its publish.
	timeout := p.timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer context.AfterFunc(p.readsCut, cancel)()
	// The list of a large study takes a while: read it only for a rule
	// that looks at the instances.
	var instances []orthancapi.Instance
	if p.rule.NeedsInstanceList() {
		if instances, err = o.StudyInstances(ctx, ev.OrthancStudyID); err != nil {
			return false, fmt.Errorf("list the study's instances: %w", err)
		}
	}
	return p.rule.Selects(ctx, o, p.sources.Name(ev.Source), ev.OrthancStudyID, instances)
}

// errReadsCut: the ingest stops, and drainTriage no longer waits for the
// rule's reads.
var errReadsCut = errors.New("the ingest stops: PRIORITY_RULE reads nothing more")

// polled reports whether the reconciler reads ev's source (one of
// ORTHANC_SOURCES): only its studies can be left to it.
func (p *prioritizer) polled(ev *events.StudyStable) bool {
	_, err := p.source(ev)
	return err == nil && p.sources.Name(ev.Source) == ev.Source // not a former name
}

// errLeftToReconciler: the ingest stops, its reads cut short, and leaves
// the study on the triage subject for the reconciler's copy, which the
// rule reads after the restart.
var errLeftToReconciler = errors.New("the ingest stops: the study is left to the reconciler, which reads PRIORITY_RULE's facts after the restart")

// source returns the Orthanc the rule reads ev's study from.
func (p *prioritizer) source(ev *events.StudyStable) (*orthancapi.Client, error) {
	if p.sources == nil {
		return nil, fmt.Errorf("no Orthanc source is configured")
	}
	return p.sources.Lookup(ev.Source)
}

// webhookPublisher is the prioritizer as the webhook uses it. The
// webhook's event comes from Orthanc's Lua callback, and Orthanc answers
// no REST request while a Lua callback runs (it consults its Lua context
// for every request): reading the study for PRIORITY_RULE before
// answering would wait for the callback, which waits for the answer. So
// an event that names no priority is stored on its source's triage
// subject, which no lane takes, under a dedupe ID of its own; the
// webhook answers (202 still means stored), and then the rule reads the
// study and the event is stored again in its lane under its usual dedupe
// ID. If that fails (or the ingest stops in between), the reconciler's
// copy of the event, published through the rule, is not a duplicate and
// takes its place (`forwarder audit --enqueue`'s with the reconciler off).
// An event of a source the ingest does not read (not in ORTHANC_SOURCES)
// is stored in its lane at once instead: no reconciler polls that source.
type webhookPublisher struct {
	p   *prioritizer
	ctx context.Context // the ingest's: background work ends with it
	// connected reports the NATS connection up; nil: not checked.
	connected func() bool
}

// errNotConnected: the webhook answers 503 at once rather than wait
// INGEST_PUBLISH_TIMEOUT for an acknowledgement that cannot come while
// the client reconnects. Orthanc's Lua post waits for the answer, and
// Orthanc's REST API with it.
var errNotConnected = errors.New("not connected to NATS (reconnecting)")

// Publish stores ev at once, for triage when the rule must read the study.
func (w webhookPublisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	if w.connected != nil && !w.connected() {
		return nil, errNotConnected
	}
	p := w.p
	if ev.Priority != "" || p.rule.All() {
		return p.Publish(ctx, ev)
	}
	if !p.polled(ev) {
		// A source the ingest does not read: the rule has nothing to read
		// (the study goes routine, rule_error), and no reconciler would
		// queue a triage copy left behind (the ingest killed after the
		// answer, the lane refusing it for triageBudget). Stored in its
		// lane before the answer, with no triage copy.
		return p.Publish(ctx, ev)
	}
	if !p.reserveTriage() {
		// The backlog is full: the study goes routine now, unread, as when
		// the rule fails, and with no triage copy the answer says whether
		// it is stored.
		return p.store(ctx, ev, "triage_full")
	}
	ack, err := natsjs.PublishTo(ctx, p.js, natsjs.TriageSubject(ev.Source), ev, ev.MsgID()+"/triage")
	if err != nil && !natsjs.Unanswered(err) {
		p.releaseTriage()
		return ack, err
	}
	// Unanswered, the triage copy may be stored all the same (an
	// acknowledgement lost in a leader election), where nothing would take
	// it to a lane: the study is triaged anyway, and Orthanc still told of
	// the failure. Its lane copy is deduplicated like any other.
	// A duplicate is triaged again: the first copy's triage may not have
	// stored it in its lane (the ingest stopped between the two steps),
	// and the lane's copy is itself deduplicated.
	e := *ev
	// The ingest's lifetime, the request's trace.
	tctx := trace.ContextWithSpan(w.ctx, trace.SpanFromContext(ctx))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drained {
		p.releaseTriage()
		p.log.Error("shutdown: a study waiting for PRIORITY_RULE was stored after the ingest stopped triaging; the reconciler queues it, or `forwarder audit --enqueue` when it is off",
			"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID)
		return ack, err
	}
	p.triaging.Go(func() {
		defer p.releaseTriage()
		p.triage(tctx, &e)
	})
	return ack, err
}

// reserveTriage gives an event a place in the triage backlog; false when
// the backlog is full.
func (p *prioritizer) reserveTriage() bool {
	for {
		n := p.pending.Load()
		if n >= p.backlog {
			if p.backlogFull.CompareAndSwap(false, true) {
				p.log.Warn("the triage backlog is full: webhook events go in the routine lane without PRIORITY_RULE's read until it has room again",
					"studies", n, "backlog", p.backlog)
			}
			return false
		}
		if p.pending.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// releaseTriage frees an event's place in the triage backlog.
func (p *prioritizer) releaseTriage() {
	n := p.pending.Add(-1)
	if n <= p.backlog*9/10 && p.backlogFull.CompareAndSwap(true, false) {
		p.log.Info("the triage backlog has room again: webhook events wait for PRIORITY_RULE's read again",
			"studies", n, "backlog", p.backlog)
	}
}

// drainTriage waits for the events being triaged, once the webhook takes
// no more, so that each is stored in a lane before the JetStream
// connection closes, or logged: for at most reads while the rule reads
// their studies (triageReads at a time), then, the reads cut, at most
// queue while those left go in the routine lane unread.
func (p *prioritizer) drainTriage(reads, queue time.Duration) {
	p.mu.Lock()
	p.drained = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.triaging.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(reads):
	}
	p.cutReads()
	if p.reconciled {
		p.log.Warn("shutdown: PRIORITY_RULE's reads are cut short; the studies still waiting for the rule are left to the reconciler, which queues them after the restart",
			"studies", p.pending.Load())
	} else {
		p.log.Warn("shutdown: PRIORITY_RULE's reads are cut short; the studies still waiting for the rule go in the routine lane",
			"studies", p.pending.Load())
	}
	select {
	case <-done:
	case <-time.After(queue):
		p.log.Error("shutdown: studies waiting for PRIORITY_RULE were not queued in a lane; the reconciler queues them, or `forwarder audit --enqueue` when it is off",
			"studies", p.pending.Load())
	}
}

// triage stores an event waiting on the triage subject in the lane the
// rule gives it.
// A failed store is tried again for up to triageBudget (JetStream
// losing its leader, a full stream freed meanwhile): the webhook has
// answered, and only the reconciler or the audit would find the study
// otherwise.
func (p *prioritizer) triage(ctx context.Context, ev *events.StudyStable) {
	stopping, stopped, warnedStopping := ctx.Done(), false, false
	ctx = context.WithoutCancel(ctx)
	deadline := time.Now().Add(p.budget)
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		// A burst of stable studies is read triageReads at a time, so the
		// source is not flooded, at shutdown too (a rolling restart may
		// hold hundreds); the wait for a turn is not counted in the
		// read's time-out.
		held := false
		select {
		case p.turns <- struct{}{}:
			held = true
		case <-p.readsCut.Done():
			// Shutdown: the publish reads nothing, the study goes routine.
		}
		actx, cancel := context.WithTimeout(ctx, 2*p.timeout)
		_, err := p.Publish(actx, ev)
		cancel()
		if held {
			<-p.turns
		}
		if err == nil {
			return
		}
		if errors.Is(err, errLeftToReconciler) {
			p.log.Info("shutdown: a study waiting for PRIORITY_RULE is left to the reconciler",
				"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID)
			return
		}
		wait := backoff
		select {
		case <-stopping:
			// Shutdown: tried again soon, for triageShutdownWait (as long
			// as drainTriage waits): one last try was lost to a JetStream
			// leader election in a rolling restart. Bounded so, retries
			// end with the drain, the single host's process still up.
			stopped, stopping = true, nil
			if end := time.Now().Add(triageShutdownWait); end.Before(deadline) {
				deadline = end
			}
		default:
		}
		if stopped {
			wait = shutdownRetry
		}
		if time.Now().Add(wait).After(deadline) {
			p.notQueued.Inc()
			p.log.Error("a study waiting for PRIORITY_RULE could not be queued; the reconciler queues it, or `forwarder audit --enqueue` when the reconciler is off",
				"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "err", err)
			return
		}
		if !stopped || !warnedStopping {
			// Once at shutdown, not every 200 ms for each study.
			warnedStopping = stopped
			p.log.Warn("a study waiting for PRIORITY_RULE could not be queued yet; trying again",
				"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "retry_in", wait.String(), "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stopping: // the ingest stops: tried again at once
			t.Stop()
		}
	}
}

// shutdownRetry is how soon triage tries a failed store again once the
// ingest stops.
const shutdownRetry = 200 * time.Millisecond

// triageReads bounds the studies triage reads at once (each with up to 8
// metadata requests when the rule reads callingAets or sopClasses).
const triageReads = 4

// triageBacklog bounds the webhook events waiting for triage or being
// triaged, a goroutine each: their wait for a turn has no time-out, so
// without a bound a bulk migration under a rule that reads metadata
// held more of them than the ingest's memory. 1,000 hold a few MiB and,
// read triageReads at a time, wait about 20 minutes at worst (5 s a
// study).
const triageBacklog = 1000

// triageBudget bounds how long triage tries to store an event in its lane.
const triageBudget = 5 * time.Minute

// triageShutdownWait bounds the wait for triage at shutdown, after the
// HTTP server's grace (deploy/helm/chartcheck reads it): the rule's reads
// (a study's usually take milliseconds) have all but triageShutdownQueue,
// in which the studies left go in the routine lane unread (a publish
// each).
const (
	triageShutdownWait  = 5 * time.Second
	triageShutdownQueue = time.Second
)
