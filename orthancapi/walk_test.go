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
	remake bool
	// burst studies before the position are deleted at once, before the
	// burstAt-th page.
	burst, burstAt int
	requests       int
}

func (l *shrinkingList) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	l.requests++
	if l.remake && l.requests == 2 {
		st := l.studies[limit-1]
		l.studies = append(slices.Delete(l.studies, limit-1, limit), st)
	}
	deletions := l.deleteBefore
	if l.requests == l.burstAt {
		deletions += l.burst
	}
	for range deletions {
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
		pageSize     int // 10 if 0
		burst        int // deleted at once before the 10th page
	}{
		{"nothing deleted", 95, 0, false, 0, 0},
		{"a few deleted before each page", 95, 2, false, 0, 0},
		{"more deleted than the overlap", 95, 7, false, 0, 0},
		{"a page's worth deleted", 95, 10, false, 0, 0},
		{"exactly full pages", 40, 1, false, 0, 0},
		{"a study made again moves to the end", 15, 0, true, 0, 0},
		// The list shrinks below the position: the read there is empty.
		{"more deleted than the rest of the list", 25, 12, false, 0, 0},
		// Pages of 500: a burst far wider than the pages remembered.
		{"a burst of deletions", 20000, 0, false, 500, 3300},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &shrinkingList{deleteBefore: tt.deleteBefore, remake: tt.remake, burst: tt.burst, burstAt: 10}
			pageSize := tt.pageSize
			if pageSize == 0 {
				pageSize = 10
			}
			for i := range tt.studies {
				l.studies = append(l.studies, orthancapi.Study{ID: fmt.Sprintf("s%03d", i)})
			}
			seen := map[string]int{}
			err := orthancapi.EachStudy(context.Background(), l, pageSize, func(st orthancapi.Study) error {
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

// scriptedList is Orthanc's list of studies, changed before each page as
// the test says.
type scriptedList struct {
	studies  []orthancapi.Study
	before   func(request int, l *scriptedList)
	requests int
}

func (l *scriptedList) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	l.requests++
	l.before(l.requests, l)
	end := min(since+limit, len(l.studies))
	if since >= end {
		return nil, nil
	}
	return slices.Clone(l.studies[since:end]), nil
}

// A study deleted and made again moves to the end of the list: there it
// must not pass for the place the walk reached when studies before that
// place were deleted meanwhile (the walk's next page starts on it).
func TestEachStudyNotFooledByAStudyMadeAgain(t *testing.T) {
	l := &scriptedList{before: func(request int, l *scriptedList) {
		if request != 2 {
			return
		}
		// s09 made again (it moves to the end), s00 to s04 deleted.
		s09 := l.studies[9]
		l.studies = append(slices.Delete(l.studies, 9, 10), s09)
		l.studies = l.studies[5:]
	}}
	for i := range 15 {
		l.studies = append(l.studies, orthancapi.Study{ID: fmt.Sprintf("s%02d", i)})
	}
	seen := map[string]bool{}
	if err := orthancapi.EachStudy(context.Background(), l, 10, func(st orthancapi.Study) error {
		seen[st.ID] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, st := range l.studies {
		if !seen[st.ID] {
			t.Errorf("%s not given", st.ID)
		}
	}
}

// expandingList answers as Orthanc 1.10 to 1.12.4 do: it lists a page's
// IDs, then expands each study, leaving out one deleted in between. The
// first page loses one so.
type expandingList struct {
	studies  []orthancapi.Study
	requests int
}

func (l *expandingList) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	l.requests++
	end := min(since+limit, len(l.studies))
	if since >= end {
		return nil, nil
	}
	page := slices.Clone(l.studies[since:end])
	if l.requests == 1 {
		l.studies = slices.Delete(l.studies, since+3, since+4)
		page = slices.Delete(page, 3, 4)
	}
	return page, nil
}

// A page shorter than asked for is not the end of the list when a study
// was deleted while Orthanc expanded it: the walk stopped there, without
// error, and the audit and the backfill missed every later study.
func TestEachStudyGoesOnPastAShortPage(t *testing.T) {
	l := &expandingList{}
	for i := range 25 {
		l.studies = append(l.studies, orthancapi.Study{ID: fmt.Sprintf("s%02d", i)})
	}
	seen := map[string]int{}
	if err := orthancapi.EachStudy(context.Background(), l, 10, func(st orthancapi.Study) error {
		seen[st.ID]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, st := range l.studies {
		if seen[st.ID] != 1 {
			t.Errorf("%s given %d times, want once", st.ID, seen[st.ID])
		}
	}
}
