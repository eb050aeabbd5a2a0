package dicomweb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// uidPart is a part whose content starts with "UID:<uid>\n", so the fake
// server can name what it received; "FAIL:<uid>\n" asks it to report a
// failure for that instance.
func uidPart(uid string, payload []byte) Part {
	return memPart(uid, append([]byte("UID:"+uid+"\n"), payload...))
}

func failPart(uid string) Part {
	return memPart(uid, []byte("FAIL:"+uid+"\n"))
}

// stowJSON builds a DICOM JSON Store Instances Response.
func stowJSON(t testing.TB, stored, failed []string, reason int) []byte {
	t.Helper()
	item := func(uid string) map[string]any {
		return map[string]any{
			"00081150": map[string]any{"vr": "UI", "Value": []any{"1.2.840.10008.5.1.4.1.1.7"}},
			"00081155": map[string]any{"vr": "UI", "Value": []any{uid}},
		}
	}
	ds := map[string]any{}
	if len(stored) > 0 {
		var items []any
		for _, uid := range stored {
			it := item(uid)
			it["00081190"] = map[string]any{"vr": "UR", "Value": []any{"http://stow.test/instances/" + uid}}
			items = append(items, it)
		}
		ds["00081199"] = map[string]any{"vr": "SQ", "Value": items}
	}
	if len(failed) > 0 {
		var items []any
		for _, uid := range failed {
			it := item(uid)
			it["00081197"] = map[string]any{"vr": "US", "Value": []any{reason}}
			items = append(items, it)
		}
		ds["00081198"] = map[string]any{"vr": "SQ", "Value": items}
	}
	b, err := json.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeSTOW is an httptest STOW-RS server that parses the multipart body
// and answers from the part contents (see uidPart).
func fakeSTOW(t *testing.T, log *requestLog) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(fakeSTOWHandler(t, log))
	t.Cleanup(srv.Close)
	return srv
}

// fakeSTOWHandler is fakeSTOW's handler.
func fakeSTOWHandler(t *testing.T, log *requestLog) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cb := &countingBody{r: r.Body}
		r.Body = io.NopCloser(cb)
		parts, err := readMultipart(t, r)
		log.add(r, parts, err, cb.n)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var stored, failed []string
		for _, p := range parts {
			line, _, _ := bytes.Cut(p.data, []byte("\n"))
			switch {
			case bytes.HasPrefix(line, []byte("UID:")):
				stored = append(stored, string(line[4:]))
			case bytes.HasPrefix(line, []byte("FAIL:")):
				failed = append(failed, string(line[5:]))
			}
		}
		status := http.StatusOK
		if len(failed) > 0 {
			status = http.StatusAccepted
			if len(stored) == 0 {
				status = http.StatusConflict
			}
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(status)
		w.Write(stowJSON(t, stored, failed, FailureProcessing))
	})
}

func newTestClient(t *testing.T, baseURL string, opts ...Option) *Client {
	t.Helper()
	c, err := New(baseURL, &http.Client{}, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func TestStoreSuccess(t *testing.T) {
	var log requestLog
	srv := fakeSTOW(t, &log)
	c := newTestClient(t, srv.URL+"/dicom-web/")
	payload := bytes.Repeat([]byte("\r\n--DICM"), 100_000) // 800 KB, crosses many buffer edges
	parts := []Part{uidPart("1.2.3.1", payload), uidPart("1.2.3.2", nil), uidPart("1.2.3.3", []byte{0, 1, 2})}

	res, err := c.Store(context.Background(), parts)
	if err != nil {
		t.Fatalf("Store: %v", err)
	}
	if res.StatusCode != http.StatusOK {
		t.Errorf("StatusCode = %d", res.StatusCode)
	}
	if got := storedUIDs(res); !slices.Equal(got, []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"}) {
		t.Errorf("stored = %q", got)
	}
	if m := res.Missing([]string{"1.2.3.1", "1.2.3.2", "1.2.3.3"}); m != nil {
		t.Errorf("Missing = %q", m)
	}

	if log.count() != 1 {
		t.Fatalf("server saw %d requests", log.count())
	}
	req, got := log.requests[0], log.parts[0]
	if req.URL.Path != "/dicom-web/studies" || req.Method != http.MethodPost {
		t.Errorf("request = %s %s", req.Method, req.URL.Path)
	}
	if !slices.Contains(req.TransferEncoding, "chunked") {
		t.Errorf("TransferEncoding = %v, want chunked", req.TransferEncoding)
	}
	for k, want := range map[string]string{
		"Accept": "application/dicom+json", "User-Agent": "stowline-stow/1",
	} {
		if v := req.Header.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	if !strings.HasPrefix(req.Header.Get("Content-Type"), `multipart/related; boundary=stowline.`) ||
		!strings.HasSuffix(req.Header.Get("Content-Type"), `; type="application/dicom"`) {
		t.Errorf("Content-Type = %q", req.Header.Get("Content-Type"))
	}
	for i, p := range got {
		if ct := p.header.Get("Content-Type"); ct != dicomMediaType {
			t.Errorf("part %d Content-Type = %q", i, ct)
		}
		if want := readPart(t, parts[i]); !bytes.Equal(p.data, want) {
			t.Errorf("part %d: server got %d bytes, want %d", i, len(p.data), len(want))
		}
	}
	if res.BytesSent != log.bodySize[0] {
		t.Errorf("BytesSent = %d, server read %d", res.BytesSent, log.bodySize[0])
	}
}

// readPart returns the content of p.
func readPart(t *testing.T, p Part) []byte {
	t.Helper()
	rc, err := p.Open(context.Background())
	if err != nil {
		t.Fatalf("open part %s: %v", p.SOPInstanceUID, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read part %s: %v", p.SOPInstanceUID, err)
	}
	return b
}

func TestStorePartialFailure202(t *testing.T) {
	var log requestLog
	c := newTestClient(t, fakeSTOW(t, &log).URL)
	res, err := c.Store(context.Background(), []Part{uidPart("a", nil), failPart("b"), uidPart("c", nil)})
	if err != nil {
		t.Fatalf("202 must not be an error: %v", err)
	}
	if res.StatusCode != http.StatusAccepted {
		t.Errorf("StatusCode = %d", res.StatusCode)
	}
	if got := failedSummary(res.Failed); !slices.Equal(got, []string{"1.2.840.10008.5.1.4.1.1.7/b/272"}) {
		t.Errorf("failed = %q", got)
	}
	if m := res.Missing([]string{"a", "b", "c"}); !slices.Equal(m, []string{"b"}) {
		t.Errorf("Missing = %q", m)
	}
}

func TestStoreConflict409CarriesResult(t *testing.T) {
	var log requestLog
	c := newTestClient(t, fakeSTOW(t, &log).URL)
	_, err := c.Store(context.Background(), []Part{failPart("x")})
	var he *HTTPError
	if !errors.As(err, &he) {
		t.Fatalf("err = %v, want *HTTPError", err)
	}
	if he.StatusCode != http.StatusConflict || he.Result == nil {
		t.Fatalf("HTTPError = %+v", he)
	}
	if got := failedSummary(he.Result.Failed); !slices.Equal(got, []string{"1.2.840.10008.5.1.4.1.1.7/x/272"}) {
		t.Errorf("failed = %q", got)
	}
	if he.Result.StatusCode != http.StatusConflict || he.Result.BytesSent == 0 {
		t.Errorf("Result = %+v", he.Result)
	}
	if !strings.Contains(he.Error(), "409 Conflict (stored 0, failed 1)") {
		t.Errorf("Error() = %q", he.Error())
	}
}

func TestStoreErrorResponses(t *testing.T) {
	orthanc400 := readTestdata(t, "orthanc/orthanc-partial-broken.json")
	// One instant for each answer's Date and Retry-After: read twice, the
	// clock could pass a second between them, and the wait be 31 s.
	now := time.Now()
	tests := []struct {
		name        string
		status      int
		contentType string
		header      map[string]string
		body        []byte
		retryAfter  time.Duration
		stored      int
		errContains []string
	}{
		{
			name: "503 with Retry-After seconds", status: 503, contentType: "text/plain",
			header: map[string]string{"Retry-After": "7"}, body: []byte("busy\n"),
			retryAfter: 7 * time.Second, errContains: []string{"503 Service Unavailable", "(text/plain)", "busy"},
		},
		{
			// Read against the answer's Date: the forwarder's clock
			// is 10 min behind the server's, or 10 min ahead.
			name: "429 with a Retry-After date, client clock behind", status: 429,
			header:     map[string]string{"Date": serverTime(now, 10*time.Minute, 0), "Retry-After": serverTime(now, 10*time.Minute, 30*time.Second)},
			retryAfter: 30 * time.Second, errContains: []string{"429 Too Many Requests"},
		},
		{
			name: "429 with a Retry-After date, client clock ahead", status: 429,
			header:     map[string]string{"Date": serverTime(now, -10*time.Minute, 0), "Retry-After": serverTime(now, -10*time.Minute, 30*time.Second)},
			retryAfter: 30 * time.Second, errContains: []string{"429 Too Many Requests"},
		},
		{
			name: "502 HTML from a proxy", status: 502, contentType: "text/html",
			body:        readTestdata(t, "docs/proxy-502.html"),
			errContains: []string{"502 Bad Gateway (text/html): 502 Bad Gateway"},
		},
		{
			name: "400 from Orthanc without Content-Type, with a STOW body", status: 400,
			body: orthanc400, stored: 2, errContains: []string{"400 Bad Request (stored 2, failed 0)"},
		},
		{
			name: "415 Orthanc error object", status: 415, contentType: "application/json",
			body: readTestdata(t, "orthanc/orthanc-single-application-dicom.json"), errContains: []string{"415", "Unsupported media type"},
		},
		{name: "401 empty", status: 401, errContains: []string{"401 Unauthorized"}},
		{
			name: "huge error body is cut", status: 500, contentType: "text/plain",
			body: bytes.Repeat([]byte("é"), 10_000),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				if tt.contentType != "" {
					w.Header().Set("Content-Type", tt.contentType)
				} else {
					w.Header()["Content-Type"] = nil // no sniffing: send none, like Orthanc
				}
				w.WriteHeader(tt.status)
				w.Write(tt.body)
			}))
			defer srv.Close()
			c := newTestClient(t, srv.URL)
			res, err := c.Store(context.Background(), []Part{uidPart("a", nil)})
			var he *HTTPError
			if res != nil || !errors.As(err, &he) {
				t.Fatalf("Store = %v, %v; want nil, *HTTPError", res, err)
			}
			if he.StatusCode != tt.status || he.RetryAfter != tt.retryAfter {
				t.Errorf("HTTPError = %+v", he)
			}
			if len(he.Body) > maxErrorBody {
				t.Errorf("Body is %d bytes, want at most %d", len(he.Body), maxErrorBody)
			}
			if !strings.HasPrefix(string(tt.body), he.Body[:min(len(he.Body), 10)]) {
				t.Errorf("Body = %q does not start like the response", he.Body[:min(len(he.Body), 40)])
			}
			if tt.stored > 0 {
				if he.Result == nil || len(he.Result.Stored) != tt.stored {
					t.Errorf("Result = %+v, want %d stored", he.Result, tt.stored)
				}
			} else if he.Result != nil {
				t.Errorf("Result = %+v, want nil", he.Result)
			}
			for _, s := range tt.errContains {
				if !strings.Contains(he.Error(), s) {
					t.Errorf("Error() = %q, want it to contain %q", he.Error(), s)
				}
			}
		})
	}
}

// serverTime is a server's HTTP-date at now, its clock off from this
// one's by off, after more.
func serverTime(now time.Time, off, after time.Duration) string {
	return now.Add(off).Truncate(time.Second).Add(after).UTC().Format(http.TimeFormat)
}

func TestStoreUnparseableSuccess(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		err                     error
	}{
		{"HTML with 200", "text/html", "<html><title>Login</title></html>", errUnexpectedContentType},
		{"broken JSON with 200", "application/dicom+json", `{"00081199":`, errMalformedResponse},
		// 5.6 million empty items, within the read bound: over 3 GB to
		// decode. Refused, it counts no instance stored.
		{"16 MiB of empty items with 200", "application/dicom+json", string(hostileAnswer(defaultMaxResponseBytes, `{"00081199":{"vr":"SQ","Value":[`, `{}`, `,`, `]}}`)), errMalformedResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", tt.contentType)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := newTestClient(t, srv.URL)
			_, err := c.Store(context.Background(), []Part{uidPart("a", nil)})
			if !errors.Is(err, tt.err) || !errors.Is(err, ErrNotDICOMweb) {
				t.Fatalf("err = %v, want %v and ErrNotDICOMweb", err, tt.err)
			}
			// The breaker's probe gets the same page: not an answer of
			// the destination's either.
			if err := c.Probe(context.Background(), "1.2.3"); !errors.Is(err, ErrNotDICOMweb) {
				t.Errorf("probe: err = %v, want ErrNotDICOMweb", err)
			}
		})
	}
}

func TestStoreResponseTooLarge(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Write(stowJSON(t, []string{strings.Repeat("1", 64)}, nil, 0))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, withMaxResponseBytes(64))
	if _, err := c.Store(context.Background(), []Part{uidPart("a", nil)}); !errors.Is(err, errResponseTooLarge) {
		t.Fatalf("err = %v, want ErrResponseTooLarge", err)
	}
}

// TestStoreAnswerOfAThousandsInstanceRequest: a request of 5,000
// instances (STOW_MAX_INSTANCES=5000, a large CT) is answered with 5,000
// items, each with a long RetrieveURL (4 KiB): over
// 16 MiB. That bound failed the request with every instance stored and
// none known to stowline. An answer past the request's bound still fails,
// naming its instances and that they may be stored.
func TestStoreAnswerOfAThousandsInstanceRequest(t *testing.T) {
	const n = 5000
	parts := make([]Part, n)
	for i := range parts {
		parts[i] = uidPart(fmt.Sprintf("1.2.3.%d", i), nil)
	}
	pad := strings.Repeat("x", 4<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/dicom+json")
		if r.URL.Query().Has("endless") {
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081190":{"vr":"UR","Value":["%s"]}}]}}`, strings.Repeat(pad, (17<<20)/len(pad)))
			return
		}
		io.WriteString(w, `{"00081199":{"vr":"SQ","Value":[`)
		for i := range n {
			if i > 0 {
				io.WriteString(w, ",")
			}
			fmt.Fprintf(w, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["1.2.3.%d"]},`+
				`"00081190":{"vr":"UR","Value":["https://archive.example/studies/1.2.3/instances/1.2.3.%d?%s"]}}`, i, i, pad)
		}
		io.WriteString(w, `]}}`)
	}))
	defer srv.Close()
	res, err := newTestClient(t, srv.URL).Store(t.Context(), parts)
	if err != nil {
		t.Fatalf("Store of %d instances: %v", n, err)
	}
	if len(res.Stored) != n {
		t.Errorf("%d instances stored, want %d", len(res.Stored), n)
	}
	_, err = newTestClient(t, srv.URL+"/?endless=1").Store(t.Context(), parts[:1])
	if !errors.Is(err, errResponseTooLarge) || !strings.Contains(err.Error(), "a request of 1 instances over 16777216 bytes") ||
		!strings.Contains(err.Error(), "may hold them") {
		t.Errorf("an answer past the bound: err = %v, want errResponseTooLarge naming the request and that they may be stored", err)
	}
}

// TestStoreSuccessNamingNoInstance: a 2xx answer that names none of the
// instances (an empty body, {}, a search answer, 204) is no Store
// Instances Response: something else answers at the URL. It is an error
// that says so, with the content type, not an answer that left every
// instance out (re-sent each instance round, then "refused
// transiently").
func TestStoreSuccessNamingNoInstance(t *testing.T) {
	for _, tt := range []struct {
		name, contentType, body string
		status                  int
	}{
		{"200 empty", "", "", 200},
		{"200 empty object", "application/dicom+json", "{}", 200},
		{"200 search answer", "application/dicom+json", `[{"0020000D":{"vr":"UI","Value":["1.2.3"]}}]`, 200},
		{"202 empty", "text/plain", "", 202},
		{"204", "", "", 204},
		// Orthanc 1.10's answer to a multipart body it could not read
		// (a proxy that rewrote the boundary): empty sequences.
		{"Orthanc, body not read", "application/dicom+json", string(readTestdata(t, "orthanc/orthanc-wrong-boundary.json")), 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if tt.contentType != "" {
					w.Header().Set("Content-Type", tt.contentType)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			res, err := newTestClient(t, srv.URL).Store(t.Context(), []Part{uidPart("a", nil), uidPart("b", nil)})
			if !errors.Is(err, errNoInstanceAnswered) || !errors.Is(err, ErrNotDICOMweb) {
				t.Fatalf("Store = %+v, %v; want errNoInstanceAnswered and ErrNotDICOMweb", res, err)
			}
			if want := fmt.Sprintf("%d answer", tt.status); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "none of the 2 instances") {
				t.Errorf("err = %v: want the status and the instances", err)
			}
		})
	}
}

// TestStoreServerClosesEarly: the connection dies before any answer.
func TestStoreServerClosesEarly(t *testing.T) {
	checkNoGoroutineLeak(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}))
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	c, _ := New(srv.URL, hc)
	src := &trackedSource{size: 1 << 30}

	start := time.Now()
	res, err := c.Store(context.Background(), []Part{src.part("1"), src.part("2")})
	if err == nil || res != nil {
		t.Fatalf("Store = %v, %v; want an error", res, err)
	}
	var he *HTTPError
	if errors.As(err, &he) {
		t.Fatalf("err = %v, want a transport error, not an HTTPError", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Store took %v", time.Since(start))
	}
	if o, c := src.opened.Load(), src.closed.Load(); o != c {
		t.Errorf("opened %d sources, closed %d", o, c)
	}
}

func TestStoreContextCanceled(t *testing.T) {
	checkNoGoroutineLeak(t)
	// The server reads slowly forever; the caller gives up.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}))
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	c, _ := New(srv.URL, hc)
	src := &trackedSource{size: 1 << 30}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Store(ctx, []Part{src.part("1")})
	t.Logf("Store returned after %v", time.Since(start))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if o, c := src.opened.Load(), src.closed.Load(); o != 1 || c != 1 {
		t.Errorf("opened %d, closed %d", o, c)
	}
}

func TestStoreSourceErrors(t *testing.T) {
	boom := errors.New("orthanc: connection refused")
	tests := []struct {
		name string
		part Part
	}{
		{"Open fails", Part{SOPInstanceUID: "9.9", Size: -1, Open: func(context.Context) (io.ReadCloser, error) {
			return nil, boom
		}}},
		{"Read fails", Part{SOPInstanceUID: "9.9", Size: -1, Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(io.MultiReader(strings.NewReader("DICM"), errReader{boom})), nil
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoGoroutineLeak(t)
			var log requestLog
			srv := fakeSTOW(t, &log)
			hc := &http.Client{Transport: &http.Transport{}}
			defer hc.CloseIdleConnections()
			c, _ := New(srv.URL, hc)
			_, err := c.Store(context.Background(), []Part{uidPart("1.1", nil), tt.part})
			if !errors.Is(err, boom) {
				t.Fatalf("err = %v, want it to wrap the source error", err)
			}
			if !strings.Contains(err.Error(), `part 2 (SOP Instance UID "9.9")`) {
				t.Errorf("error %q does not name the part", err)
			}
		})
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestStoreRedirects(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /moved/studies", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dicom-web/studies", http.StatusMovedPermanently)
	})
	mux.HandleFunc("POST /permanent/studies", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dicom-web/studies", http.StatusPermanentRedirect)
	})
	mux.HandleFunc("GET /dicom-web/studies", func(w http.ResponseWriter, r *http.Request) {
		// A QIDO-RS search answer: parses as an empty STOW response.
		w.Header().Set("Content-Type", "application/dicom+json")
		io.WriteString(w, `[{"0020000D":{"vr":"UI","Value":["1.2.3"]}}]`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	t.Run("301 followed as GET", func(t *testing.T) {
		_, err := newTestClient(t, srv.URL+"/moved").Store(context.Background(), []Part{uidPart("a", nil)})
		if !errors.Is(err, ErrRedirected) {
			t.Fatalf("err = %v, want ErrRedirected", err)
		}
	})
	t.Run("308 not followed", func(t *testing.T) {
		_, err := newTestClient(t, srv.URL+"/permanent").Store(context.Background(), []Part{uidPart("a", nil)})
		var he *HTTPError
		if !errors.As(err, &he) || he.StatusCode != http.StatusPermanentRedirect || he.Location != "/dicom-web/studies" {
			t.Fatalf("err = %v, want HTTPError 308 with Location", err)
		}
		if !strings.Contains(he.Error(), "redirecting to /dicom-web/studies") {
			t.Errorf("Error() = %q", he.Error())
		}
	})
}

func TestStoreArguments(t *testing.T) {
	c := newTestClient(t, "http://127.0.0.1:1")
	if _, err := c.Store(context.Background(), nil); !errors.Is(err, errNoParts) {
		t.Errorf("no parts: %v", err)
	}
	if _, err := c.Store(context.Background(), []Part{{SOPInstanceUID: "x"}}); !errors.Is(err, errInvalidPart) {
		t.Errorf("nil Open: %v", err)
	}
	bad := newTestClient(t, "http://127.0.0.1:1", withBoundaryFunc(func() (string, error) { return "bad;boundary", nil }))
	if _, err := bad.Store(context.Background(), []Part{memPart("x", nil)}); !errors.Is(err, errInvalidBoundary) {
		t.Errorf("invalid boundary: %v", err)
	}
	failing := newTestClient(t, "http://127.0.0.1:1", withBoundaryFunc(func() (string, error) { return "", io.ErrUnexpectedEOF }))
	if _, err := failing.Store(context.Background(), []Part{memPart("x", nil)}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("boundary func error: %v", err)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		base string
		opts []Option
		url  string
		err  bool
	}{
		{base: "http://orthanc:8042/dicom-web", url: "http://orthanc:8042/dicom-web/studies"},
		{base: "http://orthanc:8042/dicom-web/", url: "http://orthanc:8042/dicom-web/studies"},
		{base: "https://x.dicom.azurehealthcareapis.com/v2", url: "https://x.dicom.azurehealthcareapis.com/v2/studies"},
		// Logs and errors never show a query or user info, where a
		// credential could sit; the request keeps the query.
		{base: "https://h/p/dicomWeb?x=1", url: "https://h/p/dicomWeb/studies"},
		{base: "https://h", url: "https://h/studies"},
		{base: "https://user:secret@h/x", url: "https://h/x/studies"},
		{base: "", err: true},
		{base: "orthanc:8042", err: true},
		{base: "/relative", err: true},
		{base: "ftp://h/x", err: true},
		{base: "http:///nohost", err: true},
		{base: "http://h/x#frag", err: true},
		{base: "http://h/%zz", err: true},
		{base: "http://h", opts: []Option{withMaxResponseBytes(0)}, err: true},
		{base: "http://h", opts: []Option{withBufferSize(10)}, err: true},
		{base: "http://h", opts: []Option{withBoundaryFunc(nil)}, err: true},
		{base: "http://h", opts: []Option{withBufferSize(4096), withMaxResponseBytes(1)}, url: "http://h/studies"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			c, err := New(tt.base, nil, tt.opts...)
			if tt.err {
				if err == nil {
					t.Fatalf("New(%q) = %v, want an error", tt.base, c.logURL)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q): %v", tt.base, err)
			}
			if c.logURL != tt.url {
				t.Fatalf("logURL = %q, want %q", c.logURL, tt.url)
			}
			if u, _ := url.Parse(tt.base); u.RawQuery != "" && !strings.HasSuffix(c.url, "?"+u.RawQuery) {
				t.Errorf("request URL %q lost the query %q", c.url, u.RawQuery)
			}
		})
	}
	if _, err := New("ftp://h", nil); !errors.Is(err, ErrInvalidBaseURL) {
		t.Errorf("err = %v, want ErrInvalidBaseURL", err)
	}
}

// A destination URL may carry an API key in its query: an error for a
// request that got no answer names the URL without it, and keeps its
// cause and time-out.
func TestNoAnswerErrorsHideTheQuery(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	c, err := New("http://"+addr+"/dicom-web?code=SECRET-KEY", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	_, storeErr := c.Store(ctx, []Part{memPart("1.2.3", []byte("x"))})
	_, qidoErr := c.StudyInstanceUIDs(ctx, "1.2.3", Expected{Count: 10})
	deleteErr := c.DeleteInstance(ctx, "1.2.3", "1.2.3.4", "1.2.3.4.5")
	for name, err := range map[string]error{"store": storeErr, "qido": qidoErr, "delete": deleteErr} {
		if err == nil {
			t.Fatalf("%s: no error from a closed port", name)
		}
		if strings.Contains(err.Error(), "SECRET-KEY") {
			t.Errorf("%s: error shows the query: %v", name, err)
		}
		var ue *url.Error
		var oe *net.OpError
		if !errors.As(err, &ue) || !errors.As(err, &oe) {
			t.Errorf("%s: error %v lost its *url.Error or *net.OpError", name, err)
		}
	}
	if !errors.Is(storeErr, ErrNoAnswer) || !errors.Is(qidoErr, ErrNoAnswer) {
		t.Errorf("store %v, qido %v: want ErrNoAnswer", storeErr, qidoErr)
	}
}
