// Package flow adapts how many STOW-RS requests a process keeps in flight
// to one destination: an AIMD controller, the idea TCP uses for its
// window.
//
// Every request takes a permit from the destination's Limiter, waiting
// by priority (a stat study's first, a backfill's last) and in turn
// within one, and gives it back with what happened. The limit starts at
// the ceiling, where a fixed setting would run: a study is split into requests for the limit
// it meets (see forward's requestsAtOnce), so a first study that met a
// lower start would run below the ceiling to its end however soon the
// limit grew, and a far destination wants every stream from the first
// request. After probeRounds calm rounds at that level (a round: as many
// answered requests as the limit, every place busy), it tries half of it
// (ProbeDown) until a round of half is filled: when half carries at least
// keepShare as much (a destination that queues requests, such as an
// Orthanc storing each on one thread), it stays there, else it goes back
// (ProbeUp). From a lower level it grows while it pays:
// the throughput (Little's law: limit / the time a request takes) is
// compared with the round before the last increase. While it grew by at
// least half of what the added places would carry, and the time a request
// takes stayed within twice the best of recent rounds, the limit doubles
// while in slow start (a Start set below the ceiling), else grows by one. Rounds are
// compared allowing for the size of their requests (see sample): a CT
// batch of 50 MB and an SR of 10 KB do not take the same time, nor the
// same time per byte. An increase that gained nothing is undone (NoGain),
// one after which requests queue (Latency) too; the level is then held
// for probeRounds rounds before one more is tried. An overload (429, 503,
// a time-out) halves the limit, once per burst, and no request starts
// before the server's Retry-After; the limit then grows back by one a
// round up to below the refused level, and probes that level again only
// after probeRounds calm rounds.
package flow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Reason says why the limit changed.
type Reason string

// The reasons, also the metric's label values.
const (
	// Increase: a round's throughput grew with latency holding.
	Increase Reason = "increase"
	// NoGain: slow start's last doubling gained nothing; back to the level
	// before it.
	NoGain Reason = "no_gain"
	// Latency: requests took more than twice the best time of recent
	// rounds, allowing for their size.
	Latency Reason = "latency"
	// Overload429, Overload503 and Timeout: the destination refused or
	// dropped a request for load.
	Overload429 Reason = "overload_429"
	Overload503 Reason = "overload_503"
	Timeout     Reason = "timeout"
	// RetryAfter: no change of the limit, a pause before new requests.
	RetryAfter Reason = "retry_after"
	// ReplicaShare: the number of replicas serving the destination
	// changed this replica's share of the ceiling.
	ReplicaShare Reason = "replica_share"
	// Recovered: the destination is back from an outage (its circuit
	// breaker closed); the limit starts again from the start level.
	Recovered Reason = "recovered"
	// ProbeDown: calm rounds at the start level; half of it is tried
	// once, and kept if it carries at least 90 % as much.
	ProbeDown Reason = "probe_down"
	// ProbeUp: half the start level carried less, or its round could
	// not tell (requests of other sizes, demand below it): back to the
	// start level.
	ProbeUp Reason = "probe_up"
)

// Reasons lists every reason, for metrics.
var Reasons = []Reason{Increase, NoGain, Latency, Overload429, Overload503, Timeout, RetryAfter, ReplicaShare, Recovered, ProbeDown, ProbeUp}

const (
	// latencyRatio is how far the time a request takes may rise above
	// the best of recent rounds (allowing for its size) before the limit
	// shrinks.
	latencyRatio = 2.0
	// probeRounds: calm rounds before a level that was refused, or one
	// whose throughput did not grow, is tried again, or before half the
	// start level is tried.
	probeRounds = 16
	// likeSize is how far the mean request sizes of two rounds may
	// differ for one to tell whether the other's increase paid;
	// likeRounds is how many rounds of other sizes are waited for before
	// the closest bound decides anyway (a mix may never repeat a size).
	likeSize   = 1.25
	likeRounds = 4
	// keepShare is the least share of the start level's throughput half
	// of it must carry to be kept after ProbeDown: leaving the
	// operator's level needs the evidence.
	keepShare = 0.9
	// bestRounds is how many rounds the best time is kept for, so it
	// follows a destination that became slower for good.
	bestRounds = 16
	// minRound is the fewest answered requests in a round, so one
	// request alone does not decide.
	minRound = 3
	// MaxPause bounds a Retry-After pause.
	MaxPause = 5 * time.Minute
)

// ErrInvalidOptions is returned by New for a floor or ceiling out of range.
var ErrInvalidOptions = errors.New("flow: invalid options")

// Change is one change of the limit (or a pause, RetryAfter).
type Change struct {
	From, To int
	Reason   Reason
	// Pause is the Retry-After pause, if any.
	Pause time.Duration
}

// Options configures a Limiter.
type Options struct {
	// Min is the floor (at least 1), Max the ceiling of the limit, for
	// this process before any replica share.
	Min, Max int
	// Start is the first limit, also the level Recover goes back to; 0
	// starts at the ceiling (see the package comment).
	Start int
	// OnChange, if set, is called after every change, outside the lock,
	// in order of the changes only as far as callers do not race.
	OnChange func(Change)
}

// Limiter hands out permits for requests to one destination. It is safe
// for concurrent use; all studies of a destination share one.
type Limiter struct {
	min, max int
	start    int // the level it starts from, and Recover goes back to
	onChange func(Change)

	mu       sync.Mutex
	limit    int
	ceiling  int // max, or this replica's share of it
	inFlight int
	waiters  [priorities][]chan struct{} // by Priority, each FIFO: served highest first, in turn within one
	pause    time.Time                   // no request starts before
	timer    *time.Timer                 // wakes the waiters when the pause ends

	// epoch counts limit changes: a round measures only requests
	// started at the current limit, and an overload reported by a
	// request started before the last decrease does not halve again.
	epoch, decreased uint64
	slowStart        bool
	round            round
	// before is the round that last made the limit grow, at beforeLimit
	// (0: none); refused is one above the highest level known to work
	// after an overload (0: none), calm counts rounds that held.
	before      sample
	beforeLimit int
	held        bool // grows only after probeRounds calm rounds
	refused     int
	calm        int
	best        []sample // recent rounds
	unlike      int      // rounds since the last change not of like size to before
	// untested: the level was never compared with a lower one since New
	// or Recover, so half of it is tried once (ProbeDown); probing: this
	// round is that try, against top measured at topLimit.
	untested, probing bool
	top               sample
	topLimit          int
	// last and lastAt: the last change reported, for LastChange.
	last   Reason
	lastAt time.Time
	// answered is when a request was last answered without overload
	// (Done), for AnsweredWithin.
	answered time.Time
}

type round struct {
	n         int
	bytes     int64
	took      time.Duration // sum of the requests' durations
	saturated bool
}

// sample is a round's mean request: its bytes and the seconds it took.
//
// Requests differ in size by thousands (a 100-instance CT batch of 50 MB,
// a 1-instance SR of 10 KB) and a request has a fixed cost besides its
// bytes, so neither the time a request takes nor its time per byte can be
// compared between rounds of different sizes: a round of SRs after rounds
// of CTs would read as latency risen a hundredfold, and a mixed stream
// would ratchet the limit to the floor. Fitting a fixed and a per-byte
// cost needs rounds of varied sizes and is noisy; size classes still
// differ by their width (up to latencyRatio or more where the fixed cost
// dominates). Instead a round is compared with another by the most its
// request could take at that one's conditions when nothing queues, assuming
// only that a larger request takes no less time, and no more than in
// proportion to its bytes (fixed cost plus a per-byte cost, or anything in
// between): see bound. At equal sizes this is the plain comparison of
// times; at other sizes it errs towards "not queueing", which the
// overload signals and the ceiling still bound. Whether an increase paid
// is judged only against a round of like size (within likeSize), where
// that bound is tight, so a change of the study mix is no gain either.
type sample struct {
	size, took float64
}

// bound is the most a request of size bytes would take at s's conditions
// if the destination did not queue: s's time if smaller (all fixed cost),
// s's time per byte times size if larger (all per-byte cost).
func (s sample) bound(size float64) float64 {
	return s.took * max(1, size/s.size)
}

// like reports whether requests of size bytes are of like size to s's,
// within likeSize of each other.
func (s sample) like(size float64) bool {
	return size <= likeSize*s.size && s.size <= likeSize*size
}

// New returns a limiter.
func New(o Options) (*Limiter, error) {
	if o.Min < 1 || o.Max < o.Min {
		return nil, fmt.Errorf("%w: want 1 <= min (%d) <= max (%d)", ErrInvalidOptions, o.Min, o.Max)
	}
	start := o.Start
	if start == 0 {
		start = o.Max
	}
	start = min(max(start, o.Min), o.Max)
	l := &Limiter{min: o.Min, max: o.Max, ceiling: o.Max, limit: start, start: start, onChange: o.OnChange, slowStart: true, untested: true}
	return l, nil
}

// Limit returns the current limit.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}

// SplitLimit is the limit a study starting now is split for: the limit,
// or while half the start level is tried (ProbeDown), the start level,
// so that the requests of that round are of the start level's size and
// going back finds the study split for it.
func (l *Limiter) SplitLimit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.probing {
		return max(l.limit, min(l.topLimit, l.ceiling))
	}
	return l.limit
}

// LastChange returns why and when the limit last changed (or a
// Retry-After paused it); none yet: "" and the zero time.
func (l *Limiter) LastChange() (Reason, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.lastAt
}

// AnsweredWithin reports whether a request was answered without overload
// (Done) within d before now: the destination serves, so a 503 it gives
// now says it is busy rather than down.
func (l *Limiter) AnsweredWithin(d time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.answered.IsZero() && time.Since(l.answered) <= d
}

// Ceiling returns the current ceiling: Max, or this replica's share.
func (l *Limiter) Ceiling() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ceiling
}

// Priority orders the callers waiting for a place: those of a higher
// priority are served first, in turn within one. The zero value is
// Normal.
type Priority int

// The priorities: a stat study's requests do not wait behind a
// backfill's (High for the stat lane, Low for the low lane).
const (
	Low Priority = iota - 1
	Normal
	High
)

// priorities is how many there are.
const priorities = int(High-Low) + 1

// queue is p's index in Limiter.waiters, out-of-range values clamped.
func (p Priority) queue() int { return min(max(int(p-Low), 0), priorities-1) }

// Permit is one request's place in the limit. Exactly one of Done,
// Overloaded or Release gives it back; later calls do nothing.
type Permit struct {
	l     *Limiter
	start time.Time
	epoch uint64
	once  sync.Once
	// waited is what the request spent waiting for something not the
	// destination's (Waited), left out of its time.
	waited atomic.Int64
}

// Acquire waits for a free place within the limit, after any Retry-After
// pause, after the callers of a higher priority waiting and in turn with
// those of its own.
func (l *Limiter) Acquire(ctx context.Context, prio Priority) (*Permit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q := prio.queue()
	l.mu.Lock()
	if l.waiting() == 0 && l.free(time.Now()) {
		p := l.grant()
		l.mu.Unlock()
		return p, nil
	}
	ch := make(chan struct{})
	l.waiters[q] = append(l.waiters[q], ch)
	l.dispatch(time.Now()) // arms the timer of a pause
	l.mu.Unlock()
	select {
	case <-ch:
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.permit(), nil
	case <-ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		for i, w := range l.waiters[q] {
			if w == ch {
				l.waiters[q] = append(l.waiters[q][:i], l.waiters[q][i+1:]...)
				return nil, ctx.Err()
			}
		}
		// Granted as ctx ended: give the place on.
		l.inFlight--
		l.dispatch(time.Now())
		return nil, ctx.Err()
	}
}

// waiting counts the callers waiting for a place; the caller holds mu.
func (l *Limiter) waiting() int {
	n := 0
	for _, w := range l.waiters {
		n += len(w)
	}
	return n
}

func (l *Limiter) free(now time.Time) bool {
	return l.inFlight < l.limit && !now.Before(l.pause)
}

// grant takes a place; the caller holds mu.
func (l *Limiter) grant() *Permit {
	l.inFlight++
	return l.permit()
}

func (l *Limiter) permit() *Permit {
	if l.inFlight >= l.limit {
		l.round.saturated = true
	}
	return &Permit{l: l, start: time.Now(), epoch: l.epoch}
}

// dispatch hands free places to waiters, highest priority first, in turn
// within one; the caller holds mu.
func (l *Limiter) dispatch(now time.Time) {
	if now.Before(l.pause) {
		if l.timer == nil {
			l.timer = time.AfterFunc(l.pause.Sub(now), func() {
				l.mu.Lock()
				defer l.mu.Unlock()
				l.timer = nil
				l.dispatch(time.Now())
			})
		}
		return
	}
	for q := priorities - 1; q >= 0; q-- {
		for len(l.waiters[q]) > 0 && l.inFlight < l.limit {
			ch := l.waiters[q][0]
			l.waiters[q] = l.waiters[q][1:]
			l.inFlight++
			close(ch)
		}
	}
}

// Waited tells that the request, holding its place, waited d for
// something other than the destination (the de-identifier's memory): d is
// left out of the time it measures, else such waits would read as the
// destination's latency and lower the limit. Safe from any goroutine.
func (p *Permit) Waited(d time.Duration) {
	if p != nil && d > 0 {
		p.waited.Add(int64(d))
	}
}

type waitReportKey struct{}

// WithWaitReport returns ctx carrying report (a Permit's Waited), told by
// ReportWait how long work run under ctx waited for something other than
// the destination: the de-identifier's memory, the bandwidth cap. Both
// run inside a request's body, whose time measures the destination.
func WithWaitReport(ctx context.Context, report func(time.Duration)) context.Context {
	return context.WithValue(ctx, waitReportKey{}, report)
}

// ReportWait tells ctx's WithWaitReport, if any, of a wait of d.
func ReportWait(ctx context.Context, d time.Duration) {
	if report, ok := ctx.Value(waitReportKey{}).(func(time.Duration)); ok {
		report(d)
	}
}

type boundedWaitKey struct{}

// WithBoundedWait returns ctx carrying start, told by BoundedWait when
// work run under ctx starts a wait that something else bounds: Orthanc's
// answer, bounded by its response-header time-out
// (ORTHANC_RESPONSE_TIMEOUT); the de-identifier's large slot, by its
// holder's progress. A watch for a source that stopped serving (a STOW-RS
// request's body, a measuring pass) must not take such a wait for one.
// start returns the function that ends the wait.
func WithBoundedWait(ctx context.Context, start func() (end func())) context.Context {
	return context.WithValue(ctx, boundedWaitKey{}, start)
}

// BoundedWait tells ctx's WithBoundedWait, if any, that a wait bounded
// elsewhere starts; call end once it is over.
func BoundedWait(ctx context.Context) (end func()) {
	if start, ok := ctx.Value(boundedWaitKey{}).(func() func()); ok {
		return start()
	}
	return func() {}
}

// Release gives the place back without a signal: the request failed for
// another reason or was cancelled. A nil permit does nothing.
func (p *Permit) Release() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		l := p.l
		l.mu.Lock()
		l.inFlight--
		l.dispatch(time.Now())
		l.mu.Unlock()
	})
}

// Done gives the place back after an answered request that sent bytes.
func (p *Permit) Done(bytes int64) {
	p.once.Do(func() {
		l := p.l
		now := time.Now()
		l.mu.Lock()
		l.inFlight--
		l.answered = now
		c, changed := l.measure(p, bytes, now)
		l.dispatch(now)
		l.mu.Unlock()
		if changed {
			l.report(c)
		}
	})
}

// Overloaded gives the place back after the destination refused the
// request for load (reason Overload429, Overload503 or Timeout), with its
// Retry-After (0 if none).
func (p *Permit) Overloaded(reason Reason, retryAfter time.Duration) {
	p.once.Do(func() {
		l := p.l
		now := time.Now()
		var changes []Change
		l.mu.Lock()
		l.inFlight--
		if retryAfter > 0 {
			until := now.Add(min(retryAfter, MaxPause))
			if until.After(l.pause) {
				l.pause = until
				changes = append(changes, Change{From: l.limit, To: l.limit, Reason: RetryAfter, Pause: until.Sub(now)})
			}
		}
		// One halving a burst: requests started before the last
		// decrease saw the old limit.
		if p.epoch < l.decreased && l.probing {
			// Refused at the start level while half is tried: half
			// stays, and the start level counts as refused.
			l.probing, l.refused = false, l.topLimit
			l.slowStart, l.held, l.calm = false, false, 0
			l.before, l.beforeLimit = sample{}, 0
		}
		if p.epoch >= l.decreased {
			from := l.limit
			l.refused = from
			l.setLimit(max(l.min, from/2))
			l.decreased = l.epoch
			// Grow back from here, up to below the refused level.
			l.slowStart, l.held, l.calm = false, false, 0
			l.untested, l.probing = false, false
			l.before, l.beforeLimit = sample{}, 0
			if l.limit != from {
				changes = append(changes, Change{From: from, To: l.limit, Reason: reason})
			}
		}
		l.dispatch(now)
		l.mu.Unlock()
		for _, c := range changes {
			l.report(c)
		}
	})
}

// Recover starts the limit again from its start level, in slow start and
// with no level remembered as refused: the destination is back from an
// outage, whose refusals (each failing study halving the limit) said
// nothing about what it takes once up.
func (l *Limiter) Recover() {
	now := time.Now()
	l.mu.Lock()
	from := l.limit
	to := min(l.start, l.ceiling)
	if to != from {
		l.setLimit(to)
	}
	l.refused, l.slowStart, l.held, l.calm = 0, true, false, 0
	l.before, l.beforeLimit = sample{}, 0
	l.untested, l.probing = true, false
	// A Retry-After pause of the outage no longer holds: the destination
	// answered (its breaker's probe or trial).
	l.pause = time.Time{}
	if l.timer != nil {
		// Armed for the cleared pause: left, a later, shorter pause
		// would arm none (dispatch), and its waiters would sleep until
		// this one's end, up to MaxPause.
		l.timer.Stop()
		l.timer = nil
	}
	l.dispatch(now)
	l.mu.Unlock()
	if to != from {
		l.report(Change{From: from, To: to, Reason: Recovered})
	}
}

// SetReplicas sets how many replicas serve the destination (at least 1):
// this one's ceiling becomes its share of Max, ceil(Max/n), never below
// Min.
func (l *Limiter) SetReplicas(n int) {
	n = max(n, 1)
	l.mu.Lock()
	l.ceiling = max(l.min, (l.max+n-1)/n)
	from := l.limit
	changed := false
	if l.limit > l.ceiling {
		l.setLimit(l.ceiling)
		changed = true
	}
	l.mu.Unlock()
	if changed {
		l.report(Change{From: from, To: l.ceiling, Reason: ReplicaShare})
	}
}

func (l *Limiter) report(c Change) {
	l.mu.Lock()
	l.last, l.lastAt = c.Reason, time.Now().UTC()
	l.mu.Unlock()
	if l.onChange != nil {
		l.onChange(c)
	}
}

// setLimit changes the limit and starts a new round; the caller holds mu.
func (l *Limiter) setLimit(n int) {
	l.limit = n
	l.epoch++
	l.round = round{}
	l.unlike = 0
}

// measure adds an answered request to the round and, at the round's end,
// decides; the caller holds mu.
func (l *Limiter) measure(p *Permit, bytes int64, now time.Time) (Change, bool) {
	if p.epoch != l.epoch {
		return Change{}, false // started at another limit
	}
	r := &l.round
	if l.waiting() > 0 || l.inFlight+1 >= l.limit {
		r.saturated = true // every place was taken until this answer
	}
	r.n++
	r.bytes += bytes
	r.took += max(now.Sub(p.start)-time.Duration(p.waited.Load()), 0)
	if r.n < max(l.limit, minRound) {
		return Change{}, false
	}
	if !r.saturated || r.bytes <= 0 || r.took <= 0 {
		// The demand did not fill the limit: this round says nothing
		// about a higher one.
		l.round = round{}
		if l.probing {
			// Nor about half: back to the start level, to try again
			// after calm rounds there.
			l.probing, l.untested, l.held, l.calm = false, true, true, 0
			return l.backFromProbe()
		}
		return Change{}, false
	}
	cur := sample{size: float64(r.bytes) / float64(r.n), took: r.took.Seconds() / float64(r.n)}
	l.round = round{}
	best := cur.took
	for _, b := range l.best {
		best = min(best, b.bound(cur.size))
	}
	l.best = append(l.best, cur)
	if len(l.best) > bestRounds {
		l.best = l.best[1:]
	}
	from := l.limit
	change := func(to int, why Reason) (Change, bool) {
		l.setLimit(to)
		return Change{From: from, To: to, Reason: why}, true
	}
	// Grown: at least half of what the added places would carry if the
	// destination were not the bottleneck. Little's law: with every place
	// busy, the throughput is the limit over the time a request takes
	// (unlike a count over the round's wall time, it does not count the
	// ramp from the previous limit); the round before is taken at the
	// most its requests could have taken at this round's size. Only a
	// round of like size decides: against one of other sizes that bound
	// is loose and every change of the study mix would read as a gain.
	if l.probing {
		return l.endProbe(cur)
	}
	grew, comparable := true, true
	if l.beforeLimit > 0 {
		tp := float64(l.limit) / cur.took
		before := float64(l.beforeLimit) / l.before.bound(cur.size)
		grew = tp >= before*(1+0.5*float64(l.limit-l.beforeLimit)/float64(l.beforeLimit))
		comparable = l.before.like(cur.size) || l.unlike >= likeRounds
	}
	switch {
	case cur.took > latencyRatio*best:
		l.slowStart, l.held, l.calm, l.untested = false, true, 0, false
		to := l.limit - 1
		if l.beforeLimit > 0 && l.beforeLimit < to {
			to = l.beforeLimit // the last increase made it queue: undo it
		}
		if to >= l.min {
			return change(to, Latency)
		}
	case l.held:
		l.calm++
		if l.calm >= probeRounds && l.untested && l.limit == min(l.start, l.ceiling) && max(l.min, l.limit/2) < l.limit {
			// Does half carry as much?
			l.untested, l.probing = false, true
			l.top, l.topLimit = cur, l.limit
			c, ok := change(max(l.min, l.limit/2), ProbeDown)
			// An overload from a request started at the start level
			// does not halve again: it ends the probe (see Overloaded).
			l.decreased = l.epoch
			return c, ok
		}
		if l.calm >= probeRounds && l.limit < l.ceiling {
			// Held long enough: does one more pay now?
			return l.grow(cur, true, change)
		}
	case !comparable:
		// Wait for a round of like size to tell whether the last
		// increase paid.
		l.unlike++
	case grew:
		return l.grow(cur, false, change)
	default:
		// The last increase gained nothing: back to the level before.
		l.slowStart, l.held, l.calm, l.untested = false, true, 0, false
		if l.beforeLimit > 0 && l.beforeLimit < l.limit {
			return change(max(l.min, l.beforeLimit), NoGain)
		}
	}
	return Change{}, false
}

// endProbe ends the round at half the start level (ProbeDown): half is
// kept if it carried at least keepShare of the start level's throughput,
// judged only between requests of like size, the start level's time
// taken at the least it could be at this round's size (leaning towards
// the operator's level); else back to the start level (ProbeUp). The
// lower level held grows by one after probeRounds calm rounds as from any
// level. The caller holds mu.
func (l *Limiter) endProbe(cur sample) (Change, bool) {
	l.probing = false
	l.slowStart, l.held, l.calm = false, true, 0
	l.before, l.beforeLimit = sample{}, 0
	topTook := l.top.took * min(1, cur.size/l.top.size)
	half, upper := float64(l.limit)/cur.took, float64(l.topLimit)/topTook
	if !l.top.like(cur.size) || half < keepShare*upper {
		return l.backFromProbe()
	}
	return Change{}, false
}

// backFromProbe goes back to the level half was tried against, within
// the ceiling; the caller holds mu.
func (l *Limiter) backFromProbe() (Change, bool) {
	to, from := min(l.topLimit, l.ceiling), l.limit
	if to <= from {
		return Change{}, false
	}
	l.setLimit(to)
	return Change{From: from, To: to, Reason: ProbeUp}, true
}

// grow raises the limit from the level measured as cur: doubling in slow
// start, else by one, and to a level refused for load only when probing
// (after probeRounds calm rounds); the caller holds mu.
func (l *Limiter) grow(cur sample, probe bool, change func(int, Reason) (Change, bool)) (Change, bool) {
	next := l.limit + 1
	if l.slowStart {
		next = 2 * l.limit
	}
	next = min(next, l.ceiling)
	if l.refused > 0 && next >= l.refused {
		switch {
		case l.limit < l.refused-1:
			next = l.refused - 1
		case probe:
			// An overload sets it again. At the floor the refused level
			// is the limit itself: probe the one above.
			next, l.refused = min(max(l.refused, l.limit+1), l.ceiling), 0
		default:
			next = l.limit
		}
	}
	if next <= l.limit {
		l.slowStart, l.held, l.calm = false, true, 0
		return Change{}, false
	}
	// The new level is measured against this one: no probe down needed.
	l.before, l.beforeLimit, l.held, l.calm, l.untested = cur, l.limit, false, 0, false
	return change(next, Increase)
}
