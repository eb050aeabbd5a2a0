// Package reconcile makes sure no stable study is missed when Orthanc's
// Lua webhook is lost (ingest down, network blip, Orthanc restarted before
// the study became stable). It polls each Orthanc source's change log
// (GET /changes) and publishes the same StudyStable event, with the same
// JetStream de-duplication ID, as the Lua path: a study announced by both
// is stored once.
//
// The cursor of each source lives in a JetStream key-value bucket, so the
// ingest replicas that run the reconciler stay stateless; a lease in the
// same bucket (compare-and-set) lets one replica poll a source at a time,
// and another take over when it stops renewing. The cursor advances past a
// change only once the event it calls for is stored.
package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/orthancapi"
)

// Orthanc is what the reconciler reads from one source.
type Orthanc interface {
	System(ctx context.Context) (orthancapi.System, error)
	Changes(ctx context.Context, since int64, limit int) (orthancapi.Changes, error)
	LastChange(ctx context.Context) (int64, error)
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
	SeriesStudy(ctx context.Context, seriesID string) (orthancapi.Study, error)
	InstanceStudy(ctx context.Context, instanceID string) (orthancapi.Study, error)
}

// Source is one Orthanc to reconcile.
type Source struct {
	// Name is the source name of its events. Empty means the name
	// Orthanc's Lua script uses by default: Orthanc's "Name"
	// (events.DefaultSourceName), read from GET /system.
	Name    string
	Orthanc Orthanc
}

// Options configures a Reconciler. Zero durations get the defaults.
type Options struct {
	Sources []Source
	// KV is the bucket of cursors and leases (natsjs.Topology.EnsureReconcile).
	KV        jetstream.KeyValue
	Publisher events.Publisher
	// PollInterval is the pause between polls once the change log is read
	// to its end (default 10 s).
	PollInterval time.Duration
	// LeaseTTL is how long a lease holder may go without renewing before
	// another replica takes the source over (default 15 s). The holder
	// renews every third of it.
	LeaseTTL time.Duration
	// MaxBackoff bounds the delay between polls while Orthanc or JetStream
	// fails (default 30 s, at least PollInterval).
	MaxBackoff time.Duration
	// PageSize is how many changes one GET /changes reads (default 200).
	PageSize int
	// PublishTimeout bounds one publish (default 10 s).
	PublishTimeout time.Duration
	// Holder names this replica in the leases (default host:pid:random).
	Holder     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Reconciler polls the sources. Create it with New, then Run it.
type Reconciler struct {
	opts    Options
	log     *slog.Logger
	m       *metrics
	sources []*sourceRunner
}

// New validates opts and returns a Reconciler.
func New(opts Options) (*Reconciler, error) {
	var errs []error
	if len(opts.Sources) == 0 {
		errs = append(errs, errors.New("at least one source is required"))
	}
	if opts.KV == nil {
		errs = append(errs, errors.New("a key-value bucket is required"))
	}
	if opts.Publisher == nil {
		errs = append(errs, errors.New("a publisher is required"))
	}
	names := map[string]bool{}
	for i, s := range opts.Sources {
		if s.Orthanc == nil {
			errs = append(errs, fmt.Errorf("source %d (%q) has no Orthanc client", i, s.Name))
		}
		if s.Name != "" && !events.ValidSource(s.Name) {
			errs = append(errs, fmt.Errorf("source name %q is invalid", s.Name))
		}
		if names[s.Name] {
			errs = append(errs, fmt.Errorf("source %q is listed twice", s.Name))
		}
		names[s.Name] = true
	}
	if opts.PollInterval < 0 || opts.LeaseTTL < 0 || opts.MaxBackoff < 0 || opts.PageSize < 0 || opts.PublishTimeout < 0 {
		errs = append(errs, errors.New("durations and page size must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 10 * time.Second
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 15 * time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.PollInterval)
	if opts.PageSize == 0 {
		opts.PageSize = 200
	}
	if opts.PublishTimeout == 0 {
		opts.PublishTimeout = 10 * time.Second
	}
	if opts.Holder == "" {
		opts.Holder = defaultHolder()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{opts: opts, log: log, m: m}
	for _, s := range opts.Sources {
		r.sources = append(r.sources, &sourceRunner{r: r, configured: s.Name, orthanc: s.Orthanc})
	}
	return r, nil
}

func defaultHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b)
}

// Run polls every source until ctx ends, then releases the leases it
// holds so another replica takes over at once. It returns nil: failures
// are retried, logged and reported by the checks.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, s := range r.sources {
		wg.Go(func() { s.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Checks returns a readiness check per source, named "reconcile_<name>"
// ("reconcile" for the one source without a configured name). A check
// fails while polling that source fails (Orthanc unreachable, for
// example); a replica that does not hold the source's lease is ready.
func (r *Reconciler) Checks() map[string]func(context.Context) error {
	out := make(map[string]func(context.Context) error, len(r.sources))
	for _, s := range r.sources {
		name := "reconcile"
		if s.configured != "" {
			name += "_" + s.configured
		}
		out[name] = s.check
	}
	return out
}

// sourceRunner reconciles one source. Its fields below mu are used only by
// its own goroutine (and the lease renewer while leading).
type sourceRunner struct {
	r          *Reconciler
	configured string
	orthanc    Orthanc

	mu     sync.Mutex
	status error

	name   string // resolved source name
	log    *slog.Logger
	lease  *lease
	store  *cursorStore
	cur    cursor
	dirty  bool              // cur differs from what is stored
	recent map[string]string // study ID -> LastUpdate published in this term
}

func (s *sourceRunner) check(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *sourceRunner) setStatus(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = err
}

func (s *sourceRunner) run(ctx context.Context) {
	if !s.resolveName(ctx) {
		return
	}
	opts := &s.r.opts
	s.r.m.init(s.name)
	s.log = s.r.log.With("source", s.name)
	s.lease = newLease(opts.KV, leaseKey(s.name), opts.Holder, opts.LeaseTTL, time.Now)
	s.store = &cursorStore{kv: opts.KV, key: cursorKey(s.name)}
	check := opts.LeaseTTL / 3
	for ctx.Err() == nil {
		held, err := s.lease.tryAcquire(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("reconciler cannot read its lease; retrying", "err", err)
		case held:
			if s.lease.previous != "" {
				s.log.Info("took over the reconciler lease: its holder stopped renewing it", "previous_holder", s.lease.previous)
			}
			s.lead(ctx)
			continue
		}
		sleep(ctx, check)
	}
}

// resolveName finds the source name of an unnamed source, retrying until
// Orthanc answers or ctx ends.
func (s *sourceRunner) resolveName(ctx context.Context) bool {
	if s.configured != "" {
		s.name = s.configured
		return true
	}
	delay := s.r.opts.PollInterval
	for {
		sys, err := s.orthanc.System(ctx)
		if err == nil {
			s.name = events.DefaultSourceName(sys.Name)
			s.setStatus(nil)
			s.r.log.Info("reconciling the Orthanc source named after Orthanc's Name, as the Lua script does by default; set ORTHANC_SOURCE_NAME if its Stowline.Source differs",
				"source", s.name)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		s.setStatus(fmt.Errorf("orthanc: %w", err))
		s.r.log.Warn("reconciler cannot reach Orthanc to learn the source name; retrying", "err", err, "retry_in", delay.String())
		sleep(ctx, delay)
		delay = min(2*delay, s.r.opts.MaxBackoff)
	}
}

// lead polls while this replica holds the lease.
func (s *sourceRunner) lead(ctx context.Context) {
	opts := &s.r.opts
	s.r.m.leaseHeld.WithLabelValues(s.name).Set(1)
	defer s.r.m.leaseHeld.WithLabelValues(s.name).Set(0)
	defer s.r.m.lag.WithLabelValues(s.name).Set(0)
	s.log.Info("reconciler lease taken: this replica polls the source's change log", "holder", opts.Holder)

	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() { s.keepLease(lctx, cancel) })

	s.pollLoop(lctx, cancel)
	cancel(nil)
	wg.Wait()
	s.setStatus(nil) // a replica that does not poll is not failing

	if errors.Is(context.Cause(lctx), errLeaseLost) {
		s.log.Warn("reconciler lease lost: another replica polls the source now")
		return
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	if err := s.lease.release(rctx); err != nil {
		s.log.Warn("reconciler lease not released; another replica takes over once it expires", "err", err)
		return
	}
	s.log.Info("reconciler lease released")
}

// keepLease renews the lease every third of its TTL. When it is taken or
// cannot be renewed for two thirds of the TTL, it cancels the leader, well
// before a contender may take over.
func (s *sourceRunner) keepLease(ctx context.Context, stop context.CancelCauseFunc) {
	ttl := s.r.opts.LeaseTTL
	last := time.Now()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, ttl/3)
		err := s.lease.renew(rctx)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
		case errors.Is(err, errLeaseLost):
			stop(errLeaseLost)
			return
		case ctx.Err() != nil:
			return
		case time.Since(last) >= 2*ttl/3:
			s.log.Warn("reconciler lease could not be renewed; stepping down", "err", err)
			stop(errLeaseLost)
			return
		default:
			s.log.Warn("reconciler lease renewal failed; retrying", "err", err)
		}
	}
}

// pollLoop polls until ctx ends, backing off while polls fail.
func (s *sourceRunner) pollLoop(ctx context.Context, stop context.CancelCauseFunc) {
	opts := &s.r.opts
	delay := opts.PollInterval
	loaded := false
	for ctx.Err() == nil {
		var (
			more bool
			err  error
		)
		if !loaded {
			err = s.loadCursor(ctx)
			loaded, more = err == nil, true
		} else {
			more, err = s.poll(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCursorConflict) {
			s.log.Warn("another replica wrote the reconciler cursor; stepping down")
			stop(errLeaseLost)
			return
		}
		if err != nil {
			s.r.m.pollErrors.WithLabelValues(s.name).Inc()
			s.setStatus(err)
			s.log.Warn("reconciler poll failed; retrying", "err", err, "retry_in", delay.String(), "cursor", s.cur.Seq)
			sleep(ctx, delay)
			delay = min(2*delay, opts.MaxBackoff)
			continue
		}
		s.setStatus(nil)
		delay = opts.PollInterval
		if !more {
			sleep(ctx, opts.PollInterval)
		}
	}
}

// loadCursor reads the stored cursor, or starts one at the current end of
// the change log: a first start does not publish the whole history of the
// source (`forwarder audit --enqueue` does that on purpose).
func (s *sourceRunner) loadCursor(ctx context.Context) error {
	s.recent = map[string]string{}
	s.dirty = false
	c, found, err := s.store.load(ctx)
	if err != nil {
		return err
	}
	if found {
		s.cur = c
		s.log.Info("reconciler resumes", "cursor", c.Seq, "pending_studies", len(c.Pending))
		s.r.m.pending.WithLabelValues(s.name).Set(float64(len(c.Pending)))
		return nil
	}
	last, err := s.orthanc.LastChange(ctx)
	if err != nil {
		return fmt.Errorf("orthanc: read the end of the change log: %w", err)
	}
	c = cursor{Seq: last}
	if last > 0 {
		page, err := s.orthanc.Changes(ctx, last-1, 1)
		if err != nil {
			return fmt.Errorf("orthanc: read change %d: %w", last, err)
		}
		if len(page.Changes) > 0 && page.Changes[0].Seq == last {
			c.Change = markOf(page.Changes[0])
		}
	}
	c.UpdatedAt = time.Now().UTC()
	if err := s.store.save(ctx, c); err != nil {
		return err
	}
	s.cur = c
	s.log.Info("reconciler starts at the end of the source's change log (first start); studies that became stable before are not published: run `forwarder audit --enqueue` for them",
		"cursor", last)
	return nil
}

// poll reads one page of the change log after the cursor, handles it and
// stores the cursor. more is true when the page did not reach the end.
func (s *sourceRunner) poll(ctx context.Context) (more bool, err error) {
	opts := &s.r.opts
	since := max(s.cur.Seq-1, 0) // one before, to check the change at the cursor
	page, err := s.orthanc.Changes(ctx, since, opts.PageSize+1)
	if err != nil {
		return false, fmt.Errorf("orthanc: read change log after %d: %w", since, err)
	}
	changes := page.Changes
	if s.cur.Seq > 0 {
		// Orthanc numbers changes with an SQLite AUTOINCREMENT: in one
		// database, Last never goes down and a change keeps its number
		// until it is deleted (with its resource, or DELETE /changes). A
		// recreated database starts again at 1: its Last is below the
		// cursor, or the change at the cursor's number is another one.
		switch {
		case len(changes) == 0 && page.Last < s.cur.Seq:
			return true, s.reset(ctx, page)
		case len(changes) > 0 && changes[0].Seq == s.cur.Seq:
			if !s.cur.Change.matches(changes[0]) {
				return true, s.reset(ctx, page)
			}
			changes = changes[1:]
		}
		// Otherwise the change at the cursor was deleted: all the
		// changes read are after it.
	}

	for _, c := range changes {
		if err := s.handle(ctx, c); err != nil {
			return false, errors.Join(err, s.save(ctx))
		}
		s.cur.Seq, s.cur.Change = c.Seq, markOf(c)
		s.dirty = true
	}
	if page.Done {
		// Caught up: during a backlog a pending study's StableStudy
		// change usually comes in a later page.
		if err := s.resolvePending(ctx); err != nil {
			return false, errors.Join(err, s.save(ctx))
		}
	}
	if err := s.save(ctx); err != nil {
		return false, err
	}
	s.r.m.pending.WithLabelValues(s.name).Set(float64(len(s.cur.Pending)))
	lag := max(page.Last-s.cur.Seq, 0)
	if !page.Done {
		if last, err := s.orthanc.LastChange(ctx); err == nil {
			lag = max(last-s.cur.Seq, lag)
		}
	}
	s.r.m.lag.WithLabelValues(s.name).Set(float64(lag))
	return !page.Done, nil
}

// reset restarts from the beginning of a change log whose database was
// recreated. Pending studies are kept: they are looked up by ID and
// dropped if gone.
func (s *sourceRunner) reset(ctx context.Context, page orthancapi.Changes) error {
	first := int64(0)
	if len(page.Changes) > 0 {
		first = page.Changes[0].Seq
	}
	s.log.Warn("Orthanc's change log was reset (its database was recreated): rescanning it from the start",
		"cursor", s.cur.Seq, "orthanc_last", page.Last, "orthanc_first_change", first)
	s.r.m.resets.WithLabelValues(s.name).Inc()
	s.cur.Seq, s.cur.Change = 0, nil
	s.dirty = true
	return s.save(ctx)
}

// handle acts on one change.
func (s *sourceRunner) handle(ctx context.Context, c orthancapi.Change) error {
	var (
		study orthancapi.Study
		err   error
	)
	switch c.ChangeType {
	case "StableStudy":
		return s.stable(ctx, c.ID, c.Seq)
	case "NewStudy":
		s.markPending(c.ID, c.Seq)
		return nil
	case "NewSeries":
		study, err = s.orthanc.SeriesStudy(ctx, c.ID)
	case "NewInstance":
		study, err = s.orthanc.InstanceStudy(ctx, c.ID)
	case "Deleted":
		if c.ResourceType == "Study" {
			s.dropPending(c.ID)
		}
		return nil
	default:
		return nil
	}
	switch {
	case errors.Is(err, orthancapi.ErrNotFound), errors.Is(err, orthancapi.ErrInvalidID):
		return nil // deleted since: nothing to wait for
	case err != nil:
		return fmt.Errorf("orthanc: study of %s %s: %w", c.ResourceType, c.ID, err)
	}
	s.markPending(study.ID, c.Seq)
	return nil
}

func (s *sourceRunner) markPending(studyID string, seq int64) {
	if !events.ValidOrthancID(studyID) {
		return
	}
	if s.cur.Pending == nil {
		s.cur.Pending = map[string]int64{}
	}
	if _, ok := s.cur.Pending[studyID]; !ok {
		s.cur.Pending[studyID] = seq
		s.dirty = true
	}
}

func (s *sourceRunner) dropPending(studyID string) {
	if _, ok := s.cur.Pending[studyID]; ok {
		delete(s.cur.Pending, studyID)
		s.dirty = true
	}
}

// stable publishes a study a StableStudy change names, unless it changed
// since and is unstable again: then it waits in Pending for the next
// StableStudy change (or for Orthanc to call it stable after a restart).
func (s *sourceRunner) stable(ctx context.Context, studyID string, seq int64) error {
	study, err := s.orthanc.Study(ctx, studyID)
	switch {
	case errors.Is(err, orthancapi.ErrNotFound), errors.Is(err, orthancapi.ErrInvalidID):
		s.skipDeleted(studyID)
		return nil
	case err != nil:
		return fmt.Errorf("orthanc: study %s: %w", studyID, err)
	case !study.IsStable:
		s.markPending(studyID, seq)
		return nil
	}
	if err := s.publish(ctx, studyID, study, "stable_study_change"); err != nil {
		return err
	}
	s.dropPending(studyID)
	return nil
}

// resolvePending publishes the pending studies Orthanc calls stable and
// drops the deleted ones. In normal operation a StableStudy change comes
// first; this catches studies Orthanc forgot when it restarted before they
// became stable.
func (s *sourceRunner) resolvePending(ctx context.Context) error {
	for id := range s.cur.Pending {
		study, err := s.orthanc.Study(ctx, id)
		switch {
		case errors.Is(err, orthancapi.ErrNotFound), errors.Is(err, orthancapi.ErrInvalidID):
			s.skipDeleted(id)
			continue
		case err != nil:
			return fmt.Errorf("orthanc: study %s: %w", id, err)
		case !study.IsStable:
			continue
		}
		if err := s.publish(ctx, id, study, "stable_without_change"); err != nil {
			return err
		}
		s.dropPending(id)
	}
	return nil
}

func (s *sourceRunner) skipDeleted(studyID string) {
	s.dropPending(studyID)
	s.r.m.skipped.WithLabelValues(s.name, "deleted").Inc()
	s.log.Info("study deleted from Orthanc before it was announced; skipped", "orthanc_study_id", studyID)
}

// maxRecent bounds the memory of what was published in this lease term.
const maxRecent = 10000

// publish stores the study's event, the same as the Lua script's.
func (s *sourceRunner) publish(ctx context.Context, studyID string, study orthancapi.Study, reason string) error {
	if lu, ok := s.recent[studyID]; ok && lu == study.LastUpdate {
		return nil // this state was published in this term already
	}
	ev := &events.StudyStable{
		Type:             events.TypeStudyStable,
		Version:          events.Version,
		Source:           s.name,
		OrthancStudyID:   studyID,
		StudyInstanceUID: study.StudyInstanceUID,
		LastUpdate:       study.LastUpdate,
		ReceivedAt:       time.Now().UTC(),
	}
	log := s.log.With("orthanc_study_id", studyID, "study_instance_uid", study.StudyInstanceUID,
		"last_update", study.LastUpdate, "reason", reason)
	if err := ev.Validate(); err != nil {
		// The Lua path's event would be refused the same way.
		s.r.m.skipped.WithLabelValues(s.name, "invalid").Inc()
		log.Error("stable study cannot be announced: its event would be invalid", "err", err)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, s.r.opts.PublishTimeout)
	defer cancel()
	ack, err := s.r.opts.Publisher.Publish(pctx, ev)
	if err != nil {
		return fmt.Errorf("publish study %s: %w", studyID, err)
	}
	if len(s.recent) >= maxRecent {
		clear(s.recent)
	}
	s.recent[studyID] = study.LastUpdate
	if ack.Duplicate {
		s.r.m.published.WithLabelValues(s.name, "duplicate").Inc()
		log.Debug("study already announced (Lua script or earlier poll)", "stream_seq", ack.Sequence)
		return nil
	}
	s.r.m.published.WithLabelValues(s.name, "stored").Inc()
	log.Info("study announced by the reconciler (its webhook event was missing)", "stream_seq", ack.Sequence)
	return nil
}

// save stores the cursor if it changed.
func (s *sourceRunner) save(ctx context.Context) error {
	if !s.dirty {
		return nil
	}
	s.cur.UpdatedAt = time.Now().UTC()
	// Saved even when ctx ended: progress made must not be redone.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.save(sctx, s.cur); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
