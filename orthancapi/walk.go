package orthancapi

import (
	"context"
	"fmt"
)

// StudyLister pages through Orthanc's list of studies (Client.Studies).
type StudyLister interface {
	Studies(ctx context.Context, since, limit int) ([]Study, error)
}

// EachStudy calls fn for every study of Orthanc's list, pageSize at a
// time, stopping at fn's first error.
//
// Orthanc pages by position: a study deleted before the position reached
// moves an unread one into a page already read, where `since +=
// len(page)` would skip it (in buffer mode studies are deleted all the
// time). So each page starts a tenth of a page before the position, and
// what follows the last study of the previous page that it holds is new.
// A page holding none of them (more deletions than the overlap) is read
// again from further back. A study may then be given twice, never
// skipped, except one created and deleted during the walk.
func EachStudy(ctx context.Context, o StudyLister, pageSize int, fn func(Study) error) error {
	if pageSize < 2 {
		return fmt.Errorf("orthancapi: each study: page size %d, want at least 2", pageSize)
	}
	overlap := max(pageSize/10, 1)
	var (
		pos  int             // the position after the last page read
		back int             // how far before pos this page starts
		seen map[string]bool // the previous page's studies
	)
	for {
		back = min(max(back, overlap), pos)
		start := pos - back
		page, err := o.Studies(ctx, start, pageSize)
		if err != nil {
			return fmt.Errorf("list studies from %d: %w", start, err)
		}
		last := -1
		for i, st := range page {
			if seen[st.ID] {
				last = i
			}
		}
		if last < 0 && len(seen) > 0 && start > 0 {
			back += pageSize // none of the previous page: look further back
			continue
		}
		for _, st := range page[last+1:] {
			if err := fn(st); err != nil {
				return err
			}
		}
		if len(page) < pageSize {
			return nil
		}
		seen = make(map[string]bool, len(page))
		for _, st := range page {
			seen[st.ID] = true
		}
		pos, back = start+len(page), 0
	}
}
