// The audit is the last line of defence against a lost study: it lists
// the studies present in each Orthanc source that have no record of a
// completed forward of their current state (the ledger), and can publish
// their events so the forwarders send them (`forwarder audit`).

package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// Orthanc is what the audit reads from one source.
type Orthanc interface {
	System(ctx context.Context) (orthancapi.System, error)
	Studies(ctx context.Context, since, limit int) ([]orthancapi.Study, error)
}

// Records tells which forwards completed (*Ledger, or none before any
// forwarder created the bucket).
type Records interface {
	Lookup(ctx context.Context, source, orthancStudyID string) (Record, error)
}

// Source is one Orthanc to audit.
type Source struct {
	// Name is the source name of its events; empty means Orthanc's Name
	// as the Lua script uses it (events.DefaultSourceName).
	Name    string
	Orthanc Orthanc
}

// Reasons a study is reported.
const (
	// ReasonNeverForwarded: no completed forward of the study is recorded.
	ReasonNeverForwarded = "never_forwarded"
	// ReasonChanged: the study changed (LastUpdate) after its last
	// completed forward.
	ReasonChanged = "changed_since_forward"
)

// Finding is a study whose current state was not forwarded to a
// destination.
type Finding struct {
	Destination      string `json:"destination"`
	Source           string `json:"source"`
	OrthancStudyID   string `json:"orthancStudyId"`
	StudyInstanceUID string `json:"studyInstanceUid"`
	LastUpdate       string `json:"lastUpdate"`
	Reason           string `json:"reason"`
	// ForwardedLastUpdate is the LastUpdate of the last completed
	// forward; empty if there was none.
	ForwardedLastUpdate string `json:"forwardedLastUpdate,omitempty"`
	// Enqueued is true when --enqueue published the study's event;
	// Duplicate when JetStream already held it (it is queued or was
	// forwarded within the dedupe window), or, not published, when the
	// destination holds an event for it alone of the study's state, not
	// acknowledged (AuditOptions.HeldAlone).
	Enqueued  bool `json:"enqueued,omitempty"`
	Duplicate bool `json:"duplicate,omitempty"`
	// ProbablyQueued: other destinations forwarded the study, and this
	// one's lane consumers held an event not acknowledged stored no later
	// than the first of those forwards: the study's own event may be
	// that one, so it was not queued again (AuditOptions.Held).
	ProbablyQueued bool `json:"probablyQueued,omitempty"`
	// Problem says why the event could not be published.
	Problem string `json:"problem,omitempty"`
}

// Summary counts what an audit saw.
type Summary struct {
	Studies int `json:"studies"`
	// Forwarded counts the studies every destination has.
	Forwarded int `json:"forwarded"`
	// Unstable studies are still receiving instances: their event comes
	// when they are stable, so they are not reported.
	Unstable int `json:"unstable"`
	// Findings counts what is missing, a study once per destination;
	// Missing the studies missing at a destination, each once.
	Findings int `json:"findings"`
	Missing  int `json:"missing"`
	// Enqueued counts the findings whose event JetStream stored;
	// Duplicates those whose event it dropped as a duplicate of one
	// stored within the dedupe window (waiting in the queue, being
	// forwarded, or dead-lettered), or whose destination holds an event
	// for it alone (Finding.Duplicate): this run did not queue them again.
	Enqueued   int `json:"enqueued"`
	Duplicates int `json:"duplicates,omitempty"`
	// ProbablyQueued counts the findings not queued because their
	// destination may still hold their event (Finding.ProbablyQueued).
	ProbablyQueued int `json:"probablyQueued,omitempty"`
	// NotEnqueued counts findings whose event could not be published.
	NotEnqueued int `json:"notEnqueued,omitempty"`
}

// Destination is one destination to audit, with its ledger.
type Destination struct {
	Name    string
	Records Records
}

// AuditOptions configures an Auditor.
type AuditOptions struct {
	Sources      []Source
	Destinations []Destination
	// Some is true when Destinations are not all the deployment's: a
	// study they all lack then still gets an event for each of them, never
	// the event every destination takes.
	Some bool
	// Publish queues an event for one destination, or for every
	// destination when destination is empty; required to enqueue.
	Publish func(ctx context.Context, destination string, ev *events.StudyStable) (*jetstream.PubAck, error)
	// Held, when set, reads the stream time of the oldest event the
	// destination's lane consumers hold not acknowledged (zero: none). A
	// study missing at some of the destinations only is then not queued
	// for one that holds an event stored no later than the first record
	// of the study's state at the others (Record.Stored, ClockMargin): its
	// own event, stored before that forward, may be that one (a backlog,
	// an open breaker, a closed lane, a retry), and a repair would send
	// it twice. One that holds only newer events has acknowledged it, and
	// lost it. Both times are the NATS servers', never this host's.
	Held func(ctx context.Context, destination string) (time.Time, error)
	// HeldAlone, when set, reads the studies of the events the
	// destination's lane consumers hold for it alone, not acknowledged
	// (natsjs.HeldAlone: backfills, replays, re-forwards, the audit's
	// repairs), with the newest LastUpdate held of each. A finding whose
	// destination holds its state, or a newer one, so is already queued
	// there, whatever the times (Held cannot tell: an operator queues
	// such a copy after the others' forward): it is not queued again.
	HeldAlone func(ctx context.Context, destination string) (map[natsjs.StudyKey]string, error)
	// EventsMaxAge is the event stream's MaxAge (0: none): a study
	// recorded at the others longer ago than that has its event expired,
	// and is queued whatever its destination holds.
	EventsMaxAge time.Duration
	// Now is the NATS server's clock (nil: time.Now), which the MaxAge
	// test compares with Record.Stored.
	Now func() time.Time
	// ClockMargin widens the comparisons of times from different NATS
	// servers (the ledger's and the event stream's leaders; 0: a minute).
	ClockMargin time.Duration
	// PageSize is how many studies one GET /studies reads (default 500,
	// at least 4).
	PageSize int
	Logger   *slog.Logger
}

// Auditor compares Orthanc sources with the ledger.
type Auditor struct {
	opts AuditOptions
	log  *slog.Logger
	// held keeps, by destination, this run's last read of Held: a new
	// destination makes every study of an archive a partial finding, and
	// one that cannot be read would cost a timeout each.
	held map[string]heldRead
	// alone keeps, by destination, this run's read of HeldAlone.
	alone map[string]aloneRead
}

// aloneRead is one read of AuditOptions.HeldAlone.
type aloneRead struct {
	studies map[natsjs.StudyKey]string
	err     error
}

// heldRead is one read of AuditOptions.Held, begun at at.
type heldRead struct {
	oldest, at time.Time
	err        error
}

// NewAuditor validates opts and returns an Auditor.
func NewAuditor(opts AuditOptions) (*Auditor, error) {
	if len(opts.Sources) == 0 {
		return nil, errors.New("audit: at least one source is required")
	}
	for _, s := range opts.Sources {
		if s.Orthanc == nil {
			return nil, fmt.Errorf("audit: source %q has no Orthanc client", s.Name)
		}
	}
	if len(opts.Destinations) == 0 {
		return nil, errors.New("audit: at least one destination is required")
	}
	for _, d := range opts.Destinations {
		if d.Records == nil {
			return nil, fmt.Errorf("audit: destination %q has no ledger", d.Name)
		}
	}
	if opts.PageSize < 4 {
		opts.PageSize = 500
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ClockMargin <= 0 {
		opts.ClockMargin = time.Minute
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Auditor{opts: opts, log: log, held: map[string]heldRead{}, alone: map[string]aloneRead{}}, nil
}

// Run audits every source and calls report for each finding, in Orthanc's
// order. With enqueue it first publishes the finding's event, the same the
// Lua script would send. A report error stops the audit. A source that
// cannot be read does not: the others are audited all the same (one
// Orthanc down must not hide the others' missing studies), and the error
// names each source left unaudited.
func (a *Auditor) Run(ctx context.Context, enqueue bool, report func(Finding) error) (Summary, error) {
	if enqueue && a.opts.Publish == nil {
		return Summary{}, errors.New("audit: a publisher is required to enqueue")
	}
	var sum Summary
	var errs []error
	reported := func(f Finding) error {
		if err := report(f); err != nil {
			return &reportError{err}
		}
		return nil
	}
	for _, src := range a.opts.Sources {
		err := a.source(ctx, src, enqueue, reported, &sum)
		if _, ok := errors.AsType[*reportError](err); ok {
			return sum, err
		}
		if err != nil {
			if ctx.Err() != nil {
				return sum, err
			}
			a.log.Error("source not audited (or not to its end); the other sources are audited", "err", err)
			errs = append(errs, err)
		}
	}
	return sum, errors.Join(errs...)
}

// reportError is Run's report failing: it stops the audit.
type reportError struct{ err error }

func (e *reportError) Error() string { return e.err.Error() }
func (e *reportError) Unwrap() error { return e.err }

func (a *Auditor) source(ctx context.Context, src Source, enqueue bool, report func(Finding) error, sum *Summary) error {
	name := src.Name
	if name == "" {
		sys, err := src.Orthanc.System(ctx)
		if err != nil {
			return fmt.Errorf("orthanc: learn the source name: %w", err)
		}
		name = events.DefaultSourceName(sys.Name)
	}
	log := a.log.With("source", name)
	log.Info("auditing source")
	err := orthancapi.EachStudy(ctx, src.Orthanc, a.opts.PageSize, func(st orthancapi.Study) error {
		findings, forwardedAt, err := a.study(ctx, name, st, sum)
		if err != nil {
			return err
		}
		if len(findings) > 0 {
			sum.Missing++
		}
		if enqueue && len(findings) > 0 {
			a.enqueue(ctx, findings, forwardedAt, log)
		}
		for _, f := range findings {
			switch {
			case !enqueue:
			case f.ProbablyQueued:
				sum.ProbablyQueued++
			case f.Duplicate:
				sum.Duplicates++
			case f.Enqueued:
				sum.Enqueued++
			default:
				sum.NotEnqueued++
			}
			sum.Findings++
			if err := report(f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	return nil
}

// study compares one study with every destination's ledger: a finding
// per destination that lacks its current state. forwardedAt is the
// earliest Stored of the records of the destinations that hold it (zero:
// none).
func (a *Auditor) study(ctx context.Context, source string, st orthancapi.Study, sum *Summary) (out []Finding, forwardedAt time.Time, err error) {
	sum.Studies++
	if !st.IsStable {
		sum.Unstable++
		return nil, time.Time{}, nil
	}
	// Each destination's ledger is read at the same time: one read after
	// another, an audit of a million studies and ten destinations took
	// ten million round trips to the streams' leaders, hours.
	// The first failure ends the others' waits through an election: it
	// fails the study whatever they answer.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := len(a.opts.Destinations)
	recs, errs, cut := make([]Record, n), make([]error, n), make([]bool, n)
	var wg sync.WaitGroup
	for i, d := range a.opts.Destinations {
		wg.Go(func() {
			recs[i], errs[i] = lookupThroughElection(lctx, d.Records, source, st.ID)
			switch {
			case errs[i] == nil || errors.Is(errs[i], ErrNotRecorded):
			case lctx.Err() != nil && ctx.Err() == nil:
				cut[i] = true // ended by another destination's failure
			default:
				cancel()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, ErrNotRecorded) && !cut[i] {
			return nil, time.Time{}, fmt.Errorf("destination %s: %w", a.opts.Destinations[i].Name, err)
		}
	}
	for i, d := range a.opts.Destinations {
		f := Finding{Destination: d.Name, Source: source, OrthancStudyID: st.ID, StudyInstanceUID: st.StudyInstanceUID,
			LastUpdate: st.LastUpdate, Reason: ReasonNeverForwarded}
		rec, err := recs[i], errs[i]
		switch {
		case errors.Is(err, ErrNotRecorded):
		case rec.LastUpdate >= st.LastUpdate:
			if !rec.Stored.IsZero() && (forwardedAt.IsZero() || rec.Stored.Before(forwardedAt)) {
				forwardedAt = rec.Stored
			}
			continue
		default:
			f.Reason, f.ForwardedLastUpdate = ReasonChanged, rec.LastUpdate
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		sum.Forwarded++
	}
	return out, forwardedAt, nil
}

// KeptStudy is a study a destination's ledger records as forwarded whose
// record keeps instances: the destination does not hold them as sent (a
// conflict skipped under STOW_ON_CONFLICT=skip, a copy stowline cannot
// prove it stored, one the destination changed: B000, B006). The study
// was acked all the same, so the plain audit counts it forwarded.
type KeptStudy struct {
	Destination      string    `json:"destination"`
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid,omitempty"`
	LastUpdate       string    `json:"lastUpdate"`
	ForwardedAt      time.Time `json:"forwardedAt"`
	// Kept are the SOP Instance UIDs kept (Record.Kept); KeptAll: more
	// than a record holds, every instance of the study counts as kept.
	Kept    []string `json:"kept,omitempty"`
	KeptAll bool     `json:"keptAll,omitempty"`
}

// ForwardedRecords walks the records of a destination's forwards
// (*Ledger).
type ForwardedRecords interface {
	Forwarded(ctx context.Context, since time.Time, fn func(source, orthancStudyID string, r Record) error) error
}

// ListKept calls report for each study records holds as forwarded to
// destination at or after since (zero: every one) whose record keeps
// instances, in the ledger's order, and returns how many it reported.
// It reads the ledger alone, not Orthanc: buffer mode may have deleted
// the rest of such a study, and the record outlives the source's copy.
func ListKept(ctx context.Context, destination string, records ForwardedRecords, since time.Time, report func(KeptStudy) error) (int, error) {
	n := 0
	err := records.Forwarded(ctx, since, func(source, id string, r Record) error {
		if len(r.Kept) == 0 && !r.KeptAll {
			return nil
		}
		n++
		return report(KeptStudy{Destination: destination, Source: source, OrthancStudyID: id, StudyInstanceUID: r.StudyInstanceUID,
			LastUpdate: r.LastUpdate, ForwardedAt: r.ForwardedAt, Kept: r.Kept, KeptAll: r.KeptAll})
	})
	if err != nil {
		return n, fmt.Errorf("destination %s: kept studies: %w", destination, err)
	}
	return n, nil
}

// electionWait bounds how long the audit reads a record again while
// JetStream does not answer: a cluster electing the leader of a ledger's
// stream (4 to 9 s) answers nobody, and Lookup reads from the leader.
// electionRetry is the pause between two reads.
const (
	electionWait  = 30 * time.Second
	electionRetry = time.Second
)

// lookupThroughElection is r.Lookup, read again while JetStream does not
// answer, for at most electionWait: the audit stopped at the first such
// read, a whole run lost to a rolling restart of the NATS cluster.
func lookupThroughElection(ctx context.Context, r Records, source, id string) (Record, error) {
	deadline := time.Now().Add(electionWait)
	for {
		rec, err := r.Lookup(ctx, source, id)
		if !natsjs.Unanswered(err) || ctx.Err() != nil || time.Now().Add(electionRetry).After(deadline) {
			return rec, err
		}
		t := time.NewTimer(electionRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return rec, err
		case <-t.C:
		}
	}
}

// enqueue publishes the study's event for the destinations that lack it:
// the event the Lua script sends when every destination does (it then
// de-duplicates with one already queued), else one for each of them
// that cannot still hold the study's event (probablyQueued).
func (a *Auditor) enqueue(ctx context.Context, fs []Finding, forwardedAt time.Time, log *slog.Logger) {
	f := fs[0]
	ev, err := events.NewStudyStable(f.Source, f.OrthancStudyID, f.StudyInstanceUID, f.LastUpdate)
	log = log.With("orthanc_study_id", f.OrthancStudyID, "study_instance_uid", f.StudyInstanceUID, "last_update", f.LastUpdate)
	if err != nil {
		for i := range fs {
			fs[i].Problem = "the event would be invalid: " + err.Error()
		}
		log.Error("study not enqueued", "err", err)
		return
	}
	publish := func(destination string, targets []*Finding) {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ack, err := a.opts.Publish(pctx, destination, ev)
		for _, t := range targets {
			if err != nil {
				t.Problem = err.Error()
				continue
			}
			t.Enqueued, t.Duplicate = true, ack.Duplicate
		}
		if err != nil {
			log.Error("study not enqueued", "destination", destination, "err", err)
			return
		}
		log.Info("study enqueued by the audit", "destination", destination, "duplicate", ack.Duplicate, "stream_seq", ack.Sequence)
	}
	if !a.opts.Some && len(fs) == len(a.opts.Destinations) {
		// The study's ordinary event, which de-duplicates with the one the
		// Lua script sent, unless every destination holds a copy for it
		// alone (an unreadable one counts as not).
		targets := make([]*Finding, len(fs))
		queued := 0
		for i := range fs {
			targets[i] = &fs[i]
			if held, err := a.heldAlone(ctx, &fs[i]); err == nil && held {
				queued++
			}
		}
		if queued < len(fs) {
			publish("", targets)
			return
		}
		for i := range fs {
			fs[i].Duplicate = true
		}
		log.Info("study not enqueued: every destination holds an event for it alone not acknowledged")
		return
	}
	for i := range fs {
		held, err := a.heldAlone(ctx, &fs[i])
		if err != nil {
			// Logged once, at the read.
			fs[i].Problem = err.Error()
			continue
		}
		if held {
			fs[i].Duplicate = true
			log.Info("study not enqueued: its destination holds an event for it alone not acknowledged", "destination", fs[i].Destination)
			continue
		}
		if a.opts.Held != nil {
			held, err := a.probablyQueued(ctx, fs[i].Destination, forwardedAt)
			if err != nil {
				// Logged once, at the read.
				fs[i].Problem = err.Error()
				continue
			}
			if held {
				fs[i].ProbablyQueued = true
				log.Info("study not enqueued: its destination holds events as old as its forward to the others", "destination", fs[i].Destination)
				continue
			}
		}
		publish(fs[i].Destination, []*Finding{&fs[i]})
	}
}

// heldAlone reports whether f's destination holds an event for it alone
// of f's state or a newer one (AuditOptions.HeldAlone), reading each
// destination once a run; a failed read is not tried again this run.
func (a *Auditor) heldAlone(ctx context.Context, f *Finding) (bool, error) {
	if a.opts.HeldAlone == nil {
		return false, nil
	}
	r, ok := a.alone[f.Destination]
	if !ok {
		r.studies, r.err = a.opts.HeldAlone(ctx, f.Destination)
		if r.err != nil {
			r.err = fmt.Errorf("the events destination %s holds for it alone cannot be read (not asked again this run): %w", f.Destination, r.err)
			a.log.Error("its studies missing at some destinations only are not queued for it this run", "destination", f.Destination, "err", r.err)
		}
		a.alone[f.Destination] = r
	}
	if r.err != nil {
		return false, r.err
	}
	lastUpdate, ok := r.studies[natsjs.StudyKey{Source: f.Source, OrthancStudyID: f.OrthancStudyID}]
	return ok && lastUpdate >= f.LastUpdate, nil
}

// probablyQueued reports whether destination may still hold the event of
// a study the others' ledgers recorded at forwardedAt (server time): that
// event was stored no later, so it is held only if the destination holds
// an event as old.
// The destination is read once a run, and again only for a study
// forwarded after (or within the margin of) the last read, which its
// event may postdate; a read after the ledgers shows the event if held.
// A failed read is not tried again this run.
func (a *Auditor) probablyQueued(ctx context.Context, destination string, forwardedAt time.Time) (bool, error) {
	by := forwardedAt.Add(a.opts.ClockMargin)
	// Expired, or no time recorded: nothing to wait for.
	if forwardedAt.IsZero() || a.opts.EventsMaxAge > 0 && by.Before(a.opts.Now().Add(-a.opts.EventsMaxAge)) {
		return false, nil
	}
	h, ok := a.held[destination]
	if !ok || h.err == nil && !h.at.After(by) {
		h = heldRead{at: a.opts.Now()}
		h.oldest, h.err = a.opts.Held(ctx, destination)
		if h.err != nil {
			h.err = fmt.Errorf("the events destination %s holds cannot be read (not asked again this run): %w", destination, h.err)
			a.log.Error("its studies missing at some destinations only are not queued for it this run", "destination", destination, "err", h.err)
		}
		a.held[destination] = h
	}
	if h.err != nil {
		return false, h.err
	}
	return !h.oldest.IsZero() && !h.oldest.After(by), nil
}
