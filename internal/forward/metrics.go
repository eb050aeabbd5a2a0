package forward

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
)

type metrics struct {
	studies   *prometheus.CounterVec
	instances prometheus.Counter
	bytes     prometheus.Counter
	duration  prometheus.Histogram
	inFlight  prometheus.Gauge

	failures      *prometheus.CounterVec
	resent        prometheus.Counter
	alreadyStored prometheus.Counter
	authRetries   prometheus.Counter
	// resends counts STOW-RS requests sent again after a refusal for
	// load, by status (429, or a 503 while the destination answers
	// others).
	resends *prometheus.CounterVec
	// conflicts counts instances the destination already held with other
	// content, by what was done (skipped, replaced, dead_lettered).
	conflicts *prometheus.CounterVec
	// unproven counts instances counted as already stored on the
	// destination's word alone (batchOutcome.unproven).
	unproven prometheus.Counter
	// nonPrimary counts instances AWS HealthImaging stored in a
	// non-primary image set: an imageSetId in their RetrieveURL, and not
	// listed by a search without it (confirmNonPrimary).
	nonPrimary prometheus.Counter
	// sourceDeletes counts instances of forwarded studies by what buffer
	// mode did with them in the source (deleted, failed, skipped,
	// kept_unselected...).
	sourceDeletes *prometheus.CounterVec
	// conversions counts instances read converted to another transfer
	// syntax, or refused for it, by result.
	conversions *prometheus.CounterVec
	// verifications, verifyMissing and verifyDuration: STOW_VERIFY=qido.
	verifications  *prometheus.CounterVec
	verifyMissing  prometheus.Counter
	verifyDuration prometheus.Histogram
	// breakerState, breakerTransitions and held: the circuit breaker.
	breakerState       prometheus.Gauge
	breakerTransitions *prometheus.CounterVec
	held               prometheus.Gauge
	// sourceHeld: studies held while their source is unreachable.
	sourceHeld prometheus.Gauge
	// lanePulls and laneBusy: events pulled and studies in flight by
	// priority lane (lanes.go).
	lanePulls *prometheus.CounterVec
	laneBusy  *prometheus.GaugeVec
	// laneAge is how long ago the oldest of the events in hand and the
	// event last pulled from each lane was stored, and retention
	// EVENTS_RETENTION (lanes.go, queueAge).
	laneAge   *laneAgeGauge
	retention prometheus.Gauge
	// storeFull counts this forwarder's JetStream writes refused for want
	// of storage, by what was written (storeFullLedger and the others):
	// only logged before, while NATS filled.
	storeFull *prometheus.CounterVec
}

// What a forwarder writes to JetStream, the label of
// stowline_forwarder_store_full_total.
const (
	storeFullLedger      = "ledger"
	storeFullStored      = "stored_record"
	storeFullFailureTime = "failure_record"
	storeFullDeadLetter  = "dead_letter"
)

func newMetrics(reg prometheus.Registerer, destination string) (*metrics, error) {
	// One forwarder per destination registers these: the destination
	// label tells them apart.
	labels := prometheus.Labels{"destination": destination}
	m := &metrics{
		studies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "stowline_forwarder_studies_total",
			Help:        "Studies handled, by result (forwarded, not_selected, retry, dead_lettered, interrupted, undecodable, ack_failed, newer_version, unknown_source, already_forwarded, already_dead_lettered).",
			ConstLabels: labels,
		}, []string{"result"}),
		instances: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "stowline_forwarder_instances_total",
			Help:        "Instances the destination confirmed as stored.",
			ConstLabels: labels,
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "stowline_forwarder_bytes_total",
			Help:        "Bytes of STOW-RS request bodies the destination confirmed.",
			ConstLabels: labels,
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "stowline_forwarder_study_duration_seconds",
			Help:        "Time to forward one study, for studies forwarded.",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.05, 2, 20), // to 7.3 h: a 10 GB study over a capped uplink takes hours
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "stowline_forwarder_studies_in_flight",
			Help:        "Studies being sent now by this process.",
			ConstLabels: labels,
		}),
	}
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_failures_total",
		Help:        "Failed forwarding attempts, by failure class (transient, partial, permanent, source-missing, crash, conflict).",
		ConstLabels: labels,
	}, []string{"class"})
	m.resent = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_instances_resent_total",
		Help:        "Instances sent again alone after the destination refused them transiently.",
		ConstLabels: labels,
	})
	m.alreadyStored = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_instances_already_stored_total",
		Help:        "Instances the destination reported as already stored (counted as success).",
		ConstLabels: labels,
	})
	m.unproven = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_instances_unproven_total",
		Help:        "Instances counted as already stored on the destination's word alone, its copy not known to be the one stowline sent (a request sent again or broken off, or an \"already exists\" code outside STOW_CONFLICT_REASONS): kept in the source by buffer mode.",
		ConstLabels: labels,
	})
	m.authRetries = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_auth_retries_total",
		Help:        "STOW-RS requests sent again with a fresh token after the destination answered 401.",
		ConstLabels: labels,
	})
	m.resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_stow_resends_total",
		Help:        "STOW-RS requests sent again within a delivery after the destination refused them for load, by status: 429, or 503 while it answered other requests within the last minute (busy, not down).",
		ConstLabels: labels,
	}, []string{"status"})
	for _, s := range []string{resend429, resend503} {
		m.resends.WithLabelValues(s)
	}
	m.conflicts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_conflicts_total",
		Help:        "Instances the destination already held with other content (STOW_CONFLICT_REASONS), by what STOW_ON_CONFLICT did: skipped (counted as stored), replaced, dead_lettered.",
		ConstLabels: labels,
	}, []string{"action"})
	for _, a := range []string{"skipped", "replaced", "dead_lettered"} {
		m.conflicts.WithLabelValues(a)
	}
	m.nonPrimary = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_instances_non_primary_total",
		Help:        "Instances AWS HealthImaging stored in a non-primary image set (metadata conflicting with the primary one): dead-lettered for a human to reconcile.",
		ConstLabels: labels,
	})
	m.sourceDeletes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_source_deletes_total",
		Help:        "Instances of forwarded studies that buffer mode (FORWARDER_DELETE_FROM_SOURCE) deleted from the source Orthanc, failed to delete (a destination with none of its own in the study: those some destination's rules select, the most it would have released), skipped because the study changed since its event, kept waiting for another destination that selected them, or found already gone (gone: another destination finishing at the same moment, or someone else, deleted them first); kept: instances the destination does not hold as sent (a conflict skipped, one it already held that stowline cannot prove it stored, one stored with a warning that it changed it, or one sent before from another file), which buffer mode does not delete; kept_unselected: instances no destination's rules select, which buffer mode leaves in the source for good (only those the study still holds once the rules were read).",
		ConstLabels: labels,
	}, []string{"result"})
	m.conversions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_conversions_total",
		Help:        "Instances read from Orthanc converted to a transfer syntax of the destination's STOW_TRANSFER_SYNTAXES (converted), that Orthanc could not convert (failed), not converted because their source syntax is lossy and not listed (lossy) or the list has no lossless syntax to convert to (no_target), or whose syntax the destination refused (0xC122) with no conversion left to try (refused).",
		ConstLabels: labels,
	}, []string{"result"})
	for _, r := range []string{convConverted, convFailed, convLossy, convNoTarget, convRefused} {
		m.conversions.WithLabelValues(r)
	}
	m.verifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_verifications_total",
		Help:        "QIDO-RS verifications of forwarded studies (STOW_VERIFY=qido), by result: verified (every instance sent is listed), missing (some are not; they are sent again), error (the query failed), capped (the destination's search cap hides some; taken as stored on the STOW-RS answer).",
		ConstLabels: labels,
	}, []string{"result"})
	for _, r := range []string{verifyVerified, verifyMissing, verifyError, verifyCapped} {
		m.verifications.WithLabelValues(r)
	}
	m.verifyMissing = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_verify_missing_instances_total",
		Help:        "Instances the destination confirmed over STOW-RS but did not list over QIDO-RS (STOW_VERIFY=qido).",
		ConstLabels: labels,
	})
	m.verifyDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:        "stowline_forwarder_verify_duration_seconds",
		Help:        "Time of one verification of a study over QIDO-RS, every page (STOW_VERIFY=qido).",
		ConstLabels: labels,
		Buckets:     prometheus.ExponentialBuckets(0.005, 2, 18), // to 11 min: 100 QIDO pages of a 20,000-instance study
	})
	m.breakerState = prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_breaker_state",
		Help:        "State of the destination's circuit breaker in this process: 0 closed, 1 half-open (a trial study is out), 2 open (the destination is down; nothing is pulled).",
		ConstLabels: labels,
	})
	m.breakerTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_breaker_transitions_total",
		Help:        "Changes of the destination's circuit breaker state, by the state entered (open, half-open, closed).",
		ConstLabels: labels,
	}, []string{"to"})
	for _, s := range []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerClosed} {
		m.breakerTransitions.WithLabelValues(s.String())
	}
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_studies_held",
		Help:        "Studies this process holds, unsettled, until the destination's circuit breaker closes.",
		ConstLabels: labels,
	})
	m.sourceHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_studies_held_for_source",
		Help:        "Studies this process holds, unsettled, until the source Orthanc answers again: holding their workers without spending a delivery (one source), or parked, their workers free (several sources).",
		ConstLabels: labels,
	})
	for _, r := range []string{"deleted", "failed", "skipped", "waiting", "gone", "kept", "kept_unselected"} {
		m.sourceDeletes.WithLabelValues(r)
	}
	for _, r := range []Result{ResultForwarded, ResultNotSelected, ResultRetry, ResultDeadLettered, ResultInterrupted, ResultUndecodable, ResultAckFailed, ResultNewerVersion, ResultUnknownSource, ResultAlreadyForwarded, ResultAlreadyDeadLettered} {
		m.studies.WithLabelValues(string(r))
	}
	m.lanePulls, m.laneBusy = laneMetrics(labels)
	m.laneAge = &laneAgeGauge{GaugeVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_lane_event_age_seconds",
		Help:        "How long ago the oldest of the lane's events this process holds unsettled (in progress, held or parked), the event it last pulled, and the oldest the lane's consumer has not acknowledged (asked once a minute) was stored in JetStream, counted on while nothing more is pulled (circuit breaker open, every worker holding a study); 0 once the lane is found empty and holds nothing unacknowledged or in hand.",
		ConstLabels: labels,
	}, []string{"lane"}), now: time.Now, heads: map[events.Priority]time.Time{}, queued: map[events.Priority]time.Time{}, held: map[heldKey]*heldEvent{}}
	m.retention = prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_events_retention_seconds",
		Help:        "The event stream's retention (MaxAge, set from EVENTS_RETENTION by each process's start), read about once a minute: how long JetStream keeps an event, forwarded or not; one not forwarded by then is deleted without a dead letter.",
		ConstLabels: labels,
	})
	m.storeFull = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_store_full_total",
		Help:        "Writes of this forwarder that JetStream refused because its storage is full, by what was written: ledger (a completed forward, not recorded), stored_record (what a study's deliveries stored, in stowline_failures), failure_record (an event's failure times, in stowline_failures), dead_letter (the study stays queued).",
		ConstLabels: labels,
	}, []string{"what"})
	for _, w := range []string{storeFullLedger, storeFullStored, storeFullFailureTime, storeFullDeadLetter} {
		m.storeFull.WithLabelValues(w)
	}
	// Every lane from the start: an alert's increase() then counts the
	// first pull after a restart.
	for _, p := range events.Priorities {
		m.lanePulls.WithLabelValues(string(p))
	}
	for _, c := range Classes {
		m.failures.WithLabelValues(string(c))
	}
	for _, c := range []prometheus.Collector{m.studies, m.instances, m.bytes, m.duration, m.inFlight, m.failures, m.resent, m.resends, m.alreadyStored, m.unproven, m.authRetries, m.sourceDeletes, m.conflicts, m.nonPrimary, m.conversions, m.verifications, m.verifyMissing, m.verifyDuration, m.breakerState, m.breakerTransitions, m.held, m.sourceHeld, m.lanePulls, m.laneBusy, m.laneAge, m.retention, m.storeFull} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("forward: register metrics: %w", err)
		}
	}
	return m, nil
}

// laneAgeGauge is stowline_forwarder_lane_event_age_seconds: by lane, the
// age of the oldest of the event last pulled (its head) and the events
// this process holds unsettled, taken again at each scrape. Nothing is
// pulled while the circuit breaker is open or every worker holds a study
// for its source, and JetStream's retention runs on: an age taken only at
// a pull stood still at the last one's, and StowlineEventsNearRetention
// could not fire before an outage of a week lost the queue. Retention
// deletes an event in hand too (held, parked): a free worker finding the
// lane empty must not hide one.
type laneAgeGauge struct {
	*prometheus.GaugeVec
	now func() time.Time

	mu    sync.Mutex
	heads map[events.Priority]time.Time // zero: the lane was found empty
	// queued is, by lane, the oldest event its consumer had not
	// acknowledged at the last probe (zero: none; lanes.go, probeLane):
	// one waiting for its retry delay too, which no worker holds or sees.
	queued map[events.Priority]time.Time
	// held are the events this process holds, pulled and not yet settled,
	// by lane and stream sequence.
	held map[heldKey]*heldEvent
	// asked is when a lane's consumer was last asked whether its head is
	// gone (headCheckDue).
	asked map[events.Priority]time.Time
}

type heldKey struct {
	lane events.Priority
	seq  uint64
}

// heldEvent is an event in hand: when it was stored, and how many owners
// (a worker, the parking) hold it.
type heldEvent struct {
	stored time.Time
	refs   int
}

// setClock sets the clock ages are taken by: a scrape may run already.
func (g *laneAgeGauge) setClock(now func() time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now = now
}

// set records the stream time of the event pulled last from lane (zero:
// the lane was found empty).
func (g *laneAgeGauge) set(lane events.Priority, head time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.heads[lane] = head
	g.setLocked(lane)
}

// headCheckInterval spaces a process's questions to a lane's consumer
// after pulls that brought nothing (unansweredPull): at MaxAckPending the
// server leaves every pull unanswered while events wait, and each worker
// would ask after each pull.
const headCheckInterval = 5 * time.Second

// headCheckDue reports whether lane has a head (an event pulled last, not
// yet found gone) and its consumer was not asked about it within
// headCheckInterval; it then counts this as the question.
func (g *laneAgeGauge) headCheckDue(lane events.Priority) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if g.heads[lane].IsZero() || now.Sub(g.asked[lane]) < headCheckInterval {
		return false
	}
	if g.asked == nil {
		g.asked = map[events.Priority]time.Time{}
	}
	g.asked[lane] = now
	return true
}

// setQueued records the oldest event lane's consumer has not
// acknowledged (zero: none), and drops the lane's head: the consumer's
// answer covers the event last pulled, acknowledged or not, while the
// head stands still once no worker pulls (a closed lane, a breaker
// open, every worker holding a study for its source).
func (g *laneAgeGauge) setQueued(lane events.Priority, oldest time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.queued[lane] = oldest
	g.heads[lane] = time.Time{}
	g.setLocked(lane)
}

// hold counts the event at stream sequence seq of lane, stored at stored,
// as in hand until release is called (once; later calls do nothing).
func (g *laneAgeGauge) hold(lane events.Priority, seq uint64, stored time.Time) (release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := heldKey{lane, seq}
	h := g.held[k]
	if h == nil {
		h = &heldEvent{stored: stored}
		g.held[k] = h
	}
	h.refs++
	if _, ok := g.heads[lane]; !ok {
		g.heads[lane] = time.Time{}
	}
	g.setLocked(lane)
	return g.releaser(k)
}

// retain holds again, for another owner (the parking), the event at
// stream sequence seq that this process holds; release ends that hold.
// An event not held (no metadata) is not counted.
func (g *laneAgeGauge) retain(seq uint64) (release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, h := range g.held {
		if k.seq == seq {
			h.refs++
			return g.releaser(k)
		}
	}
	return func() {}
}

func (g *laneAgeGauge) releaser(k heldKey) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if h := g.held[k]; h != nil {
				if h.refs--; h.refs <= 0 {
					delete(g.held, k)
				}
			}
			g.setLocked(k.lane)
		})
	}
}

// setLocked sets lane's age: that of the oldest of its head, its
// events in hand and the oldest its consumer had not acknowledged.
func (g *laneAgeGauge) setLocked(lane events.Priority) {
	oldest := g.heads[lane]
	if q := g.queued[lane]; !q.IsZero() && (oldest.IsZero() || q.Before(oldest)) {
		oldest = q
	}
	for k, h := range g.held {
		if k.lane == lane && (oldest.IsZero() || h.stored.Before(oldest)) {
			oldest = h.stored
		}
	}
	age := time.Duration(0)
	if !oldest.IsZero() {
		age = max(g.now().Sub(oldest), 0)
	}
	g.WithLabelValues(string(lane)).Set(age.Seconds())
}

// Collect ages every lane to now, then collects.
func (g *laneAgeGauge) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	for lane := range g.heads {
		g.setLocked(lane)
	}
	g.mu.Unlock()
	g.GaugeVec.Collect(ch)
}
