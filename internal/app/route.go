package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/routing"
	"github.com/stowline/stowline/orthancapi"
)

// route is a destination's routing rules over the configured sources: the
// forward.Router of a destination with rules.
type route struct {
	rules   routing.Route
	sources *Sources
	// match and instanceMatch name the rules' variables in failures.
	match, instanceMatch string
}

// newRoute compiles d's rules; nil when it has none (every instance of
// every study goes to it).
func newRoute(d config.NamedDestination, sources *Sources) (*route, error) {
	study, err := routing.CompileStudyRule(d.Match)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.VarName("MATCH"), err)
	}
	instance, err := routing.CompileInstanceRule(d.InstanceMatch)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.VarName("INSTANCE_MATCH"), err)
	}
	if study.All() && instance.All() {
		return nil, nil
	}
	return &route{rules: routing.Route{Study: study, Instance: instance}, sources: sources,
		match: d.VarName("MATCH"), instanceMatch: d.VarName("INSTANCE_MATCH")}, nil
}

// Select applies the rules to a study of a source. A rule that fails on
// the study is a permanent failure of it at this destination, naming the
// rule; a source that cannot be read is transient.
func (r *route) Select(ctx context.Context, source, studyID string, instances []orthancapi.Instance) ([]orthancapi.Instance, error) {
	o, err := r.sources.Lookup(source)
	if err != nil {
		return nil, &forward.Error{Class: forward.Permanent, Err: err}
	}
	return r.selectFrom(ctx, o, source, studyID, instances)
}

// selectFrom is Select reading the study from o.
func (r *route) selectFrom(ctx context.Context, o routing.Orthanc, source, studyID string, instances []orthancapi.Instance) ([]orthancapi.Instance, error) {
	// A former name (ORTHANC_SOURCE_ALIASES) is the source's for the
	// rules: rules renamed with it select its queued and replayed studies.
	selected, err := r.rules.Select(ctx, o, r.sources.Name(source), studyID, instances)
	var re *routing.RuleError
	if errors.As(err, &re) {
		name := r.match
		if re.Instance {
			name = r.instanceMatch
		}
		return nil, &forward.Error{Class: forward.Permanent, Err: fmt.Errorf("%s: %w", name, err)}
	}
	return selected, err
}
