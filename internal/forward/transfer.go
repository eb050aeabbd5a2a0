package forward

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// Report says what one attempt sent.
type Report struct {
	// Listed is the number of instances Orthanc listed for the study.
	Listed int
	// Selected is how many of them the destination's rules select;
	// NotSelected is true when that is none (the study is not for it).
	Selected    int
	NotSelected bool
	// Instances the destination confirmed (stored or already stored).
	Instances int
	Bytes     int64
	Requests  int
	// AlreadyStored counts instances the destination already had.
	AlreadyStored int
	// Resent counts instances sent again after a transient refusal.
	Resent int
	// Conflicts counts instances the destination already held with other
	// content and that were counted as stored (STOW_ON_CONFLICT=skip);
	// Replaced those replaced (replace).
	Conflicts, Replaced int
	// Verify is the time spent asking the destination which instances it
	// holds (STOW_VERIFY=qido), every round.
	Verify time.Duration
	// forwarded are the instances sent, set only when the destination
	// confirmed every one (buffer mode deletes them); listed are all the
	// study's instances; forwarded leaves out the kept ones.
	forwarded, listed []orthancapi.Instance
	// selected are the instances the rules selected, kept the SOP
	// Instance UIDs of those the destination does not hold as sent
	// (Completion.Kept).
	selected []orthancapi.Instance
	kept     []string
	// replaced are the SOP Instance UIDs of the conflicts replaced
	// (Completion.Replaced).
	replaced []string
	// forwardedBefore: the study is no longer in the source, and the
	// destination's ledger holds this state of it or a newer one
	// (Options.Forwarded): acked, the ledger left as it is.
	forwardedBefore bool
	// deletedNotSelected: the study is no longer in the source, and the
	// destination's ledger records this state of it or a newer one as not
	// selected (Options.RecordedNotSelected): acked as not selected, the
	// ledger left as it is.
	deletedNotSelected bool
	// unrecorded: entries (sentIDs, keptID, uidID) of stored instances
	// the attempt's last write to the failure log did not take (NATS
	// unreachable); the ack writes them again.
	unrecorded []string
	// lastUpdate is the study's LastUpdate in the source, read before
	// its listing (sourceLastUpdate): the ledger records the earlier of
	// it and the event's (recordedState).
	lastUpdate string
}

// Completion is what the destination holds of a study state it is done
// with, for the ledger.
type Completion struct {
	// NotSelected: the rules selected nothing of the study.
	NotSelected bool
	// Selected are the instances the rules selected. Kept are the SOP
	// Instance UIDs of those the destination does not hold as sent: a conflict
	// skipped (it holds other content), or stored with a warning (it may
	// have coerced or discarded attributes). Buffer mode never deletes a
	// kept instance from the source. Replaced are the SOP Instance UIDs of
	// conflicts replaced: no longer kept if an earlier delivery kept them;
	// nor are StoredAsSent, those this delivery got confirmed as sent
	// (heldAsSent).
	Selected     []orthancapi.Instance
	Kept         []string
	Replaced     []string
	StoredAsSent []string
}

func (r *Report) add(o Report) {
	r.Instances += o.Instances
	r.Bytes += o.Bytes
	r.Requests += o.Requests
	r.AlreadyStored += o.AlreadyStored
	r.Resent += o.Resent
	r.Conflicts += o.Conflicts
}

// transfer sends every instance of the attempt's study to the destination.
// It returns nil only when the destination confirmed every SOP instance;
// otherwise an error that Classify understands. Instances the destination
// refused transiently are re-sent alone, up to InstanceRetries rounds;
// so are those the source failed to read, each in a request of its own.
func (f *Forwarder) transfer(ctx context.Context, a *Attempt) (rep Report, err error) {
	ev := a.Event
	log := f.attemptLog(a)
	src, err := f.opts.SourceFor(ev.Source)
	if err != nil {
		return rep, &Error{Class: Permanent, Err: err}
	}
	if rep.lastUpdate, err = sourceLastUpdate(ctx, src, ev); err != nil {
		return rep, err
	}
	lctx, span := f.startSpan(ctx, "orthanc list instances", trace.SpanKindClient)
	defer endPanicked(span)
	instances, err := src.StudyInstances(lctx, ev.OrthancStudyID)
	if span.IsRecording() {
		span.SetAttributes(tracing.Source.String(ev.Source), tracing.OrthancStudyID.String(ev.OrthancStudyID), tracing.Instances.Int(len(instances)))
	}
	endSpan(span, err)
	if err != nil {
		if errors.Is(err, orthancapi.ErrNotFound) {
			return rep, Errorf(SourceMissing, "study %s is no longer in Orthanc source %s: %w", ev.OrthancStudyID, ev.Source, err)
		}
		return rep, fmt.Errorf("list instances of study %s: %w", ev.OrthancStudyID, err)
	}
	if len(instances) == 0 {
		return rep, Errorf(SourceMissing, "study %s has no instances in Orthanc source %s", ev.OrthancStudyID, ev.Source)
	}
	rep.Listed, rep.listed = len(instances), instances
	if f.opts.Router != nil {
		rctx, span := f.startSpan(ctx, "route", trace.SpanKindInternal)
		defer endPanicked(span)
		instances, err = f.opts.Router.Select(rctx, ev.Source, ev.OrthancStudyID, instances)
		if span.IsRecording() {
			span.SetAttributes(tracing.Listed.Int(rep.Listed), tracing.Selected.Int(len(instances)))
		}
		endSpan(span, err)
		if err != nil {
			return rep, fmt.Errorf("routing rules: %w", err)
		}
		if len(instances) == 0 {
			rep.NotSelected = true
			return rep, nil
		}
	}
	rep.Selected = len(instances)
	rep.selected = instances
	f.obs.Progress(a, rep)
	instances, repeated := firstOfEachUID(instances)
	plan, pending, rejected, err := f.planSyntaxes(ctx, src, instances)
	if err != nil {
		return rep, err
	}
	rejected = append(rejected, repeated...)
	// all are the parts as last sent, which verification sends again:
	// converted (the destination refused the source's syntax), measured.
	all := slices.Clone(pending)
	at := make(map[string]int, len(all))
	for i, p := range all {
		at[p.SOPInstanceUID] = i
	}
	byUID := make(map[string]orthancapi.Instance, len(instances))
	for _, inst := range instances {
		byUID[inst.SOPInstanceUID] = inst
	}
	st := &conflictState{replacing: map[string]bool{}, skipped: map[string]bool{}, replaced: map[string]bool{}, deleted: map[string]bool{}}
	defer func() {
		if err != nil && len(st.deleted) > 0 {
			err = f.notStoredAgain(st, rejected, err, log)
		}
	}()
	// stored are the instances the destination confirmed to this
	// attempt, in its earlier rounds; earlier those it confirmed to
	// earlier attempts of this study, read from the same Orthanc file
	// (sentID; read at the first conflict answer, kept as each request is
	// answered, so a forwarder killed mid-study or before its ack loses
	// none of them). An "already exists" for one of them is the
	// destination holding stowline's own copy, not other content: Azure's
	// 45070 and DICOM's 0x0111 name the UID only, so a study re-sent after
	// a transient failure or after it gained an instance, or an instance
	// re-sent because QIDO-RS did not list it yet, would otherwise be a
	// conflict.
	stored := map[string]bool{}
	earlier := &storedRecord{
		read:  func(patient bool) (func(string) bool, bool) { return f.storedEarlier(ctx, ev, patient, log) },
		now:   time.Now,
		pause: func(d time.Duration) bool { sleep(ctx, d); return ctx.Err() == nil },
	}
	// unrecorded: what earlier runs of this delivery stored and could not
	// record; the record read leaves them out.
	unrecorded := make(map[string]bool, len(a.unrecorded))
	for _, id := range a.unrecorded {
		unrecorded[id] = true
	}
	// keptBefore: in buffer mode, the instances an earlier attempt tells
	// this one to keep in the source, by why (keptEarlier).
	keptBefore := map[string]string{}
	if f.opts.CleanerFor != nil && f.opts.Failures != nil {
		began := time.Now()
		has, err := f.readStored(ctx, ev, true)
		if err != nil {
			// Nothing sent yet: retried later, rather than forwarded
			// with what it must keep unknown (the ledger would then
			// tell the other destinations' Release to delete it).
			return rep, &Error{Class: Transient, Err: fmt.Errorf("buffer mode: the record of what earlier attempts stored of study %s, which says what they kept in the source, could not be read: %w", ev.StudyInstanceUID, err)}
		}
		// Read before this attempt writes to it; it serves the conflict
		// answers' first questions too.
		earlier.has, earlier.readAt = has, began
		keptBefore = keptEarlier(ev, instances, has, unrecorded)
		if err := f.keptInLedger(ctx, ev, instances, keptBefore); err != nil {
			return rep, err
		}
	}
	// answered: the time of the answer asking (storedRecord).
	ours := func(uid string, answered time.Time) bool {
		if stored[uid] {
			return true
		}
		id := sentID(ev, byUID[uid])
		return unrecorded[id] || earlier.holds(id, answered)
	}
	// unanswered are instances this attempt sent in a request that got
	// no answer (the dicomweb client sent it again: Result.Resent) or
	// whose body broke off after them (an instance after them unreadable
	// or not convertible): the destination may have stored them, as some
	// store parts as they read them. Its "already exists" for one is then
	// likely stowline's own copy, unproven: stored as it says, kept in
	// the source (batchOutcome.unproven), not a conflict.
	unanswered := map[string]bool{}
	// mayHold: unanswered, or marked by an earlier delivery as sent in
	// such a request, or in one whose answer could not be read (a proxy's
	// 502 or 504 while the destination went on storing: maybeID), which
	// failed that attempt before any answer could tell.
	mayHold := func(uid string) bool {
		if unanswered[uid] {
			return true
		}
		id := maybeID(sentID(ev, byUID[uid]))
		// Asked after ours, whose read served the answer asking.
		return unrecorded[id] || earlier.holds(id, time.Time{})
	}
	// storedBefore: an earlier delivery got it stored (one killed before
	// its ack, or that failed), or an earlier run of this one (held,
	// then sent again); a destination that stores it again without a
	// word (Orthanc) then had it already. Only counted: not asked on a
	// first run, and the record is read for it at once, not through a
	// leader election, and not again (storedRecord.heldBefore).
	storedBefore := func(uid string) bool {
		if a.Number == 1 && !a.again || stored[uid] {
			return false
		}
		id := sentID(ev, byUID[uid])
		return unrecorded[id] || earlier.heldBefore(id)
	}
	warned := map[string]dicomweb.Warning{}
	// Each request's confirmed instances go to a writer as it is answered
	// (sentwriter.go), which records them while the attempt goes on: a
	// process killed mid-study or before its ack loses none of them.
	sent := f.newSentWriter(ctx, ev, log)
	defer func() { rep.unrecorded = sent.close() }()
	// Only buffer mode reads the entries that say what to keep
	// (keptEarlier): without it, they would double the record.
	buffer := f.opts.CleanerFor != nil
	remember := func(out batchOutcome) {
		changed := map[string]bool{}
		confirmed := make(map[string]bool, len(out.confirmed))
		for _, uid := range out.confirmed {
			confirmed[uid] = true
		}
		for _, w := range out.warned {
			if changedByDestination(w) {
				changed[w.SOPInstanceUID] = true
			}
		}
		ids := make([]string, 0, 2*len(out.confirmed))
		for _, uid := range out.confirmed {
			id := sentID(ev, byUID[uid])
			if !changed[uid] {
				ids = append(ids, id)
			}
			if !buffer {
				// Marked kept all the same: a later delivery it stores
				// again without a word does not clear it from the
				// ledger's Kept (heldAsSent).
				if changed[uid] {
					ids = append(ids, keptID(id))
				}
				continue
			}
			// Kept in the source, now and by any later attempt: one
			// that fails on another instance records nothing in the
			// ledger. Not one kept by the ledger's word alone: the
			// attempt that kept it marked it already, and the ledger's
			// KeptAll (over 1,000 kept, the list dropped) names every
			// instance, which would then stay in the source for good.
			if changed[uid] || keptBefore[uid] != "" && keptBefore[uid] != keptLedger && !st.replacing[uid] {
				ids = append(ids, keptID(id))
			}
			ids = append(ids, uidID(uid))
		}
		for _, uid := range out.unanswered {
			if !confirmed[uid] {
				ids = append(ids, maybeID(sentID(ev, byUID[uid])))
			}
		}
		sent.add(ids)
	}
	// alone are instances the source failed to read, read again each in a
	// request of its own: failing again, they break off no other. Quick
	// rounds, run at once for the rest of requests such an instance broke
	// off, leave them for the next paused round, and are at most
	// maxQuickRounds: a source failing every file (its storage gone while
	// /system answers) broke each request at its first part, and reading
	// the growing alone list again each quick round made it thousands of
	// aborted requests, back to back.
	var upsert, alone []dicomweb.Part
	quick, quickRounds := false, 0
	// deleteErr: a DELETE of replace failed; the round after it stores
	// again what was deleted before it, then the attempt fails with it.
	var deleteErr error
	// creating: the instances the destination answers 45071 for
	// (settlePending).
	creating := &pendingCopies{cleared: map[string]bool{}}
	if a.trial != 0 {
		pending = freshFirst(pending, storedBefore)
	}
rounds:
	for transientRounds := 0; ; {
		var outs []batchOutcome
		var carried []dicomweb.Part
		sendAlone := alone
		if quick {
			carried, sendAlone = alone, nil
		}
		var upsertAlone []dicomweb.Part
		if f.opts.Conflicts.Method == ReplacePut {
			// A replacement answered "later" (Azure's 45071, a 272 in a
			// 202, a broken-off body) or unread goes again by PUT: a
			// POST never replaces, and its conflict was dead-lettered as
			// one still held after the replacement.
			pending, upsert = byPut(pending, upsert, st.replacing)
			sendAlone, upsertAlone = byPut(sendAlone, nil, st.replacing)
		}
		for _, send := range []struct {
			parts []dicomweb.Part
			put   bool
			size  int
		}{{pending, false, 0}, {upsert, true, 0}, {sendAlone, false, 1}, {upsertAlone, true, 1}} {
			if len(send.parts) == 0 {
				continue
			}
			o, err := func() ([]batchOutcome, error) {
				// Among the studies sending (requestsAtOnce) only from
				// its split to its last answer: a study listing, read
				// by the routing rules, pausing between rounds or
				// verifying takes no share of the limit.
				f.sending.Add(1)
				defer f.sending.Add(-1)
				size := send.size
				if size == 0 {
					size = f.requestSize(len(send.parts))
				}
				// STOW_MAX_BYTES bounds the request as the destination
				// (or its proxy) counts it: framing included.
				budget := f.opts.MaxBytes
				if budget > 0 {
					budget = max(budget-dicomweb.MaxFraming(size), 1)
				}
				own := ownership{oursAt: ours, storedBefore: storedBefore, unanswered: mayHold, unreadable: earlier.unreadable}
				return f.sendAll(ctx, a, plan, f.batches(send.parts, size, budget), &rep, send.put, own, remember)
			}()
			// What was confirmed counts, whether or not another request
			// of the round failed; and so do its warnings.
			for _, out := range o {
				for _, uid := range out.confirmed {
					stored[uid] = true
					delete(st.deleted, uid)
				}
				for _, uid := range out.unanswered {
					unanswered[uid] = true
				}
				for _, w := range out.warned {
					warned[w.SOPInstanceUID] = w
				}
			}
			if err != nil {
				return rep, f.carrying(err, st, rejected)
			}
			outs = append(outs, o...)
		}
		var retry, again []dicomweb.Part
		var conflicts, unsure []conflicted
		var skipped, unproven []string
		var unread, suspects []Instance
		notDone := map[string]bool{}
		full := 0 // instances of retry refused for the destination's resources
		reasons := map[string]int{}
		for _, out := range outs {
			full += out.outOfResources
			maps.Copy(reasons, out.reasons)
			retry = append(retry, out.retry...)
			unread = append(unread, out.unread...)
			again = append(again, out.again...)
			rejected = append(rejected, out.rejected...)
			conflicts = append(conflicts, out.conflicts...)
			skipped = append(skipped, out.skipped...)
			unproven = append(unproven, out.unproven...)
			suspects = append(suspects, out.nonPrimary...)
			for _, p := range out.retry {
				notDone[p.SOPInstanceUID] = true
			}
			for _, x := range out.rejected {
				notDone[x.SOPInstanceUID] = true
			}
			for _, c := range out.conflicts {
				notDone[c.part.SOPInstanceUID] = true
			}
			for _, p := range out.again {
				notDone[p.SOPInstanceUID] = true
			}
			unsure = append(unsure, out.unsure...)
		}
		if len(suspects) > 0 {
			// One stored before from another file (buffer mode's
			// record) is a correction sent again under its UIDs: a
			// search lists the earlier copy, in the primary image set,
			// whatever set the correction went to. It stays a
			// non-primary suspect, a conflict, unsearched: acked, buffer
			// mode would delete the correction from the source.
			var refiled []Instance
			suspects = slices.DeleteFunc(suspects, func(in Instance) bool {
				if keptBefore[in.SOPInstanceUID] == keptRefiled {
					refiled = append(refiled, in)
					return true
				}
				return false
			})
			np, err := f.confirmNonPrimary(ctx, ev, suspects, log)
			np = append(np, refiled...)
			if err != nil {
				return rep, f.carrying(err, st, rejected)
			}
			st.nonPrimary = append(st.nonPrimary, np...)
			f.m.nonPrimary.Add(float64(len(np)))
		}
		if len(unsure) > 0 {
			held, failed := f.settleUnsure(ctx, ev, unsure, log)
			for _, c := range held {
				if mayHold(c.part.SOPInstanceUID) {
					// Listed, after a request that got no answer: as
					// batchOutcome.unproven.
					unproven = append(unproven, c.part.SOPInstanceUID)
					rep.Instances++
					rep.AlreadyStored++
					f.m.instances.Inc()
					f.m.alreadyStored.Inc()
					continue
				}
				if f.actionName() != ConflictSkip && earlier.unreadable() {
					// As in sortAnswer: perhaps stowline's own copy.
					retry = append(retry, c.part)
					reasons[c.part.SOPInstanceUID] = c.reason
					notDone[c.part.SOPInstanceUID] = true
					continue
				}
				if f.actionName() != ConflictSkip {
					conflicts = append(conflicts, c)
					notDone[c.part.SOPInstanceUID] = true // not replaced, if it was a replacement
					continue
				}
				skipped = append(skipped, c.part.SOPInstanceUID)
				rep.Instances++
				f.m.instances.Inc()
				f.countSkipped(&rep)
			}
			for _, c := range failed {
				notDone[c.part.SOPInstanceUID] = true
				if classifyInstance(c.reason) == Reject {
					rejected = append(rejected, Instance{SOPInstanceUID: c.part.SOPInstanceUID, FailureReason: c.reason, Text: Describe(c.reason)})
					continue
				}
				retry = append(retry, c.part)
				reasons[c.part.SOPInstanceUID] = c.reason
				if outOfResources(c.reason) {
					full++
				}
			}
		}
		creating.observe(retry, reasons, time.Now())
		if f.opts.ExactLength && len(again) > 0 {
			var failed []Instance
			if again, failed, err = f.measure(ctx, again); err != nil {
				return rep, f.carrying(err, st, rejected)
			}
			rejected = append(rejected, failed...)
		}
		// A replacement sent this round and not refused again is stored.
		for _, p := range slices.Concat(pending, upsert, sendAlone, upsertAlone) {
			if st.replacing[p.SOPInstanceUID] && !notDone[p.SOPInstanceUID] && !st.replaced[p.SOPInstanceUID] {
				st.replaced[p.SOPInstanceUID] = true
				rep.Replaced++
				f.m.conflicts.WithLabelValues("replaced").Inc()
				// One line an instance is for debugging: a study re-sent
				// whole would log thousands. "study forwarded" counts them.
				log.Debug("replaced an instance the destination held with other content",
					"sop_instance_uid", p.SOPInstanceUID, "method", f.opts.Conflicts.Method)
			}
		}
		for _, uid := range skipped {
			st.skipped[uid] = true
		}
		for _, uid := range unproven {
			st.skipped[uid] = true // kept in the source, not a conflict
		}
		if len(unproven) > 0 {
			// Not a conflict, but not known to be stowline's copy
			// either: counted and named, so that a lost answer that hid
			// other content can be looked for.
			f.m.unproven.Add(float64(len(unproven)))
			log.Warn("destination already holds instances stowline cannot prove it stored (a request sent again or broken off, or no record of sending them): counted as stored, kept in the source",
				"instances", len(unproven), "first_sop_instance_uid", unproven[0])
		}
		if len(skipped) > 0 {
			log.Warn("destination already holds instances with other content: counted as stored, not replaced",
				"instances", len(skipped), "first_sop_instance_uid", skipped[0], "variable", f.opts.Conflicts.setting(), "value", ConflictSkip)
		}
		if deleteErr != nil {
			// What this round did not get stored of the instances
			// deleted is named (notStoredAgain). One that conflicts
			// again is held (keepConflict): the DELETE did not take.
			for _, c := range conflicts {
				f.keepConflict(st, c)
			}
			return rep, f.withConflicts(Classify(deleteErr), deleteErr, st, rejected)
		}
		resend, up, err := f.resolve(ctx, a, st, conflicts, byUID)
		if err != nil && len(resend)+len(up) == 0 {
			// Conflicts held again before the DELETE failed stay named.
			return rep, f.withConflicts(Classify(err), err, st, rejected)
		}
		if err != nil {
			// Only what was deleted is sent, at once: the round's other
			// answers are moot, the attempt fails.
			deleteErr, pending, upsert, alone, quick = err, resend, up, nil, false
			continue
		}
		others, unreadAgain := splitUnread(retry, unread)
		pending, upsert, alone = append(append(others, resend...), again...), up, append(carried, unreadAgain...)
		for _, p := range again {
			all[at[p.SOPInstanceUID]] = p
		}
		unlisted := false
		if len(pending)+len(upsert)+len(alone) == 0 && len(rejected)+len(st.dead)+len(st.nonPrimary) == 0 && f.opts.Verifier != nil {
			// Every instance confirmed: does the archive list them?
			if retry, err = f.verify(ctx, ev.StudyInstanceUID, all, &rep, log); err != nil {
				return rep, err
			}
			unlisted, pending = len(retry) > 0, retry
			// Not held after all: counted again once confirmed again.
			rep.Instances -= len(retry)
		}
		if len(pending)+len(upsert)+len(alone) == 0 {
			break
		}
		quick = len(again) > 0 && len(unread) > 0 && quickRounds < maxQuickRounds
		if quick {
			// The rest of requests an instance the source failed to read
			// broke off, sent now without it: no pause, no transient round.
			quickRounds++
			continue
		}
		if len(retry) == 0 {
			// Only replacements or conversions (or unreadable instances
			// left from quick rounds): no pause, no transient round.
			continue
		}
		if transientRounds >= f.opts.InstanceRetries {
			step, err := f.settlePending(ctx, a, creating, retry, byUID, log)
			if err != nil {
				return rep, f.withConflicts(Classify(err), err, st, rejected)
			}
			if step.waiting {
				log.Warn("destination answers 45071 (being created) for instances in every round: sending them once more after a pause, before taking them for pending copies left by a store that failed",
					"instances", len(creating.since), "pause", step.wait.Round(time.Millisecond).String())
				sleep(ctx, step.wait)
				if err := ctx.Err(); err != nil {
					return rep, f.carrying(err, st, rejected)
				}
				rep.Resent += len(retry)
				f.m.resent.Add(float64(len(retry)))
				continue
			}
			if len(step.dead) > 0 {
				// Refused until deleted: in the dead letter now, what to
				// do with them said, rather than after every delivery.
				rejected = append(rejected, step.dead...)
				retry, pending = withoutPending(retry, step.dead), withoutPending(pending, step.dead)
			}
			if step.deleted > 0 {
				// Stored again at once, as a replacement by delete.
				continue
			}
			if len(step.dead) > 0 && len(retry) == 0 {
				if len(pending)+len(upsert)+len(alone) == 0 {
					break rounds
				}
				continue
			}
			if unlisted {
				return rep, missingError(retry, len(all), transientRounds+1)
			}
			if len(unread) > 0 {
				// Named in the dead letter of the last delivery, with
				// the source's answer.
				return rep, f.withConflicts(Transient, fmt.Errorf("the source Orthanc failed to read %d instances in %d rounds (first: %s: %s)",
					len(unread), transientRounds+1, unread[0].SOPInstanceUID, unread[0].Text), st, rejected, unread...)
			}
			if full == len(retry) {
				// Every one refused for the destination's resources (its
				// storage full or failing): every study would be, so it
				// is the circuit breaker's to count (DestinationDown).
				return rep, f.withConflicts(Transient, fmt.Errorf("%d instances still not stored after %d rounds: %w (first: %s)",
					len(retry), transientRounds+1, errOutOfResources, retry[0].SOPInstanceUID), st, rejected)
			}
			// Transient, but the instances refused for good so far stay
			// named: the dead letter of the last delivery lists them.
			// The first one's answer, so the dead letter says which.
			first := "not listed in the destination's answer"
			if r, ok := reasons[retry[0].SOPInstanceUID]; ok {
				first = fmt.Sprintf("Failure Reason %d (0x%04X): %s", r, r, Describe(r))
			}
			return rep, f.withConflicts(Transient, fmt.Errorf("%d instances still not stored after %d rounds: refused transiently, or left out of the destination's answers (first: %s: %s)",
				len(retry), transientRounds+1, retry[0].SOPInstanceUID, first), st, rejected)
		}
		transientRounds++
		what := "re-sending instances the destination refused transiently"
		if len(unread) > 0 {
			what = "reading instances again that the source Orthanc failed to read"
		}
		if unlisted {
			what = "re-sending instances the destination confirmed but does not list (STOW_VERIFY=qido)"
		}
		log.Warn(what, "instances", len(retry), "round", transientRounds)
		sleep(ctx, f.opts.InstanceRetryDelay<<(transientRounds-1))
		if err := ctx.Err(); err != nil {
			return rep, f.carrying(err, st, rejected)
		}
		rep.Resent += len(retry)
		f.m.resent.Add(float64(len(retry)))
	}
	if len(st.dead)+len(st.nonPrimary) > 0 {
		return rep, f.conflictError(st, rejected)
	}
	if len(rejected) > 0 {
		return rep, &Error{
			Class: Partial,
			// Not always the destination's refusal: the source may not have
			// converted an instance, or the de-identifier kept it out; each
			// instance's text says which.
			Err:       fmt.Errorf("%d of %d instances cannot be stored (first: %s: %s)", len(rejected), rep.Selected, rejected[0].SOPInstanceUID, rejected[0].Text),
			Instances: rejected,
		}
	}
	// Buffer mode must not delete a correction the destination did not
	// take, nor an instance it says it changed: a skipped conflict, and
	// an instance stored with Coercion of Data Elements (B000) or
	// Elements Discarded (B006), stay in the source. Other warnings
	// (B007: does not match its SOP class; Azure's validation warnings)
	// come with the instance stored as sent.
	kept := maps.Clone(st.skipped)
	if len(warned) > 0 {
		changed := 0
		for uid, w := range warned {
			if changedByDestination(w) {
				kept[uid] = true
				changed++
			}
		}
		first := slices.Sorted(maps.Keys(warned))[0]
		log.Warn("the destination stored instances with a warning",
			"instances", len(warned), "changed_by_destination", changed,
			"first_sop_instance_uid", first, "warning_reason", fmt.Sprintf("0x%04X", warned[first].WarningReason))
	}
	if len(keptBefore) > 0 {
		// Confirmed by the destination, but perhaps not as this file
		// holds it.
		byWhy := map[string][]string{}
		for uid, why := range keptBefore {
			// One replaced now is held as sent.
			if !kept[uid] && !st.replaced[uid] {
				kept[uid] = true
				byWhy[why] = append(byWhy[why], uid)
			}
		}
		for _, why := range slices.Sorted(maps.Keys(byWhy)) {
			uids := byWhy[why]
			log.Warn("instances kept in the source: "+why, "instances", len(uids), "first_sop_instance_uid", slices.Min(uids))
		}
	}
	rep.kept = slices.Sorted(maps.Keys(kept))
	rep.replaced = slices.Sorted(maps.Keys(st.replaced))
	// listed stays whole: Release learns what this destination kept from
	// its ledger record, as it does for the others.
	rep.forwarded = withoutUIDs(instances, kept)
	return rep, nil
}

// Why an instance an earlier attempt told of is kept in the source.
const (
	keptChanged = "an earlier attempt got it stored changed by the destination (a warning B000 or B006), or kept it"
	keptRefiled = "sent before from another file: the destination may hold the earlier content"
	keptLedger  = "an earlier delivery of this state of the study kept it (the destination's ledger)"
)

// keptInLedger adds to kept the instances the destination's ledger
// records as kept for the event's state of the study (Options.KeptBefore),
// which outlives the stored-instances record (the events' retention): a
// backfill of the study finds them there. Not read, the attempt fails
// transiently, nothing sent.
func (f *Forwarder) keptInLedger(ctx context.Context, ev *events.StudyStable, instances []orthancapi.Instance, kept map[string]string) error {
	if f.opts.Select != nil || f.opts.KeptBefore == nil {
		return nil
	}
	var was func(string) bool
	err := f.whileUnanswered(ctx, func() (err error) {
		actx, cancel := context.WithTimeout(ctx, f.askTimeout)
		defer cancel()
		was, err = f.opts.KeptBefore(actx, ev)
		return err
	})
	if err != nil {
		return &Error{Class: Transient, Err: fmt.Errorf("buffer mode: the destination's ledger, which says which instances earlier deliveries of study %s kept in the source, could not be read: %w", ev.StudyInstanceUID, err)}
	}
	for _, in := range instances {
		if kept[in.SOPInstanceUID] == "" && was(in.SOPInstanceUID) {
			kept[in.SOPInstanceUID] = keptLedger
		}
	}
	return nil
}

// keptEarlier returns, by SOP Instance UID, the instances of a buffer-mode
// forward to keep in the source by what the stored-instances record (has,
// read before the attempt wrote to it) says of earlier attempts, and why:
// one marked kept (keptID), and one whose UID was stored from another
// file than the source holds now (uidID but not its sentID, nor in
// unrecorded, this delivery's earlier runs). The destination confirms a
// corrected copy sent under the UID of one it holds, and may keep the
// earlier content (an Orthanc with OverwriteInstances false): deleted,
// the correction would exist nowhere. A source that names no file
// (sentID by study version) cannot tell a corrected copy from one its
// study's growth gave a new version: those are not told apart, or every
// grown study would stay. Neither are UIDs recorded only by builds that
// did not write uidID.
func keptEarlier(ev *events.StudyStable, instances []orthancapi.Instance, has func(string) bool, unrecorded map[string]bool) map[string]string {
	was := func(id string) bool { return has(id) || unrecorded[id] }
	kept := map[string]string{}
	for _, in := range instances {
		id := sentID(ev, in)
		switch {
		case was(keptID(id)):
			kept[in.SOPInstanceUID] = keptChanged
		case in.FileUUID != "" && was(uidID(in.SOPInstanceUID)) && !was(id):
			kept[in.SOPInstanceUID] = keptRefiled
		}
	}
	return kept
}

// firstOfEachUID keeps the first instance of each SOP Instance UID and
// refuses the others. Orthanc tells instances apart by patient, study,
// series and SOP UID, so a study can hold two files with one SOP UID in
// two series (a faulty modality, a series modified with its UIDs kept).
// A destination keeps one instance a UID: its "already exists" for the
// second would confirm both, every answer being matched by UID, and
// buffer mode would delete a file the destination never took. The
// refused copies leave the study partial, dead-lettered for a human to
// decide, with the first copy stored.
func firstOfEachUID(instances []orthancapi.Instance) (first []orthancapi.Instance, repeated []Instance) {
	seen := make(map[string]orthancapi.Instance, len(instances))
	for _, inst := range instances {
		if was, ok := seen[inst.SOPInstanceUID]; ok {
			repeated = append(repeated, Instance{SOPInstanceUID: inst.SOPInstanceUID, Text: fmt.Sprintf(
				"Orthanc instance %s (series %s) repeats the SOP Instance UID of instance %s (series %s), sent in its place; a destination keeps one instance a UID",
				inst.ID, inst.SeriesInstanceUID, was.ID, was.SeriesInstanceUID)})
			continue
		}
		seen[inst.SOPInstanceUID] = inst
		first = append(first, inst)
	}
	if repeated == nil {
		return instances, nil
	}
	return first, repeated
}

// growingDestination is a destination that sends more bytes than it is
// given (the de-identifying rewrite): grown bounds what a part of size
// bytes becomes.
type growingDestination interface {
	grown(size int64) int64
}

// batches splits parts into requests of at most size instances and
// budget bytes as the destination sends them: a de-identifying
// destination's copies are larger than the files read, and a request
// counted by the originals could pass a limit set at the destination's
// (413, dead-lettered at once).
func (f *Forwarder) batches(parts []dicomweb.Part, size int, budget int64) [][]dicomweb.Part {
	g, ok := f.opts.Destination.(growingDestination)
	if !ok || budget <= 0 {
		return dicomweb.Batches(parts, size, budget)
	}
	sized := slices.Clone(parts)
	for i, p := range sized {
		switch {
		case p.Size > 0:
			sized[i].Size = g.grown(p.Size)
		case p.Estimate > 0:
			sized[i].Estimate = g.grown(p.Estimate)
		}
	}
	// Batches keeps the parts' order and cuts them into consecutive
	// runs: the originals are cut where their grown sizes were.
	var out [][]dicomweb.Part
	at := 0
	for _, b := range dicomweb.Batches(sized, size, budget) {
		out = append(out, parts[at:at+len(b):at+len(b)])
		at += len(b)
	}
	return out
}

// requestSize spreads n instances over a multiple of requestsAtOnce
// requests of at most MaxInstances, so parallel requests finish together
// (300 instances, 100 a request, 2 at once: 4 requests of 75, not 3 of 100).
func (f *Forwarder) requestSize(n int) int {
	p := f.requestsAtOnce()
	reqs := (n + f.opts.MaxInstances - 1) / f.opts.MaxInstances
	reqs = (reqs + p - 1) / p * p
	return max((n+reqs-1)/max(reqs, 1), 1)
}

// sendAll sends the batches, each when the destination's limiter (shared
// by all studies) has room, and returns their outcomes in batch order. A
// request refused with 429, or with 503 while the destination answers
// others (busyWithin), is sent again, up to overloadResends times.
// The first error stops the batches not started yet and is returned, with
// the outcomes of the requests answered (the others' are zero). Requests
// already sent run to their answer: cut off, the instances the
// destination stored of them would be unknown to stowline, and their
// "already exists" a conflict on the next delivery. Each answered request
// is reported to the observer. own tells which of the destination's copies
// may be stowline's (sortAnswer); confirmed is told each request's
// outcome once answered with instances stored. The first such answer
// ends the breaker's trial that a is (trialStored).
func (f *Forwarder) sendAll(ctx context.Context, a *Attempt, plan *syntaxPlan, batches [][]dicomweb.Part, rep *Report, put bool, own ownership, confirmed func(batchOutcome)) ([]batchOutcome, error) {
	outs := make([]batchOutcome, len(batches))
	prio := requestPriority(a.lane)
	var mu sync.Mutex // guards rep
	// stopped ends when a batch failed (or ctx ended): no batch starts,
	// and no 429 is sent again, after that.
	stopped, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	sendOne := func(permit *flow.Permit, batch []dicomweb.Part) (out batchOutcome, err error) {
		defer func() {
			// A panic in a request goroutine would end the process; as a
			// crash failure it dead-letters the study instead.
			if v := recover(); v != nil {
				err = &Error{Class: Crash, Err: newCrashError(v)}
			}
			// A place not given back with a signal (answered, Overloaded)
			// is given back as the goroutine ends, so the goroutines of
			// a study stay within the limit while they use the
			// destination. A request that broke off on the source got no
			// answer: it neither measures the destination nor says that
			// it serves (AnsweredWithin).
			permit.Release()
		}()
		// answered gives the place back as an answer to sort comes,
		// before it is sorted: sorting may wait for the record of stored
		// instances (through a leader election, up to rememberTimeout),
		// which is neither the destination's time nor its load, and
		// other studies (a stat one too) waited for the place meanwhile,
		// the limiter taking the wait for latency.
		answered := func(status *dicomweb.HTTPError, bytes int64) {
			if status != nil {
				if reason, retryAfter, overloaded := overload(ctx, status); overloaded {
					permit.Overloaded(reason, retryAfter)
				}
			}
			permit.Done(bytes)
		}
		for resends := 0; ; resends++ {
			var local Report
			// A wait of the de-identifier for memory is not the
			// destination's time: the permit leaves it out.
			out, err = f.send(flow.WithWaitReport(ctx, permit.Waited), plan, batch, &local, put, own, answered)
			if len(out.confirmed) > 0 || len(out.unanswered) > 0 {
				// Now, not as the attempt ends: a killed process runs no
				// deferred write. The writer does not hold the place.
				confirmed(out)
			}
			// A request stored whole, some of it anew, ends the trial:
			// not one answered "already exists" alone (a held study is
			// sent again from its start, and a destination whose storage
			// refuses writes may still answer duplicates), nor one
			// partly refused.
			if out.fresh > 0 && err == nil && len(out.retry) == 0 && f.breaker.trialStored(a.trial) {
				f.attemptLog(a).Info("circuit breaker trial: the destination stored a request of the study; the breaker closes and the study goes on as an ordinary one")
			}
			reason, retryAfter, overloaded := overload(ctx, err)
			if overloaded {
				permit.Overloaded(reason, retryAfter)
			}
			mu.Lock()
			rep.add(local)
			progress := *rep
			mu.Unlock()
			f.obs.Progress(a, progress)
			resend := reason == flow.Overload429 || reason == flow.Overload503 && f.limit.AnsweredWithin(busyWithin)
			if err == nil || !resend || resends >= overloadResends || retryAfter > resendPause {
				return out, err
			}
			status := resend429
			if reason == flow.Overload503 {
				status = resend503
			}
			f.m.resends.WithLabelValues(status).Inc()
			f.attemptLog(a).Debug("sending a STOW-RS request again that the destination refused for load",
				"reason", string(reason), "retry_after", retryAfter.String(), "resend", resends+1)
			sleep(stopped, resendDelay<<resends)
			if stopped.Err() != nil {
				return out, err
			}
			if permit, err = f.limit.Acquire(stopped, prio); err != nil {
				return out, err
			}
		}
	}
	var wg sync.WaitGroup
	for i, batch := range batches {
		permit, err := f.limit.Acquire(stopped, prio)
		if err != nil {
			break // stopped: the cause is returned below
		}
		wg.Go(func() {
			out, err := sendOne(permit, batch)
			if err != nil {
				stop(fmt.Errorf("STOW-RS request for batch %d of %d: %w", i+1, len(batches), err))
				return
			}
			outs[i] = out // each goroutine its own element; read after wg.Wait
		})
	}
	wg.Wait()
	if err := context.Cause(stopped); err != nil {
		return outs, err
	}
	return outs, nil
}

// batchOutcome sorts a request's instances by what to do next.
type batchOutcome struct {
	retry    []dicomweb.Part
	rejected []Instance
	// again are to send again at once, without a retry round: instances
	// refused for their transfer syntax (now converted), and the rest of
	// a request that a failed conversion broke off.
	again []dicomweb.Part
	// conflicts are for STOW_ON_CONFLICT to settle; skipped were counted
	// as stored; nonPrimary were stored with an imageSetId in their
	// RetrieveURL: apart (AWS HealthImaging) unless the destination lists
	// them (confirmNonPrimary).
	conflicts  []conflicted
	skipped    []string
	nonPrimary []Instance
	// unproven were answered "already exists" with a code outside
	// STOW_CONFLICT_REASONS, and stowline has no record of sending them:
	// stored as the destination says, but its copy may hold other
	// content, so buffer mode keeps them in the source.
	unproven []string
	// unsure are conflicts that only the 409 made conflicts
	// (ConflictPolicy.onlyIn409): conflicts once the destination lists
	// them, else failures of their code.
	unsure []conflicted
	// warned were stored with a warning.
	warned []dicomweb.Warning
	// unread are the instances of retry the source failed to read, with
	// its error.
	unread []Instance
	// confirmed are the SOP Instance UIDs the destination holds as sent:
	// stored, or already stored by stowline before.
	confirmed []string
	// fresh counts those the answer listed as stored, not stored before
	// (answered "already exists", or as stored again, as Orthanc does):
	// a destination whose storage refuses writes may still answer
	// duplicates from its index.
	fresh int
	// outOfResources counts the instances of retry refused with 0xA7xx
	// (out of resources).
	outOfResources int
	// reasons are the Failure Reasons of the instances of retry the
	// answer listed as failed (by SOP Instance UID), for the error of
	// the attempt's last round.
	reasons map[string]int
	// unanswered are the SOP Instance UIDs the destination may have
	// stored without saying so: those before the break of a body that
	// broke off, every one of a request sent again (Result.Resent), or
	// whose answer could not be read (dicomweb.MaybeStored; send returns
	// them with its error). The record marks them (maybeID) for later
	// deliveries.
	unanswered []string
}

// ownership tells, by SOP Instance UID, what of the destination's copies
// may be stowline's: ours, confirmed to this attempt or an earlier one
// (oursAt: as known when an answer received at that time asks, the
// record read again for it; send sets ours from it for its answer);
// storedBefore, by an earlier delivery or run (counted as already
// stored); unanswered, sent in a request that got no readable answer or
// broke off after it, by this attempt or, as marked, an earlier one
// (transfer); unreadable, the record of
// earlier copies could not be read (nil: it could).
type ownership struct {
	oursAt                         func(uid string, answered time.Time) bool
	ours, storedBefore, unanswered func(string) bool
	unreadable                     func() bool
}

// send stores one batch and sorts its instances by the response. This is
// where a STOW-RS 401 is handled (the dicomweb client asks body-less
// requests again itself): the auth transport has dropped the refused
// token, so one retry carries a fresh one; a second 401, like a 403, is
// the destination refusing us (markRefusal): transient, the breaker
// holds the queue. giveBack is told of an answer to sort (its error
// status, if any, and the bytes sent) before it is sorted.
func (f *Forwarder) send(ctx context.Context, plan *syntaxPlan, batch []dicomweb.Part, rep *Report, put bool, own ownership, giveBack func(status *dicomweb.HTTPError, bytes int64)) (batchOutcome, error) {
	rep.Requests++
	res, err := f.store(ctx, batch, put)
	var he *dicomweb.HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusUnauthorized {
		rep.Requests++
		f.m.authRetries.Inc()
		res, err = f.store(ctx, batch, put)
	}
	answered := time.Now()
	if errors.As(err, &he) && tooLargeAnswer(he) {
		err = f.tooLarge(batch, err)
	}
	if !put {
		// A PUT (STOW_REPLACE_METHOD=put) that a server refuses, 405
		// as some do, refuses the replacing only: permanent, as before
		// (docs/destinations.md).
		err = markRefusal(err)
	}
	var ce *conversionError
	if errors.As(err, &ce) {
		// The request's body broke off, unanswered: the instance Orthanc
		// could not convert is refused, the others are sent again (those
		// before it may be stored already: batchOutcome.unanswered).
		return conversionOutcome(batch, ce), nil
	}
	var ue *unreadError
	if errors.As(err, &ue) && slices.ContainsFunc(batch, func(p dicomweb.Part) bool { return p.SOPInstanceUID == ue.SOPInstanceUID }) {
		// Likewise for an instance the source failed to read: it is
		// read again in the next round, the others are sent again now.
		return unreadOutcome(batch, ue), nil
	}
	if err != nil {
		// A STOW response on an error status still says per instance
		// what happened (Orthanc answers 400 when one part is broken and
		// stores the rest; 409 lists conflicts).
		// Failures without a SOP Instance UID alone name no instance:
		// on a status that says the destination is down they are the
		// outage's, and the whole error goes to the circuit breaker.
		if !errors.As(err, &he) || he.Result == nil || len(he.Result.Stored)+len(he.Result.Failed)+len(he.Result.OtherFailures) == 0 ||
			len(he.Result.Stored)+len(he.Result.Failed) == 0 && DestinationDown(err) {
			// Marked, the instances the destination may hold read as
			// perhaps stowline's own copies (unproven) at a later
			// delivery's "already exists", not as conflicts.
			var out batchOutcome
			uid, broken := dicomweb.BrokenAt(err)
			switch {
			case dicomweb.MaybeStored(err):
				// The body went and no answer says what became of it
				// (a proxy's 504 while the destination went on storing).
				for _, p := range batch {
					out.unanswered = append(out.unanswered, p.SOPInstanceUID)
				}
			case broken:
				// The body broke off on uid, whatever broke it (Orthanc
				// restarting, its 404 or 503, a stall, a file of another
				// size): those before it went whole. The attempt fails.
				out.unanswered = sentBefore(batch, uid)
			}
			return out, err
		}
		res = he.Result
		res.StatusCode = he.StatusCode
	}
	if at := own.oursAt; at != nil {
		own.ours = func(uid string) bool { return at(uid, answered) }
	}
	var status *dicomweb.HTTPError
	if err != nil {
		status = he
	}
	giveBack(status, res.BytesSent)
	out := f.sortAnswer(plan, batch, res, rep, own)
	rep.Bytes += res.BytesSent
	f.m.bytes.Add(float64(res.BytesSent))
	return out, nil
}

// tooLarge says what to change when the destination refused a request
// as too large (tooLargeAnswer: permanent): its size, and the variable that bounds
// it, or, for one instance, that only the destination's limit (or its
// proxy's: nginx takes 1 MB by default) can.
func (f *Forwarder) tooLarge(batch []dicomweb.Part, err error) error {
	var size int64
	unknown := false
	for _, p := range batch {
		if p.Size < 0 && p.Estimate <= 0 {
			unknown = true // converted by Orthanc: its size is known only once sent
		}
		size += max(p.Size, p.Estimate, 0)
	}
	v := f.opts.MaxBytesVar
	if v == "" {
		v = "STOW_MAX_BYTES"
	}
	about := fmt.Sprintf("about %d bytes", size)
	if unknown {
		about = "size unknown (converted by Orthanc)"
	}
	if len(batch) == 1 {
		return fmt.Errorf("%w (one instance, %s, %s: the destination, or a proxy in front of it, takes less in a request; raise that limit)",
			err, batch[0].SOPInstanceUID, about)
	}
	return fmt.Errorf("%w (a request of %d instances, %s: the destination, or a proxy in front of it, takes less; lower %s (at least 1 MiB), now %d bytes, or raise that limit)",
		err, len(batch), about, v, f.opts.MaxBytes)
}

// dicomTag is a DICOM tag as error comments write it, (0010,0030).
var dicomTag = regexp.MustCompile(`\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)`)

// attributesNamed lists the tags a refusal's error comments name (Azure
// names the attributes that failed validation), at most 5: only the tags,
// never the comments' text, which may quote a value.
func attributesNamed(comments []string) string {
	var tags []string
	for _, c := range comments {
		for _, m := range dicomTag.FindAllStringSubmatch(c, -1) {
			tag := "(" + strings.ToUpper(m[1]) + "," + strings.ToUpper(m[2]) + ")"
			if !slices.Contains(tags, tag) && len(tags) < 5 {
				tags = append(tags, tag)
			}
		}
	}
	return strings.Join(tags, ", ")
}

// sortAnswer sorts a batch's instances by the destination's answer:
// confirmed (counted in rep), to send again, or refused for good. A
// conflict answer for an instance ours says the destination confirmed to
// stowline before is its own copy: already stored; for one it may have
// stored from a sending that got no answer (Result.Resent, or
// own.unanswered), perhaps its own copy: already stored, unproven.
func (f *Forwarder) sortAnswer(plan *syntaxPlan, batch []dicomweb.Part, res *dicomweb.Result, rep *Report, own ownership) batchOutcome {
	stored := make(map[string]bool, len(res.Stored))
	sent := make(map[string]bool, len(batch))
	for _, p := range batch {
		sent[p.SOPInstanceUID] = true
	}
	var out batchOutcome
	if res.Resent {
		for _, p := range batch {
			out.unanswered = append(out.unanswered, p.SOPInstanceUID)
		}
	}
	for _, in := range res.Stored {
		stored[in.SOPInstanceUID] = true
		// An instance of another request (a server answering for more
		// than it was sent) is not this batch's to dead-letter.
		// Only suspected: transfer asks the destination (confirmNonPrimary).
		if dicomweb.NonPrimary(in) && sent[in.SOPInstanceUID] {
			out.nonPrimary = append(out.nonPrimary, Instance{SOPInstanceUID: in.SOPInstanceUID,
				Text: "stored in a non-primary image set (AWS HealthImaging; not listed by a search without imageSetId): reconcile it with the primary one"})
		}
	}
	for _, w := range res.Warnings {
		if stored[w.SOPInstanceUID] {
			out.warned = append(out.warned, w)
		}
	}
	failed := make(map[string]int, len(res.Failed))
	attrs := map[string]string{}
	// unnamed are failures the answer gives without a SOP Instance UID
	// (Azure's, for a file it could not read): they say why the
	// instances it does not list failed.
	var unnamed []dicomweb.FailedInstance
	for _, fi := range append(res.Failed, res.OtherFailures...) {
		if fi.SOPInstanceUID == "" {
			unnamed = append(unnamed, fi)
			continue
		}
		failed[fi.SOPInstanceUID] = fi.FailureReason
		if a := attributesNamed(fi.Comments); a != "" {
			attrs[fi.SOPInstanceUID] = a
		}
	}
	// After a success status an instance the answer does not list is sent
	// again, unless its unnamed failures account for every one it leaves
	// out and all refuse for good (Azure's 202 with a file it could not
	// read): the same answer would come at every delivery, for hours. Not
	// after a status that says "later" (408, 429, 5xx), nor for an
	// unnamed 0xC122, which a conversion may answer when it is named.
	unlistedRefused := len(unnamed) > 0 && res.StatusCode >= 200 && res.StatusCode < 300
	for _, fi := range unnamed {
		if classifyInstance(fi.FailureReason) != Reject || fi.FailureReason == dicomweb.FailureTransferSyntaxNotSupported {
			unlistedRefused = false
		}
	}
	if unlistedRefused {
		unlisted := 0
		for _, p := range batch {
			if _, listed := failed[p.SOPInstanceUID]; !listed && !stored[p.SOPInstanceUID] {
				unlisted++
			}
		}
		unlistedRefused = unlisted <= len(unnamed)
	}
	// After a 409 (none stored) whose unnamed failures all say "later"
	// (out of resources, Azure's 45071), the unlisted failed for that:
	// sent again, not refused for good by the status.
	unlistedLater := len(unnamed) > 0 && res.StatusCode == http.StatusConflict
	for _, fi := range unnamed {
		if fi.FailureReason == 0 || classifyInstance(fi.FailureReason) != Retry {
			unlistedLater = false
		}
	}
	confirmed := 0
	for _, p := range batch {
		if stored[p.SOPInstanceUID] {
			confirmed++
			out.confirmed = append(out.confirmed, p.SOPInstanceUID)
			if own.storedBefore(p.SOPInstanceUID) {
				// Stored again without a word (Orthanc): not anew.
				rep.AlreadyStored++
				f.m.alreadyStored.Inc()
			} else {
				out.fresh++
			}
			continue
		}
		reason, listed := failed[p.SOPInstanceUID]
		if !listed {
			// Neither stored nor failed: after a success status, send it
			// again; after an error status, the status decides.
			if (classifyStatus(res.StatusCode) == Transient || unlistedLater) && !unlistedRefused {
				out.retry = append(out.retry, p)
			} else {
				out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID,
					Text: fmt.Sprintf("not listed in the destination's HTTP %d response", res.StatusCode) + unnamedText(unnamed)})
			}
			continue
		}
		if f.opts.Conflicts.isConflict(reason, res.StatusCode) {
			if own.ours(p.SOPInstanceUID) {
				confirmed++
				rep.AlreadyStored++
				f.m.alreadyStored.Inc()
				out.confirmed = append(out.confirmed, p.SOPInstanceUID)
				continue
			}
			if f.opts.Conflicts.onlyIn409(reason, res.StatusCode) {
				// A conflict only if the destination lists it
				// (transfer): the code may be a failure.
				out.unsure = append(out.unsure, conflicted{part: p, reason: reason})
				continue
			}
			if res.Resent || own.unanswered(p.SOPInstanceUID) {
				// Perhaps stored from a sending that got no answer.
				confirmed++
				rep.AlreadyStored++
				f.m.alreadyStored.Inc()
				out.unproven = append(out.unproven, p.SOPInstanceUID)
				continue
			}
			if f.actionName() == ConflictSkip {
				confirmed++
				f.countSkipped(rep)
				out.skipped = append(out.skipped, p.SOPInstanceUID)
				continue
			}
			if own.unreadable != nil && own.unreadable() {
				// Perhaps stowline's own copy, the record that would say
				// so unread (NATS out): dead-lettered or replaced, it
				// could not be undone; retried, as a transient failure,
				// it is told apart once the record answers.
				out.retry = append(out.retry, p)
				if out.reasons == nil {
					out.reasons = map[string]int{}
				}
				out.reasons[p.SOPInstanceUID] = reason
				continue
			}
			out.conflicts = append(out.conflicts, conflicted{part: p, reason: reason})
			continue
		}
		if reason == dicomweb.FailureTransferSyntaxNotSupported {
			if part, why := f.refusedSyntax(plan, p.SOPInstanceUID); part != nil {
				out.again = append(out.again, *part)
			} else {
				out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID, FailureReason: reason, Text: why})
			}
			continue
		}
		switch classifyInstance(reason) {
		case Stored:
			confirmed++
			rep.AlreadyStored++
			f.m.alreadyStored.Inc()
			if !own.ours(p.SOPInstanceUID) {
				out.unproven = append(out.unproven, p.SOPInstanceUID)
				continue
			}
			out.confirmed = append(out.confirmed, p.SOPInstanceUID)
		case Retry:
			out.retry = append(out.retry, p)
			if out.reasons == nil {
				out.reasons = map[string]int{}
			}
			out.reasons[p.SOPInstanceUID] = reason
			if outOfResources(reason) {
				out.outOfResources++
			}
		default:
			text := Describe(reason)
			if a := attrs[p.SOPInstanceUID]; a != "" {
				text += " (attributes " + a + ")"
			}
			out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID, FailureReason: reason, Text: text})
		}
	}
	rep.Instances += confirmed
	f.m.instances.Add(float64(confirmed))
	return out
}

// unnamedText describes the failures an answer gives without a SOP
// Instance UID, for the instances it does not list: their Failure
// Reasons and the attributes their comments name, never the comments'
// text (it may quote a value).
func unnamedText(unnamed []dicomweb.FailedInstance) string {
	if len(unnamed) == 0 {
		return ""
	}
	first := unnamed[0]
	text := fmt.Sprintf("; it gives %d failures without a SOP Instance UID (first: %s, Failure Reason %d, 0x%04X", len(unnamed), Describe(first.FailureReason), first.FailureReason, first.FailureReason)
	if a := attributesNamed(first.Comments); a != "" {
		text += ", attributes " + a
	}
	return text + ")"
}

// conversionOutcome: the instance Orthanc could not convert is refused
// for good, the rest of its request is sent again at once.
func conversionOutcome(batch []dicomweb.Part, ce *conversionError) batchOutcome {
	out := batchOutcome{unanswered: sentBefore(batch, ce.SOPInstanceUID)}
	for _, p := range batch {
		if p.SOPInstanceUID == ce.SOPInstanceUID {
			out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID, Text: ce.Error()})
		} else {
			out.again = append(out.again, p)
		}
	}
	return out
}

// sentBefore lists the instances of a request's body before the one it
// broke off on: sent whole, and stored already by a destination that
// stores parts as it reads them. A name not in the batch marks nothing:
// better to miss a mark than to mark parts that never went.
func sentBefore(batch []dicomweb.Part, broken string) []string {
	i := slices.IndexFunc(batch, func(p dicomweb.Part) bool { return p.SOPInstanceUID == broken })
	if i < 0 {
		return nil
	}
	var uids []string
	for _, p := range batch[:i] {
		uids = append(uids, p.SOPInstanceUID)
	}
	return uids
}

// maxQuickRounds bounds the rounds of one attempt run at once, without
// a pause, for the rest of requests an unreadable instance broke off.
const maxQuickRounds = 10

// splitUnread splits retry into the instances the source failed to read
// (unread) and the others.
func splitUnread(retry []dicomweb.Part, unread []Instance) (others, failed []dicomweb.Part) {
	if len(unread) == 0 {
		return retry, nil
	}
	for _, p := range retry {
		if slices.ContainsFunc(unread, func(u Instance) bool { return u.SOPInstanceUID == p.SOPInstanceUID }) {
			failed = append(failed, p)
		} else {
			others = append(others, p)
		}
	}
	return others, failed
}

// unreadOutcome: the instance the source failed to read is tried again
// after a pause, the rest of its request is sent again at once.
func unreadOutcome(batch []dicomweb.Part, ue *unreadError) batchOutcome {
	out := batchOutcome{unanswered: sentBefore(batch, ue.SOPInstanceUID)}
	for _, p := range batch {
		if p.SOPInstanceUID == ue.SOPInstanceUID {
			out.retry = append(out.retry, p)
			out.unread = append(out.unread, Instance{SOPInstanceUID: p.SOPInstanceUID, Text: ue.Error()})
		} else {
			out.again = append(out.again, p)
		}
	}
	return out
}

// errOutOfResources is an attempt whose instances the destination kept
// refusing with Failure Reason 0xA7xx, Refused: Out of Resources (PS3.4
// B.2.3; dcm4chee gives 0xA700 when its storage fails or is full).
var errOutOfResources = errors.New("the destination refused them for lack of resources (Failure Reason 0xA7xx: its storage full or failing)")

// outOfResources reports a Failure Reason of the 0xA7xx class.
func outOfResources(reason int) bool { return reason&0xFF00 == 0xA700 }

// changedByDestination reports a warning that the destination stored the
// instance changed: Coercion of Data Elements (B000), Elements Discarded
// (B006).
func changedByDestination(w dicomweb.Warning) bool {
	return w.WarningReason == dicomweb.WarningCoercion || w.WarningReason == dicomweb.WarningElementsDiscarded
}

// byPut moves the parts of send being replaced (replacing) to put, in
// new slices.
func byPut(send, put []dicomweb.Part, replacing map[string]bool) (post, puts []dicomweb.Part) {
	puts = slices.Clone(put)
	for _, p := range send {
		if replacing[p.SOPInstanceUID] {
			puts = append(puts, p)
			continue
		}
		post = append(post, p)
	}
	return post, puts
}

// freshFirst puts first the parts no earlier run got stored, in their
// order, then the others. A breaker's trial ends at its first request
// stored anew (trialStored), and until it does every other study of the
// destination, a stat one too, is held: a study the outage caught near
// its end, sent again from its start, made its trial re-send what the
// destination held already, at the limit the outage had halved, for
// minutes on a large study.
func freshFirst(parts []dicomweb.Part, storedBefore func(uid string) bool) []dicomweb.Part {
	out := make([]dicomweb.Part, 0, len(parts))
	var later []dicomweb.Part
	for _, p := range parts {
		if storedBefore(p.SOPInstanceUID) {
			later = append(later, p)
			continue
		}
		out = append(out, p)
	}
	return append(out, later...)
}
