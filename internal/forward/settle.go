package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// ErrForwardedBefore: Options.Completed kept the record of a forward of
// the state it was told was not selected (a redelivery after an ack not
// confirmed, buffer mode having deleted what was selected).
var ErrForwardedBefore = errors.New("forward: this state of the study is recorded forwarded")

// settleTimeout bounds the ack, NAK or dead letter of one attempt; they
// go out even during shutdown, until settleAfterGrace past the grace.
// ackConfirmTimeout bounds the ack's confirmation within it: a lost one
// leaves the writes after it (the ledger's, the failure log's) the rest.
const (
	settleTimeout     = 30 * time.Second
	ackConfirmTimeout = 15 * time.Second
)

// settleAfterGrace is how long after ShutdownGrace the settling of the
// attempts that went on through it may go on, whatever is left of its
// settleTimeout: with NATS's drain (natsjs.drainTimeout) and the traces'
// flush it keeps a stop within the grace plus 15 s, the stop timeout the
// chart and compose give. Killed later, the ack was often lost too.
const settleAfterGrace = 5 * time.Second

// settleContext is ctx without its cancellation (the work context ends at
// the grace; an ack must still go out), ending after d or at the hard
// stop, settleAfterGrace past the grace (Run).
func (f *Forwarder) settleContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	stop := context.AfterFunc(f.hardStop, cancel)
	return sctx, func() { stop(); cancel() }
}

// settle carries d out on msg and the stores, counts it and tells the
// observer. ctx is the work context: shutdown stops buffer-mode deletes,
// never the ack. stopProgress (nil: none) stops the event's in-progress
// signals; settle calls it just before the ack, NAK or termination, so
// that its writes before them (up to settleTimeout through a bucket's
// election) do not let the event lapse to another replica under a short
// FORWARDER_ACK_WAIT.
func (f *Forwarder) settle(ctx context.Context, msg jetstream.Msg, a *Attempt, d decision, rep Report, ferr error, elapsed time.Duration, log *slog.Logger, stopProgress func()) {
	stop := sync.OnceFunc(func() {
		if stopProgress != nil {
			stopProgress()
		}
	})
	defer stop()
	sctx, cancel := f.settleContext(ctx, settleTimeout)
	defer cancel()
	var result Result
	recorded := false // the ledger holds this forward (ack)
	// The ledger held a forward of this state already (ack): what no
	// destination selects was counted by the delivery that forwarded it.
	before := false
	// What the attempt stored and its last write to the failure log did
	// not take (NATS unreachable), or left for now (the grace over:
	// sentWriter.close) is written again, whatever the outcome: a later
	// delivery would take those copies for conflicts. Before the event
	// goes back to the queue (another replica may take it at once and
	// read the record), and once more after it if that failed; after an
	// ack, as its other writes: they may wait through a bucket's leader
	// election.
	remember := func(last bool) {
		if len(rep.unrecorded) == 0 {
			return
		}
		err := f.rememberStored(sctx, a.Event, rep.unrecorded)
		if err == nil {
			rep.unrecorded = nil
		} else if last {
			log.Warn("remember what the attempt stored, again as it is settled: a later delivery of the study may take those instances for conflicts",
				"instances", len(rep.unrecorded), "err", err)
		}
	}
	if d.action != ack {
		remember(false)
	}
	switch d.action {
	case ack:
		stop()
		result, recorded, before = f.ack(sctx, msg, a, rep, elapsed, log)
	case giveBack:
		stop()
		handBack(msg, f.opts.Connected, rep, log)
		result = ResultInterrupted
	case retry:
		f.m.failures.WithLabelValues(string(d.class)).Inc()
		f.recordFailure(sctx, a, log)
		log.Warn("study not forwarded; will retry", "class", d.class, "err", ferr, "retry_in", d.delay.String(),
			"instances_sent", rep.Instances, "duration_ms", elapsed.Milliseconds())
		stop()
		result = f.nakWithDelay(msg, d.delay, log)
		f.retrying(a, d.class, ferr, d.delay)
	case deadLetter:
		result = f.deadLetter(sctx, msg, a, d, rep, ferr, log, stop)
		// Counted once, as its letter is stored: a letter stored
		// already (this delivery came as the termination was lost), or
		// one not stored (the event stays queued, and its next delivery,
		// past the limit, would read as a crash) counts no failure.
		if result == ResultDeadLettered {
			f.m.failures.WithLabelValues(string(d.class)).Inc()
			if fe := (*Error)(nil); errors.As(ferr, &fe) && fe.conflicts > 0 {
				f.m.conflicts.WithLabelValues("dead_lettered").Add(float64(fe.conflicts))
			}
		}
	}
	remember(true)
	f.m.studies.WithLabelValues(string(result)).Inc()
	recordOutcome(trace.SpanFromContext(ctx), result, d.class, rep)
	f.obs.Finished(a, result, rep)
	// What no destination selects stays whatever the deletes do; counted
	// before them, over the study as it was listed: after them, its
	// deleted series no longer tell the rules their modality, and a study
	// deleted whole is not found.
	// Its selection serves the deletes too: the rules it applied are
	// not applied again.
	var sel Selection
	if (result == ResultForwarded || result == ResultNotSelected || result == ResultAckFailed && recorded) && !before && f.opts.CleanerFor != nil {
		sel = f.countUnselected(ctx, a.Event, rep, log)
	}
	// Deleted only once the ledger holds the forward: a later event of
	// the study finding it gone would be dead-lettered as source-missing,
	// and the audit could not tell it was forwarded. A study whose ack
	// was not confirmed is deleted too: if the ack did arrive, no delivery
	// comes to delete it, and it stayed in Orthanc for good; if it did
	// not, the next delivery finds it gone and the ledger says it is done.
	// A study the destination's rules select none of has nothing of its
	// own to delete (an ack not confirmed comes here): the destinations
	// that select it release it.
	if (result == ResultForwarded || result == ResultAckFailed) && !rep.NotSelected && f.opts.CleanerFor != nil {
		// Whatever becomes of the others: the destination does not hold
		// these as sent (transfer logged why).
		if len(rep.kept) > 0 {
			f.m.sourceDeletes.WithLabelValues("kept").Add(float64(len(rep.kept)))
		}
		if recorded {
			f.deleteForwarded(ctx, a.Event, rep.forwarded, rep.listed, sel, log)
		} else if len(rep.forwarded) > 0 && result == ResultAckFailed {
			// Failed, not waiting: nats.go holds publishes while it
			// reconnects, the ack included, so after an outage the ack
			// may land and no delivery come to record and delete it.
			log.Warn("forwarded study not deleted from the source: neither its ack nor its forward in the destination's ledger was confirmed; it stays in Orthanc "+
				"unless a next delivery comes, which records and deletes it. None may come (the ack may land once NATS reconnects): "+
				"'forwarder audit --destination NAME --enqueue', run once the ledger takes writes again, queues it again, harmless if a delivery comes too",
				"instances", len(rep.forwarded))
			f.m.sourceDeletes.WithLabelValues("failed").Add(float64(len(rep.forwarded)))
		} else if len(rep.forwarded) > 0 {
			log.Warn("forwarded study not deleted from the source: its forward is not recorded in the destination's ledger; it stays in Orthanc "+
				"until 'forwarder audit --destination NAME --enqueue', run once the ledger takes writes again, queues it again", "instances", len(rep.forwarded))
			f.m.sourceDeletes.WithLabelValues("failed").Add(float64(len(rep.forwarded)))
		}
	}
}

// ack acks the event of a study done and records the forward in the
// destination's ledger; recorded reports that the ledger holds it, before
// that it held a forward of this state already (ErrForwardedBefore). The
// result is the attempt's: forwarded, not_selected or already_forwarded,
// and ack_failed for any of them whose ack was not confirmed.
func (f *Forwarder) ack(ctx context.Context, msg jetstream.Msg, a *Attempt, rep Report, elapsed time.Duration, log *slog.Logger) (result Result, recorded, before bool) {
	// DoubleAck waits for the server's confirmation: the event is done
	// only once JetStream knows it is. What was sent is recorded by now
	// (sentwriter.go), in the attempt, unless the grace ended first: then
	// settle writes it after the ack, which must not wait on a ledger
	// that does not answer. A lost confirmation waits out its own
	// deadline, not ctx's: the writes after it need time too.
	actx, cancel := context.WithTimeout(ctx, ackConfirmTimeout)
	err := msg.DoubleAck(actx)
	cancel()
	if err != nil {
		log.Error("study stored but the ack was not confirmed; it is delivered again unless the ack arrived", "err", err)
		// The destination holds the study whether or not the ack arrived,
		// and an ack that did arrive brings no delivery to record it: the
		// audit would report the study missing, buffer mode would keep it.
		recorded, before = f.recordCompletion(ctx, a.Event, rep, log)
		return ResultAckFailed, recorded, before
	}
	recorded, before = f.recordCompletion(ctx, a.Event, rep, log)
	result = ResultForwarded
	switch {
	case rep.forwardedBefore:
		// The event that carried the study was counted forwarded:
		// counted again, dashboards would show the study twice.
		result = ResultAlreadyForwarded
		log.Info("study no longer in the source: the destination's ledger holds this state of it or a newer one, " +
			"forwarded before buffer mode deleted it; the event is done")
	case before:
		// The delivery that forwarded this state (its ack not confirmed)
		// was counted; buffer mode deleted what the rules select.
		result = ResultAlreadyForwarded
		log.Info("study not forwarded: the destination's rules select none of what the source holds, and its ledger records this state of it forwarded; the event is done")
	case rep.deletedNotSelected:
		result = ResultNotSelected
		log.Info("study not forwarded: no longer in the source, deleted by buffer mode once the destinations whose rules select it stored it; " +
			"the destination's ledger records that its rules selected none of it")
	case rep.NotSelected:
		result = ResultNotSelected
		log.Info("study not forwarded: the destination's rules select none of it")
	default:
		f.m.duration.Observe(elapsed.Seconds())
		attrs := []any{"instances", rep.Instances, "bytes", rep.Bytes,
			"requests", rep.Requests, "already_stored", rep.AlreadyStored, "resent", rep.Resent,
			"not_selected", rep.Listed - rep.Selected, "duration_ms", elapsed.Milliseconds()}
		if rep.Replaced > 0 {
			attrs = append(attrs, "replaced", rep.Replaced)
		}
		if f.opts.Verifier != nil {
			attrs = append(attrs, "verify_ms", float64(rep.Verify.Microseconds())/1000)
		}
		log.Info("study forwarded", attrs...)
	}
	if a.Number > 1 && f.opts.Failures != nil {
		if err := f.countStoreFull(storeFullFailureTime, f.opts.Failures.Forget(ctx, a.Seq)); err != nil {
			log.Warn("forget failure record", "err", err)
		}
	}
	return result, recorded, before
}

// recordCompletion records the destination's completed forward of ev
// (Options.Completed), unless the ledger told it: a study buffer mode
// deleted once done. It reports whether the ledger holds it, and before:
// that it held a forward of this state, which a study not selected does
// not replace (ErrForwardedBefore).
func (f *Forwarder) recordCompletion(ctx context.Context, ev *events.StudyStable, rep Report, log *slog.Logger) (recorded, before bool) {
	if rep.forwardedBefore || rep.deletedNotSelected {
		return true, false
	}
	if f.opts.Completed == nil {
		return false, false
	}
	c := Completion{NotSelected: rep.NotSelected, Selected: rep.selected, Kept: rep.kept, Replaced: rep.replaced, StoredAsSent: f.heldAsSent(ctx, ev, rep, log)}
	if err := f.recordCompleted(ctx, recordedState(ev, rep, log), c); errors.Is(err, ErrForwardedBefore) {
		return true, true
	} else if err != nil {
		log.Warn("study forwarded but not recorded as completed", "err", err)
		return false, false
	}
	return true, false
}

// heldAsSent returns the SOP Instance UIDs of a completed forward that
// the destination confirmed to this delivery and that it did not keep:
// it holds them as sent, so a record of this state that kept them (a
// conflict skipped, which the operator then deleted in the archive before
// a backfill; one kept as unproven) keeps them no more, and forwarder
// audit --kept stops listing the study. Not one an earlier delivery got
// stored with a warning that the destination changed it (keptID in the
// stored-instances record): a destination that stores it again without a
// word still holds its changed copy. When that record cannot be read,
// none: the ledger keeps what it kept. None in buffer mode either: there
// the ledger's Kept also keeps the original in the source, and a
// destination that stores an instance again without a word (having
// changed it the first time, B000) would get it deleted once the record
// of stored instances no longer tells.
func (f *Forwarder) heldAsSent(ctx context.Context, ev *events.StudyStable, rep Report, log *slog.Logger) []string {
	if rep.NotSelected || f.opts.CleanerFor != nil {
		return nil
	}
	var held []orthancapi.Instance
	for _, in := range rep.selected {
		// Both sorted (transfer).
		if _, kept := slices.BinarySearch(rep.kept, in.SOPInstanceUID); kept {
			continue
		}
		if _, replaced := slices.BinarySearch(rep.replaced, in.SOPInstanceUID); replaced {
			continue
		}
		held = append(held, in)
	}
	if len(held) == 0 {
		return nil
	}
	has, err := f.readStored(ctx, ev, false)
	if err != nil {
		log.Warn("read which instances earlier deliveries got changed by the destination: the ledger keeps what it kept", "err", err)
		return nil
	}
	uids := make([]string, 0, len(held))
	for _, in := range held {
		if !has(keptID(sentID(ev, in))) {
			uids = append(uids, in.SOPInstanceUID)
		}
	}
	return uids
}

// studyReader is a Source that reads the study itself (an Orthanc: GET
// /studies/{id}).
type studyReader interface {
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
}

// sourceLastUpdate reads ev's study's LastUpdate in src, one request,
// before transfer lists its instances: the ledger records the earlier of
// it and the event's (recordedState). The webhook takes an event's
// lastUpdate as sent (a forged one, an Orthanc whose clock ran ahead),
// and a record is never moved back by a nearer one: a far-future one kept
// the study "forwarded" for good, to the audit and to buffer mode. ""
// when src cannot tell (the event's is recorded then).
func sourceLastUpdate(ctx context.Context, src Source, ev *events.StudyStable) (string, error) {
	sr, ok := src.(studyReader)
	if !ok {
		return "", nil
	}
	st, err := sr.Study(ctx, ev.OrthancStudyID)
	if errors.Is(err, orthancapi.ErrNotFound) {
		return "", Errorf(SourceMissing, "study %s is no longer in Orthanc source %s: %w", ev.OrthancStudyID, ev.Source, err)
	}
	if err != nil {
		return "", fmt.Errorf("read study %s: %w", ev.OrthancStudyID, err)
	}
	return st.LastUpdate, nil
}

// recordedState is ev as the ledger records it: with the earlier of its
// LastUpdate and the study's the attempt read from the source, both read
// as Orthanc's timestamps. The event's alone was sent once it was before
// Orthanc's current second (the Lua script, the reconciler), so every
// instance stamped with it was listed; the source's, read mid-attempt, may
// be the second an instance the listing missed was stored in. The
// source's alone stands for an event that is later (forged, or sent while
// the Orthanc clock was ahead).
func recordedState(ev *events.StudyStable, rep Report, log *slog.Logger) *events.StudyStable {
	if rep.lastUpdate == "" || rep.lastUpdate == ev.LastUpdate {
		return ev
	}
	rec := *ev
	rec.LastUpdate = rep.lastUpdate
	source, err := rec.LastUpdateTime()
	if err != nil {
		log.Warn("the study's LastUpdate in the source is not an Orthanc timestamp: the ledger records the event's",
			"source_last_update", rep.lastUpdate, "err", err)
		return ev
	}
	event, err := ev.LastUpdateTime()
	if err != nil || !event.After(source) {
		return ev
	}
	// The study cannot be older than its event: the event's is wrong (or
	// the Orthanc clock went back since).
	log.Warn("the event's lastUpdate is later than the study's in the source (a wrong or forged event, or the Orthanc clock was ahead when it was sent): the ledger records the source's",
		"source_last_update", rep.lastUpdate)
	return &rec
}

// completedRetry is the first wait before a completed forward's record is
// written again; the waits double up to completedRetryMax.
const (
	completedRetry    = 500 * time.Millisecond
	completedRetryMax = 4 * time.Second
)

// recordCompleted records a completed forward, trying again while the
// write fails, until ctx ends (settleTimeout): the event is acked by now,
// so a record lost reads as a missing study in the audit, and keeps the
// study in Orthanc in buffer mode with several destinations, until a
// re-forward. On a cluster that lost the server leading the ledger's
// bucket, writes fail at once ("no response from stream") until the others
// elect a leader, 4 to 9 s: three tries 1.5 s apart all fell within it.
// A full store is not tried again: it is not freed within seconds.
func (f *Forwarder) recordCompleted(ctx context.Context, ev *events.StudyStable, c Completion) error {
	err := f.whileUnanswered(ctx, func() error { return f.opts.Completed(ctx, ev, c) })
	return f.countStoreFull(storeFullLedger, err)
}

// countStoreFull counts err in stowline_forwarder_store_full_total, by
// what, when JetStream refused the write for want of storage, and
// returns it.
func (f *Forwarder) countStoreFull(what string, err error) error {
	if errors.Is(err, natsjs.ErrStorageFull) {
		f.m.storeFull.WithLabelValues(what).Inc()
	}
	return err
}

func (f *Forwarder) nakWithDelay(msg jetstream.Msg, delay time.Duration, log *slog.Logger) Result {
	if err := msg.NakWithDelay(delay); err != nil {
		log.Warn("nak failed; JetStream redelivers after the ack wait", "err", err)
	}
	return ResultRetry
}

// recordFailure notes the failure time and returns the first and last.
func (f *Forwarder) recordFailure(ctx context.Context, a *Attempt, log *slog.Logger) FailureTimes {
	now := time.Now().UTC()
	times := FailureTimes{First: now, Last: now}
	if f.opts.Failures == nil {
		return times
	}
	t, err := f.opts.Failures.Record(ctx, a.Seq, now)
	if err := f.countStoreFull(storeFullFailureTime, err); err != nil {
		log.Warn("record failure time", "err", err)
		return times
	}
	return t
}

// deadLetter stores the study's dead letter and terminates its event. A
// study is never dropped: without its dead letter it stays queued.
func (f *Forwarder) deadLetter(ctx context.Context, msg jetstream.Msg, a *Attempt, d decision, rep Report, ferr error, log *slog.Logger, stopProgress func()) Result {
	times := f.recordFailure(ctx, a, log)
	letter := &DeadLetter{
		Destination:    a.Destination,
		Event:          *a.Event,
		Class:          d.class,
		Reason:         d.reason,
		Attempts:       a.Number,
		FirstFailure:   times.First,
		LastFailure:    times.Last,
		OriginalSeq:    a.Seq,
		DeadLetteredAt: time.Now().UTC(),
		LastResponse:   lastResponse(ferr),
	}
	var fe *Error
	if errors.As(ferr, &fe) {
		letter.Failures = fe.Instances
	}
	result := f.storeDeadLetter(ctx, msg, a, letter, lettering{
		what: "study", tag: string(d.class), result: ResultDeadLettered,
		why:          []any{"class", d.class},
		more:         []any{"err", ferr, "failed_instances", len(letter.Failures) + letter.MoreFailures, "instances_stored", rep.Instances},
		stopProgress: stopProgress,
	}, log)
	if result != ResultRetry && f.opts.Failures != nil {
		if err := f.countStoreFull(storeFullFailureTime, f.opts.Failures.Forget(ctx, a.Seq)); err != nil {
			log.Warn("forget failure record", "err", err)
		}
	}
	return result
}

// undecodable dead-letters an event this build cannot read (a rollback
// to forwarders older than the ingest, a message not from stowline),
// keeping its bytes and headers as stored, so that a replay once the
// forwarders read it queues it again unchanged. Terminated alone, it was
// lost. As any study's, the event is never dropped: without its dead
// letter it stays queued.
func (f *Forwarder) undecodable(ctx context.Context, msg jetstream.Msg, a *Attempt, derr error) {
	sctx, cancel := f.settleContext(ctx, settleTimeout)
	defer cancel()
	span := trace.SpanFromContext(ctx)
	log := f.log.With("subject", msg.Subject(), "stream_seq", a.Seq, "attempt", a.Number)
	if f.opts.DeadLetters == nil {
		log.Error("undecodable event given back: no dead-letter store to keep it", "err", derr, "retry_in", newerVersionDelay.String())
		result := f.nakWithDelay(msg, newerVersionDelay, log)
		f.m.studies.WithLabelValues(string(result)).Inc()
		recordOutcome(span, result, Permanent, Report{})
		return
	}
	now := time.Now().UTC()
	letter := &DeadLetter{
		Destination:    a.Destination,
		Event:          readable(msg.Subject(), msg.Data()),
		Class:          Permanent,
		Reason:         "undecodable: " + derr.Error(),
		Attempts:       a.Number,
		FirstFailure:   now,
		LastFailure:    now,
		OriginalSeq:    a.Seq,
		DeadLetteredAt: now,
		Raw:            &RawEvent{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()},
	}
	result := f.storeDeadLetter(sctx, msg, a, letter, lettering{
		what: "undecodable event", tag: "undecodable", result: ResultUndecodable,
		why:  []any{"undecodable", derr},
		more: []any{"source", letter.Event.Source, "study_instance_uid", letter.Event.StudyInstanceUID},
	}, log)
	f.m.studies.WithLabelValues(string(result)).Inc()
	recordOutcome(span, result, Permanent, Report{})
}

// lettering is what storeDeadLetter says of a letter: the subject of its
// log lines, the tag of the event's termination reason, the result once
// the letter is stored, the log attributes of every line (why) and those
// of the line that says it is stored (more), and what stops the event's
// in-progress signals before its NAK or termination (nil: none).
type lettering struct {
	what, tag    string
	result       Result
	why, more    []any
	stopProgress func()
}

// storeDeadLetter stores letter and terminates msg's event; without its
// letter stored, the event is NAKed and stays queued (ResultRetry). A
// letter an earlier delivery stored (its termination lost with NATS) is
// ResultAlreadyDeadLettered: that delivery counted it already.
func (f *Forwarder) storeDeadLetter(ctx context.Context, msg jetstream.Msg, a *Attempt, letter *DeadLetter, l lettering, log *slog.Logger) Result {
	dlSeq, duplicate, err := f.opts.DeadLetters.Add(ctx, letter)
	if err := f.countStoreFull(storeFullDeadLetter, err); err != nil {
		delay := f.policy.backoff(a.Number, nil)
		log.Error("dead letter not stored; the "+l.what+" stays queued", slices.Concat(l.why, []any{"err", err, "retry_in", delay.String()})...)
		if l.stopProgress != nil {
			l.stopProgress()
		}
		return f.nakWithDelay(msg, delay, log)
	}
	trace.SpanFromContext(ctx).SetAttributes(tracing.DeadLetterSeq.Int64(int64(dlSeq)))
	result := l.result
	if duplicate {
		result = ResultAlreadyDeadLettered
		// Not why: this delivery's (past the deliveries, a "crash") is
		// not the letter's.
		log.Warn(l.what+" dead-lettered by an earlier delivery, whose termination JetStream did not get; the event is terminated now",
			"dead_letter_seq", dlSeq)
	} else {
		log.Error(l.what+" dead-lettered", slices.Concat(l.why, []any{"dead_letter_seq", dlSeq}, l.more)...)
	}
	if l.stopProgress != nil {
		l.stopProgress()
	}
	if err := msg.TermWithReason(fmt.Sprintf("dead-lettered as %d (%s)", dlSeq, l.tag)); err != nil {
		log.Warn("terminate dead-lettered event", "err", err)
	}
	return result
}

// readable is what a dead letter can tell of an event that does not
// decode: its source from its subject, and the fields that still read,
// when they are short printable text (a foreign message's may be
// anything; they go in a header).
func readable(subject string, data []byte) events.StudyStable {
	var ev, out events.StudyStable
	_ = json.Unmarshal(data, &ev) // what does not read stays empty
	out.Source = "unknown"
	if src, ok := natsjs.SourceOfEventSubject(subject); ok {
		out.Source = src
	}
	keep := func(s string) string {
		if len(s) > maxReadableField || strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return ""
		}
		return s
	}
	out.Type, out.Version = keep(ev.Type), ev.Version
	out.OrthancStudyID, out.StudyInstanceUID, out.LastUpdate = keep(ev.OrthancStudyID), keep(ev.StudyInstanceUID), keep(ev.LastUpdate)
	out.ReceivedAt = ev.ReceivedAt
	return out
}

// maxReadableField bounds a field readable keeps.
const maxReadableField = 256

// lastResponse is the destination's answer kept with a dead letter.
func lastResponse(err error) string {
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		return fmt.Sprintf("HTTP %d %s: %s", he.StatusCode, he.ContentType, he.Body)
	}
	return ""
}

// pausedAtShutdown settles an event that keptWhilePaused kept on its
// last delivery n when shutdown starts before the pause ends. Given back,
// it came again past FORWARDER_MAX_DELIVERIES, and the next forwarder
// dead-lettered it as a crash (policy.exhausted) with no attempt: it is
// dead-lettered now, with the reason. Without a dead-letter store (no
// limit applies then), or undecodable (handle tells why next time), it is
// given back.
func (f *Forwarder) pausedAtShutdown(ctx context.Context, msg jetstream.Msg, lane events.Priority, seq, n uint64) {
	log := f.log.With("lane", lane, "stream_seq", seq, "attempt", n)
	ev, err := events.Decode(msg.Data())
	if !f.policy.canDeadLetter || err != nil {
		handBack(msg, f.opts.Connected, Report{}, log)
		return
	}
	a := &Attempt{Destination: f.opts.DestinationName, Number: n, Seq: seq, lane: lane, Event: ev}
	log = log.With("source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "study_instance_uid", ev.StudyInstanceUID)
	d := decision{action: deadLetter, class: Transient, reason: fmt.Sprintf(
		"paused at its last delivery (%d, FORWARDER_MAX_DELIVERIES %d): the forwarders' de-identification keys differed "+
			"(or this one's could not be compared with theirs); kept, not tried, until the forwarder shut down, "+
			"since given back it would have come past the limit; replay it once the forwarders agree", n, f.policy.maxDeliveries)}
	f.obs.Started(a)
	f.settle(ctx, msg, a, d, Report{}, errors.New(d.reason), 0, log, nil)
}

// handBack NAKs a study at shutdown so another replica takes it at once.
// With NATS unreachable the NAK only reaches the client's reconnect
// buffer, dropped when the connection closes: JetStream sends the study
// again once its ack wait has passed, and the log says so.
func handBack(msg jetstream.Msg, connected func() bool, rep Report, log *slog.Logger) {
	if connected != nil && !connected() {
		log.Warn("shutdown: NATS unreachable, the study cannot be handed back: JetStream sends it again FORWARDER_ACK_WAIT after its last in-progress signal",
			"instances_sent", rep.Instances)
		_ = msg.Nak() // delivered if the client reconnects before it closes
		return
	}
	log.Warn("shutdown: study returned to the queue", "instances_sent", rep.Instances)
	if err := msg.Nak(); err != nil {
		log.Warn("nak on shutdown", "err", err)
	}
}
