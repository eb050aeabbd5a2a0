package status

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// RecentSize is how many finished attempts a Tracker remembers.
const RecentSize = 25

// Results of a finished attempt, as in stowline_forwarder_studies_total.
const (
	ResultForwarded    = "forwarded"
	ResultRetry        = "retry"
	ResultDeadLettered = "dead_lettered"
	ResultInterrupted  = "interrupted"
	ResultAckFailed    = "ack_failed"
)

// Flight is a study a forwarder is sending now.
type Flight struct {
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid"`
	Attempt          uint64    `json:"attempt"`
	StartedAt        time.Time `json:"startedAt"`
	// Instances is the study's instance count, 0 until Orthanc listed them.
	Instances int `json:"instances"`
	// Sent counts the instances the destination has answered for.
	Sent  int   `json:"sent"`
	Bytes int64 `json:"bytes"`
}

// Forward is one finished attempt to forward a study.
type Forward struct {
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid,omitempty"`
	LastUpdate       string    `json:"lastUpdate,omitempty"`
	Result           string    `json:"result"`
	Attempt          uint64    `json:"attempt,omitempty"`
	Instances        int       `json:"instances,omitempty"`
	Bytes            int64     `json:"bytes,omitempty"`
	DurationMS       int64     `json:"durationMs,omitempty"`
	FinishedAt       time.Time `json:"finishedAt"`
}

// Totals count finished attempts since the process started, by result.
type Totals struct {
	Forwarded    uint64 `json:"forwarded"`
	Retry        uint64 `json:"retry"`
	DeadLettered uint64 `json:"deadLettered"`
	Interrupted  uint64 `json:"interrupted"`
	AckFailed    uint64 `json:"ackFailed"`
}

// Snapshot is what one forwarder process is doing now.
type Snapshot struct {
	ID          string      `json:"id"`
	Host        string      `json:"host"`
	StartedAt   time.Time   `json:"startedAt"`
	UpdatedAt   time.Time   `json:"updatedAt"`
	Concurrency int         `json:"concurrency"`
	InFlight    []Flight    `json:"inFlight"`
	Recent      []Forward   `json:"recent"`
	Totals      Totals      `json:"totals"`
	Token       TokenStatus `json:"token"`
}

// Source is an Orthanc a study is read from (forward.Source).
type Source interface {
	StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error)
	OpenInstanceFile(ctx context.Context, instanceID string) (io.ReadCloser, int64, error)
}

// Destination stores instances with STOW-RS (forward.Destination).
type Destination interface {
	Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error)
}

// Tracker follows the studies of one forwarder process from the outside:
// it wraps the consumer (an event delivered starts a flight, its ack, NAK
// or termination ends it), the sources (the instance list gives the
// total) and the destination (each answered request advances the
// progress). The forwarder itself knows nothing of it.
type Tracker struct {
	id, host    string
	started     time.Time
	concurrency int
	token       *TokenWatch

	mu      sync.Mutex
	flights map[*flight]struct{}
	bySOP   map[string]*flight
	recent  []Forward // oldest first
	totals  Totals
}

type flight struct {
	Flight
	lastUpdate string
	sops       []string
	answered   map[string]bool
}

// NewTracker returns the tracker of a forwarder process with the given
// concurrency; token may be nil (no token status).
func NewTracker(concurrency int, token *TokenWatch) *Tracker {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return &Tracker{
		id: newID(), host: host, started: time.Now().UTC(), concurrency: concurrency, token: token,
		flights: map[*flight]struct{}{}, bySOP: map[string]*flight{},
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
		Token: t.token.Status(),
	}
	for f := range t.flights {
		s.InFlight = append(s.InFlight, f.Flight)
	}
	slices.SortFunc(s.InFlight, func(a, b Flight) int { return a.StartedAt.Compare(b.StartedAt) })
	for i := len(t.recent) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, t.recent[i])
	}
	return s
}

func (t *Tracker) begin(ev *events.StudyStable, attempt uint64) *flight {
	f := &flight{
		Flight: Flight{Source: ev.Source, OrthancStudyID: ev.OrthancStudyID, StudyInstanceUID: ev.StudyInstanceUID,
			Attempt: attempt, StartedAt: time.Now().UTC()},
		lastUpdate: ev.LastUpdate,
		answered:   map[string]bool{},
	}
	t.mu.Lock()
	t.flights[f] = struct{}{}
	t.mu.Unlock()
	return f
}

func (t *Tracker) listed(source, studyID string, instances []orthancapi.Instance) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var f *flight
	for c := range t.flights {
		if c.Source == source && c.OrthancStudyID == studyID && c.sops == nil && (f == nil || c.StartedAt.After(f.StartedAt)) {
			f = c
		}
	}
	if f == nil {
		return
	}
	f.Instances = len(instances)
	f.sops = make([]string, 0, len(instances))
	for _, in := range instances {
		f.sops = append(f.sops, in.SOPInstanceUID)
		t.bySOP[in.SOPInstanceUID] = f
	}
}

func (t *Tracker) answered(parts []dicomweb.Part, bytes int64) {
	if len(parts) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.bySOP[parts[0].SOPInstanceUID]
	if f == nil {
		return
	}
	for _, p := range parts {
		f.answered[p.SOPInstanceUID] = true
	}
	f.Sent = len(f.answered)
	f.Bytes += bytes
}

func (t *Tracker) finish(f *flight, result string) {
	now := time.Now().UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.flights[f]; !ok {
		return // finished already (e.g. a NAK after a failed ack)
	}
	delete(t.flights, f)
	for _, sop := range f.sops {
		if t.bySOP[sop] == f {
			delete(t.bySOP, sop)
		}
	}
	switch result {
	case ResultForwarded:
		t.totals.Forwarded++
	case ResultRetry:
		t.totals.Retry++
	case ResultDeadLettered:
		t.totals.DeadLettered++
	case ResultInterrupted:
		t.totals.Interrupted++
	case ResultAckFailed:
		t.totals.AckFailed++
	}
	if len(t.recent) == RecentSize {
		t.recent = append(t.recent[:0], t.recent[1:]...)
	}
	t.recent = append(t.recent, Forward{
		Source: f.Source, OrthancStudyID: f.OrthancStudyID, StudyInstanceUID: f.StudyInstanceUID, LastUpdate: f.lastUpdate,
		Result: result, Attempt: f.Attempt, Instances: f.Instances, Bytes: f.Bytes,
		DurationMS: now.Sub(f.StartedAt).Milliseconds(), FinishedAt: now,
	})
}

// Consumer wraps the forwarders' consumer: every event Next delivers is
// tracked until it is acked, NAKed or terminated.
func (t *Tracker) Consumer(c jetstream.Consumer) jetstream.Consumer {
	return &trackedConsumer{Consumer: c, t: t}
}

type trackedConsumer struct {
	jetstream.Consumer
	t *Tracker
}

func (c *trackedConsumer) Next(opts ...jetstream.FetchOpt) (jetstream.Msg, error) {
	msg, err := c.Consumer.Next(opts...)
	if err != nil || msg == nil {
		return msg, err
	}
	ev, derr := events.Decode(msg.Data())
	if derr != nil {
		return msg, nil // the forwarder terminates it; nothing to follow
	}
	attempt := uint64(1)
	if meta, err := msg.Metadata(); err == nil {
		attempt = meta.NumDelivered
	}
	return &trackedMsg{Msg: msg, t: c.t, f: c.t.begin(ev, attempt)}, nil
}

type trackedMsg struct {
	jetstream.Msg
	t *Tracker
	f *flight
}

func (m *trackedMsg) end(result string, err error) error {
	if err != nil && result == ResultForwarded {
		result = ResultAckFailed
	}
	m.t.finish(m.f, result)
	return err
}

func (m *trackedMsg) Ack() error { return m.end(ResultForwarded, m.Msg.Ack()) }

func (m *trackedMsg) DoubleAck(ctx context.Context) error {
	return m.end(ResultForwarded, m.Msg.DoubleAck(ctx))
}

func (m *trackedMsg) Nak() error { return m.end(ResultInterrupted, m.Msg.Nak()) }

func (m *trackedMsg) NakWithDelay(d time.Duration) error {
	return m.end(ResultRetry, m.Msg.NakWithDelay(d))
}

func (m *trackedMsg) Term() error { return m.end(ResultDeadLettered, m.Msg.Term()) }

func (m *trackedMsg) TermWithReason(reason string) error {
	return m.end(ResultDeadLettered, m.Msg.TermWithReason(reason))
}

// Source wraps the Orthanc source named name: its instance list gives a
// flight's total.
func (t *Tracker) Source(name string, s Source) Source {
	return &trackedSource{Source: s, name: name, t: t}
}

type trackedSource struct {
	Source
	name string
	t    *Tracker
}

func (s *trackedSource) StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error) {
	in, err := s.Source.StudyInstances(ctx, studyID)
	if err == nil {
		s.t.listed(s.name, studyID, in)
	}
	return in, err
}

// Destination wraps the destination: each answered STOW-RS request
// advances its study's progress.
func (t *Tracker) Destination(d Destination) Destination { return &trackedDestination{d: d, t: t} }

type trackedDestination struct {
	d Destination
	t *Tracker
}

func (d *trackedDestination) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	res, err := d.d.Store(ctx, parts)
	var he *dicomweb.HTTPError
	switch {
	case err == nil && res != nil:
		d.t.answered(parts, res.BytesSent)
	case errors.As(err, &he) && he.Result != nil:
		d.t.answered(parts, he.Result.BytesSent)
	}
	return res, err
}
