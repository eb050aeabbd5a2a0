package dicomweb

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// qidoServer answers QIDO-RS for one study of n instances, honouring limit
// (capped at maxLimit when not 0) and offset unless ignoreOffset (then
// limit too, unless keepLimit); status other than 0 answers every request
// with it. *asked counts the requests.
func qidoServer(t *testing.T, n int, ignoreOffset, keepLimit bool, maxLimit, status int, asked *atomic.Int64) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dicom-web/studies/1.2.3/instances" || r.Header.Get("Accept") != "application/dicom+json" ||
			r.URL.Query().Get("includefield") != "00080018" {
			http.Error(w, "unexpected request "+r.URL.String(), http.StatusBadRequest)
			return
		}
		asked.Add(1)
		if status != 0 {
			http.Error(w, "status", status)
			return
		}
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil {
			limit = n
		}
		offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		if ignoreOffset {
			offset = 0
			if !keepLimit {
				limit = n
			}
		}
		if maxLimit > 0 {
			limit = min(limit, maxLimit)
		}
		var items []string
		for i := offset; i < min(n, offset+limit); i++ {
			items = append(items, fmt.Sprintf(`{"00080018":{"vr":"UI","Value":["1.2.3.%d"]},"0020000D":{"vr":"UI","Value":["1.2.3"]}}`, i))
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, "["+strings.Join(items, ",")+"]")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestStudyInstanceUIDs(t *testing.T) {
	tests := []struct {
		name                  string
		n, pageSize, maxLimit int
		expected              int      // the caller's expected count
		wanted                []string // the UIDs the caller looks for
		ignoreOffset          bool
		keepLimit             bool // with ignoreOffset
		status                int
		want, wantRequests    int
		wantStatus            int
	}{
		{name: "one short page", n: 3, pageSize: 10, expected: 3, want: 3, wantRequests: 1},
		{name: "exact pages", n: 20, pageSize: 10, expected: 20, want: 20, wantRequests: 3},
		{name: "several pages", n: 25, pageSize: 10, expected: 25, want: 25, wantRequests: 3},
		{name: "server ignores offset", n: 25, pageSize: 10, expected: 25, ignoreOffset: true, want: 25, wantRequests: 2},
		// Its second page repeats the first: asked once for the whole
		// study, without limit and offset. The listing stopped at the
		// first page, the study verified as missing 15 at every delivery.
		{name: "server ignores offset, honours limit", n: 25, pageSize: 10, expected: 25, ignoreOffset: true, keepLimit: true, want: 25, wantRequests: 3},
		{name: "server ignores offset, honours limit, none missing", n: 25, pageSize: 10, wanted: uidRange(0, 10), ignoreOffset: true, keepLimit: true, want: 10, wantRequests: 2},
		// A server capping pages below the limit asked: its short pages
		// are not the last while fewer than expected are listed.
		{name: "server caps pages", n: 25, pageSize: 10, maxLimit: 4, expected: 25, want: 25, wantRequests: 7},
		{name: "server caps pages, instances missing", n: 25, pageSize: 10, maxLimit: 4, expected: 30, want: 25, wantRequests: 8},
		// The destination holds more of the study than was sent (a
		// routing rule sent one series), those sent on the capped
		// server's second page: a first page listing more than were
		// sent is not the end.
		{name: "server caps pages, those sent on the second", n: 150, pageSize: 200, maxLimit: 100, wanted: uidRange(90, 150), want: 150, wantRequests: 2},
		{name: "server caps pages, those sent on the first", n: 150, pageSize: 200, maxLimit: 100, wanted: uidRange(0, 60), want: 100, wantRequests: 1},
		{name: "server caps pages, one sent missing", n: 150, pageSize: 200, maxLimit: 100, wanted: append(uidRange(90, 150), "1.2.3.999"), want: 150, wantRequests: 3},
		{name: "instances missing", n: 3, pageSize: 10, expected: 5, want: 3, wantRequests: 2},
		{name: "nothing expected", n: 3, pageSize: 10, want: 3, wantRequests: 1},
		{name: "unknown study", n: 0, pageSize: 10, expected: 3, status: http.StatusNotFound, want: 0, wantRequests: 1},
		{name: "refused", n: 0, pageSize: 10, status: http.StatusForbidden, wantStatus: http.StatusForbidden, wantRequests: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked atomic.Int64
			srv := qidoServer(t, tt.n, tt.ignoreOffset, tt.keepLimit, tt.maxLimit, tt.status, &asked)
			c, err := New(srv.URL+"/dicom-web", nil)
			if err != nil {
				t.Fatal(err)
			}
			c.qidoPageSize = tt.pageSize
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{UIDs: tt.wanted, Count: tt.expected})
			if asked := int(asked.Load()); asked != tt.wantRequests {
				t.Errorf("%d requests, want %d", asked, tt.wantRequests)
			}
			if tt.wantStatus != 0 {
				var he *HTTPError
				if !errors.As(err, &he) || he.StatusCode != tt.wantStatus {
					t.Fatalf("err = %v, want HTTP %d", err, tt.wantStatus)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Fatalf("%d UIDs, want %d", len(got), tt.want)
			}
			slices.Sort(got)
			if tt.want > 0 && !slices.Contains(got, "1.2.3.0") {
				t.Errorf("UIDs %v lack 1.2.3.0", got)
			}
		})
	}
}

// uidRange names the instances from to to-1 of qidoServer's study.
func uidRange(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("1.2.3.%d", i))
	}
	return out
}

func TestParseQIDOInstancesRejectsMalformed(t *testing.T) {
	if _, err := parseQIDO([]byte(`{"HttpError":"x"}`), tagSOPInstanceUID); !errors.Is(err, errMalformedResponse) {
		t.Errorf("err = %v, want errMalformedResponse", err)
	}
}

// TestStudyInstanceUIDsIgnoresNumbersItDoesNotRead: a destination's
// answer gave a number stowline does not read out of float64's range (a
// count as 1e999): a page's answer, decoded whole, was refused as
// malformed and the study's verification failed, while a larger answer,
// walked, listed its instances. Odd numbers (beyond float64, fractional,
// negative) in any attribute, or after the UID in its own, leave the
// instances listed.
func TestStudyInstanceUIDsIgnoresNumbersItDoesNotRead(t *testing.T) {
	for _, tt := range []struct {
		name, attrs string // attributes beside each instance's UID
		uidValue    string // the UID attribute's Value
	}{
		{"a count beyond float64", `"00201208":{"vr":"IS","Value":[1e999]}`, `["%s"]`},
		{"a negative count beyond float64", `"00201208":{"vr":"IS","Value":[-1e999]}`, `["%s"]`},
		{"a fraction and a negative", `"00201209":{"vr":"IS","Value":[2.5,-3]}`, `["%s"]`},
		{"a number after the UID", `"00200013":{"vr":"IS","Value":[1]}`, `["%s",1e999]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var items []string
				if r.URL.Query().Get("offset") == "0" {
					for i := range 3 {
						uid := fmt.Sprintf(tt.uidValue, fmt.Sprintf("1.2.3.%d", i))
						items = append(items, `{"00080018":{"vr":"UI","Value":`+uid+`},`+tt.attrs+`}`)
					}
				}
				w.Header().Set("Content-Type", "application/dicom+json")
				fmt.Fprint(w, "["+strings.Join(items, ",")+"]")
			}))
			t.Cleanup(srv.Close)
			c, err := New(srv.URL+"/dicom-web", nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3})
			if err != nil {
				t.Fatalf("err = %v, want the study's instances listed", err)
			}
			if want := []string{"1.2.3.0", "1.2.3.1", "1.2.3.2"}; !slices.Equal(got, want) {
				t.Errorf("UIDs %v, want %v", got, want)
			}
		})
	}
}

// A server that ignores limit answers the whole study in one page, over
// the fixed answer bound for a study of tens of thousands of instances:
// every verification failed, "answer over ... bytes". The listing's bound
// grows with the instances looked for.
func TestStudyInstanceUIDsBoundGrowsWithTheStudy(t *testing.T) {
	var asked atomic.Int64
	srv := qidoServer(t, 50, true, false, 0, 0, &asked)
	c, err := New(srv.URL+"/dicom-web", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.maxResponseBytes, c.perInstance = 1000, 200 // 50 items of about 100 bytes
	got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 50})
	if err != nil || len(got) != 50 {
		t.Fatalf("%d UIDs, err %v; want 50", len(got), err)
	}
}

// A paged request is read up to what its page can hold; only the request
// for the whole study, without limit and offset, up to what the study
// takes. With the study's bound on every page, a server that ignores
// limit had a verifying worker read a 100,000-instance study's 200 MB for
// a page of 200.
func TestStudyInstanceUIDsPageBound(t *testing.T) {
	const (
		n        = 500 // items of about 85 bytes: 43 KB
		pageSize = 10
		// What the client below reads of a page: 1000, or 10 items of 200.
		pageBytes = pageSize * 200
	)
	tests := []struct {
		name                    string
		ignoreOffset, keepLimit bool
		wantRequests            int
	}{
		{name: "server honours limit and offset", wantRequests: n/pageSize + 1},
		// The first page is refused past pageBytes, then the whole
		// study asked for.
		{name: "server ignores limit", ignoreOffset: true, wantRequests: 2},
		{name: "server ignores offset, honours limit", ignoreOffset: true, keepLimit: true, wantRequests: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked atomic.Int64
			srv := qidoServer(t, n, tt.ignoreOffset, tt.keepLimit, 0, 0, &asked)
			// Read by StudyInstanceUIDs, on the test's goroutine.
			pages := map[string]*countingBody{} // by query
			c := countingClient(t, srv.URL+"/dicom-web", func(req *http.Request, cb *countingBody) {
				if req.URL.Query().Has("limit") {
					pages[req.URL.RawQuery] = cb
				}
			})
			c.maxResponseBytes, c.perInstance, c.qidoPageSize = 1000, 200, pageSize
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: n})
			if err != nil || len(got) != n {
				t.Fatalf("%d UIDs, err %v; want %d", len(got), err, n)
			}
			if asked := int(asked.Load()); asked != tt.wantRequests {
				t.Errorf("%d requests, want %d", asked, tt.wantRequests)
			}
			for q, cb := range pages {
				if cb.n > pageBytes+1 {
					t.Errorf("page %s: read %d bytes, want at most %d", q, cb.n, pageBytes+1)
				}
			}
		})
	}
}

// TestQIDOErrorPageBound: an error answer (a proxy's page) is read up to
// what an HTTPError keeps, not up to a page's bound: before, a verifying
// worker read 16 MiB or more of each such page.
func TestQIDOErrorPageBound(t *testing.T) {
	page := bytes.Repeat([]byte("<p>busy</p>"), 100_000) // 1.1 MB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(page)
	}))
	t.Cleanup(srv.Close)
	var read *countingBody
	c := countingClient(t, srv.URL+"/dicom-web", func(_ *http.Request, cb *countingBody) { read = cb })
	_, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 10})
	if he := (*HTTPError)(nil); !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("err %v, want the 503", err)
	}
	if read == nil || read.n > maxErrorBody+1 {
		t.Errorf("read %d bytes of the error page, want at most %d", read.n, maxErrorBody+1)
	}
}

// countingClient is a Client of url whose answers' bodies count the bytes
// read of them, each handed to counted with its request (on the reading
// goroutine).
func countingClient(t *testing.T, url string, counted func(*http.Request, *countingBody)) *Client {
	t.Helper()
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err == nil {
			cb := &countingBody{r: resp.Body}
			counted(req, cb)
			resp.Body = struct {
				io.Reader
				io.Closer
			}{cb, resp.Body}
		}
		return resp, err
	})
	c, err := New(url, &http.Client{Transport: rt})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
