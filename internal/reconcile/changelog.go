package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// handledChanges are the change types handle acts on: an Orthanc that
// filters /changes by type (1.12.5 on) sends only these, so a study's
// thousands of StableSeries and other changes are not read at all.
var handledChanges = []string{"StableStudy", "NewStudy", "NewSeries", "NewInstance"}

// detectFilter tells from sys, Orthanc's answer to GET /system (sysErr
// when it gave none), whether it filters its change log by type; without
// an answer the log is read whole, as on every release. For a source
// without a configured name it also checks that Orthanc still bears the
// name it is served under: errRenamed if not.
func (s *sourceRunner) detectFilter(sys orthancapi.System, sysErr error) error {
	s.changeTypes = nil
	if sysErr != nil {
		s.log.Warn("could not ask Orthanc whether it filters its change log; reading all of it", "err", sysErr)
		return nil
	}
	if err := s.sameName(sys, false); err != nil {
		return err
	}
	if sys.Capabilities.HasExtendedChanges {
		s.changeTypes = handledChanges
		s.log.Info("Orthanc filters its change log by type: the reconciler reads only the changes it acts on", "orthanc_version", sys.Version)
	}
	return nil
}

// loadCursor reads the stored cursor, or starts one at the current end of
// the change log: a first start does not publish the whole history of the
// source (`forwarder audit --enqueue` does that on purpose).
func (s *sourceRunner) loadCursor(ctx context.Context) error {
	s.recent = map[string]string{}
	s.unreadable = map[string]bool{}
	s.dirty = false
	s.gone = nil
	s.idleChecked = [2]int64{}
	s.pendingFull = false
	// Read once for the filter, the name check and, without a cursor,
	// adoptRenamed's look under Orthanc's own Name.
	sys, sysErr := s.orthanc.System(ctx)
	if err := s.detectFilter(sys, sysErr); err != nil {
		return err
	}
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
	adopted, err := s.adoptRenamed(ctx, sys, sysErr)
	if err != nil || adopted {
		return err
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
	if s.cursorLost(ctx) {
		s.r.m.cursorMissing.WithLabelValues(s.name).Inc()
		s.log.Warn("no reconciler cursor for a source whose events the event stream holds: the cursor was lost (its bucket lost or recreated, "+
			"the key deleted), this is no first start; the reconciler starts at the end of the change log, so studies whose webhook was lost "+
			"since the last stored position, and those Orthanc forgot at a restart while unstable, are not published: run `forwarder audit --enqueue`",
			"cursor", last)
		return nil
	}
	s.log.Info("reconciler starts at the end of the source's change log (first start); studies that became stable before are not published: run `forwarder audit --enqueue` for them",
		"cursor", last)
	return nil
}

// cursorLost reports whether the event stream holds an event of the
// source (on any lane, or its triage subject): then a start without a
// cursor lost it, and with it the webhooks lost since its last position
// and its pending list. A stream that cannot be read is told as a first
// start, with a Warn.
func (s *sourceRunner) cursorLost(ctx context.Context) bool {
	st := s.r.opts.Events
	if st == nil {
		return false
	}
	for _, subject := range []string{natsjs.EventSubject(s.name), natsjs.EventSubject(s.name) + ".>"} {
		// The first one from sequence 1, not the last by subject: with
		// direct gets on, that one's API subject names the event's
		// subject, which the ingest's documented permissions do not
		// allow (docs/nats-permissions.md).
		_, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
		if err == nil {
			return true
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("could not read the event stream to tell a lost reconciler cursor from a first start", "subject", subject, "err", err)
			return false
		}
	}
	return false
}

// poll reads one page of the change log after the cursor, handles it and
// stores the cursor. more is true when the page did not reach the end.
func (s *sourceRunner) poll(ctx context.Context) (more bool, err error) {
	opts := &s.r.opts
	if err := s.checkName(ctx); err != nil {
		return false, err
	}
	s.clock, s.clockRead = time.Time{}, false
	if s.clockOff {
		// Off, the clock is asked at every poll, idle too: else the
		// gauge and the check's note stayed on after the proxy was fixed
		// until a study came. A transient failure is left to the poll's
		// first study, which asks again and holds the cursor on it.
		_ = s.readClock(ctx)
	}
	since := max(s.cur.Seq-1, 0) // one before, to check the change at the cursor
	page, err := s.orthanc.Changes(ctx, since, opts.PageSize+1, s.changeTypes...)
	var oe *orthancapi.Error
	if len(s.changeTypes) > 0 && errors.As(err, &oe) && oe.StatusCode == http.StatusBadRequest {
		// It announced the filter but refuses ours: read the log whole.
		s.log.Warn("Orthanc refused the change log's type filter; reading all of it", "err", err)
		s.changeTypes = nil
		page, err = s.orthanc.Changes(ctx, since, opts.PageSize+1)
	}
	if err != nil {
		// What earlier pages of a backlog read is stored all the same.
		return false, errors.Join(fmt.Errorf("orthanc: read change log after %d: %w", since, err), s.save(ctx))
	}
	changes := page.Changes
	if s.cur.Seq > 0 {
		// Orthanc numbers changes with an SQLite AUTOINCREMENT: in one
		// database, Last never goes down and a change keeps its number
		// until it is deleted (with its resource, or DELETE /changes). A
		// recreated database starts again at 1: its Last is below the
		// cursor, or the change at the cursor's number is another one.
		gone := false // the change at the cursor is not in the log
		switch {
		case len(changes) == 0 && page.Last < s.cur.Seq:
			return true, s.reset(ctx, page)
		case len(changes) > 0 && changes[0].Seq == s.cur.Seq:
			if !s.cur.Change.matches(changes[0]) {
				return true, s.reset(ctx, page)
			}
			changes = changes[1:]
		case len(s.changeTypes) > 0 && (len(changes) > 0 || s.idleChecked != [2]int64{s.cur.Seq, page.Last}):
			// The filter hides a change of another type at the cursor's
			// number, which a recreated database may have there: read
			// that one change whole before taking it for deleted. An idle
			// poll reads it once per cursor and end of log: a restored
			// database whose changes from the cursor's number on are all
			// of types left out shows nothing else, and its studies would
			// wait for the next one received.
			at, err := s.orthanc.Changes(ctx, since, 1)
			if err != nil {
				return false, errors.Join(fmt.Errorf("orthanc: read change %d: %w", s.cur.Seq, err), s.save(ctx))
			}
			s.idleChecked = [2]int64{s.cur.Seq, page.Last}
			if len(at.Changes) > 0 && at.Changes[0].Seq == s.cur.Seq && !s.cur.Change.matches(at.Changes[0]) {
				return true, s.reset(ctx, at)
			}
			gone = len(at.Changes) == 0 || at.Changes[0].Seq != s.cur.Seq
		default:
			// Read whole, the log would have shown it. (Filtered and
			// idle: nothing to tell.)
			gone = len(s.changeTypes) == 0
		}
		// Otherwise the change at the cursor was deleted: all the
		// changes read are after it.
		if gone && s.gone == nil && s.cur.Change != nil && s.cur.GoneChecked != s.cur.Seq {
			s.gone = &goneChange{seq: s.cur.Seq, mark: *s.cur.Change}
		}
	}
	if s.gone != nil {
		s.cursorChangeGone(ctx, changes, page.Done)
	}

	// A full list holds the cursor at the first change that adds to it:
	// the page's lookups are asked one at a time up to there, not all
	// of them at every held poll.
	parents := make([]parentLookup, len(changes))
	if len(s.cur.Pending) < s.maxPending {
		parents = s.lookUp(ctx, changes)
	}
	full := false // the pending list is full at a change that would add to it
	for i, c := range changes {
		if s.rescanned(c) {
			s.cur.Seq, s.cur.Change = c.Seq, markOf(c)
			s.dirty = true
			continue
		}
		if len(s.cur.Pending) >= s.maxPending && s.addsPending(ctx, c, &parents[i]) {
			full = true
			break
		}
		if err := s.handle(ctx, c, parents[i]); err != nil {
			if !s.stuckOn(c, err) {
				return false, errors.Join(err, s.save(ctx))
			}
		}
		s.stuck = stuckChange{}
		s.cur.Seq, s.cur.Change = c.Seq, markOf(c)
		s.dirty = true
	}
	s.pagesRead++
	s.tellFull(full)
	if page.Done || full || s.pagesRead >= resolveEveryPages {
		// Caught up: during a backlog a pending study's StableStudy
		// change usually comes in a later page. But a study Orthanc
		// forgot has none: while a long backlog is read it is resolved
		// every resolveEveryPages pages, not only at the end.
		s.pagesRead = 0
		if err := s.resolvePending(ctx); err != nil {
			return false, errors.Join(err, s.save(ctx))
		}
	}
	// Within a backlog the cursor is stored at most every
	// cursorSaveEvery, not at each page: with its pending list (up to
	// about 600 KB) a backlog of millions of changes wrote it tens of
	// thousands of times, each write replicated. What a restart then
	// reads again is published again, seconds later: the event stream's
	// dedupe window drops it.
	if page.Done || full || time.Since(s.savedAt) >= cursorSaveEvery {
		if err := s.save(ctx); err != nil {
			return false, err
		}
	}
	s.r.m.pending.WithLabelValues(s.name).Set(float64(len(s.cur.Pending)))
	lag := max(page.Last-s.cur.Seq, 0)
	if page.Done && len(s.changeTypes) > 0 {
		lag = 0 // what is after the cursor is of types it does not read
	}
	if !page.Done {
		if last, err := s.orthanc.LastChange(ctx); err == nil {
			lag = max(last-s.cur.Seq, lag)
		}
	}
	s.r.m.lag.WithLabelValues(s.name).Set(float64(lag))
	return !page.Done && !full, nil
}

// cursorSaveEvery is how often the cursor is stored while a backlog is
// read page after page; at the end of the log it is stored at each poll
// that moved it.
const cursorSaveEvery = 5 * time.Second

// maxPending bounds the pending studies: the cursor, which holds them,
// is one JetStream message, 1 MiB at most by default, and each takes
// about 60 bytes. Past about 18,000 (a bulk migration with an hour's
// StableAge) every cursor write failed, and with it every poll.
const maxPending = 10000

// addsPending reports whether handling c may add a study to the pending
// list (parent as in handle, asked here if it was not): then a full list
// holds the cursor at c.
func (s *sourceRunner) addsPending(ctx context.Context, c orthancapi.Change, parent *parentLookup) bool {
	switch c.ChangeType {
	case "StableStudy", "NewStudy":
		_, ok := s.cur.Pending[c.ID]
		return !ok
	case "NewSeries", "NewInstance":
		if !parent.asked {
			*parent = s.lookUpOne(ctx, c)
		}
		if parent.err != nil {
			return true
		}
		_, ok := s.cur.Pending[parent.study.ID]
		return !ok
	}
	return false
}

// tellFull logs when the pending list fills up, holding the cursor, and
// when it has a tenth of its room again (told so, rather than at each
// study published, which flapped through a bulk migration). While full,
// the pending studies are resolved at every poll: each one Orthanc calls
// stable is published and leaves room, and the cursor moves on. The Lua
// script's events still come meanwhile.
func (s *sourceRunner) tellFull(full bool) {
	switch {
	case full && !s.pendingFull:
		s.pendingFull = true
		s.log.Warn("the reconciler's pending list is full: it holds its cursor until some of the studies waiting to become stable are published; the Lua script's events still come",
			"pending_studies", len(s.cur.Pending), "cursor", s.cur.Seq)
	case !full && s.pendingFull && len(s.cur.Pending) <= s.maxPending*9/10:
		s.pendingFull = false
		s.log.Info("the reconciler's pending list has room again: its cursor moves on", "pending_studies", len(s.cur.Pending), "cursor", s.cur.Seq)
	}
}

// cursorChangeGone tells the operator, once per cursor position, when
// the change the cursor points at left the change log while the resource
// it names is still in Orthanc: the log was trimmed (DELETE /changes),
// and studies whose changes went with it before they were read are not
// published. A change deleted with its resource (a deletion, recycling,
// buffer mode) is normal: nothing is missed then, even when the resource
// was received again since, under the same ID (OverwriteInstances, a
// study buffer mode deleted and that was sent again at once): the
// changes after the cursor then log it anew (Orthanc does not log
// deletions: Deleted is not a change of /changes). Those may be pages
// on, so the changes read (after) are scanned until the end of the log
// (done) before the resource is looked up. It is looked up once
// (cursor.GoneChecked, so a restart does not tell again); a failed
// lookup is tried again at the next poll, a refused one after
// existsRetry.
func (s *sourceRunner) cursorChangeGone(ctx context.Context, after []orthancapi.Change, done bool) {
	mark := s.gone.mark
	log := s.log.With("cursor", s.gone.seq, "change_type", mark.Type, "orthanc_id", mark.ID)
	level, ok := changeLevel[mark.Type]
	if !ok {
		s.goneChecked()
		log.Info("the change the reconciler's cursor points at is no longer in Orthanc's change log: deleted with its resource, or the log was trimmed (DELETE /changes); after a trim, run `forwarder audit`")
		return
	}
	for _, c := range after {
		if c.ID == mark.ID && strings.HasPrefix(c.ChangeType, "New") {
			s.goneChecked()
			log.Debug("the change the reconciler's cursor points at was deleted with its resource, received again since", "change_seq", c.Seq)
			return
		}
	}
	if !done {
		return // it may be logged anew in a later page
	}
	if s.existsRefused && time.Now().Before(s.existsRetryAt) {
		return
	}
	exists, err := s.orthanc.Exists(ctx, level, mark.ID)
	var oe *orthancapi.Error
	switch {
	case errors.Is(err, orthancapi.ErrInvalidID):
		s.goneChecked()
		return
	case errors.As(err, &oe) && (oe.StatusCode == http.StatusUnauthorized || oe.StatusCode == http.StatusForbidden):
		// Refused: asked again at every poll it would be, mostly for
		// nothing; marked checked, one transient refusal (a policy or
		// token rolled out) lost the check of this position for good.
		// Left unchecked, it is asked again every existsRetry.
		s.existsRetryAt = time.Now().Add(s.existsRetry)
		if !s.existsRefused {
			s.existsRefused = true
			log.Warn("Orthanc refuses GET /{patients,studies,series,instances}/{id}: the reconciler cannot tell a trimmed change log (DELETE /changes) until it is allowed", "err", err)
		}
		return
	case err != nil:
		log.Debug("could not tell why the change at the reconciler's cursor is gone; asking again at the next poll", "err", err)
		return
	}
	s.goneChecked()
	if s.existsRefused {
		s.existsRefused = false
		log.Info("Orthanc answers GET /{patients,studies,series,instances}/{id} again: the reconciler tells a trimmed change log again")
	}
	if !exists {
		log.Debug("the change the reconciler's cursor points at was deleted with its resource")
		return
	}
	s.r.m.changeLogTrimmed.WithLabelValues(s.name).Inc()
	log.Warn("Orthanc's change log was trimmed (DELETE /changes, or changes deleted by hand): the change the reconciler's cursor points at is gone while its resource is still in Orthanc; studies whose changes were removed before the reconciler read them are not published: run `forwarder audit`")
}

// goneChecked records that the missing change at the cursor was looked
// into (cursorChangeGone). The cursor may have moved on since: the
// position is kept all the same, and a later one is not checked.
func (s *sourceRunner) goneChecked() {
	s.cur.GoneChecked = s.gone.seq
	s.gone = nil
	s.dirty = true
}

// goneChange is a change found gone from the log at the cursor, whose
// resource's changes are looked for until the end of the log
// (cursorChangeGone).
type goneChange struct {
	seq  int64
	mark changeMark
}

// existsRetry is how long a refused lookup of the cursor's resource
// (cursorChangeGone) waits before it is asked again.
const existsRetry = 10 * time.Minute

// changeLevel is the level of the resource a change of each type names,
// for the types whose level it always is.
var changeLevel = map[string]string{
	"NewPatient": "Patient", "StablePatient": "Patient",
	"NewStudy": "Study", "StableStudy": "Study",
	"NewSeries": "Series", "StableSeries": "Series",
	"NewInstance": "Instance",
}

// reset restarts from the beginning of a change log whose database was
// recreated, restored from a backup or replaced. The changes dated before
// the last one handled are skipped (cursor.SkipBefore), unless that date
// is ahead of Orthanc's clock (set back since). Pending studies are kept:
// they are looked up by ID and dropped if gone.
func (s *sourceRunner) reset(ctx context.Context, page orthancapi.Changes) error {
	s.gone = nil
	// The change dates are Orthanc's clock's: against this host's, an
	// Orthanc ahead of it by more than the time since the last change
	// handled looked set back, and the whole restored log was published
	// again. This host's clock only when Orthanc's cannot be read.
	now := time.Now()
	if t, err := s.orthanc.Now(ctx); err == nil {
		now = t
	} else {
		s.log.Warn("reset change log: Orthanc's clock could not be read; the changes to skip are judged on this host's clock (an Orthanc ahead of it may have its whole log published again)",
			"err", err)
	}
	first := int64(0)
	if len(page.Changes) > 0 {
		first = page.Changes[0].Seq
	}
	log := s.log.With("cursor", s.cur.Seq, "orthanc_last", page.Last, "orthanc_first_change", first)
	// A reset found during the rescan of an earlier one keeps the later
	// date: the change it handled last was one skipped, dated before.
	prev, _ := changeTime(s.cur.SkipBefore)
	s.cur.SkipBefore = ""
	if s.cur.Change != nil {
		if at, ok := changeTime(s.cur.Change.Date); ok && !at.After(now) && at.After(prev) {
			s.cur.SkipBefore = s.cur.Change.Date
		}
	}
	if s.cur.SkipBefore == "" && !prev.IsZero() && !prev.After(now) {
		s.cur.SkipBefore = prev.Format(orthancapi.TimeLayout)
	}
	if s.cur.SkipBefore != "" {
		log.Warn("Orthanc's change log was reset (its database was recreated, restored from a backup or replaced): rescanning it from the start,"+
			" skipping the changes dated before the last one handled (a restored backup's were handled then; `forwarder audit` finds any other study not forwarded)",
			"skip_before", s.cur.SkipBefore)
	} else {
		log.Warn("Orthanc's change log was reset (its database was recreated, restored from a backup or replaced): rescanning it from the start")
	}
	s.r.m.resets.WithLabelValues(s.name).Inc()
	s.cur.Seq, s.cur.Change, s.cur.GoneChecked = 0, nil, 0
	s.dirty = true
	return s.save(ctx)
}

// rescanned reports whether change c is skipped by the rescan of a reset
// change log: dated before cursor.SkipBefore. The first change dated
// from then on ends the skipping (Orthanc dates its changes in order);
// a change without a readable date is handled.
func (s *sourceRunner) rescanned(c orthancapi.Change) bool {
	if s.cur.SkipBefore == "" {
		return false
	}
	if s.skippedByRescan(c) {
		return true
	}
	if _, ok := changeTime(c.Date); !ok {
		return false
	}
	s.log.Info("the rescan of the reset change log reached the changes after the last one handled before the reset",
		"change_seq", c.Seq, "skip_before", s.cur.SkipBefore)
	s.cur.SkipBefore = ""
	s.dirty = true
	return false
}

// skippedByRescan reports, without changing anything, whether rescanned
// skips change c: dated before cursor.SkipBefore.
func (s *sourceRunner) skippedByRescan(c orthancapi.Change) bool {
	if s.cur.SkipBefore == "" {
		return false
	}
	at, ok := changeTime(c.Date)
	until, ok2 := changeTime(s.cur.SkipBefore)
	return ok && ok2 && at.Before(until)
}

// changeTime reads the Date of a change, in UTC as Orthanc writes it
// (YYYYMMDDTHHMMSS, as a study's LastUpdate).
func changeTime(date string) (time.Time, bool) {
	t, err := time.Parse(orthancapi.TimeLayout, date)
	return t, err == nil
}

// stuckAfter is how many polls in a row may fail on one change that
// Orthanc answers with an error before the reconciler moves past it.
const stuckAfter = 5

// stuckChange counts the polls in a row that failed on one change.
type stuckChange struct {
	seq   int64
	fails int
}

// stuckOn reports whether the reconciler moves past change c, whose
// handling failed with err. Only Orthanc's own error answers about the
// resource count (a 500 on one broken instance): an unreachable Orthanc,
// a proxy, an answer that says "later" (retryLater) or JetStream failing
// hold the cursor as before, and so does Orthanc's clock unread (errClock:
// no fault of the resource). Held for good, one broken resource would
// stop the reconciliation of every later study. A stable study moves to
// Pending, so it is still published once Orthanc reads it; an instance or
// series whose study cannot be read is skipped, logged and counted: its
// study's own changes mark it pending.
func (s *sourceRunner) stuckOn(c orthancapi.Change, err error) bool {
	if holdsCursor(err) {
		return false
	}
	if s.stuck.seq != c.Seq {
		s.stuck = stuckChange{seq: c.Seq}
	}
	s.stuck.fails++
	if s.stuck.fails < stuckAfter {
		return false
	}
	log := s.log.With("change_seq", c.Seq, "change_type", c.ChangeType, "resource_type", c.ResourceType,
		"orthanc_id", c.ID, "polls", s.stuck.fails, "err", err)
	if c.ChangeType == "StableStudy" {
		s.markPending(c.ID, c.Seq)
		log.Warn("Orthanc keeps failing to read a stable study; the reconciler moves on and retries it with the pending studies")
		return true
	}
	s.r.m.changesSkipped.WithLabelValues(s.name).Inc()
	log.Error("Orthanc keeps failing to read a resource's study; the reconciler skips this change so that later studies are not held up")
	return true
}

// holdsCursor reports whether a failed change's err says nothing of its
// resource (stuckOn): the cursor is held there however many polls fail.
// ErrNotFound and ErrInvalidID are no failure, but of the study's read,
// not of Orthanc's clock (errClock wraps Orthanc's own 404 to it too).
func holdsCursor(err error) bool {
	if errors.Is(err, errClock) {
		return true
	}
	if errors.Is(err, orthancapi.ErrNotFound) || errors.Is(err, orthancapi.ErrInvalidID) {
		return false
	}
	var oe *orthancapi.Error
	return !errors.As(err, &oe) || oe.NotFromOrthanc != "" || retryLater(oe.StatusCode)
}

// retryLater reports whether an HTTP status says the server, or a proxy
// before it, cannot answer now (RFC 9110 15.5.9, 15.6.3-5; RFC 6585 4):
// Orthanc overloaded or restarting, its proxy without an upstream. It
// says nothing about the resource asked for.
func retryLater(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// lookupConcurrency bounds the study lookups of one page in flight: a
// backlog of new instances, one lookup each, is read several round trips
// at a time, without flooding Orthanc.
const lookupConcurrency = 4

// resolveEveryPages is how many pages of a backlog are read between two
// passes over the pending studies (resolvePending), besides the pass at
// the end of the change log.
const resolveEveryPages = 50

// parentLookup is the study of a new series or instance, as Orthanc
// answered; asked is false for a change that needs none.
type parentLookup struct {
	asked bool
	study orthancapi.Study
	err   error
}

// lookUp asks Orthanc for the study of each new series and instance of a
// page, lookupConcurrency at a time, before the page is handled in order:
// the answers are used in the page's order and the cursor stops at the
// first that failed, as when they were asked one after another. So once
// a lookup fails in a way that holds the cursor (holdsCursor: Orthanc
// unreachable or slow), the later ones are cancelled and not started:
// with every lookup timing out, a page of 200 took 50 request timeouts
// (25 min) before its poll failed, unreported. A change the rescan of a
// reset log skips is not asked about.
func (s *sourceRunner) lookUp(ctx context.Context, changes []orthancapi.Change) []parentLookup {
	out := make([]parentLookup, len(changes))
	sem := make(chan struct{}, lookupConcurrency)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		failed  = len(changes) // first change whose lookup holds the cursor
		cancels = map[int]context.CancelFunc{}
	)
	for i, c := range changes {
		if !hasParent(c) || s.skippedByRescan(c) {
			continue
		}
		sem <- struct{}{}
		mu.Lock()
		if i > failed {
			mu.Unlock()
			<-sem
			break
		}
		lctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		mu.Unlock()
		wg.Go(func() {
			defer func() { <-sem }()
			res := s.lookUpOne(lctx, c)
			mu.Lock()
			defer mu.Unlock()
			out[i] = res
			cancel()
			delete(cancels, i)
			if res.err == nil || !holdsCursor(res.err) || i > failed {
				return
			}
			failed = i
			for j, cancel := range cancels {
				if j > i {
					cancel()
				}
			}
		})
	}
	wg.Wait()
	return out
}

func hasParent(c orthancapi.Change) bool {
	return c.ChangeType == "NewSeries" || c.ChangeType == "NewInstance"
}

// lookUpOne asks Orthanc for the study of new series or instance c.
func (s *sourceRunner) lookUpOne(ctx context.Context, c orthancapi.Change) parentLookup {
	find := s.orthanc.InstanceStudy
	if c.ChangeType == "NewSeries" {
		find = s.orthanc.SeriesStudy
	}
	st, err := find(ctx, c.ID)
	return parentLookup{asked: true, study: st, err: err}
}

// handle acts on one change; parent is the study of a new series or
// instance (lookUp).
func (s *sourceRunner) handle(ctx context.Context, c orthancapi.Change, parent parentLookup) error {
	switch c.ChangeType {
	case "StableStudy":
		return s.stable(ctx, c.ID, c.Seq)
	case "NewStudy":
		s.markPending(c.ID, c.Seq)
		return nil
	case "NewSeries", "NewInstance":
		if !parent.asked {
			// lookUp took it for one the rescan skips, and it is not
			// (a clock set back within the page).
			parent = s.lookUpOne(ctx, c)
		}
	default:
		return nil
	}
	study, err := parent.study, parent.err
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
	if !orthancapi.ValidID(studyID) {
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
	delete(s.unreadable, studyID)
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
	s.dirty, s.savedAt = false, time.Now()
	return nil
}
