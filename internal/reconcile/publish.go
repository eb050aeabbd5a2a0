package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// stable publishes a study a StableStudy change names, unless it changed
// since and is unstable again: then it waits in Pending for the next
// StableStudy change (or for Orthanc to call it stable after a restart).
func (s *sourceRunner) stable(ctx context.Context, studyID string, seq int64) error {
	if err := s.readClock(ctx); err != nil {
		return err
	}
	study, err := s.orthanc.Study(ctx, studyID)
	switch {
	case errors.Is(err, orthancapi.ErrNotFound), errors.Is(err, orthancapi.ErrInvalidID):
		s.skipDeleted(studyID)
		return nil
	case err != nil:
		return fmt.Errorf("orthanc: study %s: %w", studyID, err)
	case !study.IsStable || !s.settled(study):
		s.markPending(studyID, seq)
		return nil
	}
	if err := s.publish(ctx, studyID, study, "stable_study_change"); err != nil {
		return err
	}
	s.dropPending(studyID)
	return nil
}

// errClock: Orthanc's clock could not be read. It says nothing of the
// change being handled, which is not moved past for it (stuckOn).
var errClock = errors.New("orthanc: read its clock (GET /tools/now)")

// errClockRefused is the check's note while Orthanc refuses its clock.
var errClockRefused = errors.New("orthanc refuses GET /tools/now: studies are published without the same-second check; allow it, required with several Orthanc processes on one database")

// readClock reads Orthanc's clock once a poll, before the first study
// the poll reads (settled), and, while the check is off, at every poll
// (poll), so that it is turned on again when no study comes. Refused for good (clockRefused, clockOffAfter
// times in a row), the clock stays unread and settled falls back to
// IsStable alone: the check only guards Orthanc processes sharing one
// database, and holding the cursor would end the reconciliation of a
// site whose proxy refuses /tools/* (the access the docs listed before
// the check). Fewer refusals in a row, and a transient failure, hold the
// cursor (errClock): one refusal may be a policy or a token being rolled
// out, and turning the check off at it flapped the gauge.
func (s *sourceRunner) readClock(ctx context.Context) error {
	if s.clockRead {
		return nil
	}
	now, err := s.orthanc.Now(ctx)
	switch {
	case s.clockRefused(ctx, err):
		s.clockRefusals++
		if !s.clockOff && s.clockRefusals < clockOffAfter {
			return fmt.Errorf("%w: %w", errClock, err)
		}
		s.clockRead = true
		if !s.clockOff {
			s.clockOff = true
			s.r.m.clockUnavailable.WithLabelValues(s.name).Set(1)
			s.setNote(errClockRefused)
			s.log.Warn("Orthanc refuses GET /tools/now: studies are published without the same-second check; allow it, required with several Orthanc processes on one database", "err", err)
		}
		return nil
	case err != nil:
		s.clockRefusals = 0
		return fmt.Errorf("%w: %w", errClock, err)
	}
	s.clockRefusals = 0
	if s.clockOff {
		s.clockOff = false
		s.r.m.clockUnavailable.WithLabelValues(s.name).Set(0)
		s.setNote(nil)
		s.log.Info("Orthanc answers GET /tools/now again: studies are published with the same-second check")
	}
	s.clock, s.clockRead = now, true
	return nil
}

// clockOffAfter is how many refusals of GET /tools/now in a row turn the
// same-second check off (readClock).
const clockOffAfter = 3

// clockRefused reports whether err is Orthanc (or its proxy) refusing
// GET /tools/now for good: 401, 403, 405, or a 404 while Orthanc answers
// GET /system (Orthanc without the route, or an ingress routing an
// allowlist without it, whose "404 page not found" is not Orthanc's);
// not a timeout, a 5xx, or the 404 of a proxy whose Orthanc is gone.
func (s *sourceRunner) clockRefused(ctx context.Context, err error) bool {
	var oe *orthancapi.Error
	if !errors.As(err, &oe) {
		return false
	}
	switch oe.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed:
		return true
	case http.StatusNotFound:
		if oe.NotFromOrthanc == "" {
			return true
		}
		sys, err := s.orthanc.System(ctx)
		return err == nil && sys.Version != ""
	}
	return false
}

// settled reports whether a study Orthanc calls stable was last updated
// before the second Orthanc's clock was in before the study was read
// (readClock). IsStable is one Orthanc process's memory: another process
// sharing its database (one ORTHANC_URL balanced over several) may still
// be storing the study. An instance it stores within the second of the
// LastUpdate read leaves LastUpdate as it is, and the study's own event,
// complete, would be dropped as a duplicate of one published now; from
// the next second on LastUpdate moves, and that event is a new one. A
// LastUpdate that cannot be read is left to publish, which refuses it.
// With the clock refused (clockOff), IsStable alone decides. A
// LastUpdate more than clockAhead after the clock was not written by it
// (Orthanc's clock was set back since, or processes disagree): waiting
// for the clock to catch up would hold the study silently for as long,
// so it is taken as settled, with a warning.
func (s *sourceRunner) settled(study orthancapi.Study) bool {
	lu, ok := changeTime(study.LastUpdate)
	switch {
	case s.clockOff || !ok || lu.Before(s.clock):
		return true
	case lu.After(s.clock.Add(clockAhead)):
		s.log.Warn("a stable study's LastUpdate is ahead of Orthanc's clock (set back since, or Orthanc processes whose clocks disagree): published without the same-second check",
			"orthanc_study_id", study.ID, "study_instance_uid", study.StudyInstanceUID,
			"last_update", study.LastUpdate, "orthanc_now", s.clock.Format(orthancapi.TimeLayout))
		return true
	}
	return false
}

// clockAhead is how far a LastUpdate may be after Orthanc's clock and
// still be waited for (settled): beyond, no clock caught it up soon.
const clockAhead = time.Minute

// resolvePending publishes the pending studies Orthanc calls stable and
// drops the deleted ones. In normal operation a StableStudy change comes
// first; this catches studies Orthanc forgot when it restarted before they
// became stable.
func (s *sourceRunner) resolvePending(ctx context.Context) error {
	if len(s.cur.Pending) == 0 {
		return nil
	}
	if err := s.readClock(ctx); err != nil {
		return err
	}
	for id := range s.cur.Pending {
		study, err := s.orthanc.Study(ctx, id)
		var oe *orthancapi.Error
		switch {
		case errors.Is(err, orthancapi.ErrNotFound), errors.Is(err, orthancapi.ErrInvalidID):
			s.skipDeleted(id)
			continue
		case errors.As(err, &oe) && oe.NotFromOrthanc == "" && !retryLater(oe.StatusCode):
			// Orthanc fails on this study alone: it stays pending, asked
			// again at every poll, and the poll goes on. Failing it made
			// one unreadable study an outage for good: the lease holder
			// not ready, its poll errors saying Orthanc was unreachable.
			// An answer that says "later" (a proxy's 502, an overloaded
			// Orthanc's 503) is no fault of the study: it fails the poll.
			if !s.unreadable[id] {
				s.unreadable[id] = true
				s.log.Warn("Orthanc fails to read a pending study; it stays pending and is asked again at every poll",
					"orthanc_study_id", id, "err", err)
			}
			continue
		case err != nil:
			return fmt.Errorf("orthanc: study %s: %w", id, err)
		case !study.IsStable || !s.settled(study):
			continue // asked again at the next pass
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
	// Not only a study lost: in buffer mode most small studies end
	// here, forwarded (the webhook queued them) and deleted by the
	// forwarder with their StableStudy change before the next poll read
	// it. The reconciler cannot tell the two apart.
	s.log.Info("study gone from Orthanc before the reconciler read it stable (deleted, or forwarded and deleted by buffer mode); skipped", "orthanc_study_id", studyID)
}

// maxRecent bounds the memory of what was published in this lease term.
const maxRecent = 10000

// publish stores the study's event, the same as the Lua script's.
func (s *sourceRunner) publish(ctx context.Context, studyID string, study orthancapi.Study, reason string) error {
	if lu, ok := s.recent[studyID]; ok && lu == study.LastUpdate {
		return nil // this state was published in this term already
	}
	ev, err := events.NewStudyStable(s.name, studyID, study.StudyInstanceUID, study.LastUpdate)
	log := s.log.With("orthanc_study_id", studyID, "study_instance_uid", study.StudyInstanceUID,
		"last_update", study.LastUpdate, "reason", reason)
	if err != nil {
		// The Lua path's event would be refused the same way.
		s.r.m.skipped.WithLabelValues(s.name, "invalid").Inc()
		log.Error("stable study cannot be announced: its event would be invalid", "err", err)
		return nil
	}
	// A trace of its own, as a webhook event has: the forwarders continue
	// it when this publish is the one JetStream keeps.
	ctx, span := s.r.tracer.Start(ctx, "reconcile event", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(tracing.Event(ev)...)
		span.SetAttributes(tracing.Origin.String("reconciler"), tracing.MessageID.String(ev.MsgID()))
		log = log.With("trace_id", span.SpanContext().TraceID().String())
	}
	pctx, cancel := context.WithTimeout(ctx, s.r.opts.PublishTimeout)
	defer cancel()
	ack, err := s.r.opts.Publisher.Publish(pctx, ev)
	if err != nil {
		span.SetStatus(codes.Error, "JetStream did not acknowledge")
		return fmt.Errorf("publish study %s: %w", studyID, err)
	}
	span.SetAttributes(tracing.StreamSeq.Int64(int64(ack.Sequence)), tracing.Duplicate.Bool(ack.Duplicate))
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
