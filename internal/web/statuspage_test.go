package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testbrowser"
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
	if _, _, err := store.Add(ctx, &forward.DeadLetter{Event: ev, Class: forward.Permanent, Reason: "STOW-RS request 1: HTTP 415 <script>alert(1)</script>",
		Attempts: 1, OriginalSeq: 7, DeadLetteredAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	tr := status.NewTracker(2)
	return &fixture{srv: statusPage(t, ns, true, tr), ns: ns, store: store, ev: ev}
}

// statusPage runs the status page over ns, with the trackers as the live
// forwarder processes.
func statusPage(t *testing.T, ns *testnats.Server, singleHost bool, trackers ...*status.Tracker) *httptest.Server {
	t.Helper()
	return statusPageWith(t, web.StatusPageOptions{
		JS: ns.JS,
		Forwarders: func(context.Context) ([]status.Snapshot, error) {
			var out []status.Snapshot
			for _, tr := range trackers {
				out = append(out, tr.Snapshot())
			}
			return out, nil
		},
		SingleHost: singleHost,
		AdminToken: adminToken,
	})
}

// statusPageWith serves a status page made with opts, closed at cleanup.
func statusPageWith(t *testing.T, opts web.StatusPageOptions) *httptest.Server {
	t.Helper()
	h, err := web.NewStatusPage(opts)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
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

// NewStatusPage refuses options without what the page cannot do without:
// above all an empty ADMIN_TOKEN, which would make the empty password
// the page's.
func TestNewStatusPageRefusesIncompleteOptions(t *testing.T) {
	ns := testnats.Start(t)
	noForwarders := func(context.Context) ([]status.Snapshot, error) { return nil, nil }
	for _, tt := range []struct {
		name string
		opts web.StatusPageOptions
	}{
		{"no admin token", web.StatusPageOptions{JS: ns.JS, Forwarders: noForwarders}},
		{"no JetStream", web.StatusPageOptions{Forwarders: noForwarders, AdminToken: adminToken}},
		{"no forwarders' state", web.StatusPageOptions{JS: ns.JS, AdminToken: adminToken}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := web.NewStatusPage(tt.opts)
			if err == nil {
				t.Error("NewStatusPage accepted the options, want an error")
			}
			if h != nil {
				t.Error("NewStatusPage returned a page, want nil")
			}
		})
	}
}

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
	// Requests without a password are no guesses (a browser sends one
	// before it asks); ten wrong passwords are (one was sent above), and
	// the right one is then refused unchecked for a while.
	for range 20 {
		if resp, _ := f.get(t, c, "/ui", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no password: %d, want 401", resp.StatusCode)
		}
	}
	for i := range 9 {
		if resp, _ := f.get(t, c, "/ui", "wrong-password-0123456789"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: %d, want 401", i+2, resp.StatusCode)
		}
	}
	if resp, _ := f.get(t, c, "/ui", adminToken); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the right password after ten wrong ones: %d, Retry-After %q; want 429", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestReplayIsCSRFSafe(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := f.browser(t)
	page, body := f.get(t, c, "/ui", adminToken)
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no csrf field in the page")
	}
	token := m[1]
	// The nonce cookie goes with no cross-site request, not even a
	// top-level navigation (Lax would send it with one), and no script
	// reads it.
	i := slices.IndexFunc(page.Cookies(), func(ck *http.Cookie) bool { return ck.Name == "stowline_ui_csrf" })
	if i < 0 {
		t.Fatalf("the page set no csrf cookie: %v", page.Header.Values("Set-Cookie"))
	}
	if ck := page.Cookies()[i]; !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ui" {
		t.Errorf("csrf cookie %q: want HttpOnly, SameSite=Strict, Path=/ui", ck.String())
	}

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
	if got, err := f.store.List(ctx, deadletter.Filter{All: true}); err != nil || len(got) != 1 {
		t.Fatalf("after refused posts: %d dead letters (err %v), want 1", len(got), err)
	}
	// A link naming a letter still stored says nothing of a replay.
	if _, body := f.get(t, c, "/ui/?replayed=1&destination=default", adminToken); strings.Contains(body, "replayed: its study is queued again") {
		t.Error("a made-up link shows a replay of a letter still stored")
	}

	// Before its destination has a consumer, a replay is refused with 409
	// (retrying cannot help) and the letter stays.
	if resp := post(c, url.Values{"seq": {"1"}, "csrf": {token}}, map[string]string{"Origin": f.srv.URL, "Sec-Fetch-Site": "same-origin"}); resp.StatusCode != http.StatusConflict {
		t.Errorf("replay without the destination's consumer: status %d, want 409", resp.StatusCode)
	}
	if got, err := f.store.List(ctx, deadletter.Filter{All: true}); err != nil || len(got) != 1 {
		t.Fatalf("after the refused replay: %d dead letters (err %v), want 1", len(got), err)
	}
	// The letter's destination has its consumer, as its forwarders make:
	// a replay goes nowhere else.
	if _, err := natsjs.DefaultTopology().EnsureConsumer(ctx, f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	resp := post(c, url.Values{"seq": {"1"}, "csrf": {token}}, map[string]string{"Origin": f.srv.URL, "Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/?replayed=1") {
		t.Fatalf("replay: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if got, err := f.store.List(ctx, deadletter.Filter{All: true}); err != nil || len(got) != 0 {
		t.Errorf("after replay: %d dead letters (err %v), want 0", len(got), err)
	}
	// The lane consumers count the replayed event once JetStream has
	// updated them: wait for it rather than read once.
	var q status.Queue
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		q, err = status.ReadQueue(ctx, f.ns.JS)
		if err == nil && q.Pending == 1 || time.Now().After(deadline) {
			break
		}
	}
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

// row returns the HTML of the table row with the given id.
func row(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr[^>]* id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</tr>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("page has no row %s", id)
	}
	return m[1]
}

// A deployment with the default destination and "ai": a row per
// destination with its own queue, studies in flight, dead letters (an
// old letter without destination is the default's), last success and
// token status; the tables name each study's destination, a study ai's
// rules did not select shows as such, and a replay goes back to its
// letter's destination only.
func TestDestinations(t *testing.T) {
	f := start(t) // dead letter 1: the default destination's
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js := f.ns.JS
	for i := range 3 {
		ev := f.ev
		ev.OrthancStudyID = fmt.Sprintf("%08x-4f66fb14-03f4081b-f9341db2-53925988", i)
		ev.StudyInstanceUID = fmt.Sprintf("1.2.826.0.1.3680043.2.1125.%d", 10+i)
		if _, err := (natsjs.Publisher{JS: js}).Publish(ctx, &ev); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := natsjs.DefaultTopology().EnsureConsumers(ctx, js, []string{natsjs.DefaultDestination, "ai"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons[natsjs.DefaultDestination].Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
		t.Fatal(err)
	}

	// Dead letter 2: from a forwarder before destinations. 3: ai's.
	old, err := json.Marshal(map[string]any{"event": f.ev, "class": forward.Permanent, "reason": "HTTP 415 (old forwarder)",
		"attempts": 1, "originalSeq": 8, "deadLetteredAt": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, natsjs.DeadLetterSubjectPrefix+f.ev.Source, old); err != nil {
		t.Fatal(err)
	}
	aiLetter := f.ev
	aiLetter.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
	if _, _, err := f.store.Add(ctx, &forward.DeadLetter{Destination: "ai", Event: aiLetter, Class: forward.Permanent,
		Reason: "HTTP 400", Attempts: 1, OriginalSeq: 9, DeadLetteredAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}

	// Ledgers: the default forwarded a study 5 minutes ago; ai forwarded
	// one 2 hours ago and selected nothing of one a minute ago.
	now := time.Now().UTC()
	ledgerOf := func(dest string, at time.Time) *ledger.Ledger {
		kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, js, dest)
		if err != nil {
			t.Fatal(err)
		}
		return ledger.New(js, kv, ledger.WithClock(func() time.Time { return at }))
	}
	defDone, aiDone, aiSkipped := f.ev, f.ev, f.ev
	defDone.StudyInstanceUID, aiDone.StudyInstanceUID, aiSkipped.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.20", "1.2.826.0.1.3680043.2.1125.21", "1.2.826.0.1.3680043.2.1125.22"
	aiDone.OrthancStudyID, aiSkipped.OrthancStudyID = "00000021-4f66fb14-03f4081b-f9341db2-53925988", "00000022-4f66fb14-03f4081b-f9341db2-53925988"
	if err := ledgerOf(natsjs.DefaultDestination, now.Add(-5*time.Minute)).Record(ctx, &defDone); err != nil {
		t.Fatal(err)
	}
	if err := ledgerOf("ai", now.Add(-2*time.Hour)).Completed(ctx, &aiDone, ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	if err := ledgerOf("ai", now.Add(-time.Minute)).Completed(ctx, &aiSkipped, ledger.Outcome{NotSelected: true}); err != nil {
		t.Fatal(err)
	}
	// "mr" is known only from its ledger, whose one record is not
	// selected: no consumer, no live forwarder, nothing sent.
	if err := ledgerOf("mr", now.Add(-3*time.Hour)).Completed(ctx, &aiSkipped, ledger.Outcome{NotSelected: true}); err != nil {
		t.Fatal(err)
	}

	// Two forwarder processes: one serves the default (OAuth2, a token
	// fetched), one serves ai (no auth) and is sending a study.
	defTok, err := status.NewTokenWatch(natsjs.DefaultDestination, "dicom.example.org", "login.example.org", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defTok.Observe(nil, time.Millisecond)
	aiTok, err := status.NewTokenWatch("ai", "ai.example.com", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	aiTracker := status.NewTracker(2, aiTok)
	sending := f.ev
	sending.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.30"
	aiTracker.Started(&forward.Attempt{Destination: "ai", Event: &sending, Number: 1, Seq: 2})
	// ai's circuit breaker is open, holding one study, and its request
	// limit was halved by a 503; the default's is closed, its limit never
	// changed.
	aiTracker.WatchDestination(func() forward.DestinationStatus {
		return forward.DestinationStatus{Destination: "ai", State: "open", Since: time.Now().Add(-20*time.Minute - 30*time.Second), Held: 1, Failures: 5,
			Requests: 4, Ceiling: 16, LimitReason: "overload_503", LimitChanged: time.Now().Add(-21 * time.Minute),
			LastDown: "probe: qido: GET https://ai.example/studies: 502 Bad Gateway", LastDownAt: time.Now().Add(-150 * time.Second)}
	})
	defTracker := status.NewTracker(2, defTok)
	defTracker.WatchDestination(func() forward.DestinationStatus {
		return forward.DestinationStatus{Destination: natsjs.DefaultDestination, State: "closed", Requests: 8, Ceiling: 16}
	})
	srv := statusPage(t, f.ns, false, defTracker, aiTracker)
	page := &fixture{srv: srv, ns: f.ns, store: f.store, ev: f.ev}

	c := page.browser(t)
	resp, body := page.get(t, c, "/ui/", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{
		`id="deadletter-count">3<`, `id="queue-pending">5<`, `id="queue-ack-pending">1<`, `id="inflight-count">1<`,
		`id="dest-default-queue">3<`, `id="dest-ai-queue">3<`,
		`id="dest-default-inflight">0<`, `id="dest-ai-inflight">1<`,
		`id="dest-default-deadletters">2<`, `id="dest-ai-deadletters">1<`,
		`id="dest-default-breaker"><span class="badge forwarded">closed<`,
		`id="dest-ai-breaker"><span class="badge dead_lettered" title="the destination is down`, `since 20m ago`, `1 held`,
		`id="dest-ai-lastdown" title="probe: qido: GET https://ai.example/studies: 502 Bad Gateway">2m ago: probe: qido: GET https://ai.example/studies: 502 Bad Gateway<`,
		`id="dest-default-requests" title="STOW-RS requests its forwarders may have in flight now (adapted), of the most they may grow to">8 of 16</td>`,
		`id="dest-ai-requests" title="STOW-RS requests its forwarders may have in flight now (adapted), of the most they may grow to">4 of 16<br><small class="muted">overload_503 `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	def, ai := row(t, body, "dest-default"), row(t, body, "dest-ai")
	for _, want := range []string{"dicom.example.org", "5m ago", "OAuth2 client credentials (login.example.org)", `class="badge forwarded">ok<`} {
		if !strings.Contains(def, want) {
			t.Errorf("default's row lacks %q:\n%s", want, def)
		}
	}
	// ai's last success is its last forward, not the study it did not select.
	for _, want := range []string{"ai.example.com", "2h ago", "none", "n/a"} {
		if !strings.Contains(ai, want) {
			t.Errorf("ai's row lacks %q:\n%s", want, ai)
		}
	}
	if strings.Contains(ai, "1m ago") {
		t.Errorf("ai's last success is the study it did not select:\n%s", ai)
	}
	mr := row(t, body, "dest-mr")
	for _, want := range []string{"no queue", "nothing sent recently", "no live forwarder", `id="dest-mr-deadletters">0<`} {
		if !strings.Contains(mr, want) {
			t.Errorf("mr's row lacks %q:\n%s", want, mr)
		}
	}
	recent := section(t, body, "recent")
	if r := firstRow(t, recent); !strings.Contains(r, aiSkipped.StudyInstanceUID) || !strings.Contains(r, ">not selected<") || !strings.Contains(r, "<td>ai</td>") {
		t.Errorf("newest recent row is not ai's study shown as not selected:\n%s", r)
	}
	if !strings.Contains(recent, defDone.StudyInstanceUID) || !strings.Contains(recent, aiDone.StudyInstanceUID) {
		t.Errorf("recent forwards lack a destination's record:\n%s", recent)
	}
	if r := firstRow(t, section(t, body, "inflight")); !strings.Contains(r, sending.StudyInstanceUID) || !strings.Contains(r, "<td>ai</td>") {
		t.Errorf("in-flight row does not name ai:\n%s", r)
	}
	for seq, dest := range map[int]string{1: "default", 2: "default", 3: "ai"} {
		if r := row(t, body, fmt.Sprintf("dl-%d", seq)); !strings.Contains(r, "<td>"+dest+"</td>") {
			t.Errorf("dead letter %d does not name %s:\n%s", seq, dest, r)
		}
	}

	// Replaying ai's letter queues it for ai only.
	token := csrfInput.FindStringSubmatch(body)[1]
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/ui/replay", strings.NewReader(url.Values{"seq": {"3"}, "csrf": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	req.SetBasicAuth("operator", adminToken)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/?replayed=3&destination=ai") {
		t.Fatalf("replay: %d Location %q", resp.StatusCode, loc)
	}
	// ai's consumers were there before the replayed event: JetStream
	// counts it once it has signalled them, after the publish's ack, so
	// wait for the count rather than read once.
	var q status.Queue
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if q, err = status.ReadQueue(ctx, js); err != nil {
			t.Fatal(err)
		}
		if d, _ := q.Destination("ai"); d.Pending == 4 || time.Now().After(deadline) {
			break
		}
	}
	if d, _ := q.Destination("ai"); d.Pending != 4 || d.DeadLetters != 0 {
		t.Errorf("ai after the replay: %+v; want 4 pending, no dead letter", d)
	}
	if d, _ := q.Destination("default"); d.Pending != 2 || d.DeadLetters != 2 {
		t.Errorf("default after ai's replay: %+v; want it unchanged (2 pending, 2 dead letters)", d)
	}
	_, body = page.get(t, c, loc, adminToken)
	if !strings.Contains(body, "Dead letter 3 replayed: its study is queued again for destination ai.") {
		t.Error("the page does not confirm the replay to ai")
	}
}

// A single-destination deployment before and after its forwarder ran:
// first a note that the queue is not made yet, then one row, "default".
func TestDestinationsSingle(t *testing.T) {
	ns := testnats.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.1",
		LastUpdate: "20261126T101500", ReceivedAt: time.Now().UTC()}
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, &ev); err != nil {
		t.Fatal(err)
	}
	page := &fixture{srv: statusPage(t, ns, true), ns: ns}
	c := page.browser(t)
	_, body := page.get(t, c, "/ui/", adminToken)
	if d := section(t, body, "destinations"); !strings.Contains(d, "No forwarder has created its queue yet: 1 events wait in the stream.") {
		t.Errorf("before any forwarder:\n%s", d)
	}
	if _, err := natsjs.DefaultTopology().EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	tok, err := status.NewTokenWatch(natsjs.DefaultDestination, "dicom.example.org", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	page.srv = statusPage(t, ns, true, status.NewTracker(2, tok))
	_, body = page.get(t, c, "/ui/", adminToken)
	d := section(t, body, "destinations")
	if n := strings.Count(d, `<tr id="dest-`); n != 1 || !strings.Contains(d, `id="dest-default-queue">1<`) || !strings.Contains(d, "never") {
		t.Errorf("one destination: %d rows, want the default's with 1 queued, never forwarded:\n%s", n, d)
	}
}

// firstRow returns the HTML of the first row of a table's body.
func firstRow(t *testing.T, html string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tbody>\s*<tr[^>]*>(.*?)</tr>`).FindStringSubmatch(html)
	if m == nil {
		t.Fatalf("no table row in\n%s", html)
	}
	return m[1]
}

// section returns the HTML of the section with the given id.
func section(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<section id="` + regexp.QuoteMeta(id) + `">(.*?)</section>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("page has no section %s", id)
	}
	return m[1]
}

// TestParkedStudyIsNotShownAsBeingSent: a study parked until its source
// answers (several sources) waits without a worker. The page counted it
// among the studies being sent, unlike stowline_forwarder_studies_in_flight,
// and showed its row as one stuck listing its instances: during a source
// outage, hundreds of studies "being sent" by four workers. It is now
// counted apart and its row says it is parked, and why.
func TestParkedStudyIsNotShownAsBeingSent(t *testing.T) {
	f := start(t)
	tr := status.NewTracker(2)
	sending, parked := f.ev, f.ev
	sending.Source, sending.StudyInstanceUID = "orthanc-b", "1.2.826.0.1.3680043.2.1125.40"
	parked.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.41"
	tr.Started(&forward.Attempt{Destination: natsjs.DefaultDestination, Event: &sending, Number: 1, Seq: 2})
	a := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &parked, Number: 1, Seq: 3}
	tr.Started(a)
	var o forward.Observer = tr
	o.(forward.ParkObserver).Parked(a, "parked: source Orthanc unreachable")
	page := &fixture{srv: statusPage(t, f.ns, false, tr), ns: f.ns, store: f.store, ev: f.ev}
	resp, body := page.get(t, page.browser(t), "/ui/", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{
		`id="inflight-count">1<`, `id="parked-count">1 more parked until their source answers<`,
		`id="dest-default-inflight">1<`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	rowOf := func(uid string) string {
		i := strings.Index(body, `<td class="uid" title="Orthanc `+parked.OrthancStudyID+`">`+uid+`<`)
		if i < 0 {
			t.Fatalf("no in-flight row for %s", uid)
		}
		return body[i : i+strings.Index(body[i:], "</tr>")]
	}
	if r := rowOf(parked.StudyInstanceUID); !strings.Contains(r, ">parked: source Orthanc unreachable<") || strings.Contains(r, "listing instances") {
		t.Errorf("the parked study's row does not say it is parked:\n%s", r)
	}
	if r := rowOf(sending.StudyInstanceUID); strings.Contains(r, "parked") || !strings.Contains(r, "listing instances") {
		t.Errorf("the study being sent is not shown so:\n%s", r)
	}
}

// TestMoreDeadLettersPointsToWhatListsThemAll: past the newest 50, the
// page says what lists every letter. In single-host mode that is the
// admin API: the embedded JetStream server listens on no port, and
// `forwarder replay list`, which the page named, refuses to open the
// store while stowline runs. With a NATS server it stays the command.
func TestMoreDeadLettersPointsToWhatListsThemAll(t *testing.T) {
	f := start(t) // dead letter 1
	ctx := t.Context()
	for i := range 50 {
		if _, _, err := f.store.Add(ctx, &forward.DeadLetter{Event: f.ev, Class: forward.Permanent, Reason: fmt.Sprintf("HTTP 415 (%d)", i),
			Attempts: 1, OriginalSeq: uint64(10 + i), DeadLetteredAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		singleHost bool
		want, not  string
	}{
		{true, "<code>GET /admin/deadletters</code>", "<code>forwarder replay list</code>"},
		{false, "<code>forwarder replay list</code> shows all 51", "/admin/deadletters"},
	} {
		page := &fixture{srv: statusPage(t, f.ns, tt.singleHost), ns: f.ns, store: f.store, ev: f.ev}
		resp, body := page.get(t, page.browser(t), "/ui/", adminToken)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
		}
		m := regexp.MustCompile(`<p class="note" id="deadletters-more">(.*?)</p>`).FindStringSubmatch(body)
		if m == nil || !strings.Contains(m[1], "Showing the newest 50") || !strings.Contains(m[1], tt.want) || strings.Contains(m[1], tt.not) {
			t.Errorf("single host %v: the note on more dead letters is %q, want it to name %s", tt.singleHost, m, tt.want)
		}
	}
}

// TestHeldStudySaysWhy: a study whose worker holds it until its
// destination or its source answers is still counted in flight (as
// stowline_forwarder_studies_in_flight), but its row says it is held and
// why. It said "listing instances…", or showed progress frozen, as if
// it were being sent; with one source nothing on the page said the
// source Orthanc was down.
func TestHeldStudySaysWhy(t *testing.T) {
	f := start(t)
	tr := status.NewTracker(2)
	var o forward.Observer = tr
	held, goesOn := f.ev, f.ev
	held.StudyInstanceUID, goesOn.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.50", "1.2.826.0.1.3680043.2.1125.51"
	a := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &held, Number: 1, Seq: 2}
	b := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &goesOn, Number: 1, Seq: 3}
	tr.Started(a)
	tr.Started(b)
	tr.Progress(b, forward.Report{Listed: 3, Selected: 3, Instances: 1, Bytes: 2048})
	o.(forward.HoldObserver).Held(a, "held: source Orthanc unreachable")
	o.(forward.HoldObserver).Held(b, "held: destination down (circuit breaker open)")
	o.(forward.HoldObserver).Held(b, "") // the trial: sent again
	page := &fixture{srv: statusPage(t, f.ns, true, tr), ns: f.ns, store: f.store, ev: f.ev}
	resp, body := page.get(t, page.browser(t), "/ui/", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	if !strings.Contains(body, `id="inflight-count">2<`) {
		t.Errorf("page lacks %q", `id="inflight-count">2<`)
	}
	rowOf := func(uid string) string {
		i := strings.Index(body, `">`+uid+`</td>`)
		if i < 0 {
			t.Fatalf("no in-flight row for %s", uid)
		}
		return body[i : i+strings.Index(body[i:], "</tr>")]
	}
	if r := rowOf(held.StudyInstanceUID); !strings.Contains(r, ">held: source Orthanc unreachable<") || strings.Contains(r, "listing instances") {
		t.Errorf("the held study's row does not say it is held:\n%s", r)
	}
	if r := rowOf(goesOn.StudyInstanceUID); strings.Contains(r, "held") || !strings.Contains(r, "1 / 3") {
		t.Errorf("the study sent again after its hold is not shown as being sent:\n%s", r)
	}
}

// TestRetryingStudySaysWhyAndWhen: a study whose attempt failed and
// that is back in the queue until its next attempt is listed with its
// failure and when it is due. Between deliveries, up to hours apart, it
// was on no table: the page showed a count of retries, and why only the
// forwarder's log said.
func TestRetryingStudySaysWhyAndWhen(t *testing.T) {
	f := start(t)
	tr := status.NewTracker(2)
	var o forward.Observer = tr
	waits, takenAgain := f.ev, f.ev
	waits.StudyInstanceUID, takenAgain.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.60", "1.2.826.0.1.3680043.2.1125.61"
	takenAgain.OrthancStudyID = "other-study"
	a := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &waits, Number: 3, Seq: 2}
	b := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &takenAgain, Number: 1, Seq: 3}
	for _, at := range []*forward.Attempt{a, b} {
		tr.Started(at)
		o.(forward.RetryObserver).Retrying(at, forward.Transient, "stow: POST https://archive.example/studies: HTTP 503 Service Unavailable", time.Now().Add(10*time.Minute))
		tr.Finished(at, forward.ResultRetry, forward.Report{})
	}
	tr.Started(&forward.Attempt{Destination: natsjs.DefaultDestination, Event: &takenAgain, Number: 2, Seq: 3})
	page := &fixture{srv: statusPage(t, f.ns, true, tr), ns: f.ns, store: f.store, ev: f.ev}
	resp, body := page.get(t, page.browser(t), "/ui/", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	sec := section(t, body, "waiting")
	i := strings.Index(sec, `>`+waits.StudyInstanceUID+`</td>`)
	if i < 0 {
		t.Fatalf("no waiting row for the study back in the queue:\n%s", sec)
	}
	row := sec[i : i+strings.Index(sec[i:], "</tr>")]
	for _, want := range []string{`<td class="n">3</td>`, ">transient<", "HTTP 503 Service Unavailable"} {
		if !strings.Contains(row, want) {
			t.Errorf("the waiting row lacks %q:\n%s", want, row)
		}
	}
	if !regexp.MustCompile(`>in (9m5\ds|10m0s)<`).MatchString(row) {
		t.Errorf("the waiting row does not say when it is due (in about 10m):\n%s", row)
	}
	if strings.Contains(sec, takenAgain.StudyInstanceUID) {
		t.Errorf("a study taken again is still listed as waiting:\n%s", sec)
	}
}

// TestHeldRetrySaysWhatHoldsIt: a study whose retry is held past its
// due time by its lane's closed window, or by its destination's open
// breaker, says so in "next attempt". The page said "now", then the
// study was gone from the list a minute later, its reason with it,
// though it was still queued.
func TestHeldRetrySaysWhatHoldsIt(t *testing.T) {
	f := start(t)
	opens := time.Now().Add(14*time.Hour + 30*time.Second).Truncate(time.Minute)
	for _, tc := range []struct {
		name  string
		state forward.DestinationStatus
		want  *regexp.Regexp
	}{
		{"lane closed", forward.DestinationStatus{Destination: natsjs.DefaultDestination, State: "closed",
			ClosedLanes: []forward.ClosedLane{{Lane: events.PriorityRoutine, Opens: opens}}},
			regexp.MustCompile(`>when the routine lane opens \(FORWARD_WINDOWS\): ` + opens.Format("15:04") + ` \(UTC[^)]+\), in 1[34]h \d\dm<`)},
		{"breaker open", forward.DestinationStatus{Destination: natsjs.DefaultDestination, State: "open"},
			regexp.MustCompile(`>when the destination&#39;s circuit breaker closes<`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := status.NewTracker(2)
			tr.WatchDestination(func() forward.DestinationStatus { return tc.state })
			ev := f.ev
			ev.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.62"
			a := &forward.Attempt{Destination: natsjs.DefaultDestination, Event: &ev, Number: 3, Seq: 2}
			tr.Started(a)
			tr.Retrying(a, forward.Transient, "stow: POST https://archive.example/studies: HTTP 503 Service Unavailable", time.Now().Add(-2*time.Minute))
			tr.Finished(a, forward.ResultRetry, forward.Report{})
			page := &fixture{srv: statusPage(t, f.ns, true, tr), ns: f.ns, store: f.store, ev: f.ev}
			resp, body := page.get(t, page.browser(t), "/ui/", adminToken)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
			}
			sec := section(t, body, "waiting")
			i := strings.Index(sec, `>`+ev.StudyInstanceUID+`</td>`)
			if i < 0 {
				t.Fatalf("no waiting row for the held study:\n%s", sec)
			}
			row := sec[i : i+strings.Index(sec[i:], "</tr>")]
			if !tc.want.MatchString(row) || !strings.Contains(row, "HTTP 503 Service Unavailable") {
				t.Errorf("the waiting row does not say what holds the retry (%s), with its reason:\n%s", tc.want, row)
			}
		})
	}
}

// TestReplayKeepsAutoRefresh clicks a dead letter's Replay button in a
// real Chromium on an auto-refreshing page: the page the replay leads to
// refreshes too, and its refresh leaves the replay's address (a reload
// would show the flash again and again). The replay's redirect dropped
// the period: auto-refresh was off until the operator turned it on again.
func TestReplayKeepsAutoRefresh(t *testing.T) {
	f := start(t)
	if _, err := natsjs.DefaultTopology().EnsureConsumer(t.Context(), f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	browser := testbrowser.Start(t)
	testbrowser.BasicAuth(t, browser, "operator", adminToken)
	metaRefresh := func() string {
		t.Helper()
		refresh, err := chromedp.Run(browser, chromedp.Evaluate[string](`(document.querySelector('meta[http-equiv="refresh"]') || {}).content || ""`))
		if err != nil {
			t.Fatal(err)
		}
		return refresh
	}
	// A replay that fails keeps its page, unrefreshed: its error must not
	// go by while the operator looks away.
	if err := chromedp.Do(browser, chromedp.Navigate(f.srv.URL+"/ui/?refresh=30")); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.getElementById("replay-1").form.seq.value = "999"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.RunResponse(browser, chromedp.Click(chromedp.ID("replay-1"))); err != nil {
		t.Fatalf("click replay: %v", err)
	}
	if flash, err := chromedp.Run(browser, chromedp.Text(chromedp.ID("flash"))); err != nil || !strings.Contains(flash, "Dead letter 999 is gone") {
		t.Fatalf("after a failed replay: flash %q (%v)", flash, err)
	}
	if r := metaRefresh(); r != "" {
		t.Errorf("the failed replay's page refreshes (%q): its error goes by", r)
	}

	if err := chromedp.Do(browser, chromedp.Navigate(f.srv.URL+"/ui/?refresh=30")); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.RunResponse(browser, chromedp.Click(chromedp.ID("replay-1"))); err != nil {
		t.Fatalf("click replay: %v", err)
	}
	flash, err := chromedp.Run(browser, chromedp.Text(chromedp.ID("flash")))
	if err != nil {
		t.Fatal(err)
	}
	refresh := metaRefresh()
	link, err := chromedp.Run(browser, chromedp.Text("header .right a"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(flash, "Dead letter 1 replayed") {
		t.Fatalf("after the replay click: flash %q", flash)
	}
	if refresh != "30; url=/ui/?refresh=30" || link != "stop auto-refresh" {
		t.Errorf("after the replay: meta refresh %q, link %q; want %q, %q", refresh, link, "30; url=/ui/?refresh=30", "stop auto-refresh")
	}
}

// TestClosedLaneSaysWhenItOpens: a lane outside its FORWARD_WINDOWS hours
// is named in its destination's row, in a real Chromium, with when it
// opens (the forwarder's clock and its offset, and how long from now),
// and on how many of the forwarders serving it when not all. The page
// said nothing: a backfill waiting for its night looked stuck.
func TestClosedLaneSaysWhenItOpens(t *testing.T) {
	f := start(t)
	if _, err := natsjs.DefaultTopology().EnsureConsumer(t.Context(), f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	paris := time.FixedZone("", 3600) // as a forwarder's status reads back from the shared bucket
	opens := time.Now().Add(5*time.Hour + 12*time.Minute + 20*time.Second).In(paris)
	var trackers []*status.Tracker
	for _, closed := range [][]forward.ClosedLane{
		{{Lane: events.PriorityRoutine, Opens: opens.Add(time.Hour)}, {Lane: events.PriorityLow, Opens: opens}},
		{{Lane: events.PriorityLow, Opens: opens}},
	} {
		tok, err := status.NewTokenWatch(natsjs.DefaultDestination, "dicom.example.org", "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		tr := status.NewTracker(2, tok)
		tr.WatchDestination(func() forward.DestinationStatus {
			return forward.DestinationStatus{Destination: natsjs.DefaultDestination, State: "closed", Requests: 4, Ceiling: 4, ClosedLanes: closed}
		})
		trackers = append(trackers, tr)
	}
	srv := statusPage(t, f.ns, false, trackers...)
	browser := testbrowser.Start(t)
	testbrowser.BasicAuth(t, browser, "operator", adminToken)
	if err := chromedp.Do(browser, chromedp.Navigate(srv.URL+"/ui/")); err != nil {
		t.Fatal(err)
	}
	queue, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.getElementById("dest-default-queue").parentElement.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"routine lane closed on 1 of 2 forwarders; opens " + opens.Add(time.Hour).Format("15:04") + " (UTC+01:00), in 6h 12m",
		"low lane closed; opens " + opens.Format("15:04") + " (UTC+01:00), in 5h 12m",
	} {
		if !strings.Contains(queue, want) {
			t.Errorf("the destination's queue cell lacks %q:\n%s", want, queue)
		}
	}
}

// TestPausedDestinationSaysWhy: forwarders the key guard paused are
// named in their destination's row, with why (their de-identification
// keys differ, or a key not compared: the status bucket unreadable) and
// how many of them when not all. The page showed the breaker closed and
// the queue growing, nothing of why no study was pulled; then it said
// "keys differ" for a key not compared, and the operator looked for a
// second key that did not exist.
func TestPausedDestinationSaysWhy(t *testing.T) {
	f := start(t)
	if _, err := natsjs.DefaultTopology().EnsureConsumer(t.Context(), f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	const pulling = "pulling" // a forwarder not paused
	tests := []struct {
		name      string
		reasons   []string // by forwarder: its PausedReason, or pulling
		want      string   // "": no pause shown
		wantTitle string   // in the badge's title
	}{
		{"pulling", []string{pulling, pulling}, "", ""},
		{"one of two, keys differ", []string{forward.PausedKeysDiffer, pulling}, "pulling paused on 1 of 2 forwarders: de-identification keys differ", "StowlineDeidentifyKeysDiffer"},
		{"keys differ", []string{forward.PausedKeysDiffer, forward.PausedKeysDiffer}, "pulling paused: de-identification keys differ", "StowlineDeidentifyKeysDiffer"},
		{"not compared", []string{forward.PausedNotCompared}, "pulling paused: de-identification key not compared (status bucket stowline_forwarders)",
			"its NATS user may not read or put the bucket (docs/nats-permissions.md) or NATS storage is full"},
		{"both", []string{forward.PausedNotCompared, forward.PausedKeysDiffer, pulling},
			"pulling paused on 2 of 3 forwarders: de-identification keys differ (1); de-identification key not compared (status bucket stowline_forwarders) (1)", "StowlineDeidentifyKeyNotCompared"},
		{"older release", []string{""}, "pulling paused: de-identification keys differ or not compared", "destination_deidentify_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var trackers []*status.Tracker
			for _, reason := range tt.reasons {
				tok, err := status.NewTokenWatch(natsjs.DefaultDestination, "dicom.example.org", "", false, nil)
				if err != nil {
					t.Fatal(err)
				}
				tr := status.NewTracker(2, tok) // a forwarder serving it
				tr.WatchDestination(func() forward.DestinationStatus {
					st := forward.DestinationStatus{Destination: natsjs.DefaultDestination, State: "closed", Requests: 4, Ceiling: 4}
					if reason != pulling {
						st.Paused, st.PausedReason = true, reason
					}
					return st
				})
				trackers = append(trackers, tr)
			}
			f.srv = statusPage(t, f.ns, false, trackers...)
			_, body := f.get(t, f.browser(t), "/ui/", adminToken)
			got := regexp.MustCompile(`id="dest-default-paused" title="([^"]*)">([^<]*)<`).FindStringSubmatch(body)
			switch {
			case tt.want == "" && got != nil:
				t.Errorf("no forwarder paused, the page says %q", got[2])
			case tt.want != "" && (got == nil || html.UnescapeString(got[2]) != tt.want):
				t.Errorf("the destination's row says %v, want %q", got, tt.want)
			case tt.want != "" && !strings.Contains(html.UnescapeString(got[1]), tt.wantTitle):
				t.Errorf("the badge's title %q lacks %q", got[1], tt.wantTitle)
			}
		})
	}
}

// TestPageReadsDeadLetterSummariesOnly: a page load reads what it shows
// of each dead letter (its summary, in the letter's headers), not the
// failed instances the letter holds: 20 letters of 1,000 failed instances
// each (some 8 MB) cost the page less than 1 MB. It read the letters
// whole, up to 25 MB each load, every 10 s with auto-refresh.
func TestPageReadsDeadLetterSummariesOnly(t *testing.T) {
	f := start(t) // letter 1
	failures := make([]forward.Instance, deadletter.MaxLetterFailures)
	for i := range failures {
		failures[i] = forward.Instance{SOPInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.2.1125.1.%d", i), FailureReason: 0xA700,
			Text: strings.Repeat("out of resources ", 20)}
	}
	const letters = 20
	for i := range letters {
		ev := f.ev
		ev.OrthancStudyID = fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-539%05d", i)
		ev.StudyInstanceUID = fmt.Sprintf("1.2.826.0.1.3680043.2.1125.9%d", i)
		if _, _, err := f.store.Add(t.Context(), &forward.DeadLetter{Event: ev, Class: forward.Partial, Reason: "1000 instances refused (0xA700)",
			Attempts: 3, Failures: failures, DeadLetteredAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	c := f.browser(t)
	before := f.ns.NC.Stats().InBytes
	resp, body := f.get(t, c, "/ui/", adminToken)
	read := f.ns.NC.Stats().InBytes - before
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d", resp.StatusCode)
	}
	if read > 1<<20 {
		t.Errorf("a page load read %d bytes from NATS, want under 1 MB: the letters' summaries only", read)
	}
	last := row(t, body, fmt.Sprintf("dl-%d", letters+1))
	for _, want := range []string{"1.2.826.0.1.3680043.2.1125.9" + strconv.Itoa(letters-1), "partial", "1000 instances refused (0xA700)", ">3<", "orthanc-a"} {
		if !strings.Contains(last, want) {
			t.Errorf("the newest letter's row lacks %q:\n%s", want, last)
		}
	}
	if first := row(t, body, "dl-1"); !strings.Contains(first, f.ev.StudyInstanceUID) {
		t.Errorf("the first letter's row lacks its study:\n%s", first)
	}
}

// TestLastSuccessPastTheLedgerReadSaysOlderRecordsExist: a destination
// whose newest ledger records, more than the page reads (500), are all
// "not selected" says so in a real Chromium, and that older records
// exist: its last forward is older than what was read, not missing. The
// page said "nothing sent recently", as for a ledger read to its start.
func TestLastSuccessPastTheLedgerReadSaysOlderRecordsExist(t *testing.T) {
	f := start(t)
	ctx := t.Context()
	if _, err := natsjs.DefaultTopology().EnsureConsumer(ctx, f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, f.ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	l := ledger.New(f.ns.JS, kv)
	if err := l.Record(ctx, &f.ev); err != nil {
		t.Fatal(err)
	}
	for i := range 510 {
		ev := f.ev
		ev.OrthancStudyID = fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-539%05d", i)
		if err := l.Completed(ctx, &ev, ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	browser := testbrowser.Start(t)
	testbrowser.BasicAuth(t, browser, "operator", adminToken)
	if err := chromedp.Do(browser, chromedp.Navigate(f.srv.URL+"/ui/")); err != nil {
		t.Fatal(err)
	}
	row, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.getElementById("dest-default").innerText`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "none in its newest 500 records\nall not selected; it holds older ones, not read here"; !strings.Contains(row, want) {
		t.Errorf("the destination's row lacks %q:\n%s", want, row)
	}
}

// TestPageLeavesNoConsumerBehind: a page load reads the dead letters
// with an ordered consumer and deletes it once read. Each load left one
// on the dead-letter stream for its five idle minutes: thirty at a time
// for one auto-refreshing page.
func TestPageLeavesNoConsumerBehind(t *testing.T) {
	f := start(t)
	c := f.browser(t)
	for range 3 {
		if resp, body := f.get(t, c, "/ui/", adminToken); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="dl-1"`) {
			t.Fatalf("GET /ui = %d, dead letter shown: %v", resp.StatusCode, strings.Contains(body, `id="dl-1"`))
		}
	}
	s, err := f.ns.JS.Stream(t.Context(), natsjs.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Consumers; n != 0 {
		t.Errorf("after three page loads the dead-letter stream has %d consumers, want none", n)
	}
}

// TestUnreadableConsumerIsShownUnknown: on a cluster, a lane consumer
// whose leader does not answer (a node lost, an election) is left out of
// CONSUMER.LIST, and nats.go's listing asked again until the page's time
// ran out: the whole queue section said "JetStream did not answer". The
// page reads the consumers one by one: the others are shown, the one not
// readable is named and its destination's queue shown as unknown.
func TestUnreadableConsumerIsShownUnknown(t *testing.T) {
	ns := testnats.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := natsjs.DefaultTopology().EnsureConsumers(ctx, ns.JS, []string{natsjs.DefaultDestination, "ai"}); err != nil {
		t.Fatal(err)
	}
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.1",
		LastUpdate: "20261126T101500", ReceivedAt: time.Now().UTC()}
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, &ev); err != nil {
		t.Fatal(err)
	}
	// The page reads the consumers' counts: nats-server makes them after
	// it acknowledged the publish.
	testnats.WaitCounted(ctx, t, ns.JS)
	aiStat := natsjs.LaneConsumerName("ai", events.PriorityStat)
	srv := statusPageWith(t, web.StatusPageOptions{
		JS:         &testnats.PartialListing{JetStream: ns.JS, Hidden: map[string]bool{aiStat: true}, Unread: true},
		Forwarders: func(context.Context) ([]status.Snapshot, error) { return nil, nil },
		AdminToken: adminToken,
		Timeout:    2 * time.Second,
	})
	page := &fixture{srv: srv, ns: ns}
	_, body := page.get(t, page.browser(t), "/ui/", adminToken)
	for _, want := range []string{
		`id="dest-default-queue">1<`, `id="dest-ai-queue">unknown<`, aiStat + " cannot be read",
		"JetStream did not answer: consumer " + aiStat,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestPageShowsAnUnreadableLetter: a dead letter this build cannot decode
// is shown among the others, as such. The dead-letter section showed
// only "decode dead letter 2: ...".
func TestPageShowsAnUnreadableLetter(t *testing.T) {
	f := start(t) // dead letter 1
	ack, err := f.ns.JS.Publish(t.Context(), natsjs.DeadLetterSubject(natsjs.DefaultDestination, "orthanc-a"), []byte("not a letter"))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := f.get(t, f.browser(t), "/ui/", adminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui = %d: %s", resp.StatusCode, body)
	}
	row := regexp.MustCompile(`(?s)<tr id="dl-` + strconv.FormatUint(ack.Sequence, 10) + `">(.*?)</tr>`).FindStringSubmatch(body)
	if row == nil || !strings.Contains(row[1], string(deadletter.UnreadableLetter)) || strings.Contains(body, "Dead letters unavailable") || !strings.Contains(body, `id="dl-1"`) {
		t.Errorf("the page shows the letters as\n%s\nwant letter 1 and the unreadable letter %d", body, ack.Sequence)
	}
	// A replay of it is refused (409): no button offers one.
	if row != nil && strings.Contains(row[1], "Replay</button>") || !strings.Contains(body, `id="replay-1"`) {
		t.Errorf("Replay buttons: want one for letter 1 and none for the unreadable letter %d:\n%s", ack.Sequence, body)
	}
}

// A replay that runs out of time shows the page it failed on, read with
// the page's own bound: read with what was left of the replay's, every
// part of it failed at once and its Replay buttons were gone.
func TestReplayOutOfTimeShowsThePage(t *testing.T) {
	f := start(t)
	if _, err := natsjs.DefaultTopology().EnsureConsumer(t.Context(), f.ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	h, err := web.NewStatusPage(web.StatusPageOptions{JS: f.ns.JS, AdminToken: adminToken,
		Forwarders: func(context.Context) ([]status.Snapshot, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	web.SetReplayTimeout(h, time.Nanosecond)
	r := chi.NewRouter()
	h.Mount(r)
	f.srv = httptest.NewServer(r)
	t.Cleanup(f.srv.Close)

	c := f.browser(t)
	_, body := f.get(t, c, "/ui", adminToken)
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no csrf field in the page")
	}
	form := url.Values{"seq": {"1"}, "csrf": {m[1]}}
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/ui/replay", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", f.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.SetBasicAuth("operator", adminToken)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	page := string(b)
	if !strings.Contains(page, "context deadline exceeded") || !strings.Contains(page, `id="flash"`) {
		t.Fatalf("status %d, no failed replay told:\n%.3000s", resp.StatusCode, page)
	}
	if !strings.Contains(page, `id="replay-1"`) {
		t.Errorf("the failed replay's page lost the letter's Replay button:\n%.3000s", page)
	}
}
