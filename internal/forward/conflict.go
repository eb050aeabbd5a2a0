package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// The ConflictPolicy actions (STOW_ON_CONFLICT).
const (
	ConflictSkip       = "skip"
	ConflictReplace    = "replace"
	ConflictDeadLetter = "deadletter"
)

// The ConflictPolicy replace methods (STOW_REPLACE_METHOD).
const (
	ReplacePut    = "put"
	ReplaceDelete = "delete"
)

// ConflictPolicy is what a destination's "already holds this SOP
// Instance with other content" answer is, and what to do about it. A
// conflict is never transient: resending the same bytes gets the same
// answer.
type ConflictPolicy struct {
	// Action is skip (count as stored; the zero value), replace or
	// deadletter.
	Action string
	// Rules are the Failure Reasons that mean a conflict.
	Rules []dicomweb.ConflictRule
	// Method is how replace replaces: put (the Destination must be an
	// Upserter) or delete (an InstanceDeleter), then store again.
	Method string
	// Setting names the variable that chose Action, for dead letters.
	Setting string
}

// Upserter stores with replace semantics (Azure's STOW-RS PUT).
type Upserter interface {
	Upsert(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error)
}

// InstanceDeleter deletes one instance at the destination (DICOMweb
// DELETE).
type InstanceDeleter interface {
	DeleteInstance(ctx context.Context, study, series, sop string) error
}

func (c ConflictPolicy) check(d Destination) error {
	switch c.Action {
	case "", ConflictSkip, ConflictDeadLetter:
		return nil
	case ConflictReplace:
	default:
		return fmt.Errorf("conflict action %q: want skip, replace or deadletter", c.Action)
	}
	switch c.Method {
	case ReplacePut:
		if _, ok := d.(Upserter); !ok {
			return errors.New("conflict replace method put: the destination cannot upsert")
		}
	case ReplaceDelete:
		if _, ok := d.(InstanceDeleter); !ok {
			return errors.New("conflict replace method delete: the destination cannot delete instances")
		}
	default:
		return fmt.Errorf("conflict replace method %q: want put or delete", c.Method)
	}
	return nil
}

// isConflict reports whether a Failure Reason in an answer of HTTP status
// status means the destination holds the instance with other content.
func (c ConflictPolicy) isConflict(reason, status int) bool {
	for _, r := range c.Rules {
		if r.Matches(reason, status) {
			return true
		}
	}
	return false
}

// onlyIn409 reports a conflict that only the answer's 409 makes one: a
// rule with @409 matched it, no other did. Its code (0x0110 processing
// failure, 0xA7xx out of resources) is Google's answer for an instance
// it holds with other content, but a 409 is also any server's answer
// for a request none of whose instances it stored, "for a mixture of
// reasons" (PS3.18 10.5.3): dcm4chee gives 0xA700 when its storage
// fails and 0x0110 when its database does.
func (c ConflictPolicy) onlyIn409(reason, status int) bool {
	for _, r := range c.Rules {
		if !r.Only409 && r.Matches(reason, status) {
			return false
		}
	}
	return true
}

func (c ConflictPolicy) setting() string {
	if c.Setting == "" {
		return "STOW_ON_CONFLICT"
	}
	return c.Setting
}

// conflicted is an instance the destination answered with a conflict.
type conflicted struct {
	part   dicomweb.Part
	reason int
}

// conflictState is one attempt's conflicts across rounds.
type conflictState struct {
	// replacing: instances replaced once; a second conflict is final.
	replacing map[string]bool
	// dead: instances to dead-letter (class conflict); nonPrimary: stored
	// by AWS HealthImaging apart from the primary image set.
	dead, nonPrimary []Instance
	// replaced: instances counted replaced, once each (STOW_VERIFY=qido
	// may send one again in a later round).
	replaced map[string]bool
	// deleted: instances this delivery deleted at the destination
	// (replace by delete) that it has not yet got stored again; a
	// delivery that fails with any names them (notStoredAgain).
	deleted map[string]bool
	// skipped: conflicts counted as stored (skip), and "already exists"
	// answers stowline cannot tell its own (batchOutcome.unproven), kept
	// in the source by buffer mode.
	skipped map[string]bool
}

// withoutUIDs returns instances without those in drop.
func withoutUIDs(instances []orthancapi.Instance, drop map[string]bool) []orthancapi.Instance {
	if len(drop) == 0 {
		return instances
	}
	out := make([]orthancapi.Instance, 0, len(instances))
	for _, in := range instances {
		if !drop[in.SOPInstanceUID] {
			out = append(out, in)
		}
	}
	return out
}

// resolve acts on one round's conflicts: it returns the parts to store
// again with POST (after a DELETE) or with PUT (upsert). Deleting needs
// the instance's series, from byUID. A DELETE that fails stops the
// round's replacing, and its error comes with the parts deleted before
// it: the caller stores those again before it fails, or the archive
// lost them.
func (f *Forwarder) resolve(ctx context.Context, a *Attempt, st *conflictState, conflicts []conflicted, byUID map[string]orthancapi.Instance) (resend, upsert []dicomweb.Part, err error) {
	c := f.opts.Conflicts
	for i, cf := range conflicts {
		uid := cf.part.SOPInstanceUID
		if c.Action != ConflictReplace || st.replacing[uid] {
			f.keepConflict(st, cf)
			continue
		}
		st.replacing[uid] = true
		if c.Method == ReplacePut {
			upsert = append(upsert, cf.part)
			continue
		}
		inst := byUID[uid]
		if err := f.opts.Destination.(InstanceDeleter).DeleteInstance(ctx, a.Event.StudyInstanceUID, inst.SeriesInstanceUID, uid); err != nil {
			// The round's later conflicts for instances replaced already
			// are held all the same, not missing.
			notReplaced := 1
			for _, rest := range conflicts[i+1:] {
				if st.replacing[rest.part.SOPInstanceUID] {
					f.keepConflict(st, rest)
					continue
				}
				notReplaced++
			}
			return resend, upsert, fmt.Errorf("replace instance %s: delete it at the destination (%d conflicts of the round not replaced): %w", uid, notReplaced, err)
		}
		st.deleted[uid] = true
		// The round's summary below counts them.
		f.attemptLog(a).Debug("deleted an instance the destination held with other content, to store it again",
			"series_instance_uid", inst.SeriesInstanceUID, "sop_instance_uid", uid, "variable", c.setting())
		resend = append(resend, cf.part)
	}
	if n := len(resend) + len(upsert); n > 0 {
		f.attemptLog(a).Warn("replacing instances the destination held with other content",
			"instances", n, "deleted", len(resend), "method", c.Method, "variable", c.setting())
	}
	return resend, upsert, nil
}

// keepConflict dead-letters a conflict the attempt does not replace: not
// to (STOW_ON_CONFLICT), or already replaced once. Held again after its
// replacement (another writer, or a DELETE the destination did not
// carry out: a 404 at the source's study and series for an instance it
// holds under others), it is not missing either (st.deleted).
func (f *Forwarder) keepConflict(st *conflictState, cf conflicted) {
	uid := cf.part.SOPInstanceUID
	text := fmt.Sprintf("destination already holds this SOP Instance with other content (Failure Reason %d, 0x%04X)", cf.reason, cf.reason)
	if st.replacing[uid] {
		delete(st.deleted, uid)
		text += "; still so after replacing it with " + f.opts.Conflicts.Method
	}
	st.dead = append(st.dead, Instance{SOPInstanceUID: uid, FailureReason: cf.reason, Text: text})
}

// settleUnsure decides the conflicts that only a 409 made conflicts
// (onlyIn409): those the destination lists (QIDO-RS) are conflicts, for
// STOW_ON_CONFLICT; the others (failed) it does not hold, so their code
// was a failure, which skip must not count as stored nor deadletter
// take for a conflict. Unlisted, or the destination not asked (no
// QIDO-RS client, or it failed), they are failed, a listing capped by
// the destination's search limit (dicomweb.ErrListingCapped) too: the
// cap is the study's, not a series', so an instance of a series listed
// in full would be taken as held, and under skip as stored, though the
// destination failed it (HealthImaging answers no conflict at all).
func (f *Forwarder) settleUnsure(ctx context.Context, ev *events.StudyStable, unsure []conflicted, log *slog.Logger) (held, failed []conflicted) {
	lister := f.lister()
	var listed map[string]bool
	var err error
	if lister == nil {
		err = errors.New("the destination cannot be asked what it holds (QIDO-RS)")
	} else {
		parts := make([]dicomweb.Part, len(unsure))
		for i, c := range unsure {
			parts[i] = c.part
		}
		listed, _, err = f.listed(ctx, lister, ev.StudyInstanceUID, parts)
	}
	for _, c := range unsure {
		if !listed[c.part.SOPInstanceUID] {
			failed = append(failed, c)
			continue
		}
		held = append(held, c)
	}
	if len(failed) > 0 {
		first := failed[0]
		args := []any{"instances", len(failed), "first_sop_instance_uid", first.part.SOPInstanceUID, "failure_reason", fmt.Sprintf("0x%04X", first.reason)}
		if err != nil {
			args = append(args, "err", err)
		}
		log.Warn("destination answered 409 with a Failure Reason that is a conflict only for an instance it holds, and does not list the instances: "+
			"no conflict, retried as the failure the code names", args...)
	}
	return held, failed
}

// lister is what asks the destination which instances of a study it
// holds: the Verifier (STOW_VERIFY=qido), else the destination's own
// client (*dicomweb.Client), under a de-identifier too. Nil if neither
// can.
func (f *Forwarder) lister() Verifier {
	if f.opts.Verifier != nil {
		return f.opts.Verifier
	}
	d := f.opts.Destination
	if x, ok := d.(*deidentified); ok {
		d = x.next
	}
	v, _ := d.(Verifier)
	return v
}

// confirmNonPrimary returns those of suspects, instances stored with an
// imageSetId in their RetrieveURL (dicomweb.NonPrimary), that the
// destination does not list in the study. AWS HealthImaging documents
// imageSetId as an optional parameter of every DICOMweb retrieve, for
// primary image sets too, and that a search without it sees primary
// image sets only: an instance such a search lists (the aws profile's
// series-by-series listing) is stored in the primary set, whatever its
// URL. Without a way to ask (no QIDO-RS client), suspects are taken as
// they read. A failed listing is the attempt's failure, of the class
// Classify gives it, as a failed verification's (verify): neither
// acked, which could leave a study where no viewer finds it, nor
// dead-lettered as a conflict that may not be one; the error names the
// suspects. A listing capped by the destination's search limit
// (dicomweb.ErrListingCapped) confirms none it does not list: those stay
// unconfirmed and are taken as stored, as the STOW-RS answer said, not
// dead-lettered at every delivery for a search that cannot see them.
func (f *Forwarder) confirmNonPrimary(ctx context.Context, ev *events.StudyStable, suspects []Instance, log *slog.Logger) ([]Instance, error) {
	lister := f.lister()
	if lister == nil || len(suspects) == 0 {
		return suspects, nil
	}
	parts := make([]dicomweb.Part, len(suspects))
	for i, in := range suspects {
		parts[i] = dicomweb.Part{SOPInstanceUID: in.SOPInstanceUID}
	}
	listed, _, err := f.listed(ctx, lister, ev.StudyInstanceUID, parts)
	if errors.Is(err, dicomweb.ErrListingCapped) {
		if unseen := len(parts) - countListed(listed, parts); unseen > 0 {
			log.Warn("instances stored with an imageSetId in their RetrieveURL are not listed, and the destination's search cannot list every instance of the study (a series beyond its search cap): taken as stored, not confirmed in a non-primary image set",
				"instances", unseen, "err", err)
		}
		return nil, nil
	}
	if err != nil {
		unsure := make([]Instance, len(suspects))
		for i, in := range suspects {
			unsure[i] = Instance{SOPInstanceUID: in.SOPInstanceUID,
				Text: "stored with an imageSetId in its RetrieveURL (AWS HealthImaging); whether in a non-primary image set is unknown: the search without imageSetId failed"}
		}
		return nil, &Error{Class: Classify(err), Instances: unsure,
			Err: fmt.Errorf("confirm %d instances stored with an imageSetId are in a non-primary image set: list study %s at the destination (QIDO-RS): %w", len(suspects), ev.StudyInstanceUID, err)}
	}
	var nonPrimary []Instance
	for _, in := range suspects {
		if !listed[in.SOPInstanceUID] {
			nonPrimary = append(nonPrimary, in)
		}
	}
	if primary := len(suspects) - len(nonPrimary); primary > 0 {
		log.Debug("instances stored with an imageSetId in their RetrieveURL are listed by a search without it: stored in the primary image set",
			"instances", primary)
	}
	return nonPrimary, nil
}

// notStoredAgain is err, the failure of a delivery that deleted
// instances at the destination (replace by delete) and did not get them
// stored again, naming them. Transient, whatever err was, since the next
// delivery stores them (they no longer conflict): unless err is a letter
// of its own (partial, conflict) and each of them was refused for good
// when stored again (in rejected, or err names it with a Failure Reason
// that is a refusal): the next delivery would be refused the same, and
// its letter would no longer say the archive lost them. One err names
// already is named once, with both texts.
func (f *Forwarder) notStoredAgain(st *conflictState, rejected []Instance, err error, log *slog.Logger) error {
	uids := slices.Sorted(maps.Keys(st.deleted))
	var fe *Error
	isErr := errors.As(err, &fe)
	refused := make(map[string]bool, len(rejected))
	for _, in := range rejected {
		refused[in.SOPInstanceUID] = true
	}
	if isErr {
		for _, in := range fe.Instances {
			if in.FailureReason != 0 && classifyInstance(in.FailureReason) == Reject {
				refused[in.SOPInstanceUID] = true
			}
		}
	}
	lost := isErr && (fe.Class == Partial || fe.Class == Conflict) && !slices.ContainsFunc(uids, func(uid string) bool { return !refused[uid] })
	what := "deleted at the destination to replace it (" + f.opts.Conflicts.setting() + "=" + ConflictReplace + "), not stored again"
	if lost {
		what = "deleted at the destination to replace it (" + f.opts.Conflicts.setting() + "=" + ConflictReplace + "); storing it again was refused for good: the archive no longer holds it"
	}
	gone := make([]Instance, len(uids))
	for i, uid := range uids {
		gone[i] = Instance{SOPInstanceUID: uid, Text: what}
	}
	args := []any{"instances", len(gone), "first_sop_instance_uid", uids[0], "err", err}
	out := &Error{Class: Transient, Err: fmt.Errorf("%d instances deleted at the destination to replace them, not stored again: %s: %w", len(gone), uidList(gone), err), Instances: gone}
	if lost {
		log.Error("instances deleted at the destination to replace them were refused for good when stored again: the archive no longer holds them", args...)
		out = &Error{Class: fe.Class, Err: fmt.Errorf("%d instances deleted at the destination to replace them; storing them again was refused for good, the archive no longer holds them: %s: %w", len(gone), uidList(gone), err), Instances: gone}
	} else {
		log.Error("instances deleted at the destination to replace them are not stored again: the study is retried", args...)
	}
	if isErr {
		named := slices.Clone(fe.Instances)
		for i, in := range named {
			if st.deleted[in.SOPInstanceUID] {
				named[i].Text += "; " + what
			}
		}
		out.Instances = append(named, slices.DeleteFunc(gone, func(in Instance) bool {
			return slices.ContainsFunc(fe.Instances, func(x Instance) bool { return x.SOPInstanceUID == in.SOPInstanceUID })
		})...)
		out.RetryAfter, out.conflicts = fe.RetryAfter, fe.conflicts
	}
	return out
}

// conflictError is the dead letter of an attempt with conflicts: the
// instances and the setting, never patient data.
func (f *Forwarder) conflictError(st *conflictState, rejected []Instance) error {
	return f.withConflicts(Conflict, nil, st, rejected)
}

// withConflicts is an attempt's failure of class, err (nil: the
// conflicts are the failure), with what it found by then: the conflicts
// it dead-letters (st.dead, st.nonPrimary) and the instances refused
// for good, named in its reason and Instances, more (instances err
// names) after them. Its conflicts are counted dead_lettered once its
// letter is stored (settle): a transient failure's at the last
// delivery.
func (f *Forwarder) withConflicts(class Class, err error, st *conflictState, rejected []Instance, more ...Instance) *Error {
	var msgs []string
	if len(st.dead) > 0 {
		msgs = append(msgs, fmt.Sprintf("destination already holds %d instances with other content (%s=%s): %s (first: %s)",
			len(st.dead), f.opts.Conflicts.setting(), f.actionName(), uidList(st.dead), st.dead[0].Text))
	}
	if len(st.nonPrimary) > 0 {
		msgs = append(msgs, fmt.Sprintf("AWS HealthImaging stored %d instances in a non-primary image set (metadata conflicting with the primary one; reconcile them in HealthImaging, a replay would add another): %s",
			len(st.nonPrimary), uidList(st.nonPrimary)))
	}
	if len(rejected) > 0 {
		msgs = append(msgs, fmt.Sprintf("and refused %d for good (first: %s: %s)", len(rejected), rejected[0].SOPInstanceUID, rejected[0].Text))
	}
	switch {
	case err == nil:
		err = errors.New(strings.Join(msgs, "; "))
	case len(msgs) > 0:
		err = fmt.Errorf("%w; %s", err, strings.Join(msgs, "; "))
	}
	return &Error{Class: class, Err: err, Instances: slices.Concat(st.dead, st.nonPrimary, rejected, more), conflicts: len(st.dead)}
}

// carrying is err, an attempt's failure met after it found conflicts it
// dead-letters, with them (withConflicts): its class, instances and
// Retry-After kept. Without such conflicts it is err.
func (f *Forwarder) carrying(err error, st *conflictState, rejected []Instance) error {
	if len(st.dead)+len(st.nonPrimary) == 0 {
		return err
	}
	var named []Instance
	var after time.Duration
	if fe := (*Error)(nil); errors.As(err, &fe) {
		named, after = fe.Instances, fe.RetryAfter
	}
	out := f.withConflicts(Classify(err), err, st, rejected, named...)
	out.RetryAfter = after
	return out
}

func (f *Forwarder) actionName() string {
	if f.opts.Conflicts.Action == "" {
		return ConflictSkip
	}
	return f.opts.Conflicts.Action
}

// countSkipped counts an instance the destination holds with other
// content, skipped (STOW_ON_CONFLICT=skip): as already stored, and as a
// conflict.
func (f *Forwarder) countSkipped(rep *Report) {
	rep.AlreadyStored++
	rep.Conflicts++
	f.m.alreadyStored.Inc()
	f.m.conflicts.WithLabelValues("skipped").Inc()
}

// uidList names up to five instances.
func uidList(in []Instance) string {
	const most = 5
	uids := make([]string, 0, most)
	for i, x := range in {
		if i == most {
			uids = append(uids, fmt.Sprintf("and %d more", len(in)-most))
			break
		}
		uids = append(uids, x.SOPInstanceUID)
	}
	return strings.Join(uids, ", ")
}

// rememberTimeout bounds the write of what an attempt stored: it runs as
// the attempt ends, perhaps at shutdown. It outlasts a NATS cluster's
// leader election (4 to 9 s), through which it is tried again.
const rememberTimeout = 15 * time.Second

// storedEarlier reads the instances of the event's study (by sentID) the
// destination confirmed to earlier attempts. ok is false without a
// FailureLog (nothing to read) or when the read failed: a conflict answer
// is then a conflict for skip, and a transient failure for deadletter and
// replace (sortAnswer). patient: the read is tried again while JetStream
// does not answer (a leader election), up to rememberTimeout.
func (f *Forwarder) storedEarlier(ctx context.Context, ev *events.StudyStable, patient bool, log *slog.Logger) (sent func(string) bool, ok bool) {
	sent, err := f.readStored(ctx, ev, patient)
	if err != nil {
		log.Warn("read what earlier attempts stored: an already-stored answer is a conflict under skip, retried later under deadletter or replace", "err", err)
		return func(string) bool { return false }, false
	}
	return sent, true
}

// readStored is storedEarlier's read, its failure returned.
func (f *Forwarder) readStored(ctx context.Context, ev *events.StudyStable, patient bool) (sent func(string) bool, err error) {
	if f.opts.Failures == nil {
		return func(string) bool { return false }, nil
	}
	read := func(ctx context.Context) error {
		var err error
		sent, err = f.opts.Failures.Sent(ctx, ev)
		return err
	}
	if patient {
		// Through a leader election the read fails at once, as the
		// write does (rememberStored): one failed read made every copy
		// stowline stored before a conflict for the whole attempt. Each
		// try within rctx, so that rememberTimeout bounds the whole.
		rctx, cancel := context.WithTimeout(ctx, rememberTimeout)
		defer cancel()
		err = f.whileUnanswered(rctx, func() error { return read(rctx) })
	} else {
		err = read(ctx)
	}
	return sent, err
}

// storedRecord is what an attempt read of the instances stowline got
// stored of its study (FailureLog.Sent, through storedEarlier): read at
// the first question (the first conflict answer of an attempt; questions
// may come at once from its requests), and again when asked about one it
// lacks for an answer that came after the last read began. Another
// attempt of the study, at another replica, may be storing and recording
// instances while this one sends: an "already exists" for one of them is
// its copy, recorded by now, not a conflict. A miss is never kept as the
// answer: at most one read serves the answers that came before it, and
// reads begin at most every rereadEvery (a study whose instances all miss
// the record, its files replaced in Orthanc, asks at each answer): an
// answer waits for the next, which serves every answer come by then. A
// failed read answers none and is not kept either: the next question
// reads again, at most every rememberTimeout (a redelivery asks about
// every confirmed instance: one failing read each would cost a KV request
// and a warning an instance).
type storedRecord struct {
	// read reads the record; patient waits through a leader election
	// (the first read of an attempt); ok is false when it failed.
	read func(patient bool) (sent func(sentID string) bool, ok bool)
	// now is time.Now, pause a sleep on the attempt's context, false
	// once it ended (tests stand in for them).
	now   func() time.Time
	pause func(time.Duration) bool

	mu sync.Mutex
	// has is the last successful read's answer (nil before one): the
	// record only grows while the attempt runs, apart from its oldest
	// instances, dropped past maxSent (deadletter), which are those of
	// earlier versions and attempts, so one read holds what those before
	// it held that is still this study's. Keeping every read was a map
	// of up to 120,000 IDs a request, and as many look-ups an instance.
	has    func(string) bool
	readAt time.Time // when the last successful read began
	failed time.Time // when the last read failed, if since the last success
	// countFailed: when the last read for a count (heldBefore) failed,
	// if since the last success.
	countFailed time.Time
}

// rereadEvery bounds how often an attempt reads the record again: a read
// takes one KV request of up to 960 KB and a map of up to 120,000 IDs.
const rereadEvery = 500 * time.Millisecond

// holds reports whether the record holds id, reading it again if it did
// not, as last read, and that read began before answered (the time the
// answer asking was received; zero: never read again once read).
func (r *storedRecord) holds(id string, answered time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.has != nil && r.has(id) {
			return true
		}
		if r.has != nil && !r.readAt.Before(answered) {
			return false
		}
		if !r.failed.IsZero() && r.now().Sub(r.failed) < rememberTimeout {
			return false
		}
		if r.has == nil {
			break
		}
		wait := r.readAt.Add(rereadEvery).Sub(r.now())
		if wait <= 0 {
			break
		}
		// Another answer may read meanwhile: asked again after the
		// pause, a read that began since serves this one.
		r.mu.Unlock()
		more := r.pause(wait)
		r.mu.Lock()
		if !more {
			return false
		}
	}
	if !r.readLocked(r.has == nil && r.failed.IsZero()) {
		r.failed = r.now()
		return false
	}
	return r.has(id)
}

// readLocked reads the record and, read, keeps it as the last read, its
// failures forgotten. Under mu.
func (r *storedRecord) readLocked(patient bool) bool {
	began := r.now()
	has, ok := r.read(patient)
	if ok {
		r.has, r.readAt, r.failed, r.countFailed = has, began, time.Time{}, time.Time{}
	}
	return ok
}

// unreadable reports whether the record's last read failed (since the
// last success): a conflict answer it does not hold may still be for a
// copy stowline stored.
func (r *storedRecord) unreadable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.failed.IsZero()
}

// heldBefore reports whether the record, as read, holds id, for a count
// only (an instance stored again by an earlier delivery): never read, it
// is read at once, not through a leader election, and never read again.
// Its failure pauses only such questions: a conflict answer's read,
// which decides, is still patient.
func (r *storedRecord) heldBefore(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.has != nil {
		return r.has(id)
	}
	for _, failed := range []time.Time{r.failed, r.countFailed} {
		if !failed.IsZero() && r.now().Sub(failed) < rememberTimeout {
			return false
		}
	}
	if !r.readLocked(false) {
		r.countFailed = r.now()
		return false
	}
	return r.has(id)
}

// rememberStored keeps what an attempt got stored (their sentIDs), for
// later deliveries of the study (its ack not confirmed, a repeat past the
// dedupe window, a backfill or re-forward, a new version after it gained
// an instance): they find those instances "already" there, and must read
// them as stowline's own copies, not as conflicts. It ends with ctx:
// the sentWriter's, the work context, so that at the grace's end the ack
// goes first (settle writes what is left after it); settle's, detached
// but bounded by the hard stop (settleContext).
func (f *Forwarder) rememberStored(ctx context.Context, ev *events.StudyStable, ids []string) error {
	if f.opts.Failures == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, rememberTimeout)
	defer cancel()
	// On a cluster that lost the server leading the bucket, writes fail at
	// once until the others elect a leader: one try was lost to it, and a
	// later delivery (the ack lost with the same server, the study grown by
	// an instance) took the destination's "already exists" for conflicts.
	err := f.whileUnanswered(ctx, func() error { return f.opts.Failures.RememberSent(ctx, ev, ids) })
	return f.countStoreFull(storeFullStored, err)
}

// sentID names what stowline sent of an instance, for FailureLog: its
// SOP Instance UID and the Orthanc file it was read from, which Orthanc
// replaces whenever it stores the instance again (a corrected copy), so
// that an instance forwarded with an earlier version of its study is
// known as stowline's own copy while a corrected one is not. A source
// that names no file ties it to the study version (LastUpdate) instead.
func sentID(ev *events.StudyStable, in orthancapi.Instance) string {
	if in.FileUUID != "" {
		return in.SOPInstanceUID + "/" + in.FileUUID
	}
	return in.SOPInstanceUID + "@" + ev.LastUpdate
}

// keptID is the entry of the stored-instances record (FailureLog) that
// marks the instance sent as id (sentID) as one the destination does not
// hold as sent: stored with a warning that it changed it, or sent before
// from another file (uidID). The ledger records it only once the study is
// done; an attempt that failed on another instance records nothing
// there, and a later one, the instance answered as stored without a
// word, would take it for forwarded and buffer mode delete it.
func keptID(id string) string { return "kept:" + id }

// maybeID is the entry of the stored-instances record that marks the
// instance sent as id (sentID) as perhaps stored: sent in a request that
// got no readable answer, or that broke off after it
// (batchOutcome.unanswered). A later delivery reads its "already exists"
// as perhaps stowline's own copy, unproven, not a conflict. Builds before
// it never ask for such an entry (the record holds hashes of what is
// asked for): to them it is one they ignore.
func maybeID(id string) string { return "maybe:" + id }

// uidID is the entry of the stored-instances record that says an attempt
// got the instance stored, from whatever file: with the destination's
// copy (an Orthanc with OverwriteInstances false, any server that
// ignores a duplicate) left as it was, a corrected copy sent later under
// the same UID answers as stored, and is not. Records written by builds
// before it have none: only instances first stored by a build that
// writes it are told apart.
func uidID(sopInstanceUID string) string { return "uid:" + sopInstanceUID }
