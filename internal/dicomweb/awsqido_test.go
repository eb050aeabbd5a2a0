package dicomweb

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/internal/stowsink"
)

// awsSearchServer is a destination that, like AWS HealthImaging, searches
// only studies, a study's series and a series' instances
// (SearchDICOMStudies, SearchDICOMSeries, SearchDICOMInstances), and
// answers anything else 404 with a JSON body. It holds study 1.2.3 with
// the series and instances of held (1.2.3.{n} for n of each series),
// pages capped at pageCap items, and no record past awsSearchCap listed
// (an empty page), as HealthImaging documents. undocumented counts the
// other requests, asked the documented ones.
func awsSearchServer(t *testing.T, held map[string][]int, pageCap int, asked, undocumented *atomic.Int64) *httptest.Server {
	t.Helper()
	const base = "/datastore/d1/studies"
	series := make([]string, 0, len(held))
	for s := range held {
		series = append(series, s)
	}
	slices.Sort(series)
	page := func(w http.ResponseWriter, r *http.Request, tag string, uids []string) {
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil {
			limit = len(uids)
		}
		offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		limit = min(limit, pageCap)
		end := min(offset+limit, len(uids), awsSearchCap)
		var items []string
		for _, u := range uids[min(offset, end):end] {
			items = append(items, fmt.Sprintf(`{%q:{"vr":"UI","Value":[%q]}}`, tag, u))
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, "["+strings.Join(items, ",")+"]")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, _ := strings.CutPrefix(r.URL.Path, base)
		seg := strings.Split(strings.TrimPrefix(rest, "/"), "/")
		switch {
		case r.Method == http.MethodGet && rest == "":
			asked.Add(1)
			page(w, r, "0020000D", []string{"1.2.3"})
			return
		case r.Method == http.MethodGet && len(seg) == 2 && seg[1] == "series":
			asked.Add(1)
			if seg[0] != "1.2.3" {
				page(w, r, tagSeriesInstanceUID, nil)
				return
			}
			page(w, r, tagSeriesInstanceUID, series)
			return
		case r.Method == http.MethodGet && len(seg) == 4 && seg[1] == "series" && seg[3] == "instances":
			asked.Add(1)
			var uids []string
			if seg[0] == "1.2.3" {
				for _, n := range held[seg[2]] {
					uids = append(uids, fmt.Sprintf("1.2.3.%d", n))
				}
			}
			page(w, r, tagSOPInstanceUID, uids)
			return
		}
		undocumented.Add(1)
		stowsink.WriteNotFoundJSON(w)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestSeriesSearchListsOnlyDocumentedRoutes: with WithSeriesSearch (the
// aws profile) a study's instances are listed series by series, and the
// probe asks for a series, never GET studies/{study}/instances, which
// HealthImaging does not offer. Asked there, the fake's 404 read as "the
// study holds nothing": every instance counted missing.
func TestSeriesSearchListsOnlyDocumentedRoutes(t *testing.T) {
	two := map[string][]int{"1.2.3.100": {1, 2, 3}, "1.2.3.200": {4, 5}}
	tests := []struct {
		name         string
		held         map[string][]int
		pageSize     int
		pageCap      int
		wanted       []string
		count        int
		want         int // UIDs listed
		wantRequests int
	}{
		// The series list, then one page a series.
		{name: "two series", held: two, pageSize: 10, pageCap: 10, wanted: uidRange(1, 6), want: 5, wantRequests: 3},
		{name: "pages within a series", held: two, pageSize: 2, pageCap: 10, wanted: uidRange(1, 6), want: 5, wantRequests: 1 + 3 + 2},
		// Every one looked for is in the first series: the second is not asked.
		{name: "stops once none missing", held: two, pageSize: 10, pageCap: 10, wanted: uidRange(1, 4), want: 3, wantRequests: 2},
		// A server capping pages at 2 of the 10 asked: a series' short
		// first page is asked again from where it stopped while
		// instances are missing (1.2.3.3, the first series' third).
		{name: "server caps pages", held: two, pageSize: 10, pageCap: 2, wanted: uidRange(1, 6), want: 5, wantRequests: 1 + 2 + 1},
		// Each short page asked again once, the series list included.
		{name: "one missing", held: two, pageSize: 10, pageCap: 10, wanted: append(uidRange(1, 6), "1.2.3.9"), want: 5, wantRequests: 1 + 2 + 2 + 1},
		{name: "by count", held: two, pageSize: 10, pageCap: 10, count: 5, want: 5, wantRequests: 3},
		{name: "no series", held: map[string][]int{}, pageSize: 10, pageCap: 10, wanted: uidRange(1, 3), want: 0, wantRequests: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked, undocumented atomic.Int64
			srv := awsSearchServer(t, tt.held, tt.pageCap, &asked, &undocumented)
			c, err := New(srv.URL+"/datastore/d1", nil, WithSeriesSearch())
			if err != nil {
				t.Fatal(err)
			}
			c.qidoPageSize = tt.pageSize
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{UIDs: tt.wanted, Count: tt.count})
			if err != nil {
				t.Fatal(err)
			}
			if n := undocumented.Load(); n != 0 {
				t.Errorf("%d requests to routes HealthImaging does not offer", n)
			}
			slices.Sort(got)
			if len(got) != tt.want {
				t.Errorf("listed %v, want %d UIDs", got, tt.want)
			}
			if n := int(asked.Load()); n != tt.wantRequests {
				t.Errorf("%d requests, want %d", n, tt.wantRequests)
			}
		})
	}

	t.Run("probe", func(t *testing.T) {
		var asked, undocumented atomic.Int64
		srv := awsSearchServer(t, two, 10, &asked, &undocumented)
		c, err := New(srv.URL+"/datastore/d1", nil, WithSeriesSearch())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Probe(t.Context(), "9.9.9"); err != nil {
			t.Fatal(err)
		}
		if n := undocumented.Load(); n != 0 || asked.Load() != 1 {
			t.Errorf("%d requests to routes HealthImaging does not offer, %d to its own; want 0 and 1", n, asked.Load())
		}
	})
}

// TestSeriesSearchCapped: HealthImaging lists at most awsSearchCap
// records of a series. A series of more, its instances looked for past
// the cap, is listed up to it and said capped (ErrListingCapped, with the
// UIDs listed), never asked past it: before, the listing ended there as
// if complete, and every caller took the rest for missing.
func TestSeriesSearchCapped(t *testing.T) {
	const big = awsSearchCap + 50
	seq := func(from, to int) []int {
		var out []int
		for n := from; n < to; n++ {
			out = append(out, n)
		}
		return out
	}
	tests := []struct {
		name         string
		held         map[string][]int
		wanted       []string
		wantCapped   bool
		want         int
		wantRequests int
	}{
		{name: "series over the cap", held: map[string][]int{"1.2.3.1": seq(0, big)}, wanted: uidRange(0, big),
			// The series list's short page is asked again, as for any
			// instance missing.
			wantCapped: true, want: awsSearchCap, wantRequests: 1 + awsSearchCap/qidoPageSize + 1},
		// The cap reached, nothing looked for unlisted: complete.
		{name: "series of the cap", held: map[string][]int{"1.2.3.1": seq(0, awsSearchCap)}, wanted: uidRange(0, awsSearchCap),
			want: awsSearchCap, wantRequests: 1 + awsSearchCap/qidoPageSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked, undocumented atomic.Int64
			srv := awsSearchServer(t, tt.held, qidoPageSize, &asked, &undocumented)
			c, err := New(srv.URL+"/datastore/d1", nil, WithSeriesSearch())
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{UIDs: tt.wanted})
			if capped := errors.Is(err, ErrListingCapped); capped != tt.wantCapped || (err != nil && !capped) {
				t.Fatalf("err %v, want capped %v", err, tt.wantCapped)
			}
			if len(got) != tt.want {
				t.Errorf("listed %d UIDs, want %d", len(got), tt.want)
			}
			if n := int(asked.Load()); n != tt.wantRequests {
				t.Errorf("%d requests, want %d", n, tt.wantRequests)
			}
			if n := undocumented.Load(); n != 0 {
				t.Errorf("%d requests to routes HealthImaging does not offer", n)
			}
		})
	}
}
