package stowsink

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testharness"
)

func parts(t *testing.T, paths []string) []dicomweb.Part {
	t.Helper()
	var ps []dicomweb.Part
	for _, p := range paths {
		info, err := testharness.ReadFileInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, dicomweb.Part{SOPInstanceUID: info.SOPInstanceUID, Size: -1,
			Open: func(context.Context) (io.ReadCloser, error) { return os.Open(p) }})
	}
	return ps
}

// The stow client reads the sink's answer as a real server's: every
// instance stored, with its UIDs.
func TestSinkAnswersLikeAServer(t *testing.T) {
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{Series: 2, InstancesPerSeries: 3, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	sink := New(Options{})
	srv := httptest.NewServer(sink)
	t.Cleanup(srv.Close)
	c, err := dicomweb.New(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ps := parts(t, paths)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Store(ctx, ps)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stored) != len(ps) || len(res.Failed) != 0 {
		t.Fatalf("stored %d failed %d, want %d stored", len(res.Stored), len(res.Failed), len(ps))
	}
	for i, in := range res.Stored {
		if in.SOPInstanceUID != ps[i].SOPInstanceUID || in.SOPClassUID == "" {
			t.Errorf("item %d = %+v, want UID %s and a class", i, in, ps[i].SOPInstanceUID)
		}
	}
	if err := sink.WaitDistinct(ctx, len(ps)); err != nil {
		t.Fatal(err)
	}
	st := sink.Stats()
	var size int64
	for _, p := range paths {
		fi, _ := os.Stat(p)
		size += fi.Size()
	}
	if st.Requests != 1 || st.Instances != int64(len(ps)) || st.Bytes != size {
		t.Errorf("stats = %+v, want 1 request, %d instances, %d bytes", st, len(ps), size)
	}
	if st.First.IsZero() || st.Last.Before(st.First) {
		t.Errorf("stats first %v, last %v: want first set and last not before it", st.First, st.Last)
	}
	sink.Reset()
	if st := sink.Stats(); st != (Stats{}) || sink.Distinct() != 0 {
		t.Errorf("after Reset: stats %+v, %d distinct", st, sink.Distinct())
	}
}

func TestSinkRefusesWhatAServerWould(t *testing.T) {
	srv := httptest.NewServer(New(Options{}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		name, method, path, ctype, body string
		want                            int
	}{
		{"GET", http.MethodGet, "/studies", "", "", http.StatusNotFound},
		{"wrong path", http.MethodPost, "/instances", "multipart/related; type=\"application/dicom\"; boundary=b", "", http.StatusNotFound},
		{"not multipart", http.MethodPost, "/studies", "application/dicom", "x", http.StatusUnsupportedMediaType},
		{"wrong type", http.MethodPost, "/studies", "multipart/related; type=\"application/json\"; boundary=b", "", http.StatusUnsupportedMediaType},
		{"not DICOM", http.MethodPost, "/studies", "multipart/related; type=\"application/dicom\"; boundary=b",
			"--b\r\nContent-Type: application/dicom\r\n\r\nhello\r\n--b--\r\n", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestSinkThrottles(t *testing.T) {
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{InstancesPerSeries: 2, Rows: 128, Columns: 128})
	if err != nil {
		t.Fatal(err)
	}
	// About 66 KB at 200 KB/s plus 100 ms latency: at least 0.3 s.
	srv := httptest.NewServer(New(Options{Latency: 100 * time.Millisecond, BytesPerSecond: 200_000}))
	t.Cleanup(srv.Close)
	c, err := dicomweb.New(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Store(context.Background(), parts(t, paths)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("took %s, want at least 300ms (throttle and latency)", d)
	}
}

// TestMostAtOnce: the sink keeps the most requests it served at once; a
// reset starts again from those still open.
func TestMostAtOnce(t *testing.T) {
	sink := New(Options{})
	srv := httptest.NewServer(sink)
	t.Cleanup(srv.Close)
	const n = 3
	var bodies []*io.PipeWriter
	done := make(chan struct{}, n)
	for range n {
		pr, pw := io.Pipe()
		bodies = append(bodies, pw)
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/dicom-web/studies", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=b`)
		go func() {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			done <- struct{}{}
		}()
	}
	// The requests stay open while their bodies are: all n at once.
	for deadline := time.Now().Add(10 * time.Second); sink.Stats().MostAtOnce < n; {
		if time.Now().After(deadline) {
			st := sink.Stats()
			t.Fatalf("MostAtOnce %d with %d requests arrived and open, want %d", st.MostAtOnce, st.Requests, n)
		}
		time.Sleep(time.Millisecond)
	}
	sink.Reset()
	for _, pw := range bodies {
		pw.Close() // an empty body: refused, and the request ends
	}
	for range n {
		<-done
	}
	if got := sink.Stats().MostAtOnce; got != n {
		t.Errorf("MostAtOnce %d after a reset with %d open, want %d", got, n, n)
	}
	sink.Reset()
	if got := sink.Stats().MostAtOnce; got != 0 {
		t.Errorf("MostAtOnce %d after a reset with none open, want 0", got)
	}
}

// WriteInstancePage answers the page asked, capped, and an empty list
// past the end: a QIDO-RS client pages through it as through a server.
func TestWriteInstancePage(t *testing.T) {
	held := []string{"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"}
	for _, tt := range []struct {
		query string
		want  string
	}{
		{"limit=2&offset=0", "1.2.3.1 1.2.3.2"},
		{"limit=10&offset=1", "1.2.3.2 1.2.3.3 1.2.3.4"}, // capped at 3
		{"limit=3&offset=4", "1.2.3.5"},
		{"limit=3&offset=9", ""},
	} {
		t.Run(tt.query, func(t *testing.T) {
			rec := httptest.NewRecorder()
			WriteInstancePage(rec, httptest.NewRequest(http.MethodGet, "/studies/1.2.3/instances?"+tt.query, nil), held, 3)
			var items []map[string]struct{ Value []string }
			if err := json.Unmarshal(rec.Body.Bytes(), &items); err != nil {
				t.Fatalf("%s: %v", rec.Body, err)
			}
			var got []string
			for _, it := range items {
				got = append(got, it["00080018"].Value...)
			}
			if strings.Join(got, " ") != tt.want || rec.Header().Get("Content-Type") != "application/dicom+json" {
				t.Errorf("page %v (%s), want %s", got, rec.Header().Get("Content-Type"), tt.want)
			}
		})
	}
}
