package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/repeatlog"
)

// sourceRunner reconciles one source. Its fields below mu are used only by
// its own goroutine (and the lease renewer while leading).
type sourceRunner struct {
	r          *Reconciler
	configured string
	orthanc    Orthanc

	mu     sync.Mutex
	status error
	// note is reported by the check while polls succeed: a degraded
	// reconciliation (errClockRefused).
	note error

	// shared is an unnamed source's name for Reconciler.Names, which
	// other goroutines call: set with name, nil until it is known.
	shared atomic.Pointer[string]

	name  string // resolved source name
	log   *slog.Logger
	lease *lease
	store *cursorStore
	cur   cursor
	dirty bool // cur differs from what is stored
	// savedAt is when cur was last stored (save), which a backlog's
	// pages wait for (cursorSaveEvery).
	savedAt time.Time
	// timed is the source name whose last-success gauge this runner has
	// set (at its first lease or poll): a lease taken again keeps it.
	timed  string
	recent map[string]string // study ID -> LastUpdate published in this term
	// changeTypes filter the change log when Orthanc can (detectFilter).
	changeTypes []string
	stuck       stuckChange
	// unreadable are the pending studies Orthanc failed to read, each
	// warned about once.
	unreadable map[string]bool
	// nameChecked is when Orthanc's Name was last read, for a source
	// without a configured name (checkName).
	nameChecked time.Time
	// renamedTo is the other Name Orthanc answered at the last check,
	// followed if the next answers it too (sameName). renamedFrom is the
	// name this runner served before it followed one, and renamedRev the
	// revision of that name's cursor it last read or wrote (adoptRenamed).
	renamedTo, renamedFrom string
	renamedRev             uint64
	// clock is Orthanc's clock read in this poll (readClock); zero
	// before. clockRead is true once it was asked in this poll;
	// clockOff while Orthanc refuses it (clockRefused); clockRefusals
	// counts its refusals in a row.
	clock         time.Time
	clockRead     bool
	clockOff      bool
	clockRefusals int
	// existsRefused is true once Orthanc refused the lookup of the
	// resource of a change gone from the log (cursorChangeGone), told
	// once; the lookup is asked again from existsRetryAt on, existsRetry
	// after each refusal.
	existsRefused bool
	existsRetryAt time.Time
	existsRetry   time.Duration
	// gone is the change found gone at the cursor whose check waits for
	// the end of the log (cursorChangeGone); nil when none does.
	gone *goneChange
	// pagesRead since the pending studies were last resolved.
	pagesRead int
	// maxPending bounds the pending studies (the const maxPending; less
	// in tests); pendingFull is true while a full list holds the cursor.
	maxPending  int
	pendingFull bool
	// idleChecked is the cursor and end of log at which a filtered read
	// last read the change at the cursor whole (poll).
	idleChecked [2]int64
}

func (s *sourceRunner) check(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status != nil {
		return s.status
	}
	return s.note
}

func (s *sourceRunner) setNote(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.note = err
}

func (s *sourceRunner) setStatus(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = err
}

func (s *sourceRunner) run(ctx context.Context) {
	for s.resolveName(ctx) && s.serve(ctx) {
		// Orthanc was renamed: serve the source under its new name.
		s.renamedFrom, s.renamedRev = s.name, s.store.rev
	}
}

// serve takes the source's lease and polls while it holds it, until ctx
// ends (false) or Orthanc, unnamed in the configuration, was renamed
// (true).
func (s *sourceRunner) serve(ctx context.Context) bool {
	opts := &s.r.opts
	s.r.m.init(s.name)
	s.log = s.r.log.With("source", s.name)
	s.lease = newLease(opts.KV, leaseKey(s.name), opts.Holder, opts.LeaseTTL, time.Now)
	s.store = &cursorStore{kv: opts.KV, key: cursorKey(s.name), configured: s.configured != ""}
	check := opts.LeaseTTL / 3
	failures := repeatlog.Failures{Every: time.Minute}
	for ctx.Err() == nil {
		held, err := s.lease.tryAcquire(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			// No replica may be polling the source (JetStream's storage
			// full refuses every lease write): the check says so.
			s.setStatus(fmt.Errorf("reconciler lease: %w", err))
			if n, ok := failures.Failed(); ok {
				s.log.Warn("reconciler cannot take its lease; retrying", "err", err, "failures", n)
			}
		case held:
			if n := failures.Succeeded(); n > 0 {
				s.log.Info("reconciler lease can be taken again", "failures", n)
			}
			s.setStatus(nil)
			if s.lease.previous != "" {
				s.log.Info("took over the reconciler lease: its holder stopped renewing it", "previous_holder", s.lease.previous)
			}
			if s.lead(ctx) {
				// The old name's series would stay at 0 for good, and
				// StowlineReconcilerNotRunning fire for it.
				s.r.m.drop(s.name)
				return true
			}
			continue
		default:
			failures.Succeeded()
			s.setStatus(nil)
		}
		sleep(ctx, check)
	}
	return false
}

// unnamedSource labels the poll errors of a source without a configured
// name while Orthanc cannot be asked its name; no source is named so.
const unnamedSource = "(unnamed)"

// shareName makes the resolved name the one Reconciler.Names reports.
func (s *sourceRunner) shareName() {
	name := s.name
	s.shared.Store(&name)
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
			s.shareName()
			s.nameChecked, s.renamedTo = time.Now(), ""
			s.setStatus(nil)
			s.r.log.Info("reconciling the Orthanc source named after Orthanc's Name, as the Lua script does by default; set ORTHANC_SOURCE_NAME if its Stowline.Source differs",
				"source", s.name)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		s.setStatus(fmt.Errorf("orthanc: %w", err))
		// Counted, so that StowlineReconcilerFailing fires: until the name
		// is known no other series of the source exists, and an ingest
		// whose Orthanc user is refused would never reconcile, unalerted.
		s.r.m.pollErrors.WithLabelValues(unnamedSource).Inc()
		s.r.log.Warn("reconciler cannot read Orthanc's /system to learn the source name; retrying", "err", err, "retry_in", delay.String())
		sleep(ctx, delay)
		delay = min(2*delay, s.r.opts.MaxBackoff)
	}
}

// lead polls while this replica holds the lease. It reports whether it
// stopped because Orthanc, unnamed in the configuration, was renamed.
func (s *sourceRunner) lead(ctx context.Context) (renamed bool) {
	opts := &s.r.opts
	s.r.m.leaseHeld.WithLabelValues(s.name).Set(1)
	defer s.r.m.leaseHeld.WithLabelValues(s.name).Set(0)
	// The wait for a first success starts with the first lease; one
	// taken again keeps the last success, so a lease moving between
	// replicas that all fail does not restart the wait.
	if s.timed != s.name {
		s.r.m.lastSuccess.WithLabelValues(s.name).SetToCurrentTime()
		s.timed = s.name
	}
	// Only the holder reports these: a sum over replicas counts once.
	defer s.r.m.lag.WithLabelValues(s.name).Set(0)
	defer s.r.m.pending.WithLabelValues(s.name).Set(0)
	defer s.r.m.clockUnavailable.WithLabelValues(s.name).Set(0)
	s.log.Info("reconciler lease taken: this replica polls the source's change log", "holder", opts.Holder)

	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() { s.keepLease(lctx, cancel) })

	s.pollLoop(lctx, cancel)
	cancel(nil)
	wg.Wait()
	s.setStatus(nil) // a replica that does not poll is not failing
	s.clockOff, s.clockRefusals = false, 0
	s.setNote(nil)

	switch cause := context.Cause(lctx); {
	case errors.Is(cause, errLeaseLost):
		s.log.Warn("reconciler lease lost: another replica polls the source now")
		return false
	case errors.Is(cause, errCursorConflict):
		return false // not released: its holder, if not this replica, keeps it
	}
	// What a backlog read since its last save (cursorSaveEvery) is kept
	// before the lease goes, the lease being this replica's still: the
	// next holder need not read it again.
	if err := s.save(ctx); err != nil {
		s.log.Warn("reconciler cursor not stored at stop: the next holder reads again the changes since it was", "err", err)
	}
	renamed = errors.Is(context.Cause(lctx), errRenamed)
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	if err := s.lease.release(rctx); err != nil {
		s.log.Warn("reconciler lease not released; another replica takes over once it expires", "err", err)
		return renamed
	}
	s.log.Info("reconciler lease released")
	return renamed
}

// keepLease renews the lease every third of its TTL, every tenth after a
// failed renewal. A contender may take over one TTL after the last
// renewal was written (after it was sent), so
// the leader is cancelled when the lease is taken, or two thirds of the
// TTL after the last successful renewal was sent if none went through
// since: a timer, not a check after each failed renewal, whose attempts
// and ticks put the step-down up to a whole TTL after the last renewal,
// when a contender may already poll.
func (s *sourceRunner) keepLease(ctx context.Context, stop context.CancelCauseFunc) {
	ttl := s.r.opts.LeaseTTL
	// The lease counts from when its write was sent, not from when
	// JetStream answered: in an election that can take seconds.
	deadline := s.lease.acquireSent.Add(2 * ttl / 3)
	stepDown := time.NewTimer(time.Until(deadline))
	defer stepDown.Stop()
	// The first renewal is due a third of the TTL after that write too
	// (at once when the answer took longer), then every third.
	renew := time.NewTimer(time.Until(s.lease.acquireSent.Add(ttl / 3)))
	defer renew.Stop()
	var failed error
	for {
		select {
		case <-ctx.Done():
			return
		case <-stepDown.C:
			s.log.Warn("reconciler lease could not be renewed; stepping down", "err", failed)
			stop(errLeaseLost)
			return
		case <-renew.C:
		}
		renew.Reset(ttl / 3)
		sent := time.Now()
		// A renewal that would end past the deadline counts for nothing.
		rctx, cancel := context.WithTimeout(ctx, min(ttl/3, time.Until(deadline)))
		err := s.lease.renew(rctx)
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(2 * ttl / 3)
			stepDown.Reset(time.Until(deadline))
		case errors.Is(err, errLeaseLost):
			stop(errLeaseLost)
			return
		case ctx.Err() != nil:
			return
		default:
			failed = err
			s.log.Warn("reconciler lease renewal failed; retrying", "err", err)
			// Soon, not a third of the TTL later, which is the deadline:
			// one refusal ("no response from stream") made it step down.
			renew.Reset(ttl / 10)
		}
	}
}

// pollLoop polls until ctx ends, backing off while polls fail.
func (s *sourceRunner) pollLoop(ctx context.Context, stop context.CancelCauseFunc) {
	opts := &s.r.opts
	delay := opts.PollInterval
	loaded := false
	// An Orthanc that fails every other poll is told once a minute, not
	// at each backoff step (the metric and the check count each).
	failures := repeatlog.Failures{Every: time.Minute}
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
			// Mostly a late write of a replica that held the lease
			// before: this one takes its lease straight back and
			// reloads the cursor. One that holds the lease now keeps it.
			s.log.Warn("another replica wrote the reconciler cursor; reloading it once the lease is taken again")
			stop(errCursorConflict)
			return
		}
		if errors.Is(err, errRenamed) {
			stop(errRenamed)
			return
		}
		if err != nil {
			s.r.m.pollErrors.WithLabelValues(s.name).Inc()
			s.setStatus(err)
			if n, ok := failures.Failed(); ok {
				s.log.Warn("reconciler poll failed; retrying", "err", err, "retry_in", delay.String(), "cursor", s.cur.Seq, "failures", n)
			}
			sleep(ctx, delay)
			delay = min(2*delay, opts.MaxBackoff)
			continue
		}
		if n := failures.Succeeded(); n > 0 {
			s.log.Info("reconciler polls succeed again", "failures", n)
		}
		s.setStatus(nil)
		s.r.m.polls.WithLabelValues(s.name).Inc()
		s.r.m.lastSuccess.WithLabelValues(s.name).SetToCurrentTime()
		delay = opts.PollInterval
		if !more {
			sleep(ctx, opts.PollInterval)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
