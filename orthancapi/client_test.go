package orthancapi_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/orthancapi"
)

const (
	studyID    = "8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d"
	instanceID = "f689ddd2-662f8fe1-8b18180d-ec2a2cee-937917af"
	seriesA    = "93034833-163e42c3-bc9a428b-194620cf-2c5799e5"
	seriesB    = "112b4636-51483acb-0b9184f7-f643f233-5e013fc0"
)

// fakeOrthanc serves canned answers by escaped path and records requests.
type fakeOrthanc struct {
	t        *testing.T
	mu       sync.Mutex
	routes   map[string]http.HandlerFunc
	requests []*http.Request
	newConns atomic.Int32
}

func newFake(t *testing.T) (*fakeOrthanc, *httptest.Server) {
	t.Helper()
	f := &fakeOrthanc{t: t, routes: map[string]http.HandlerFunc{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r)
		h, ok := f.routes[r.URL.EscapedPath()]
		f.mu.Unlock()
		if !ok && r.URL.Path == "/system" {
			// Confirms the fake's 404s as Orthanc's own.
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"Name":"fake","Version":"1.12.7","ApiVersion":27}`)
			return
		}
		if !ok {
			// Orthanc answers unknown studies with an empty 404.
			w.WriteHeader(http.StatusNotFound)
			return
		}
		h(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.newConns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeOrthanc) handle(path string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[path] = h
}

func (f *fakeOrthanc) json(path, body string) {
	f.handle(path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	})
}

func (f *fakeOrthanc) requestCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

func (f *fakeOrthanc) lastRequest() *http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		f.t.Fatal("no request received")
	}
	return f.requests[len(f.requests)-1]
}

func newClient(t *testing.T, url string, opts ...orthancapi.Option) *orthancapi.Client {
	t.Helper()
	c, err := orthancapi.New(url, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", url, err)
	}
	return c
}

func TestNewValidatesURL(t *testing.T) {
	tests := []struct {
		url     string
		opts    []orthancapi.Option
		wantErr string // "" for success
	}{
		{url: "http://orthanc:8042"},
		{url: "https://pacs.example/orthanc/"},
		{url: "http://[::1]:8042"},
		{url: "", wantErr: "empty"},
		{url: "orthanc:8042", wantErr: `missing "http://"`},
		{url: "ftp://orthanc", wantErr: "scheme must be http or https"},
		{url: "http://", wantErr: "no host"},
		{url: "http:///studies", wantErr: "no host"},
		{url: "http://:8042", wantErr: "no host"},
		{url: "http://user:secret@orthanc", wantErr: "credentials"},
		{url: "http://orthanc/?x=1", wantErr: "query"},
		{url: "http://orthanc/#frag", wantErr: "fragment"},
		{url: "http://orthanc:99999", wantErr: "port"},
		// The port's bounds, each side of them.
		{url: "http://orthanc:65535"},
		{url: "http://orthanc:65536", wantErr: "port"},
		{url: "http://orthanc:1"},
		{url: "http://orthanc:0", wantErr: "port"},
		{url: "http://orth anc", wantErr: "invalid"},
		// No part of a URL that may hold a secret is quoted.
		{url: "http://secret@orthanc", wantErr: "credentials"},
		{url: "http://orthanc/?apikey=secret", wantErr: "query"},
		{url: "http://orthanc/#secret", wantErr: "fragment"},
		{url: "ftp://secret@orthanc/?apikey=secret", wantErr: "scheme must be http or https"},
		{url: "admin:secret@orthanc:8042", wantErr: `"orthanc:8042": scheme must be http or https (missing "http://"?)`},
		{url: "http://admin:secret%zz@orthanc", wantErr: "invalid URL escape"},
		{url: "http://secret token@orthanc", wantErr: "invalid userinfo"},
		{url: "http://orthanc", opts: []orthancapi.Option{orthancapi.WithRequestTimeout(0)}, wantErr: "timeout"},
		{url: "http://orthanc", opts: []orthancapi.Option{orthancapi.WithBasicAuth("", "x")}, wantErr: "empty username"},
	}
	for _, tc := range tests {
		t.Run(tc.url+tc.wantErr, func(t *testing.T) {
			_, err := orthancapi.New(tc.url, tc.opts...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error quotes a secret: %v", err)
			}
		})
	}
}

func TestInvalidIDsSendNoRequest(t *testing.T) {
	f, srv := newFake(t)
	c := newClient(t, srv.URL)
	ctx := context.Background()
	bad := []string{"", "..", "../system", "a/b", "8A8CF898-CA27C490-D0C7058C-929D0581-2BBF104D", studyID + "?x=1"}
	// Every exported call that puts an Orthanc ID into a URL.
	calls := map[string]func(id string) error{
		"Study":                  func(id string) error { _, err := c.Study(ctx, id); return err },
		"StudyInstances":         func(id string) error { _, err := c.StudyInstances(ctx, id); return err },
		"StudyFacts":             func(id string) error { _, err := c.StudyFacts(ctx, id); return err },
		"InstanceStudy":          func(id string) error { _, err := c.InstanceStudy(ctx, id); return err },
		"SeriesStudy":            func(id string) error { _, err := c.SeriesStudy(ctx, id); return err },
		"InstanceMetadata":       func(id string) error { _, err := c.InstanceMetadata(ctx, id); return err },
		"OpenInstanceFile":       func(id string) error { _, _, err := c.OpenInstanceFile(ctx, id); return err },
		"OpenTranscodedInstance": func(id string) error { _, err := c.OpenTranscodedInstance(ctx, id, "1.2.840.10008.1.2.1"); return err },
		"DeleteInstance":         func(id string) error { return c.DeleteInstance(ctx, id) },
	}
	for _, level := range []string{"Patient", "Study", "Series", "Instance"} {
		calls["Exists "+level] = func(id string) error { _, err := c.Exists(ctx, level, id); return err }
	}
	for name, call := range calls {
		for _, id := range bad {
			if err := call(id); !errors.Is(err, orthancapi.ErrInvalidID) {
				t.Errorf("%s(%q): err = %v, want ErrInvalidID", name, id, err)
			}
		}
	}
	if n := f.requestCount(); n != 0 {
		t.Errorf("%d requests sent for invalid IDs", n)
	}
}

func TestPathsUseBaseURLPrefix(t *testing.T) {
	f, srv := newFake(t)
	f.json("/orthanc/studies/"+studyID, `{"ID":"`+studyID+`"}`)
	f.json("/orthanc/changes", `{"Changes":[],"Done":true,"Last":7}`)
	// Trailing slash on the base URL must not double the slash.
	c := newClient(t, srv.URL+"/orthanc/")
	if _, err := c.Study(context.Background(), studyID); err != nil {
		t.Fatal(err)
	}
	if got := f.lastRequest().URL.Path; got != "/orthanc/studies/"+studyID {
		t.Errorf("path %q", got)
	}
	ch, err := c.Changes(context.Background(), 42, 10)
	if err != nil {
		t.Fatal(err)
	}
	r := f.lastRequest()
	if r.URL.Query().Get("since") != "42" || r.URL.Query().Get("limit") != "10" {
		t.Errorf("query %q", r.URL.RawQuery)
	}
	if ch.Last != 7 || !ch.Done {
		t.Errorf("changes %+v", ch)
	}
	if _, err := c.Changes(context.Background(), 0, 0); err != nil {
		t.Fatal(err)
	}
	if q := f.lastRequest().URL.Query(); q.Has("limit") || q.Get("since") != "0" {
		t.Errorf("limit 0 should leave Orthanc's default: query %q", f.lastRequest().URL.RawQuery)
	}
	if _, err := c.Changes(context.Background(), -1, 0); err == nil {
		t.Error("negative since accepted")
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name         string
		status       int
		body         string
		system       string // GET /system's answer, Orthanc's when empty
		wantNotFound bool
		wantMessage  string
		wantDetails  string
		wantText     string
	}{
		{
			name:   "orthanc 404 JSON",
			status: 404,
			body: `{"HttpError":"Not Found","HttpStatus":404,"Message":"Unknown resource","Method":"GET",
				"OrthancError":"Unknown resource","OrthancStatus":17,"Uri":"/studies/x"}`,
			wantNotFound: true,
			wantMessage:  "Unknown resource",
			wantText:     "orthancapi: GET /studies/" + studyID + ": HTTP 404 Not Found: Unknown resource",
		},
		{
			name:         "empty 404",
			status:       404,
			wantNotFound: true,
			wantText:     "orthancapi: GET /studies/" + studyID + ": HTTP 404 Not Found",
		},
		{
			// Traefik's answer while Orthanc's pod is replaced.
			name:     "proxy's 404 page",
			status:   404,
			body:     "404 page not found\n",
			wantText: "HTTP 404 Not Found, not taken for Orthanc's answer: its body is not Orthanc's",
		},
		{
			name:        "JSON 404 not Orthanc's",
			status:      404,
			body:        `{"message":"no Route matched with those values"}`,
			wantMessage: "no Route matched with those values",
			wantText:    "not taken for Orthanc's answer",
		},
		{
			// Envoy without a route: an empty 404 for /system too.
			name:     "empty 404, /system 404 as well",
			status:   404,
			system:   "404",
			wantText: "HTTP 404 Not Found, not taken for Orthanc's answer: GET /system: HTTP 404",
		},
		{
			name:     "empty 404, /system not Orthanc's",
			status:   404,
			system:   `{"status":"ok"}`,
			wantText: "not taken for Orthanc's answer: GET /system: not Orthanc's answer",
		},
		{
			name:        "400 with details",
			status:      400,
			body:        `{"Details":"Missing \"since\" argument","HttpStatus":400,"Message":"Bad request","OrthancError":"Bad request"}`,
			wantMessage: "Bad request",
			wantDetails: `Missing "since" argument`,
			wantText:    `HTTP 400 Bad Request: Bad request (Missing "since" argument)`,
		},
		{
			name:        "only OrthancError",
			status:      500,
			body:        `{"OrthancError":"Internal error","HttpStatus":500}`,
			wantMessage: "Internal error",
			wantText:    "HTTP 500 Internal Server Error: Internal error",
		},
		{
			// A message spread over lines would split a log line.
			name:        "multi-line message",
			status:      500,
			body:        `{"Message":"Internal\nerror:   line two","Details":"a\r\nb","HttpStatus":500}`,
			wantMessage: "Internal error: line two",
			wantDetails: "a b",
			wantText:    "HTTP 500 Internal Server Error: Internal error: line two (a b)",
		},
		{
			name:     "proxy HTML",
			status:   502,
			body:     "<html><body>Bad gateway\n</body></html>",
			wantText: "HTTP 502 Bad Gateway",
		},
		{
			name:     "401",
			status:   401,
			wantText: "HTTP 401 Unauthorized",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.handle("/studies/"+studyID, func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			switch tc.system {
			case "":
			case "404":
				f.handle("/system", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) })
			default:
				f.json("/system", tc.system)
			}
			_, err := newClient(t, srv.URL).Study(context.Background(), studyID)
			var oe *orthancapi.Error
			if !errors.As(err, &oe) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if oe.StatusCode != tc.status || oe.Method != "GET" || oe.Path != "/studies/"+studyID {
				t.Errorf("error fields %+v", oe)
			}
			if got := errors.Is(err, orthancapi.ErrNotFound); got != tc.wantNotFound {
				t.Errorf("errors.Is(ErrNotFound) = %v", got)
			}
			if oe.OrthancMessage != tc.wantMessage || oe.OrthancDetails != tc.wantDetails {
				t.Errorf("message %q details %q", oe.OrthancMessage, oe.OrthancDetails)
			}
			if !strings.Contains(err.Error(), tc.wantText) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Error() = %q, want one line containing %q", err.Error(), tc.wantText)
			}
		})
	}
}

func TestBasicAuth(t *testing.T) {
	f, srv := newFake(t)
	f.json("/system", `{"Name":"x"}`)
	c := newClient(t, srv.URL, orthancapi.WithBasicAuth("alice", "s3cret"))
	if _, err := c.System(context.Background()); err != nil {
		t.Fatal(err)
	}
	u, p, ok := f.lastRequest().BasicAuth()
	if !ok || u != "alice" || p != "s3cret" {
		t.Errorf("basic auth %q %q %v", u, p, ok)
	}
	if _, err := newClient(t, srv.URL).System(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := f.lastRequest().BasicAuth(); ok {
		t.Error("credentials sent without WithBasicAuth")
	}
}

func TestSystem(t *testing.T) {
	f, srv := newFake(t)
	f.json("/system", `{"ApiVersion":16,"CheckRevisions":false,"DatabaseBackendPlugin":null,"DatabaseVersion":6,
		"DicomAet":"ORTHANC","DicomPort":4242,"HttpPort":8042,"IsHttpServerSecure":false,"Name":"MyOrthanc",
		"PluginsEnabled":true,"StorageAreaPlugin":null,"Version":"1.10.1"}`)
	got, err := newClient(t, srv.URL).System(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := orthancapi.System{Name: "MyOrthanc", Version: "1.10.1", ApiVersion: 16, DatabaseVersion: 6,
		DicomAet: "ORTHANC", DicomPort: 4242, HttpPort: 8042, PluginsEnabled: true}
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	// JSON answers are not asked gzipped either (Go's transport asks by
	// default): Orthanc would spend CPU compressing for the LAN.
	if ae := f.lastRequest().Header.Get("Accept-Encoding"); ae != "identity" {
		t.Errorf("Accept-Encoding %q, want identity", ae)
	}
}

func TestStudyInstancesOrder(t *testing.T) {
	f, srv := newFake(t)
	// Series B is missing from the series list, as if it arrived between
	// the two calls: the client must fetch it.
	f.json("/studies/"+studyID+"/series", `[{"ID":"`+seriesA+`","MainDicomTags":{"SeriesInstanceUID":"1.2.9"}}]`)
	f.json("/series/"+seriesB, `{"ID":"`+seriesB+`","MainDicomTags":{"SeriesInstanceUID":"1.2.10"}}`)
	inst := func(id, series, sop, number string, size int) string {
		return fmt.Sprintf(`{"ID":%q,"FileSize":%d,"ParentSeries":%q,"MainDicomTags":{"SOPInstanceUID":%q,"InstanceNumber":%q}}`,
			id, size, series, sop, number)
	}
	id := func(n int) string { return fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", n) }
	f.json("/studies/"+studyID+"/instances", "["+strings.Join([]string{
		inst(id(1), seriesA, "1.9.10", "10", 100),
		inst(id(2), seriesA, "1.9.2", "2", 200),
		inst(id(3), seriesB, "1.8.1", "1", 300),
		inst(id(4), seriesA, "1.9.0", "", 400),
		inst(id(5), seriesA, "1.9.1", "2", 500),
	}, ",")+"]")
	got, err := newClient(t, srv.URL).StudyInstances(context.Background(), studyID)
	if err != nil {
		t.Fatal(err)
	}
	// "1.2.10" < "1.2.9" as strings: series B first.
	wantIDs := []string{id(3), id(5), id(2), id(1), id(4)}
	if len(got) != len(wantIDs) {
		t.Fatalf("got %d instances", len(got))
	}
	for i, w := range wantIDs {
		if got[i].ID != w {
			t.Errorf("position %d: %s (%s #%s), want %s", i, got[i].ID, got[i].SeriesInstanceUID, got[i].SOPInstanceUID, w)
		}
	}
	if got[0].SeriesInstanceUID != "1.2.10" || got[0].SeriesID != seriesB || got[0].FileSize != 300 || got[0].SOPInstanceUID != "1.8.1" {
		t.Errorf("first instance %+v", got[0])
	}
}

// A series that arrived after the series list and left before its own
// lookup (404) is no sign the study is gone: ErrNotFound would have the
// forwarder dead-letter a study Orthanc still holds.
func TestStudyInstancesSeriesGoneMeanwhile(t *testing.T) {
	f, srv := newFake(t)
	f.json("/studies/"+studyID+"/series", `[{"ID":"`+seriesA+`","MainDicomTags":{"SeriesInstanceUID":"1.2.9"}}]`)
	f.json("/studies/"+studyID+"/instances", `[{"ID":"00000001-00000000-00000000-00000000-00000000","FileSize":1,"ParentSeries":"`+seriesB+`","MainDicomTags":{"SOPInstanceUID":"1.8.1"}}]`)
	_, err := newClient(t, srv.URL).StudyInstances(context.Background(), studyID)
	if err == nil || errors.Is(err, orthancapi.ErrNotFound) || !strings.Contains(err.Error(), seriesB) {
		t.Fatalf("err %v, want an error naming series %s that is not ErrNotFound", err, seriesB)
	}
}

func TestOpenInstanceFile(t *testing.T) {
	const content = "DICM-ish content"
	tests := []struct {
		name     string
		chunked  bool
		wantSize int64
	}{
		{name: "content length", wantSize: int64(len(content))},
		{name: "chunked", chunked: true, wantSize: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.handle("/instances/"+instanceID+"/file", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/dicom")
				if !tc.chunked {
					w.Header().Set("Content-Length", fmt.Sprint(len(content)))
				}
				io.WriteString(w, content)
				if tc.chunked {
					w.(http.Flusher).Flush()
				}
			})
			rc, size, err := newClient(t, srv.URL).OpenInstanceFile(context.Background(), instanceID)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || string(b) != content || size != tc.wantSize {
				t.Errorf("read %q, size %d, err %v", b, size, err)
			}
			r := f.lastRequest()
			if r.Header.Get("Accept-Encoding") != "identity" {
				t.Errorf("Accept-Encoding %q: Orthanc would gzip the file", r.Header.Get("Accept-Encoding"))
			}
		})
	}
	t.Run("not found", func(t *testing.T) {
		_, srv := newFake(t)
		rc, _, err := newClient(t, srv.URL).OpenInstanceFile(context.Background(), instanceID)
		if !errors.Is(err, orthancapi.ErrNotFound) || rc != nil {
			t.Errorf("err = %v, reader %v", err, rc)
		}
	})
}

// TestRequestTimeoutSparesDownloads: the request timeout cuts a slow JSON
// call but not a file download that takes longer.
func TestRequestTimeoutSparesDownloads(t *testing.T) {
	f, srv := newFake(t)
	const timeout = 100 * time.Millisecond
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f.handle("/system", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	f.handle("/instances/"+instanceID+"/file", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "4")
		io.WriteString(w, "DI")
		w.(http.Flusher).Flush()
		time.Sleep(3 * timeout)
		io.WriteString(w, "CM")
	})
	c := newClient(t, srv.URL, orthancapi.WithRequestTimeout(timeout))
	start := time.Now()
	_, err := c.System(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow JSON call: err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*timeout {
		t.Errorf("slow JSON call took %v", d)
	}
	rc, _, err := c.OpenInstanceFile(context.Background(), instanceID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil || string(b) != "DICM" {
		t.Errorf("download: %q, %v", b, err)
	}
}

// A study's instance list is answered once Orthanc has looked every
// instance up (up to 1.12.4): on a slow index it takes longer than the
// JSON calls' timeout, and is bounded by the response header timeout
// (ORTHANC_RESPONSE_TIMEOUT) too.
func TestSlowInstanceListWithinHeaderTimeout(t *testing.T) {
	f, srv := newFake(t)
	const timeout = 500 * time.Millisecond // the series list's, on a loaded host too
	f.json("/studies/"+studyID+"/series", `[{"ID":"`+seriesA+`","MainDicomTags":{"SeriesInstanceUID":"1.2.9"}}]`)
	f.handle("/studies/"+studyID+"/instances", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * timeout):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `[{"ID":"00000001-00000000-00000000-00000000-00000000","FileSize":1,"ParentSeries":"`+seriesA+`","MainDicomTags":{"SOPInstanceUID":"1.9.1"}}]`)
	})
	c := newClient(t, srv.URL, orthancapi.WithRequestTimeout(timeout), orthancapi.WithResponseHeaderTimeout(30*timeout))
	got, err := c.StudyInstances(context.Background(), studyID)
	if err != nil || len(got) != 1 {
		t.Fatalf("StudyInstances: %d instances, err %v; want 1 within the header timeout", len(got), err)
	}
}

// TestResponseHeaderTimeout: Orthanc answers a file it converts only once
// the whole instance is converted; WithResponseHeaderTimeout bounds that
// wait (ORTHANC_RESPONSE_TIMEOUT), and a longer one lets a slow answer
// through.
func TestResponseHeaderTimeout(t *testing.T) {
	f, srv := newFake(t)
	const late = 300 * time.Millisecond
	f.handle("/instances/"+instanceID+"/file", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(late):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "DICM")
	})
	for _, tt := range []struct {
		timeout time.Duration
		ok      bool
	}{{late / 3, false}, {10 * late, true}} {
		c := newClient(t, srv.URL, orthancapi.WithResponseHeaderTimeout(tt.timeout))
		rc, _, err := c.OpenInstanceFile(context.Background(), instanceID)
		if rc != nil {
			rc.Close()
		}
		if (err == nil) != tt.ok {
			t.Errorf("answer after %s, timeout %s: err = %v, want ok %v", late, tt.timeout, err, tt.ok)
		}
	}
	if _, err := orthancapi.New(srv.URL, orthancapi.WithResponseHeaderTimeout(0)); err == nil {
		t.Error("a zero response header timeout was accepted")
	}
}

func TestContextCancelStopsDownload(t *testing.T) {
	f, srv := newFake(t)
	f.handle("/instances/"+instanceID+"/file", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		io.WriteString(w, "DICM")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := newClient(t, srv.URL).OpenInstanceFile(ctx, instanceID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v, want context.Canceled", err)
	}
}

// TestConnectionReuse: answers, errors included, are drained so one
// connection serves sequential calls.
func TestConnectionReuse(t *testing.T) {
	f, srv := newFake(t)
	f.json("/system", `{"Name":"x","Version":"1.10.1"}   `)
	f.handle("/studies/"+studyID, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"HttpStatus":404,"Message":"Unknown resource"}`)
	})
	f.handle("/instances/"+instanceID+"/file", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, strings.Repeat("x", 10000))
	})
	c := newClient(t, srv.URL)
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		if _, err := c.System(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Study(ctx, studyID); !errors.Is(err, orthancapi.ErrNotFound) {
			t.Fatal(err)
		}
		rc, _, err := c.OpenInstanceFile(ctx, instanceID)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	if n := f.newConns.Load(); n != 1 {
		t.Errorf("%d connections for 30 sequential requests, want 1", n)
	}
}

func TestDecodeErrors(t *testing.T) {
	f, srv := newFake(t)
	f.json("/system", `{"Name": `)
	_, err := newClient(t, srv.URL).System(context.Background())
	if err == nil || !strings.Contains(err.Error(), "decode") {
		t.Errorf("err = %v", err)
	}
}

func TestTransportErrorNamesPath(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = newClient(t, "http://"+addr).Study(context.Background(), studyID)
	if err == nil || !strings.Contains(err.Error(), "/studies/"+studyID) {
		t.Errorf("err = %v", err)
	}
	var oe *orthancapi.Error
	if errors.As(err, &oe) {
		t.Errorf("transport error reported as HTTP error %+v", oe)
	}
}

func TestEscapedBasePath(t *testing.T) {
	f, srv := newFake(t)
	f.json("/my%20orthanc/system", `{"Name":"x"}`)
	c := newClient(t, srv.URL+"/my%20orthanc")
	if _, err := c.System(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastRequest().URL.EscapedPath(); got != "/my%20orthanc/system" {
		t.Errorf("path %q", got)
	}
}

// The instance list is decoded element by element; every malformed shape
// is still an error that names the request.
func TestStudyInstancesDecodeErrors(t *testing.T) {
	el := `{"ID":"00000001-00000000-00000000-00000000-00000000","FileSize":1,"ParentSeries":"` + seriesA + `","MainDicomTags":{"SOPInstanceUID":"1.2"}}`
	for _, tc := range []struct{ name, body, want string }{
		{"object, not array", `{"ID":"x"}`, "want a JSON array"},
		{"truncated", "[" + el + ",", "decode answer"},
		{"no closing bracket", "[" + el, "decode answer"},
		{"bad element", `[{"FileSize":"big"}]`, "decode answer"},
		{"bad series ID", `[{"ID":"x","ParentSeries":"../x"}]`, "series"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.json("/studies/"+studyID+"/series", `[{"ID":"`+seriesA+`","MainDicomTags":{"SeriesInstanceUID":"1.2.9"}}]`)
			f.json("/studies/"+studyID+"/instances", tc.body)
			_, err := newClient(t, srv.URL).StudyInstances(context.Background(), studyID)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one with %q", err, tc.want)
			}
		})
	}
	f, srv := newFake(t)
	f.json("/studies/"+studyID+"/series", `[]`)
	f.json("/studies/"+studyID+"/instances", `[]`)
	if got, err := newClient(t, srv.URL).StudyInstances(context.Background(), studyID); err != nil || len(got) != 0 {
		t.Errorf("empty study: %v, %v", got, err)
	}
}

func TestDeleteInstance(t *testing.T) {
	const id = "00000001-00000000-00000000-00000000-00000000"
	for _, tc := range []struct {
		name    string
		status  int
		wantErr string
	}{
		{"deleted", http.StatusOK, ""},
		{"already gone", http.StatusNotFound, "not found"},
		{"refused", http.StatusForbidden, "403"},
		{"server error", http.StatusInternalServerError, "500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.handle("/instances/"+id, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodDelete {
					t.Errorf("method %s, want DELETE", r.Method)
				}
				w.WriteHeader(tc.status)
			})
			err := newClient(t, srv.URL).DeleteInstance(context.Background(), id)
			if tc.status == http.StatusNotFound && !errors.Is(err, orthancapi.ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.wantErr)) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	f, srv := newFake(t)
	if err := newClient(t, srv.URL).DeleteInstance(context.Background(), "../../tools/reset"); err == nil {
		t.Error("a malformed ID was accepted")
	}
	if n := f.requestCount(); n != 0 {
		t.Errorf("%d requests for a malformed ID, want none", n)
	}
}

// A redirect is not followed: Orthanc's credentials never go where it
// points (another port, plain http), and the 3xx is an error.
func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	orthanc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(orthanc.Close)
	c, err := orthancapi.New(orthanc.URL, orthancapi.WithBasicAuth("orthanc", "orthanc-secret"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(t.Context())
	var oe *orthancapi.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusFound {
		t.Errorf("err = %v, want an orthancapi.Error with status 302", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect was followed (%d requests elsewhere)", n)
	}
}

// closingOrthanc answers the first request of each connection with
// keep-alive, then closes the connection when the next request arrives
// without answering it: what Orthanc does when it closes a connection
// idle for a second (its keep-alive time-out, 1.10 and 1.12) just as the
// client reuses it. It counts the requests it answered.
func closingOrthanc(t *testing.T) (url string, answered *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	answered = new(atomic.Int32)
	serve := func(conn net.Conn) {
		defer conn.Close()
		br := bufio.NewReader(conn)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if _, ok := req.Header["Idempotency-Key"]; ok {
			t.Errorf("%s %s sent an Idempotency-Key", req.Method, req.URL.Path)
		}
		body := `{"Name":"fake","Version":"1.10.1"}`
		switch {
		case strings.HasPrefix(req.URL.Path, "/studies/"):
			body = `{"ID":"` + studyID + `","IsStable":true,"LastUpdate":"20261204T101010","MainDicomTags":{"StudyInstanceUID":"1.2.3"}}`
		case strings.HasSuffix(req.URL.Path, "/modify"):
			body = strings.Repeat("\x00", 128) + "DICM"
		}
		// Counted before the answer is written: the client may read it
		// and the test check the count before this goroutine runs on.
		answered.Add(1)
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s", len(body), body)
		if req, err := http.ReadRequest(br); err == nil {
			_, _ = io.Copy(io.Discard, req.Body)
		}
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(conn)
		}
	}()
	return "http://" + ln.Addr().String(), answered
}

// A request on a kept-alive connection that Orthanc closes as it is sent
// is sent again on a new one, for the calls that may be repeated: reads,
// DELETE (idempotent, RFC 9110 9.2.2) and the transcoding POST (Orthanc
// stores nothing). Buffer mode otherwise left the instance in Orthanc
// for good, and a conversion failed the study's forward.
func TestClosedKeepAliveConnectionRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(context.Context, *orthancapi.Client) error
	}{
		{"GET study", func(ctx context.Context, c *orthancapi.Client) error {
			_, err := c.Study(ctx, studyID)
			return err
		}},
		{"DELETE instance", func(ctx context.Context, c *orthancapi.Client) error {
			return c.DeleteInstance(ctx, instanceID)
		}},
		{"POST transcode", func(ctx context.Context, c *orthancapi.Client) error {
			rc, err := c.OpenTranscodedInstance(ctx, instanceID, "1.2.840.10008.1.2.1")
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, answered := closingOrthanc(t)
			c := newClient(t, url)
			if _, err := c.System(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := tc.call(t.Context(), c); err != nil {
				t.Errorf("on a connection closed as it was reused: %v", err)
			}
			if n := answered.Load(); n != 2 {
				t.Errorf("%d requests answered, want 2", n)
			}
		})
	}
}

// json.Decoder holds the element it decodes whole: an instance list of '['
// and endless whitespace, or of one endless string, grew its buffer to
// twice the answer's bound (1.5 GiB of heap for 1.1 GiB of spaces). Each
// element is refused past its own bound, here 1 KiB, however long the
// answer goes on.
func TestStudyInstancesElementBound(t *testing.T) {
	el := func(n int) string {
		return fmt.Sprintf(`{"ID":"%08x-00000000-00000000-00000000-00000000","FileSize":1,"ParentSeries":"%s","MainDicomTags":{"SOPInstanceUID":"1.2.%d"}}`, n, seriesA, n)
	}
	many := make([]string, 100)
	for i := range many {
		many[i] = el(i)
	}
	const endless = 4 << 20 // "endless": far past the bound, well within the answer's
	for _, tc := range []struct {
		name       string
		head, tail string
		fill       byte // endless bytes of it between head and tail
		want       int  // instances listed; -1: refused
	}{
		{"open bracket then whitespace", "[", "]", ' ', -1},
		{"whitespace between elements", "[" + el(1) + ",", el(2) + "]", '\n', -1},
		{"one endless string", `[{"ID":"`, `"}]`, 'x', -1},
		{"elements past the bound together, each within it", "[" + strings.Join(many, ",\n"), "]", 0, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.json("/studies/"+studyID+"/series", `[{"ID":"`+seriesA+`","MainDicomTags":{"SeriesInstanceUID":"1.2.9"}}]`)
			f.handle("/studies/"+studyID+"/instances", func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, tc.head)
				if tc.fill != 0 {
					chunk := strings.Repeat(string(tc.fill), 64<<10)
					for range endless / len(chunk) {
						if _, err := io.WriteString(w, chunk); err != nil {
							return // the client gave up
						}
					}
				}
				io.WriteString(w, tc.tail)
			})
			c := newClient(t, srv.URL)
			orthancapi.SetMaxJSONElementBytes(c, 1<<10)
			got, err := c.StudyInstances(context.Background(), studyID)
			if tc.want >= 0 {
				if err != nil || len(got) != tc.want {
					t.Fatalf("%d instances, err %v; want %d", len(got), err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "element of its array is larger than 1024 bytes") ||
				!strings.Contains(err.Error(), "/studies/"+studyID+"/instances") {
				t.Fatalf("err %.300v; want the instance list refused for an element over 1024 bytes", err)
			}
		})
	}
}

// Orthanc splits /changes' type filter at a literal ';': joined any other
// way, or escaped, the filter names no type Orthanc knows.
func TestChangesTypeFilter(t *testing.T) {
	tests := []struct {
		name    string
		types   []string
		wantRaw string // the query's type parameter, as sent; "" for none
	}{
		{name: "none", wantRaw: ""},
		{name: "one", types: []string{"StableStudy"}, wantRaw: "type=StableStudy"},
		{name: "two", types: []string{"StableStudy", "NewInstance"}, wantRaw: "type=StableStudy;NewInstance"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.json("/changes", `{"Changes":[],"Done":true,"Last":9}`)
			if _, err := newClient(t, srv.URL).Changes(context.Background(), 5, 10, tc.types...); err != nil {
				t.Fatal(err)
			}
			raw := f.lastRequest().URL.RawQuery
			var got string
			for p := range strings.SplitSeq(raw, "&") {
				if strings.HasPrefix(p, "type=") {
					got = p
				}
			}
			if got != tc.wantRaw || !strings.Contains(raw, "since=5") || !strings.Contains(raw, "limit=10") {
				t.Errorf("query %q, want since=5, limit=10 and %q", raw, tc.wantRaw)
			}
		})
	}
}
