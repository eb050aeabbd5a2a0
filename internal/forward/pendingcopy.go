package forward

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// pendingCopyAge is how long the destination must go on answering
// Failure Reason 45071 for an instance, in every round of a delivery,
// before stowline takes its answer for a copy left pending rather than
// another writer's store in progress. Azure's DICOM service marks an
// instance "being created" while it writes the file to its storage
// (seconds, even for a large one), but a store cut off (a dropped
// connection, a recycled node) whose cleanup did not run leaves it so
// until someone deletes it (conformance statement v2: "Delete the
// instance first before attempting to create again"). Retried, such an
// instance spent every delivery, hours of re-uploads, and its dead
// letter invited a replay that met the same answer.
const pendingCopyAge = time.Minute

// pendingCopies is one attempt's instances the destination answers
// 45071 for.
type pendingCopies struct {
	// since: by SOP Instance UID, when the destination first answered
	// 45071 in the run of rounds that answered it each time.
	since map[string]time.Time
	// waited: the one extra round, until pendingCopyAge, was taken.
	waited bool
	// cleared: deleted at the destination (STOW_ON_CONFLICT=replace);
	// each once an attempt.
	cleared map[string]bool
}

// observe notes a round's instances to send again (retry) and their
// Failure Reasons: an instance not answered 45071 this round ends its
// run.
func (p *pendingCopies) observe(retry []dicomweb.Part, reasons map[string]int, now time.Time) {
	next := make(map[string]time.Time, len(p.since))
	for _, part := range retry {
		uid := part.SOPInstanceUID
		if reasons[uid] != dicomweb.FailureAzureBeingCreated {
			continue
		}
		if t, ok := p.since[uid]; ok {
			next[uid] = t
		} else {
			next[uid] = now
		}
	}
	p.since = next
}

// pendingStep is what settlePending decided.
type pendingStep struct {
	// wait: send the instances again once more after this pause.
	wait    time.Duration
	waiting bool
	// deleted: instances deleted at the destination, to store again.
	deleted int
	// dead: instances to dead-letter, with what to do.
	dead []Instance
}

// settlePending acts on the instances of retry the destination has
// answered 45071 for, once the delivery's instance rounds are spent:
// first one more round after a pause, until the first such answer is
// pendingAge old (a short 45071 is another writer's store in progress,
// which stores it); then, for those still answered 45071,
// under STOW_ON_CONFLICT=replace, the DELETE the destination asks for
// (each once an attempt; its error is returned, the attempt fails with
// it), and otherwise a dead letter now, saying what to do: the next
// deliveries would get the same answer.
func (f *Forwarder) settlePending(ctx context.Context, a *Attempt, p *pendingCopies, retry []dicomweb.Part, byUID map[string]orthancapi.Instance, log *slog.Logger) (pendingStep, error) {
	now := time.Now()
	var uids []string
	oldest := now
	for _, part := range retry {
		if t, ok := p.since[part.SOPInstanceUID]; ok {
			uids = append(uids, part.SOPInstanceUID)
			if t.Before(oldest) {
				oldest = t
			}
		}
	}
	if len(uids) == 0 {
		return pendingStep{}, nil
	}
	if !p.waited {
		p.waited = true
		return pendingStep{waiting: true, wait: max(oldest.Add(f.pendingAge).Sub(now), 0)}, nil
	}
	var step pendingStep
	replace := f.opts.Conflicts.Action == ConflictReplace
	deleter, canDelete := f.opts.Destination.(InstanceDeleter)
	setting := f.opts.Conflicts.setting()
	for _, uid := range uids {
		if now.Sub(p.since[uid]) < f.pendingAge {
			continue // a new run of 45071 answers: transient, as any
		}
		inst := byUID[uid]
		if replace && canDelete && !p.cleared[uid] {
			if err := deleter.DeleteInstance(ctx, a.Event.StudyInstanceUID, inst.SeriesInstanceUID, uid); err != nil {
				return step, fmt.Errorf("delete instance %s at the destination, which holds a pending copy of it (Failure Reason 45071, 0xB00F, for over %s; %s=%s): %w",
					uid, f.pendingAge, setting, ConflictReplace, err)
			}
			p.cleared[uid] = true
			step.deleted++
			log.Debug("deleted a pending copy the destination kept answering 45071 for, to store it again",
				"series_instance_uid", inst.SeriesInstanceUID, "sop_instance_uid", uid, "variable", setting)
			continue
		}
		step.dead = append(step.dead, Instance{SOPInstanceUID: uid, FailureReason: dicomweb.FailureAzureBeingCreated,
			Text: f.pendingText(a, inst, p.cleared[uid], !replace && canDelete)})
	}
	if step.deleted > 0 {
		log.Warn("deleted pending copies the destination kept answering 45071 for (a store that failed before, not cleaned up), to store them again",
			"instances", step.deleted, "variable", setting, "value", ConflictReplace)
	}
	if len(step.dead) > 0 {
		log.Warn("destination keeps answering 45071 for instances: it holds pending copies from a store that failed before; dead-lettered, DELETE them at the destination, then replay",
			"instances", len(step.dead), "first_sop_instance_uid", step.dead[0].SOPInstanceUID)
	}
	return step, nil
}

// pendingText is the dead letter's text for an instance the destination
// holds a pending copy of: what to do about it. hint: name the setting
// that would have deleted it.
func (f *Forwarder) pendingText(a *Attempt, inst orthancapi.Instance, cleared, hint bool) string {
	text := fmt.Sprintf("the destination answers Failure Reason 45071 (0xB00F) for over %s: it holds a pending copy from a store that failed before and was not cleaned up (Azure's DICOM service), and refuses the instance until it is deleted", f.pendingAge)
	if cleared {
		return text + "; still so after stowline deleted it (" + f.opts.Conflicts.setting() + "=" + ConflictReplace + "): delete it at the destination, check that it is gone, then replay the study"
	}
	where := "delete it at the destination"
	if _, deidentified := f.opts.Destination.(*deidentified); !deidentified {
		where = fmt.Sprintf("DELETE studies/%s/series/%s/instances/%s at the destination", a.Event.StudyInstanceUID, inst.SeriesInstanceUID, inst.SOPInstanceUID)
	}
	text += ": " + where + ", then replay the study"
	if hint {
		text += " (" + f.opts.Conflicts.setting() + "=" + ConflictReplace + " deletes it itself)"
	}
	return text
}

// withoutPending returns parts without the instances of dead, in a new
// slice: the round's slices share arrays.
func withoutPending(parts []dicomweb.Part, dead []Instance) []dicomweb.Part {
	var out []dicomweb.Part
	for _, p := range parts {
		if !slices.ContainsFunc(dead, func(in Instance) bool { return in.SOPInstanceUID == p.SOPInstanceUID }) {
			out = append(out, p)
		}
	}
	return out
}
