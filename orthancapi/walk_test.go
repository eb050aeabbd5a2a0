package orthancapi_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/stowline/stowline/orthancapi"
)

// shrinkingList is Orthanc's list of studies, paged by position, from
// which studies are deleted while it is walked.
type shrinkingList struct {
	studies []orthancapi.Study
	// deleteBefore is how many studies before the position asked for are
	// deleted before each page is answered.
	deleteBefore int
	requests     int
}

func (l *shrinkingList) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	l.requests++
	for range l.deleteBefore {
		if since > 0 && since <= len(l.studies) {
			l.studies = slices.Delete(l.studies, since-1, since)
			since--
		}
	}
	end := min(since+limit, len(l.studies))
	if since >= end {
		return nil, nil
	}
	return slices.Clone(l.studies[since:end]), nil
}

func TestEachStudy(t *testing.T) {
	for _, tt := range []struct {
		name         string
		studies      int
		deleteBefore int
	}{
		{"nothing deleted", 95, 0},
		{"a few deleted before each page", 95, 2},
		{"more deleted than the overlap", 95, 7},
		{"a page's worth deleted", 95, 10},
		{"exactly full pages", 40, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &shrinkingList{deleteBefore: tt.deleteBefore}
			for i := range tt.studies {
				l.studies = append(l.studies, orthancapi.Study{ID: fmt.Sprintf("s%03d", i)})
			}
			seen := map[string]int{}
			err := orthancapi.EachStudy(context.Background(), l, 10, func(st orthancapi.Study) error {
				seen[st.ID]++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Every study still listed at the end was given, once.
			for _, st := range l.studies {
				if seen[st.ID] != 1 {
					t.Errorf("%s given %d times", st.ID, seen[st.ID])
				}
			}
			if tt.deleteBefore == 0 && len(seen) != tt.studies {
				t.Errorf("%d of %d studies given", len(seen), tt.studies)
			}
		})
	}
}
