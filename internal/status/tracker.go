package status

import (
	"crypto/rand"
	"encoding/hex"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/forward"
)

// RecentSize is how many finished attempts a Tracker remembers.
const RecentSize = 25

// Flight is a study a forwarder is sending now.
type Flight struct {
	Destination      string    `json:"destination"`
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid"`
	Attempt          uint64    `json:"attempt"`
	StartedAt        time.Time `json:"startedAt"`
	// Instances is how many of the study's instances the destination's
	// rules selected (all those Orthanc listed while they have not yet
	// selected), 0 until Orthanc listed them.
	Instances int `json:"instances"`
	// Sent counts the instances the destination has answered for.
	Sent  int   `json:"sent"`
	Bytes int64 `json:"bytes"`
	// Parked says why the study is parked until its source answers: it
	// waits without a worker, and is not being sent. Empty otherwise.
	Parked string `json:"parked,omitempty"`
	// Held says why its worker holds it, unsent, until its destination
	// or its source answers. Empty otherwise.
	Held string `json:"held,omitempty"`
}

// Forward is one finished attempt to forward a study.
type Forward struct {
	Destination      string         `json:"destination"`
	Source           string         `json:"source"`
	OrthancStudyID   string         `json:"orthancStudyId"`
	StudyInstanceUID string         `json:"studyInstanceUid,omitempty"`
	LastUpdate       string         `json:"lastUpdate,omitempty"`
	Result           forward.Result `json:"result"`
	Attempt          uint64         `json:"attempt,omitempty"`
	Instances        int            `json:"instances,omitempty"`
	Bytes            int64          `json:"bytes,omitempty"`
	DurationMS       int64          `json:"durationMs,omitempty"`
	FinishedAt       time.Time      `json:"finishedAt"`
}

// Waiting is a study whose last attempt failed and that is back in the
// queue until Due: between deliveries it is on no other table, and Reason
// said why in the log only.
type Waiting struct {
	Destination      string        `json:"destination"`
	Source           string        `json:"source"`
	OrthancStudyID   string        `json:"orthancStudyId"`
	StudyInstanceUID string        `json:"studyInstanceUid,omitempty"`
	Attempt          uint64        `json:"attempt"`
	Class            forward.Class `json:"class"`
	Reason           string        `json:"reason"`
	FailedAt         time.Time     `json:"failedAt"`
	Due              time.Time     `json:"due"`
	// Lane is the lane its event waits in (empty from older forwarders).
	Lane events.Priority `json:"lane,omitempty"`
	// HeldBy says what keeps the study from being pulled now, whatever
	// Due says: HeldLane (its lane is outside its FORWARD_WINDOWS hours
	// until Opens, zero when not within two days) or HeldBreaker (the
	// destination's circuit breaker is not closed: nothing is pulled);
	// empty when nothing does. A held study stays listed.
	HeldBy string    `json:"heldBy,omitempty"`
	Opens  time.Time `json:"opens,omitzero"`
	// heldAt is when the tracker last saw it held.
	heldAt time.Time
}

// What holds a waiting study (Waiting.HeldBy).
const (
	HeldLane    = "lane"
	HeldBreaker = "breaker"
)

// How many waiting studies a Tracker remembers, with reasons cut to
// maxWaitingReason bytes: the snapshot is written to the status bucket
// every few seconds; an outage fails every study, and the page shows the
// first few.
const (
	maxWaiting       = 50
	maxWaitingReason = 300
	// waitingGrace keeps a study listed this long past its due time,
	// or past the last snapshot that found it held (a closed lane, an
	// open breaker): another replica may have taken the redelivery, and
	// its Started never reaches this tracker.
	waitingGrace = time.Minute
)

// Totals count finished attempts since the process started, by result.
type Totals struct {
	Forwarded uint64 `json:"forwarded"`
	// NotSelected counts the studies the destination's rules selected
	// nothing of: done, but nothing sent.
	NotSelected  uint64 `json:"notSelected"`
	Retry        uint64 `json:"retry"`
	DeadLettered uint64 `json:"deadLettered"`
	Interrupted  uint64 `json:"interrupted"`
	AckFailed    uint64 `json:"ackFailed"`
}

// Snapshot is what one forwarder process is doing now.
type Snapshot struct {
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	StartedAt   time.Time `json:"startedAt"`
	UpdatedAt   time.Time `json:"updatedAt"`
	Concurrency int       `json:"concurrency"`
	InFlight    []Flight  `json:"inFlight"`
	Recent      []Forward `json:"recent"`
	// Waiting lists the studies this process gave back to the queue
	// after a failure, by due time, until one is taken again.
	Waiting []Waiting `json:"waiting,omitempty"`
	Totals  Totals    `json:"totals"`
	// Tokens is the token status of each destination it serves.
	Tokens []TokenStatus `json:"tokens"`
	// Destinations is the circuit breaker and request limit of each
	// destination it serves.
	Destinations []forward.DestinationStatus `json:"destinations,omitempty"`
	// KeyFingerprints is, by name, each destination it serves: the
	// fingerprint of its de-identification key (deident.Keyer.Fingerprint,
	// never the key), or NoKey when it sends the destination identifiable
	// copies. Releases before it publish none: unknown.
	KeyFingerprints map[string]string `json:"keyFingerprints,omitempty"`
}

// NoKey is the KeyFingerprints entry of a destination a forwarder sends
// identifiable copies to (without STOW_DEIDENTIFY).
const NoKey = "none"

// Tracker is what one forwarder process is doing, as the forwarder tells
// it (it is the forwarder's forward.Observer): studies in flight with
// their progress, recent attempts and totals by result.
type Tracker struct {
	id, host    string
	started     time.Time
	concurrency int
	tokens      []*TokenWatch

	mu      sync.Mutex
	dests   []func() forward.DestinationStatus
	keys    map[string]string
	putErr  error // of the last put in the status bucket (Share)
	flights map[*forward.Attempt]*flight
	recent  []Forward // oldest first
	waiting map[studyKey]Waiting
	totals  Totals
}

// studyKey names a study at one destination.
type studyKey struct{ destination, source, orthancStudyID string }

func keyOf(a *forward.Attempt) studyKey {
	return studyKey{a.Destination, a.Event.Source, a.Event.OrthancStudyID}
}

type flight struct {
	Flight
	lastUpdate string
}

// NewTracker returns the tracker of a forwarder process with the given
// concurrency (studies at once, over every destination it serves), and
// the token watch of each destination.
func NewTracker(concurrency int, tokens ...*TokenWatch) *Tracker {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return &Tracker{
		id: newID(), host: host, started: time.Now().UTC(), concurrency: concurrency, tokens: tokens,
		flights: map[*forward.Attempt]*flight{}, waiting: map[studyKey]Waiting{},
	}
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead, on broken systems)
	return hex.EncodeToString(b)
}

// ID identifies the process in the shared bucket.
func (t *Tracker) ID() string { return t.id }

// Snapshot returns the current state.
func (t *Tracker) Snapshot() Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Snapshot{
		ID: t.id, Host: t.host, StartedAt: t.started, UpdatedAt: time.Now().UTC(), Concurrency: t.concurrency,
		InFlight: make([]Flight, 0, len(t.flights)), Recent: make([]Forward, 0, len(t.recent)), Totals: t.totals,
		Tokens: make([]TokenStatus, 0, len(t.tokens)),
	}
	for _, w := range t.tokens {
		s.Tokens = append(s.Tokens, w.Status())
	}
	for _, d := range t.dests {
		s.Destinations = append(s.Destinations, d())
	}
	if len(t.keys) > 0 {
		s.KeyFingerprints = maps.Clone(t.keys)
	}
	for _, f := range t.flights {
		s.InFlight = append(s.InFlight, f.Flight)
	}
	slices.SortFunc(s.InFlight, func(a, b Flight) int { return a.StartedAt.Compare(b.StartedAt) })
	for i := len(t.recent) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, t.recent[i])
	}
	for k, w := range t.waiting {
		w.HeldBy, w.Opens = heldBy(s.Destinations, w)
		if w.HeldBy != "" {
			w.heldAt = s.UpdatedAt
		}
		// Past its due time a study held by its lane or its breaker
		// was dropped, its reason with it, though it was still queued.
		if s.UpdatedAt.Sub(later(w.Due, w.heldAt)) > waitingGrace {
			delete(t.waiting, k)
			continue
		}
		t.waiting[k] = w
		s.Waiting = append(s.Waiting, w)
	}
	slices.SortFunc(s.Waiting, func(a, b Waiting) int { return a.Due.Compare(b.Due) })
	return s
}

// heldBy says what keeps w's study from being pulled, as its
// destination's state dests tells it: its lane closed, or the breaker
// not closed (half-open pulls only its trial).
func heldBy(dests []forward.DestinationStatus, w Waiting) (string, time.Time) {
	lane := w.Lane
	if lane == "" {
		lane = events.PriorityRoutine
	}
	for _, d := range dests {
		if d.Destination != w.Destination {
			continue
		}
		for _, c := range d.ClosedLanes {
			if c.Lane == lane {
				return HeldLane, c.Opens
			}
		}
		if d.State == forward.BreakerOpen.String() || d.State == forward.BreakerHalfOpen.String() {
			return HeldBreaker, time.Time{}
		}
	}
	return "", time.Time{}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// SetKeyFingerprints sets the snapshots' KeyFingerprints.
func (t *Tracker) SetKeyFingerprints(keys map[string]string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.keys = maps.Clone(keys)
}

// LastPutError is the error of the last put of this process's snapshot in
// the status bucket (Share); nil once one succeeded, or before the first.
func (t *Tracker) LastPutError() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.putErr
}

// deidentifies reports whether a destination it serves is de-identified:
// the other forwarders compare its key through the shared snapshot.
func (t *Tracker) deidentifies() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, fp := range t.keys {
		if fp != NoKey {
			return true
		}
	}
	return false
}

// WatchDestination adds a destination's state (Forwarder.Status) to the
// snapshots.
func (t *Tracker) WatchDestination(state func() forward.DestinationStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dests = append(t.dests, state)
}

// Started records a study the forwarder began to send.
func (t *Tracker) Started(a *forward.Attempt) {
	ev := a.Event
	f := &flight{
		Flight: Flight{Destination: a.Destination, Source: ev.Source, OrthancStudyID: ev.OrthancStudyID, StudyInstanceUID: ev.StudyInstanceUID,
			Attempt: a.Number, StartedAt: time.Now().UTC()},
		lastUpdate: ev.LastUpdate,
	}
	t.mu.Lock()
	t.flights[a] = f
	delete(t.waiting, keyOf(a))
	t.mu.Unlock()
}

// Retrying records why a's study went back to the queue, due again at
// due.
func (t *Tracker) Retrying(a *forward.Attempt, class forward.Class, reason string, due time.Time) {
	ev := a.Event
	w := Waiting{
		Destination: a.Destination, Source: ev.Source, OrthancStudyID: ev.OrthancStudyID, StudyInstanceUID: ev.StudyInstanceUID,
		Attempt: a.Number, Class: class, Reason: ellipsis.Truncate(reason, maxWaitingReason), FailedAt: time.Now().UTC(), Due: due.UTC(),
		Lane: a.Lane(),
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k := keyOf(a)
	if _, ok := t.waiting[k]; !ok && len(t.waiting) >= maxWaiting {
		// The one due soonest makes room: it is the likeliest to be
		// taken again already.
		var first studyKey
		for k, o := range t.waiting {
			if first == (studyKey{}) || o.Due.Before(t.waiting[first].Due) {
				first = k
			}
		}
		delete(t.waiting, first)
	}
	t.waiting[k] = w
}

// Progress records how far the study got.
func (t *Tracker) Progress(a *forward.Attempt, rep forward.Report) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.flights[a]; f != nil {
		f.Instances, f.Sent, f.Bytes = studySize(rep), rep.Instances, rep.Bytes
	}
}

// studySize is the instance count to show against Sent: the instances the
// destination's rules selected, since only those are sent; Listed until
// they selected (or when the rules selected nothing).
func studySize(rep forward.Report) int {
	if rep.Selected > 0 {
		return rep.Selected
	}
	return rep.Listed
}

// Parked records that the study waits, parked, for its source.
func (t *Tracker) Parked(a *forward.Attempt, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.flights[a]; f != nil {
		f.Parked = why
	}
}

// Held records that the study's worker holds it, and why; "" once it is
// sent again.
func (t *Tracker) Held(a *forward.Attempt, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.flights[a]; f != nil {
		f.Held = why
	}
}

// Finished records how the attempt ended.
func (t *Tracker) Finished(a *forward.Attempt, result forward.Result, rep forward.Report) {
	now := time.Now().UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.flights[a]
	if !ok {
		return
	}
	delete(t.flights, a)
	f.Instances, f.Sent, f.Bytes = studySize(rep), rep.Instances, rep.Bytes
	switch result {
	case forward.ResultForwarded:
		t.totals.Forwarded++
	case forward.ResultNotSelected:
		t.totals.NotSelected++
	case forward.ResultRetry:
		t.totals.Retry++
	case forward.ResultDeadLettered:
		t.totals.DeadLettered++
	case forward.ResultInterrupted:
		t.totals.Interrupted++
	case forward.ResultAckFailed:
		t.totals.AckFailed++
	}
	if len(t.recent) == RecentSize {
		t.recent = append(t.recent[:0], t.recent[1:]...)
	}
	t.recent = append(t.recent, Forward{
		Destination: f.Destination, Source: f.Source, OrthancStudyID: f.OrthancStudyID, StudyInstanceUID: f.StudyInstanceUID, LastUpdate: f.lastUpdate,
		Result: result, Attempt: f.Attempt, Instances: f.Instances, Bytes: f.Bytes,
		DurationMS: now.Sub(f.StartedAt).Milliseconds(), FinishedAt: now,
	})
}
