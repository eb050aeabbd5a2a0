package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

const adminToken = "ui-test-admin-token-0123456789"

type fixture struct {
	srv   *httptest.Server
	ns    *testnats.Server
	store *deadletter.Store
	ev    events.StudyStable
}

func start(t *testing.T) *fixture {
	t.Helper()
	ns := testnats.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dlStream, err := natsjs.DefaultTopology().EnsureDeadLetters(ctx, ns.JS)
	store := deadletter.NewStore(ns.JS, dlStream)
	if err != nil {
		t.Fatal(err)
	}
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.1",
		LastUpdate: "20261126T101500", ReceivedAt: time.Now().UTC()}
	if _, err := store.Add(ctx, &forward.DeadLetter{Event: ev, Class: forward.Permanent, Reason: "STOW-RS request 1: HTTP 415 <script>alert(1)</script>",
		Attempts: 1, OriginalSeq: 7, DeadLetteredAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	tr := status.NewTracker(2)
	h, err := web.NewStatusPage(web.StatusPageOptions{
		JS:         ns.JS,
		Forwarders: func(context.Context) ([]status.Snapshot, error) { return []status.Snapshot{tr.Snapshot()}, nil },
		SingleHost: true,
		AdminToken: adminToken,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, ns: ns, store: store, ev: ev}
}

// browser is a client with a cookie jar that logs in like a browser.
func (f *fixture) browser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (f *fixture) get(t *testing.T, c *http.Client, path, password string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if password != "" {
		req.SetBasicAuth("operator", password)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func TestAuth(t *testing.T) {
	f := start(t)
	c := f.browser(t)
	for _, pw := range []string{"", "wrong-password-0123456789"} {
		resp, _ := f.get(t, c, "/ui", pw)
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("password %q: %d %q", pw, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	resp, body := f.get(t, c, "/ui", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{`id="deadletter-count">1<`, `id="queue-pending">0<`, f.ev.StudyInstanceUID, `id="replay-1"`,
		"&lt;script&gt;alert(1)&lt;/script&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Error("the dead letter's reason was not escaped")
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers: %v", resp.Header)
	}
	if resp, _ := f.get(t, c, "/ui/style.css", adminToken); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Errorf("style.css: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestReplayIsCSRFSafe(t *testing.T) {
	f := start(t)
	c := f.browser(t)
	_, body := f.get(t, c, "/ui", adminToken)
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no csrf field in the page")
	}
	token := m[1]

	post := func(c *http.Client, form url.Values, hdr map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/ui/replay", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("operator", adminToken)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	otherBrowser := f.browser(t) // has no csrf cookie
	refusals := []struct {
		name string
		c    *http.Client
		form url.Values
		hdr  map[string]string
	}{
		{"no token", c, url.Values{"seq": {"1"}}, nil},
		{"wrong token", c, url.Values{"seq": {"1"}, "csrf": {"forged"}}, nil},
		{"token without its cookie", otherBrowser, url.Values{"seq": {"1"}, "csrf": {token}}, nil},
		{"cross-site fetch", c, url.Values{"seq": {"1"}, "csrf": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"foreign origin", c, url.Values{"seq": {"1"}, "csrf": {token}}, map[string]string{"Origin": "https://evil.example"}},
	}
	for _, tt := range refusals {
		if resp := post(tt.c, tt.form, tt.hdr); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", tt.name, resp.StatusCode)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := f.store.List(ctx, deadletter.Filter{All: true}); err != nil || len(got) != 1 {
		t.Fatalf("after refused posts: %d dead letters (err %v), want 1", len(got), err)
	}

	resp := post(c, url.Values{"seq": {"1"}, "csrf": {token}}, map[string]string{"Origin": f.srv.URL, "Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/?replayed=1") {
		t.Fatalf("replay: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if got, err := f.store.List(ctx, deadletter.Filter{All: true}); err != nil || len(got) != 0 {
		t.Errorf("after replay: %d dead letters (err %v), want 0", len(got), err)
	}
	q, err := status.ReadQueue(ctx, f.ns.JS)
	if err != nil || q.Pending != 1 {
		t.Errorf("after replay: queue %+v (err %v), want the event queued again", q, err)
	}
	_, body = f.get(t, c, "/ui/?replayed=1", adminToken)
	if !strings.Contains(body, "Dead letter 1 replayed") || !strings.Contains(body, `id="deadletter-count">0<`) {
		t.Error("page after replay does not confirm it")
	}
	if resp := post(c, url.Values{"seq": {"1"}, "csrf": {token}}, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("replaying it again: %d, want 404", resp.StatusCode)
	}
}
