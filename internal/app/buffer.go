package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/orthancapi"
)

// releaseFunc is buffer mode's forward.Options.Release with several
// destinations. An instance may leave the source once every destination
// whose rules select it has recorded this state of the study (its
// LastUpdate) in its ledger: a destination records a state only after
// storing all it selected of it. Rules that fail on the study keep every
// instance (its destination dead-letters the study).
func releaseFunc(all []config.NamedDestination, routes map[string]*route, ledgers map[string]*ledger.Ledger) func(context.Context, *events.StudyStable, []orthancapi.Instance) ([]orthancapi.Instance, error) {
	return func(ctx context.Context, ev *events.StudyStable, listed []orthancapi.Instance) ([]orthancapi.Instance, error) {
		needed := map[string]bool{}  // selected by some destination
		pending := map[string]bool{} // selected by one that has not stored it
		for _, d := range all {
			selected := listed
			if rt := routes[d.Name]; rt != nil {
				var err error
				if selected, err = rt.Select(ctx, ev.Source, ev.OrthancStudyID, listed); err != nil {
					return nil, fmt.Errorf("destination %s: %w", d.Name, err)
				}
			}
			if len(selected) == 0 {
				continue
			}
			rec, err := ledgers[d.Name].Lookup(ctx, ev.Source, ev.OrthancStudyID)
			if err != nil && !errors.Is(err, ledger.ErrNotRecorded) {
				return nil, fmt.Errorf("destination %s: %w", d.Name, err)
			}
			stored := err == nil && rec.LastUpdate == ev.LastUpdate
			for _, in := range selected {
				needed[in.ID] = true
				if !stored {
					pending[in.ID] = true
				}
			}
		}
		var out []orthancapi.Instance
		for _, in := range listed {
			if needed[in.ID] && !pending[in.ID] {
				out = append(out, in)
			}
		}
		return out, nil
	}
}
