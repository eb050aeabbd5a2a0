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
	// remake: before the second page, the last study of the first is
	// deleted and made again (a late instance), so it moves to the end.
	remake   bool
	requests int
}

func (l *shrinkingList) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	l.requests++
	if l.remake && l.requests == 2 {
		st := l.studies[limit-1]
		l.studies = append(slices.Delete(l.studies, limit-1, limit), st)
	}
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
		remake       bool
	}{
		{"nothing deleted", 95, 0, false},
		{"a few deleted before each page", 95, 2, false},
		{"more deleted than the overlap", 95, 7, false},
		{"a page's worth deleted", 95, 10, false},
		{"exactly full pages", 40, 1, false},
		{"a study made again moves to the end", 15, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &shrinkingList{deleteBefore: tt.deleteBefore, remake: tt.remake}
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
			// Every study still listed at the end was given: once, or
			// twice for one made again.
			for _, st := range l.studies {
				if seen[st.ID] != 1 && !(tt.remake && seen[st.ID] == 2) {
					t.Errorf("%s given %d times", st.ID, seen[st.ID])
				}
			}
			if tt.deleteBefore == 0 && len(seen) != tt.studies {
				t.Errorf("%d of %d studies given", len(seen), tt.studies)
			}
		})
	}
}
