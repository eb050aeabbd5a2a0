package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/repeatlog"
)

// Lane is one of a destination's durable consumers: the events of one
// priority (docs/priority-lanes.md).
type Lane struct {
	Priority events.Priority
	Consumer jetstream.Consumer
}

// Windows says when a lane may be pulled (FORWARD_WINDOWS); a lane it
// does not limit is always open.
type Windows interface {
	Open(lane events.Priority, now time.Time) bool
}

// Pull lengths. A worker with one lane to take waits on it as before
// lanes; a worker with several checks each without waiting, highest
// first, then waits idlePull on its home lane before it checks again, so
// an event that arrives in another lane while every worker is idle waits
// at most that long.
const (
	longPull = 5 * time.Second
	idlePull = time.Second
)

// lanePlan is the lanes of a Forwarder and what each worker may pull.
type lanePlan struct {
	lanes   []Lane // highest priority first
	windows Windows
	paused  func() bool
	now     func() time.Time
	// maxLow bounds the workers busy with the low lane at once, so that a
	// long backfill keeps a worker free for routine studies.
	maxLow  int32
	lowBusy atomic.Int32
	// goneUntil holds, by lane, until when (Unix nanoseconds) a lane whose
	// consumer was found deleted is left alone.
	goneUntil map[events.Priority]*atomic.Int64
	// filters are, by lane, the subjects its consumer takes as this
	// process made it (none known: every subject).
	filters map[events.Priority][]string
	// late spaces the warnings of events pulled late in their retention,
	// by lane (queueAge).
	late map[events.Priority]*repeatlog.Failures
	// pullFails spaces the warnings of failed pulls, by lane (pullFailed):
	// a NATS cluster without quorum fails every worker's pull of every
	// lane, each second, for as long as it lasts.
	pullFails map[events.Priority]*repeatlog.Failures
	// probeFails: a lane's failed probes (watchLanes), warned about a
	// minute apart.
	probeFails map[events.Priority]*repeatlog.Failures
	// probeEvery is how often the lanes are asked what they hold
	// (watchLanes); tests shorten it.
	probeEvery time.Duration
}

// laneProbe is how often a lane is asked whether it holds events not
// acknowledged, and how old the oldest is: one consumer Info (and a
// message read by lane filter while it holds some) a minute per lane
// and process, whatever the scrapes.
const laneProbe = time.Minute

// laneGoneFor is how long a lane whose consumer was deleted while the
// forwarder ran is left alone before it is tried again: it takes nothing
// until a restart creates it again, and a pull a second would only fail.
const laneGoneFor = 30 * time.Second

func newLanePlan(opts *Options) *lanePlan {
	p := &lanePlan{lanes: opts.Lanes, windows: opts.Windows, paused: opts.Paused, now: opts.Now}
	if p.now == nil {
		p.now = time.Now
	}
	p.maxLow = int32(max(opts.Concurrency-1, 1))
	p.probeEvery = laneProbe
	p.goneUntil = map[events.Priority]*atomic.Int64{}
	p.filters = map[events.Priority][]string{}
	p.late = map[events.Priority]*repeatlog.Failures{}
	p.pullFails = map[events.Priority]*repeatlog.Failures{}
	p.probeFails = map[events.Priority]*repeatlog.Failures{}
	for _, l := range p.lanes {
		p.goneUntil[l.Priority] = new(atomic.Int64)
		p.late[l.Priority] = &repeatlog.Failures{Every: time.Hour}
		p.pullFails[l.Priority] = &repeatlog.Failures{Every: time.Minute}
		p.probeFails[l.Priority] = &repeatlog.Failures{Every: time.Minute}
		if l.Consumer == nil {
			continue
		}
		if info := l.Consumer.CachedInfo(); info != nil {
			fs := slices.Clone(info.Config.FilterSubjects)
			if info.Config.FilterSubject != "" {
				fs = append(fs, info.Config.FilterSubject)
			}
			p.filters[l.Priority] = fs
		}
	}
	return p
}

// elsewhere reports whether an event lane's consumer delivered belongs
// to another lane: its subject is not one the consumer takes as this
// process made it, but one another lane's consumer takes, or a triage
// subject, which no lane takes (the ingest stores the event again in its
// lane). Such a delivery comes from the wider filter of a build without
// lanes: an event in hand when that build stopped, which JetStream
// redelivers after the upgrade narrowed the filter, or one an older
// forwarder that widened the filter again took. The other lane has the
// event too (its consumer starts at or before the old one's ack floor).
// A subject no lane of this process knows (a newer build's) is this
// lane's.
func (p *lanePlan) elsewhere(lane events.Priority, subject string) bool {
	matches := func(filters []string) bool {
		return slices.ContainsFunc(filters, func(f string) bool { return server.SubjectMatchesFilter(subject, f) })
	}
	if len(p.filters[lane]) == 0 || matches(p.filters[lane]) {
		return false
	}
	for other, filters := range p.filters {
		if other != lane && matches(filters) {
			return true
		}
	}
	return server.SubjectMatchesFilter(subject, natsjs.TriageSubject("*"))
}

// settleElsewhere settles an event of another lane (lanePlan.elsewhere):
// acknowledged on this consumer, it is sent once, by its own lane's.
func (f *Forwarder) settleElsewhere(ctx context.Context, msg jetstream.Msg, lane events.Priority) {
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	f.log.Info("event delivered by this lane's consumer under an older build's filter: acknowledged here, its own lane's consumer delivers it",
		"lane", lane, "subject", msg.Subject(), "stream_seq", seq)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		f.log.Warn("acknowledge an event of another lane; JetStream delivers it again", "lane", lane, "stream_seq", seq, "err", err)
	}
}

// markGone leaves lane alone for laneGoneFor from now; it reports whether
// this call marked it (the lane was not marked already), so one worker
// tells of it.
func (p *lanePlan) markGone(lane events.Priority, now time.Time) bool {
	until := p.goneUntil[lane]
	old := until.Load()
	if old > now.UnixNano() {
		return false
	}
	return until.CompareAndSwap(old, now.Add(laneGoneFor).UnixNano())
}

// has reports whether the plan has a lane of priority lane.
func (p *lanePlan) has(lane events.Priority) bool {
	for _, l := range p.lanes {
		if l.Priority == lane {
			return true
		}
	}
	return false
}

// isPaused reports whether the forwarder is paused (Options.Paused).
func (p *lanePlan) isPaused() bool { return p.paused != nil && p.paused() }

// open returns the lanes a worker may pull from now, highest first: the
// stat lane only for a stat worker; every lane whose window is open for
// the others; none while the forwarder is paused (Options.Paused).
func (p *lanePlan) open(statOnly bool) []Lane {
	if p.isPaused() {
		return nil
	}
	now := p.now()
	out := make([]Lane, 0, len(p.lanes))
	for _, l := range p.lanes {
		if statOnly && l.Priority != events.PriorityStat {
			continue
		}
		if p.windows != nil && !p.windows.Open(l.Priority, now) {
			continue
		}
		if p.goneUntil[l.Priority].Load() > now.UnixNano() {
			continue
		}
		out = append(out, l)
	}
	return out
}

// ClosedLane is a lane outside its FORWARD_WINDOWS hours, and when it
// opens next, in the forwarder's time zone (zero if none of its windows
// opens within two days, which windows of the day cannot be).
type ClosedLane struct {
	Lane  events.Priority `json:"lane"`
	Opens time.Time       `json:"opens,omitzero"`
}

// closed returns the lanes outside their window now, highest first.
func (p *lanePlan) closed() []ClosedLane {
	if p.windows == nil {
		return nil
	}
	now := p.now()
	var out []ClosedLane
	for _, l := range p.lanes {
		if !p.windows.Open(l.Priority, now) {
			out = append(out, ClosedLane{Lane: l.Priority, Opens: p.opens(l.Priority, now)})
		}
	}
	return out
}

// opens finds the first minute after now its window opens lane in, a
// minute at a time in absolute time, so that a daylight saving change
// in between counts as the windows read it (the local clock).
func (p *lanePlan) opens(lane events.Priority, now time.Time) time.Time {
	t := now.Truncate(time.Minute)
	for range 2 * 24 * 60 {
		t = t.Add(time.Minute)
		if p.windows.Open(lane, t) {
			return t
		}
	}
	return time.Time{}
}

// watchLanes asks each lane's consumer what it holds until ctx ends,
// for the lane's age. The workers see only what they pull: an event
// waiting for its retry delay is in no one's hands and not deliverable,
// and a free worker finds the lane empty. And no worker pulls a closed
// lane, so its age would be whatever it was when the lane closed: the
// head of a backfill whose last event was acked just then counted on
// for a lane now empty (a false StowlineEventsNearRetention), and a
// lane found empty before it closed read 0 for the events that arrived
// since (an alert missed if it stays closed longer than the retention).
func (f *Forwarder) watchLanes(ctx context.Context) {
	t := time.NewTicker(f.plan.probeEvery)
	defer t.Stop()
	for {
		f.probeRetention(ctx)
		for _, l := range f.plan.lanes {
			if l.Consumer != nil {
				f.probeLane(ctx, l)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeLane records the oldest event of lane l its consumer has not
// acknowledged, which JetStream's retention deletes first, or none. A
// consumer gone holds nothing; a probe that fails otherwise keeps the
// last reading and is warned about (a minute apart): a reading that
// stands still hides the retention alert, or raises it for nothing.
func (f *Forwarder) probeLane(ctx context.Context, l Lane) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := l.Consumer.Info(pctx)
	var oldest time.Time
	if err == nil && (info.NumPending > 0 || info.NumAckPending > 0) {
		if f.opts.Stream == nil {
			return // tests without the stream: whether it holds any only
		}
		oldest, err = natsjs.OldestUnacked(pctx, f.opts.Stream, info)
	}
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		f.m.laneAge.setQueued(l.Priority, time.Time{})
	case err != nil:
		if ctx.Err() != nil {
			return
		}
		if n, log := f.plan.probeFails[l.Priority].Failed(); log {
			f.log.Warn("could not read what the lane holds (NATS unreachable or without quorum, or, if NATS is well, the forwarder's permissions: $JS.API.CONSUMER.INFO and $JS.API.STREAM.MSG.GET on the event stream, docs/nats-permissions.md): its event age (stowline_forwarder_lane_event_age_seconds, the retention alert) keeps its last reading",
				"lane", l.Priority, "err", err, "failures", n)
		}
	default:
		f.plan.probeFails[l.Priority].Succeeded()
		f.m.laneAge.setQueued(l.Priority, oldest)
	}
}

// probeRetention reads the event stream's retention (its MaxAge) for
// stowline_forwarder_events_retention_seconds and the late-pull warning.
// Every process's start sets it to its own EVENTS_RETENTION: an ingest
// started with another value than the forwarders' changes it under them,
// and the alert, computed from this process's setting, did not fire
// while JetStream deleted events at the stream's. A read that fails
// keeps the last value (the lanes' probes say why).
func (f *Forwarder) probeRetention(ctx context.Context) {
	if f.opts.Stream == nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := f.opts.Stream.Info(pctx)
	if err != nil {
		f.log.Debug("could not read the event stream's retention; the last reading stays", "stream", natsjs.EventStream, "err", err)
		return
	}
	f.setRetention(info.Config.MaxAge)
}

// setRetention records the event stream's retention r, and says when it
// changed while this process ran.
func (f *Forwarder) setRetention(r time.Duration) {
	before := time.Duration(f.retention.Swap(int64(r)))
	f.m.retention.Set(r.Seconds())
	if before != r && before > 0 {
		f.log.Warn("the event stream's retention changed while this forwarder ran (another process's start with another EVENTS_RETENTION, or an operator's edit): JetStream deletes events not forwarded past it; set the same EVENTS_RETENTION in every process",
			"stream", natsjs.EventStream, "max_age", before.String()+" -> "+r.String())
	}
}

// registerOpen exports stowline_forwarder_lane_open for each lane: 1
// while its window (FORWARD_WINDOWS) is open, read at each scrape, so
// that the queue alerts leave out a lane that waits for its hours.
func (p *lanePlan) registerOpen(reg prometheus.Registerer, destination string) error {
	for _, l := range p.lanes {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "stowline_forwarder_lane_open",
			Help:        "1 while the lane may be pulled, 0 outside its FORWARD_WINDOWS hours.",
			ConstLabels: prometheus.Labels{"destination": destination, "lane": string(l.Priority)},
		}, func() float64 {
			if p.windows != nil && !p.windows.Open(l.Priority, p.now()) {
				return 0
			}
			return 1
		})
		if err := reg.Register(g); err != nil {
			return fmt.Errorf("forward: register metrics: %w", err)
		}
	}
	return nil
}

// take reserves a worker's place in lane: it fails for the low lane when
// maxLow workers already take it. release gives the place back.
func (p *lanePlan) take(lane events.Priority) (release func(), ok bool) {
	if lane != events.PriorityLow {
		return func() {}, true
	}
	for {
		n := p.lowBusy.Load()
		if n >= p.maxLow {
			return nil, false
		}
		if p.lowBusy.CompareAndSwap(n, n+1) {
			return func() { p.lowBusy.Add(-1) }, true
		}
	}
}

// home is the lane an idle worker waits on: routine if it may take it
// (most events arrive there), else its highest.
func home(lanes []Lane) Lane {
	for _, l := range lanes {
		if l.Priority == events.PriorityRoutine {
			return l
		}
	}
	return lanes[0]
}

// next is the one place a free worker decides what to pull, and pulls one
// event: from the highest open lane that holds one. It returns nil when
// there was none (or ctx ended); done must be called once the event is
// settled.
func (f *Forwarder) next(ctx context.Context, statOnly bool) (msg jetstream.Msg, lane events.Priority, done func()) {
	lanes := f.plan.open(statOnly)
	if len(lanes) == 0 {
		// Every lane this worker takes is outside its window, or the
		// forwarder is paused.
		sleep(ctx, idlePull)
		return nil, "", nil
	}
	if len(lanes) > 1 {
		if msg, lane, done := f.takeWaiting(ctx, lanes); msg != nil {
			return msg, lane, done
		}
	}
	wait := longPull
	if len(lanes) > 1 {
		wait = idlePull
	}
	l := home(lanes)
	release, ok := f.plan.take(l.Priority)
	if !ok {
		sleep(ctx, idlePull)
		return nil, "", nil
	}
	// A pull request outlives its cancelled context on the server until
	// it expires, and a message handed to it then waits for the ack wait;
	// short pulls bound that at shutdown.
	pullCtx, cancel := context.WithTimeout(ctx, wait)
	m, err := l.Consumer.Next(jetstream.FetchContext(pullCtx))
	cancel()
	if err != nil {
		release()
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, nats.ErrTimeout):
			// JetStream answered the pull at its expiry: nothing waits.
			f.m.laneAge.set(l.Priority, time.Time{})
		case errors.Is(err, context.DeadlineExceeded):
			f.unansweredPull(ctx, l)
		default:
			f.pullFailed(ctx, l, err)
			sleep(ctx, time.Second)
		}
		return nil, "", nil
	}
	f.pullAnswered(l)
	return m, l.Priority, f.pulled(l.Priority, m, release)
}

// takeWaiting takes the event waiting first in lanes, in their order,
// without waiting for one to come; nil when none waits.
func (f *Forwarder) takeWaiting(ctx context.Context, lanes []Lane) (msg jetstream.Msg, lane events.Priority, done func()) {
	for _, l := range lanes {
		release, ok := f.plan.take(l.Priority)
		if !ok {
			continue
		}
		if msg := f.pullNoWait(ctx, l); msg != nil {
			return msg, l.Priority, f.pulled(l.Priority, msg, release)
		}
		release()
	}
	return nil, "", nil
}

// pulled counts msg, pulled from lane, and its age (queueAge, started,
// from its metadata read once), and returns what ends it.
func (f *Forwarder) pulled(lane events.Priority, msg jetstream.Msg, release func()) func() {
	meta, err := msg.Metadata()
	if err != nil {
		meta = nil // a reply subject that is not JetStream's: no age
	}
	f.queueAge(lane, meta)
	return f.started(lane, meta, release)
}

// queueAge records how long the event of meta (nil: unknown) waited in
// the stream before this pull.
// JetStream deletes an event EVENTS_RETENTION after it was stored,
// forwarded or not, with no dead letter and no trace: a backlog the
// destination's uplink takes longer than that to send (a backfill of a
// whole archive, a lane closed for days) loses its tail without a word.
// Events are pulled oldest first, so the age of those pulled now tells
// how close the backlog is to that; past three quarters of the retention
// it is warned about (an hour apart per lane) and alerted on
// (deploy/alerts.yml, StowlineEventsNearRetention).
func (f *Forwarder) queueAge(lane events.Priority, meta *jetstream.MsgMetadata) {
	if meta == nil {
		return
	}
	age := max(f.plan.now().Sub(meta.Timestamp), 0)
	f.m.laneAge.set(lane, meta.Timestamp)
	r := time.Duration(f.retention.Load())
	if r <= 0 {
		return
	}
	if age <= r/4*3 {
		// The next late pull is told at once, unless one was within the
		// hour: a backlog at the threshold crosses it pull by pull.
		f.plan.late[lane].Succeeded()
		return
	}
	if n, log := f.plan.late[lane].Failed(); log {
		f.log.Warn("events are pulled late in their retention: JetStream deletes one not forwarded EVENTS_RETENTION after it arrived, with no dead letter; add forwarders or widen the lane's FORWARD_WINDOWS, or run `forwarder audit --destination` once the backlog is sent to queue what was lost",
			"lane", lane, "age", age.Round(time.Minute).String(), "events_retention", r.String(), "stream_seq", meta.Sequence.Stream, "late_pulls", n)
	}
}

// pullNoWait takes the lane's next event if one is waiting, without
// leaving a pull request behind.
func (f *Forwarder) pullNoWait(ctx context.Context, l Lane) jetstream.Msg {
	batch, err := l.Consumer.FetchNoWait(1)
	if err != nil {
		f.pullFailed(ctx, l, err)
		return nil
	}
	var msg jetstream.Msg
	for m := range batch.Messages() {
		msg = m
	}
	err = batch.Error()
	if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		f.pullFailed(ctx, l, err)
		return msg
	}
	if msg != nil || err == nil || errors.Is(err, jetstream.ErrNoMessages) {
		f.pullAnswered(l)
	}
	if msg == nil {
		// Its answer, "none", is not told from no answer at all.
		f.unansweredPull(ctx, l)
	}
	return msg
}

// unansweredPull drops lane l's head after a pull that brought no event
// and may have got no answer (NATS unreachable while its client
// reconnects, a consumer between leaders) only once the consumer says
// none waits: dropped at once, the lane's age read 0 for the events
// still queued as long as the outage lasted (the probe, failing too,
// keeps its last reading), and StowlineEventsNearRetention could not
// fire. A lane already without a head is not asked, nor one asked a
// moment ago (headCheckInterval).
func (f *Forwarder) unansweredPull(ctx context.Context, l Lane) {
	if !f.m.laneAge.headCheckDue(l.Priority) {
		return
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	info, err := l.Consumer.Info(ictx)
	cancel()
	if err == nil && info.NumPending == 0 {
		f.m.laneAge.set(l.Priority, time.Time{})
	}
}

// pullFailed reports a failed pull. A lane whose consumer is gone (deleted
// by hand or by "destinations remove" while this forwarder ran, which
// answers a pull with "no responders") is left alone for laneGoneFor and
// reported as an error once each time, instead of a warning from every
// worker every second; the readiness check says the same.
func (f *Forwarder) pullFailed(ctx context.Context, l Lane, err error) {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, ierr := l.Consumer.Info(ictx)
	cancel()
	if !errors.Is(ierr, jetstream.ErrConsumerNotFound) {
		// The first failure of a run is a warning, then one a minute;
		// the others are at debug level.
		level := slog.LevelDebug
		n, warn := f.plan.pullFails[l.Priority].Failed()
		if warn {
			level = slog.LevelWarn
		}
		f.log.Log(ctx, level, "pull from JetStream failed; retrying", "lane", l.Priority, "err", err, "failures", n)
		return
	}
	if f.plan.markGone(l.Priority, f.plan.now()) {
		f.log.Error("this lane's consumer was deleted while the forwarder ran: it takes none of the lane's events until the forwarder is restarted, which creates it again; or take the destination out of FORWARDER_DESTINATIONS",
			"lane", l.Priority, "consumer", l.Consumer.CachedInfo().Name, "retry_in", laneGoneFor.String())
	}
}

// pullAnswered ends a run of failed pulls of lane: JetStream answered.
func (f *Forwarder) pullAnswered(l Lane) {
	if n := f.plan.pullFails[l.Priority].Succeeded(); n > 0 {
		f.log.Info("pulls from JetStream answered again", "lane", l.Priority, "failures", n)
	}
}

// started counts an event pulled from lane, and in hand for the lane's
// age until settled (meta nil: not), and returns what ends it. A study
// parked meanwhile stays in hand for the age (park retains it) after its
// worker is done.
func (f *Forwarder) started(lane events.Priority, meta *jetstream.MsgMetadata, release func()) func() {
	f.m.lanePulls.WithLabelValues(string(lane)).Inc()
	busy := f.m.laneBusy.WithLabelValues(string(lane))
	busy.Inc()
	unhold := func() {}
	if meta != nil {
		unhold = f.m.laneAge.hold(lane, meta.Sequence.Stream, meta.Timestamp)
	}
	return func() { busy.Dec(); release(); unhold() }
}

// laneMetrics are the lane counters of one destination.
func laneMetrics(labels prometheus.Labels) (pulls *prometheus.CounterVec, busy *prometheus.GaugeVec) {
	pulls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_lane_pulls_total",
		Help:        "Events this process pulled, by lane (stat, routine, low).",
		ConstLabels: labels,
	}, []string{"lane"})
	busy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_lane_in_flight",
		Help:        "Studies this process is working on, by lane.",
		ConstLabels: labels,
	}, []string{"lane"})
	return pulls, busy
}
