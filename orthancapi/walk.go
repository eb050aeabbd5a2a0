package orthancapi

import (
	"context"
	"fmt"
)

// StudyLister pages through Orthanc's list of studies (Client.Studies).
type StudyLister interface {
	Studies(ctx context.Context, since, limit int) ([]Study, error)
}

// seenPages is how many pages of study IDs EachStudy remembers, to give
// none twice when it reads a stretch again.
const seenPages = 4

// EachStudy calls fn for every study of Orthanc's list, pageSize at a
// time, stopping at fn's first error.
//
// Orthanc pages by position (1.10 in the order studies were made, 1.12.7
// sorted by ID; other releases and index plugins may differ): a study
// deleted before the position reached moves an unread one into a page
// already read, where `since += len(page)` would skip it (in buffer mode
// studies are deleted all the time). So each
// page starts a tenth of a page before the position and must begin with
// two studies already given, in the order given; if it does not (more
// deletions than that), it is read again from further back, and the
// next pages overlap as much (up to half a page). Two, not one: on 1.10
// a study deleted and made again (a late instance) keeps its ID but
// moves to the end of the list, and alone it could pass for the place
// reached. The studies given are remembered for a few pages, so none is
// given twice unless the walk goes back further than that. No study
// that is there for the whole walk is skipped, except, on 1.10, the ones
// before two studies deleted and made again one after the other while it
// runs: a walk run again finds them. (One made during the walk may be
// missed: on 1.12 it can sort before the place reached.)
func EachStudy(ctx context.Context, o StudyLister, pageSize int, fn func(Study) error) error {
	if pageSize < 4 {
		return fmt.Errorf("orthancapi: each study: page size %d, want at least 4", pageSize)
	}
	overlap := max(pageSize/10, 2)
	type given struct{ page, n int }
	seen := map[string]given{} // study ID -> the page that read it, the order given
	var (
		pos   int // the position after the last page read
		back  int // how far before pos this page starts
		pages int
		n     int // studies given
	)
	anchored := func(page []Study) bool {
		if len(page) < 2 {
			return false
		}
		a, okA := seen[page[0].ID]
		b, okB := seen[page[1].ID]
		return okA && okB && a.n < b.n
	}
	for {
		back = min(max(back, overlap), pos)
		start := pos - back
		page, err := o.Studies(ctx, start, pageSize)
		if err != nil {
			return fmt.Errorf("list studies from %d: %w", start, err)
		}
		if start > 0 && !anchored(page) {
			// It starts past studies not given yet (or past the end of a
			// list that shrank): read from further back, at most a page
			// further (the studies remembered reach that far), and keep
			// the wider overlap for the next pages (deletions go on at
			// that pace).
			back = min(2*back, back+pageSize)
			overlap = min(back, pageSize/2)
			continue
		}
		pages++
		added := 0
		for _, st := range page {
			g, ok := seen[st.ID]
			if !ok {
				n++
				g.n = n
			}
			g.page = pages // read again: remembered as long again
			seen[st.ID] = g
			if ok {
				continue
			}
			added++
			if err := fn(st); err != nil {
				return err
			}
		}
		if len(page) < pageSize && added == 0 {
			// A short page that gave studies is not the end: up to
			// 1.12.4 Orthanc leaves out of a page a study deleted
			// between listing its IDs and expanding it. Read on, once
			// more at the end.
			return nil
		}
		for id, g := range seen {
			if g.page <= pages-seenPages {
				delete(seen, id)
			}
		}
		pos, back = start+len(page), 0
	}
}
