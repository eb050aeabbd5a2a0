package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// recheckEvery is how many deletes go by between two reads of the study's
// state while buffer mode deletes it.
const recheckEvery = 32

// deleteForwarded is buffer mode: it deletes from the source instances
// this forward sent and the destination confirmed, so an instance that
// arrived since the study was listed is never deleted. With several
// destinations, Release keeps those another destination selected and has
// not stored yet. A study that received instances since its event
// (staleEvent) is left alone: its next event forwards it again (what the
// destination holds counts as stored) and deletes it then. Every failure leaves
// instances in Orthanc, never loses one; shutdown stops the deletes.
//
// sel is the study's selection if kept_unselected's count made it
// already; nil, it is made here when needed.
func (f *Forwarder) deleteForwarded(ctx context.Context, ev *events.StudyStable, instances, listed []orthancapi.Instance, sel Selection, log *slog.Logger) {
	// stake is what a failure below leaves in Orthanc. With several
	// destinations, one that kept all it was sent (conflicts skipped,
	// instances coerced) may be the last to store the study: it releases
	// what the others sent, and a failure leaves those. Release is asked
	// first then, so that a failure counts those, not the whole listing.
	stake := len(instances)
	var released []orthancapi.Instance
	if stake == 0 {
		if f.opts.Select == nil {
			return
		}
		var ok bool
		if released, ok = f.release(ctx, ev, listed, 0, sel, log); !ok {
			return
		}
		stake = len(released)
		if stake == 0 {
			return // another destination has not stored it: it releases them
		}
	}
	c, err := f.opts.CleanerFor(ev.Source)
	if err != nil {
		log.Warn("forwarded study not deleted from the source", "err", err)
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(stake))
		return
	}
	// Gone (404): another destination that finished the study at the
	// same moment, or someone else, deleted it first. Not a failure:
	// what buffer mode wanted is done.
	changed, lastUpdate, err := staleEvent(ctx, c, ev, listed)
	if errors.Is(err, orthancapi.ErrNotFound) {
		f.m.sourceDeletes.WithLabelValues("gone").Add(float64(stake))
		return
	}
	if err != nil {
		log.Warn("forwarded study not deleted from the source: its state could not be read", "err", err)
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(stake))
		return
	}
	if changed {
		log.Info("forwarded study not deleted from the source: it received instances since its event, its next event forwards and deletes it",
			"source_last_update", lastUpdate)
		f.m.sourceDeletes.WithLabelValues("skipped").Add(float64(stake))
		return
	}
	if f.opts.Unconfigured != nil {
		// Through a JetStream leader election, as Release: a meta-leader
		// election in a rolling restart fails it for every study then.
		var others []string
		err := f.whileUnanswered(ctx, func() (err error) {
			actx, cancel := context.WithTimeout(ctx, f.askTimeout)
			defer cancel()
			others, err = f.opts.Unconfigured(actx)
			return err
		})
		if err != nil {
			// "failed", not "waiting": no later event deletes the study,
			// and the alert on failed deletes must fire.
			log.Warn("forwarded study not deleted from the source: the destinations with a queue could not be read from JetStream; it stays in Orthanc "+
				"(its forward is recorded, so the audit does not queue it again; once JetStream answers, 'forwarder backfill --destination NAME --from source --since T', T before the study's last update, does)", "err", err)
			f.m.sourceDeletes.WithLabelValues("failed").Add(float64(stake))
			return
		}
		if len(others) > 0 {
			log.Warn("forwarded study not deleted from the source: destinations this forwarder is not configured with have a queue and may need it "+
				"(finish the rollout that adds them, or remove them with 'forwarder destinations remove NAME --yes')", "destinations", others)
			f.m.sourceDeletes.WithLabelValues("waiting").Add(float64(stake))
			return
		}
	}
	if f.opts.Select != nil {
		if len(instances) > 0 { // else released above
			var ok bool
			if released, ok = f.release(ctx, ev, listed, stake, sel, log); !ok {
				return
			}
		}
		// Its own instances left out; those of others it releases count
		// in what follows.
		out := make(map[string]bool, len(released))
		for _, in := range released {
			out[in.ID] = true
		}
		waiting := 0
		for _, in := range instances {
			if !out[in.ID] {
				waiting++
			}
		}
		if waiting > 0 {
			log.Info("forwarded instances kept in the source for destinations that have not stored them yet", "waiting", waiting)
			f.m.sourceDeletes.WithLabelValues("waiting").Add(float64(waiting))
		}
		instances = released
		if len(instances) == 0 {
			return
		}
	}
	file := make(map[string]string, len(listed))
	for _, in := range listed {
		file[in.ID] = in.FileUUID
	}
	deleted, gone, skipped := 0, 0, 0
	var firstErr error
	for i, inst := range instances {
		if i%recheckEvery == 0 {
			// The study is looked at again before the first delete
			// (Unconfigured and Release may have waited through leader
			// elections since the look above) and every recheckEvery
			// deletes: an instance overwritten, or deleted and sent anew
			// (a modality's retransmission), keeps its ID and must not
			// be deleted unsent. On Orthanc 1.12.1 and later these
			// deletes move LastUpdate themselves: batchChanged tells
			// them from new content.
			changed, err := batchChanged(ctx, c, ev, file, instances[i:min(i+recheckEvery, len(instances))])
			if errors.Is(err, orthancapi.ErrNotFound) {
				gone += len(instances) - i // deleted meanwhile, as above
				break
			}
			if err != nil {
				firstErr = err // the rest counts as failed
				break
			}
			if changed {
				skipped = len(instances) - i
				log.Info("forwarded study changed while it was deleted from the source (an instance overwritten or sent anew); the rest stays for its next event", "deleted", deleted, "left", skipped)
				break
			}
		}
		err := c.DeleteInstance(ctx, inst.ID)
		if errors.Is(err, orthancapi.ErrNotFound) {
			gone++
			continue
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if ctx.Err() != nil {
				break
			}
			continue
		}
		deleted++
	}
	f.m.sourceDeletes.WithLabelValues("deleted").Add(float64(deleted))
	f.m.sourceDeletes.WithLabelValues("gone").Add(float64(gone))
	f.m.sourceDeletes.WithLabelValues("skipped").Add(float64(skipped))
	if failed := len(instances) - deleted - gone - skipped; failed > 0 {
		f.m.sourceDeletes.WithLabelValues("failed").Add(float64(failed))
		log.Warn("some forwarded instances were not deleted from the source; they stay in Orthanc", "deleted", deleted, "failed", failed, "err", firstErr)
		return
	}
	if skipped > 0 {
		return
	}
	log.Info("forwarded instances deleted from the source", "deleted", deleted)
}

// staleEvent tells whether ev is stale, the study having received
// instances since (its next event forwards and deletes it), and returns
// the LastUpdate read. Unmoved, it is not. Orthanc 1.12.1 and later also
// move a study's LastUpdate when one of its instances is deleted
// (buffer mode's, or by hand between the event and the forward's
// listing), logging no change and no StableStudy: then it is stale only
// if an instance of listed, the forward's listing, was received after
// the event (Orthanc sets ReceptionDate and LastUpdate from the same
// clock, to the second), or when it can't be told. Deleted since the
// event, with nothing received, no next event comes: the listing is what
// the study holds, all forwarded, and its deletes go on. An instance
// received after the listing is not in it, never deleted: its own event
// comes. Only when LastUpdate moved are listed's instances read, one
// request each.
func staleEvent(ctx context.Context, c SourceCleaner, ev *events.StudyStable, listed []orthancapi.Instance) (stale bool, lastUpdate string, err error) {
	st, err := c.Study(ctx, ev.OrthancStudyID)
	if err != nil {
		return false, "", err
	}
	if st.LastUpdate == ev.LastUpdate {
		return false, st.LastUpdate, nil
	}
	for _, in := range listed {
		md, err := c.InstanceMetadata(ctx, in.ID)
		if errors.Is(err, orthancapi.ErrNotFound) {
			continue // deleted since: no new content
		}
		if err != nil {
			return false, st.LastUpdate, fmt.Errorf("read an instance's reception, the study's LastUpdate moved: %w", err)
		}
		// Orthanc's timestamps order as text.
		if md.ReceptionDate == "" || md.ReceptionDate > ev.LastUpdate {
			return true, st.LastUpdate, nil
		}
	}
	return false, st.LastUpdate, nil
}

// batchChanged tells whether an instance of batch, the next deletes,
// changed since the forward listed it (file, by ID). Unmoved, the study's
// LastUpdate says none did. Moved (on Orthanc 1.12.1 and later the
// deletes move it too), each is read, one request: it changed if its file
// (FileUuid) is not the listed one or unnamed, an overwrite or an
// instance deleted and sent anew (both keep the ID, never the file). One
// gone is no change. Instances outside batch are not read: those not
// listed are never deleted (their own event comes), those deleted already
// are not deleted again, and each later batch is read before its
// deletes; listing the study at each look instead cost the square of its
// size.
func batchChanged(ctx context.Context, c SourceCleaner, ev *events.StudyStable, file map[string]string, batch []orthancapi.Instance) (bool, error) {
	st, err := c.Study(ctx, ev.OrthancStudyID)
	if err != nil {
		return false, err
	}
	if st.LastUpdate == ev.LastUpdate {
		return false, nil
	}
	for _, in := range batch {
		now, err := c.Instance(ctx, in.ID)
		if errors.Is(err, orthancapi.ErrNotFound) {
			continue // its delete counts it gone
		}
		if err != nil {
			return false, fmt.Errorf("read an instance to delete, the study's LastUpdate moved: %w", err)
		}
		if f := file[in.ID]; f == "" || f != now.FileUUID {
			return true, nil
		}
	}
	return false, nil
}

// release is the selection's Release, asked through a JetStream leader
// election, as the ledger's writes; sel nil, it is made here. !ok: it
// failed, or found the study gone, and counted so: own, this forward's
// instances to delete, as failed or gone. With none of its own (own 0),
// which of the others' instances it would have released is unknown: a
// failure counts the most it could have, those some destination's rules
// select (another destination that has not stored them releases them
// later), none if the rules cannot tell.
func (f *Forwarder) release(ctx context.Context, ev *events.StudyStable, listed []orthancapi.Instance, own int, sel Selection, log *slog.Logger) (released []orthancapi.Instance, ok bool) {
	if sel == nil {
		sel = f.opts.Select(ev, listed)
	}
	stale := false
	err := f.whileUnanswered(ctx, func() (err error) {
		if stale {
			// Its reads are remembered, failures included: the study
			// is read afresh, the rules applied again.
			sel = f.opts.Select(ev, listed)
		}
		released, err = sel.Release(ctx)
		stale = errors.Is(err, ErrRules)
		return err
	})
	if err == nil {
		return released, true
	}
	if errors.Is(err, orthancapi.ErrNotFound) {
		f.m.sourceDeletes.WithLabelValues("gone").Add(float64(own))
		return nil, false
	}
	if errors.Is(err, ErrRules) {
		log.Warn("forwarded study not deleted from the source: the destinations' rules could not be applied to it (Orthanc unreadable, or a rule failing, which dead-letters the study at its destination); it stays in Orthanc. "+
			"Its forward is recorded, so the audit does not queue it again: once that is mended, 'forwarder backfill --destination NAME --from source --since T' (T before the study's last update) does", "err", err)
	} else {
		// A NATS user lacking the write of a destination's ledger
		// (docs/nats-permissions.md) reads as a permissions violation
		// when the ledger can tell it, else as JetStream not answering.
		log.Warn("forwarded study not deleted from the source: the other destinations' ledgers could not be read, or a destination that selects none of it could not be recorded so "+
			"(JetStream not answering, or this forwarder's NATS user may not write that destination's ledger); it stays in Orthanc. Its forward is recorded, so the audit does not queue it again: "+
			"once that is mended, 'forwarder backfill --destination NAME --from source --since T' (T before the study's last update) does", "err", err)
	}
	failed := own
	if own == 0 {
		// The rules not applied yet are applied here; after a rules
		// failure the study's reads are remembered, and fail again.
		if unselected, err := sel.Unselected(ctx); err == nil {
			failed = len(listed) - len(unselected)
		}
	}
	f.m.sourceDeletes.WithLabelValues("failed").Add(float64(failed))
	return nil, false
}

// whileUnanswered runs ask, and again, with waits doubling from
// completedRetry to completedRetryMax, while JetStream does not answer it
// (a cluster electing the leader of a bucket fails requests at once, "no
// response from stream", or times them out for 4 to 9 s), until ctx ends
// or unansweredFor has passed since the first unanswered try. Past a
// leader election a request still unanswered is no election (one the NATS
// user may not make times out alike), and the worker would hold the
// study's turn until shutdown. Any other error (a full store, a refused
// value) is returned at once. The bound is on the asking, not on one try:
// each try bounds its own JetStream requests, so a lost reply costs one
// try, and the Orthanc reads of a big study are not cut short.
func (f *Forwarder) whileUnanswered(ctx context.Context, ask func() error) error {
	var giveUp time.Time
	for wait := completedRetry; ; wait = min(2*wait, completedRetryMax) {
		err := ask()
		if !natsjs.Unanswered(err) || ctx.Err() != nil {
			return err
		}
		now := time.Now()
		if giveUp.IsZero() {
			giveUp = now.Add(f.unansweredFor)
		}
		if !now.Before(giveUp) {
			return err
		}
		sleep(ctx, min(wait, giveUp.Sub(now)))
		if ctx.Err() != nil {
			return err
		}
	}
}

// countUnselected counts as kept_unselected the instances of a study that
// no destination's rules select: buffer mode never deletes them, and
// nothing else said they stay. With several destinations the forwarders
// of one of them count (Options.CountsUnselected), so each study counts
// once; the selection they make for it is returned, for the deletes.
func (f *Forwarder) countUnselected(ctx context.Context, ev *events.StudyStable, rep Report, log *slog.Logger) Selection {
	if len(rep.listed) == 0 {
		// Gone, deleted by buffer mode: the rules would read it in vain.
		return nil
	}
	n := 0
	var sel Selection
	switch {
	case f.opts.Select == nil:
		n = rep.Listed - rep.Selected
	case f.opts.CountsUnselected:
		// Unselected applies every destination's rules; the deletes'
		// Release finds them applied.
		sel = f.opts.Select(ev, rep.listed)
		unselected, err := sel.Unselected(ctx)
		if errors.Is(err, orthancapi.ErrNotFound) {
			// Gone: another destination's forwarder, the last to store
			// it, deleted it since it was listed; buffer mode deletes
			// only what some destination selects, so none was unselected.
			return nil
		}
		if err != nil {
			if ctx.Err() == nil { // shutdown stops it, as the deletes
				log.Warn("instances no destination selects not counted: the destinations' rules could not be applied", "err", err)
			}
			// The selection remembers the failed reads: the deletes
			// make their own.
			return nil
		}
		if n, err = f.stillThere(ctx, ev, unselected); err != nil {
			if ctx.Err() == nil {
				log.Warn("instances no destination selects not counted: the study could not be listed again", "err", err)
			}
			return sel
		}
	}
	if n > 0 {
		log.Info("instances no destination's rules select stay in the source", "kept_unselected", n)
		f.m.sourceDeletes.WithLabelValues("kept_unselected").Add(float64(n))
	}
	return sel
}

// stillThere counts the instances of unselected that the source still
// lists. Another destination's forwarder, the last to store the study,
// may delete what it releases between this forward's listing and the
// rules' reads: its series gone, a deleted instance reads as one no rule
// selects. Listed again after the reads, an instance still there was
// there all along, read with its series; one gone never stays.
func (f *Forwarder) stillThere(ctx context.Context, ev *events.StudyStable, unselected []orthancapi.Instance) (int, error) {
	if len(unselected) == 0 {
		return 0, nil
	}
	src, err := f.opts.SourceFor(ev.Source)
	if err != nil {
		return 0, err
	}
	now, err := src.StudyInstances(ctx, ev.OrthancStudyID)
	if errors.Is(err, orthancapi.ErrNotFound) {
		return 0, nil // all gone
	}
	if err != nil {
		return 0, err
	}
	there := make(map[string]bool, len(now))
	for _, in := range now {
		there[in.ID] = true
	}
	n := 0
	for _, in := range unselected {
		if there[in.ID] {
			n++
		}
	}
	return n, nil
}
