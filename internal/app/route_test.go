package app

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/routing"
	"github.com/stowline/stowline/orthancapi"
)

// ctOrthanc is a source holding one CT study of one instance.
type ctOrthanc struct{}

func (ctOrthanc) StudyFacts(context.Context, string) (orthancapi.StudyFacts, error) {
	return orthancapi.StudyFacts{ModalitiesInStudy: []string{"CT"}, Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "CT"}}}, nil
}

func (ctOrthanc) InstanceMetadata(context.Context, string) (orthancapi.InstanceMetadata, error) {
	return orthancapi.InstanceMetadata{}, nil
}

// A rule that fails on a study is a permanent failure of it (no retry
// makes it pass) and names the variable to fix: the study rule's or the
// instance rule's.
func TestRouteRuleFailingAtRunTime(t *testing.T) {
	for _, tt := range []struct {
		name, match, instanceMatch string
		wantVar                    string
	}{
		{"study rule out of range", "study.modalities[3] == 'CT'", "", "DESTINATION_AI_MATCH"},
		{"instance rule divides by zero", "", "1 / (instance.modality.size() - 2) == 1", "DESTINATION_AI_INSTANCE_MATCH"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := config.NamedDestination{Name: "ai", Var: "DESTINATION_AI_", Match: tt.match, InstanceMatch: tt.instanceMatch}
			r, err := newRoute(d, nil)
			if err != nil || r == nil {
				t.Fatalf("newRoute = %v, %v; want a route", r, err)
			}
			instances := []orthancapi.Instance{{ID: "i1", SOPInstanceUID: "1.2.3.1", SeriesID: "s1"}}
			got, err := r.selectFrom(t.Context(), ctOrthanc{}, "main", "st", instances)
			if err == nil {
				t.Fatalf("selected %v, want the rule's failure", got)
			}
			if c := forward.Classify(err); c != forward.Permanent {
				t.Errorf("class %v, want permanent", c)
			}
			if !errors.Is(err, routing.ErrRule) {
				t.Errorf("err = %v, want routing.ErrRule", err)
			}
			if !strings.HasPrefix(err.Error(), tt.wantVar+": ") {
				t.Errorf("err = %v, want it to name %s", err, tt.wantVar)
			}
		})
	}
}
