package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/routing"
	"github.com/stowline/stowline/orthancapi"
)

// selectFunc is buffer mode's forward.Options.Select with several
// destinations. Each destination's rules are applied to a study's listing
// when the selection first needs them, so that a forwarder that is not
// the last to store a study reads only as much of it as the release
// needs to find a destination that has not stored it. They read the
// study from its source once (routing.ReadOnce): all of them see the same
// reading of it. A rule that fails on the study keeps every instance (its
// destination dead-letters the study).
func selectFunc(all []config.NamedDestination, routes map[string]*route, ledgers map[string]*ledger.Ledger) func(*events.StudyStable, []orthancapi.Instance) forward.Selection {
	return func(ev *events.StudyStable, listed []orthancapi.Instance) forward.Selection {
		return &selection{ev: ev, listed: listed, all: all, routes: routes, ledgers: ledgers, selected: make(map[string][]orthancapi.Instance, len(all))}
	}
}

// selection is what each destination's rules select of one listing of a
// study, applied when first asked.
type selection struct {
	ev      *events.StudyStable
	listed  []orthancapi.Instance
	all     []config.NamedDestination
	routes  map[string]*route // nil for a destination without rules
	ledgers map[string]*ledger.Ledger
	// source reads the study for every destination's rules; made by the
	// first rules applied.
	source routing.Orthanc
	// selected holds what each destination's rules select, by its name,
	// once applied; a failure is not kept (its reads are, by source).
	selected map[string][]orthancapi.Instance
}

// selectedBy returns what d's rules select of the listing, applying them
// the first time.
func (s *selection) selectedBy(ctx context.Context, d config.NamedDestination) ([]orthancapi.Instance, error) {
	if sel, ok := s.selected[d.Name]; ok {
		return sel, nil
	}
	rt := s.routes[d.Name]
	if rt == nil {
		return s.listed, nil // no rules: everything
	}
	if s.source == nil {
		c, err := rt.sources.Lookup(s.ev.Source)
		if err != nil {
			return nil, fmt.Errorf("destination %s: %w: %w", d.Name, forward.ErrRules, err)
		}
		s.source = routing.ReadOnce(c)
	}
	sel, err := rt.selectFrom(ctx, s.source, s.ev.Source, s.ev.OrthancStudyID, s.listed)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w: %w", d.Name, forward.ErrRules, err)
	}
	s.selected[d.Name] = sel
	return sel, nil
}

// Unselected returns the listed instances no destination's rules select,
// applying those not applied yet.
func (s *selection) Unselected(ctx context.Context) ([]orthancapi.Instance, error) {
	for _, d := range s.all {
		if s.routes[d.Name] == nil {
			return nil, nil // it selects everything: no rules need reading
		}
	}
	selected := map[string]bool{}
	for _, d := range s.all {
		sel, err := s.selectedBy(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, in := range sel {
			selected[in.ID] = true
		}
	}
	var out []orthancapi.Instance
	for _, in := range s.listed {
		if !selected[in.ID] {
			out = append(out, in)
		}
	}
	return out, nil
}

// Release returns the listed instances to delete now. Nothing of a study
// leaves the source until every destination whose rules select some of it
// has stored this state of the study (the first found not stored ends it,
// the rules of those after it not applied): recorded its LastUpdate in its
// ledger after selecting what its rules select now (the selection's
// digest: a rule changed since, or a record of another release's rules,
// may have left instances out; a record of "not selected" stored
// nothing). All of it is released at once then, by the last destination
// to store it, so that every destination's selection was made over the
// same listing as the one checked here. An instance stays if a
// destination that selects it kept it (a conflict it skipped, an
// instance it changed), or if only destinations that receive
// de-identified copies select it: configured so here, or recorded so in
// their ledger (a pseudonym). Before anything is deleted, each
// destination whose rules select none of the study gets it recorded as
// not selected, so that its own event, if still queued, finds the study
// gone and done.
func (s *selection) Release(ctx context.Context) ([]orthancapi.Instance, error) {
	ev := s.ev
	needed := map[string]bool{}              // selected by some destination
	kept := map[string]bool{}                // kept by one that selects it
	original := map[string]bool{}            // stored by one that receives originals
	var unselected []config.NamedDestination // destinations whose rules select none of it
	for _, d := range s.all {
		selected, err := s.selectedBy(ctx, d)
		if err != nil {
			return nil, err
		}
		if len(selected) == 0 {
			unselected = append(unselected, d)
			continue
		}
		// Lookup bounds its one JetStream request itself, so a
		// lost reply costs one try of Release, not all of it.
		rec, err := s.ledgers[d.Name].Lookup(ctx, ev.Source, ev.OrthancStudyID)
		if err != nil && !errors.Is(err, ledger.ErrNotRecorded) {
			return nil, fmt.Errorf("destination %s: %w", d.Name, err)
		}
		stored := err == nil && rec.LastUpdate == ev.LastUpdate && !rec.NotSelected &&
			(rec.Selected == "" || rec.Selected == ledger.SelectionDigest(selected))
		if !stored {
			return nil, nil
		}
		keptHere := map[string]bool{}
		for _, uid := range rec.Kept {
			keptHere[uid] = true
		}
		for _, in := range selected {
			needed[in.ID] = true
			switch {
			case rec.KeptAll || keptHere[in.SOPInstanceUID]:
				kept[in.ID] = true
			case !d.Deidentifies() && rec.PseudonymStudyInstanceUID == "":
				// The record's pseudonym is the forwarder's own word that
				// it sent de-identified copies: this process's settings
				// of a destination it does not serve may lack
				// STOW_DEIDENTIFY, or predate a rollout that set it.
				original[in.ID] = true
			}
		}
	}
	var out []orthancapi.Instance
	for _, in := range s.listed {
		if needed[in.ID] && !kept[in.ID] && original[in.ID] {
			out = append(out, in)
		}
	}
	if len(out) > 0 {
		// Said before the deletes: the event of such a destination
		// that waited (its forwarders down or behind) finds the study
		// gone, and its ledger tells it was not for it.
		for _, d := range unselected {
			rctx, cancel := context.WithTimeout(ctx, natsjs.RequestTimeout)
			err := recordNotSelected(rctx, s.ledgers[d.Name], ev, rulesDigest(d))
			cancel()
			if err != nil {
				return nil, fmt.Errorf("destination %s: %w", d.Name, err)
			}
		}
	}
	return out, nil
}

// unselectedCounter names the destination whose forwarders count the
// instances no destination selects (forward.Options.CountsUnselected):
// the name that sorts first, so that forwarder groups listing
// DESTINATIONS in different orders still pick the same one and each
// study is counted once.
func unselectedCounter(all []config.NamedDestination) string {
	name := ""
	for i, d := range all {
		if i == 0 || d.Name < name {
			name = d.Name
		}
	}
	return name
}

// rulesDigest identifies a destination's routing rules, for the not
// selected records another destination's forwarder writes: forwarder
// groups configured apart may hold different rules for it (a rollout, a
// rule changed in one group only).
func rulesDigest(d config.NamedDestination) string {
	sum := sha256.Sum256([]byte(d.Match + "\x00" + d.InstanceMatch))
	return hex.EncodeToString(sum[:8])
}

// recordNotSelected records ev's state of the study as not selected by
// the rules rules identifies in l, unless l holds that state or a newer
// one already.
func recordNotSelected(ctx context.Context, l *ledger.Ledger, ev *events.StudyStable, rules string) error {
	rec, err := l.Lookup(ctx, ev.Source, ev.OrthancStudyID)
	switch {
	case errors.Is(err, ledger.ErrNotRecorded):
	case err != nil:
		return err
	case rec.LastUpdate >= ev.LastUpdate:
		return nil
	}
	err = l.Completed(ctx, ev, ledger.Outcome{NotSelected: true, Rules: rules})
	if errors.Is(err, ledger.ErrForwardedBefore) {
		return nil // recorded forwarded since the lookup
	}
	return err
}

// unconfiguredFunc is buffer mode's forward.Options.Unconfigured: the
// destinations with a consumer on the event stream that are not among
// all. Read at each study's deletes, so that a forwarder still running
// with the old DESTINATIONS sees a destination that a rollout adds as
// soon as the new forwarders made its consumer.
func unconfiguredFunc(js jetstream.JetStream, all []config.NamedDestination) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		queued, err := natsjs.ListDestinations(ctx, js)
		if err != nil {
			return nil, err
		}
		return slices.DeleteFunc(queued, func(name string) bool {
			return slices.ContainsFunc(all, func(d config.NamedDestination) bool { return d.Name == name })
		}), nil
	}
}

// forwardedFunc is buffer mode's forward.Options.Forwarded: whether the
// destination's ledger records the event's state of the study, or a newer
// one, as forwarded.
func forwardedFunc(l *ledger.Ledger) func(context.Context, *events.StudyStable) (bool, error) {
	return recordFor(l, func(rec ledger.Record) bool { return !rec.NotSelected })
}

// keptBeforeFunc is buffer mode's forward.Options.KeptBefore with one
// destination: the instances l records as kept for the event's state of
// the study. A record of another state says nothing of this one's files
// (a newer state's forward recorded what it kept, the stored-instances
// record carrying what earlier ones kept).
func keptBeforeFunc(l *ledger.Ledger) func(context.Context, *events.StudyStable) (func(string) bool, error) {
	return func(ctx context.Context, ev *events.StudyStable) (func(string) bool, error) {
		rec, err := l.Lookup(ctx, ev.Source, ev.OrthancStudyID)
		if errors.Is(err, ledger.ErrNotRecorded) {
			return func(string) bool { return false }, nil
		}
		if err != nil {
			return nil, err
		}
		if rec.LastUpdate != ev.LastUpdate || rec.NotSelected {
			return func(string) bool { return false }, nil
		}
		if rec.KeptAll {
			return func(string) bool { return true }, nil
		}
		kept := make(map[string]bool, len(rec.Kept))
		for _, uid := range rec.Kept {
			kept[uid] = true
		}
		return func(uid string) bool { return kept[uid] }, nil
	}
}

// recordedNotSelectedFunc is buffer mode's
// forward.Options.RecordedNotSelected: whether the destination's ledger
// records the event's state of the study, or a newer one, as not selected
// by its rules (selection.Release writes that for each destination whose rules
// select none of a study it deletes).
func recordedNotSelectedFunc(l *ledger.Ledger, rules string) func(context.Context, *events.StudyStable) (bool, error) {
	// A record another group wrote with other rules for this destination
	// than its own proves nothing: the study may be one they select (left
	// a source-missing dead letter, which alerts).
	return recordFor(l, func(rec ledger.Record) bool { return rec.NotSelected && (rec.Rules == "" || rec.Rules == rules) })
}

// recordFor reports whether l records the event's state of the study, or
// a newer one, in a record that is.
func recordFor(l *ledger.Ledger, is func(ledger.Record) bool) func(context.Context, *events.StudyStable) (bool, error) {
	return func(ctx context.Context, ev *events.StudyStable) (bool, error) {
		rec, err := l.Lookup(ctx, ev.Source, ev.OrthancStudyID)
		if errors.Is(err, ledger.ErrNotRecorded) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		// LastUpdate is Orthanc's YYYYMMDDTHHMMSS: ordered as text, as
		// the ledger orders it.
		return rec.LastUpdate >= ev.LastUpdate && is(rec), nil
	}
}
