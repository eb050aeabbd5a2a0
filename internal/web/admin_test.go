package web_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// The admin API opens only for its token: a request without one, with
// another, or with an empty one when the API was given none, is refused
// before any handler runs (no store is needed to show it). The router is
// called directly: over HTTP a header's trailing space is trimmed, and
// "Bearer " would never arrive as such.
func TestAdminAPIRefusesWithoutItsToken(t *testing.T) {
	for _, tt := range []struct{ token, header string }{
		{"admin-token-0123456789", ""},
		{"admin-token-0123456789", "Bearer wrong-token-0123456789"},
		{"", "Bearer "},
		{"", ""},
	} {
		r := chi.NewRouter()
		(&web.AdminAPI{Token: tt.token}).Mount(r)
		req := httptest.NewRequest(http.MethodGet, "/admin/deadletters", nil)
		if tt.header != "" {
			req.Header.Set("Authorization", tt.header)
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("token %q, Authorization %q: status %d, want 401", tt.token, tt.header, rec.Code)
		}
	}
}

// TestAdminAPIThrottlesGuesses: after ten requests without the token from
// one address, that address is refused with 429 and Retry-After, even
// with the right token (a guess is not checked), while another address
// is not; once its failures age out, the right token opens the API again.
func TestAdminAPIThrottlesGuesses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const token = "admin-token-0123456789"
		r := chi.NewRouter()
		(&web.AdminAPI{Token: token}).Mount(r)
		send := func(from, tok string) *httptest.ResponseRecorder {
			t.Helper()
			req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader("{}"))
			req.RemoteAddr = from + ":40000"
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			return rec
		}
		for i := range 10 {
			if rec := send("192.0.2.7", fmt.Sprintf("guess-%02d-0123456789", i)); rec.Code != http.StatusUnauthorized {
				t.Fatalf("guess %d: status %d, want 401", i, rec.Code)
			}
		}
		rec := send("192.0.2.7", token)
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("the right token after ten guesses: status %d, Retry-After %q; want 429 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
		}
		// 400: past the token check, refused by the handler for its empty body.
		if rec := send("192.0.2.8", token); rec.Code != http.StatusBadRequest {
			t.Errorf("another address with the right token: status %d, want 400", rec.Code)
		}
		time.Sleep(6 * time.Second)
		if rec := send("192.0.2.7", token); rec.Code != http.StatusBadRequest {
			t.Errorf("the right token once a failure aged out: status %d, want 400", rec.Code)
		}
	})
}

// TestAdminAPIThrottlesGuessesPerIPv6Network: an IPv6 client picks any
// of its network's addresses (privacy addresses change by themselves, a
// tunnel broker hands out a /48 for free), so the wrong tokens of one /48
// count together: ten guesses, each from a new /64, and the /48 is
// refused (429), the right token unchecked; another /48 is not. Counted
// per address, the guesses were never throttled; per /64, a /48 had
// 65,536 times ten.
func TestAdminAPIThrottlesGuessesPerIPv6Network(t *testing.T) {
	checkGuessesCounted(t, nil, func(req *http.Request, from string) { req.RemoteAddr = "[" + from + "]:40000" },
		func(i int) string { return fmt.Sprintf("2001:db8:7:%x::1", i+1) }, "2001:db8:7:ffff::1", "2001:db8:8::1")
}

// TestAdminAPIThrottlesGuessesBehindAProxy: behind a reverse proxy listed
// in TrustedProxies, the wrong tokens count per client the proxy names in
// X-Forwarded-For: one client guessing does not lock out the operators
// who reach the API through the same proxy, and a client cannot escape
// its count by naming another address in front of the proxy's.
func TestAdminAPIThrottlesGuessesBehindAProxy(t *testing.T) {
	checkGuessesCounted(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		func(req *http.Request, forwardedFor string) {
			req.RemoteAddr = "10.1.2.3:40000" // the ingress controller
			req.Header.Set("X-Forwarded-For", forwardedFor)
		},
		// A made-up first hop: the proxy appends the real peer.
		func(i int) string { return fmt.Sprintf("198.51.100.%d, 192.0.2.7", i) }, "192.0.2.7", "192.0.2.8")
}

// checkGuessesCounted sends the admin API (behind trusted) ten wrong
// tokens, the i-th from guess(i) (from sets a request's client), then
// the right token from guesser, which must be refused (429, the token
// unchecked), and from other, which must pass the token check (400: the
// handler refuses its empty body).
func checkGuessesCounted(t *testing.T, trusted []netip.Prefix, from func(req *http.Request, client string), guess func(i int) string, guesser, other string) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		const token = "admin-token-0123456789"
		r := chi.NewRouter()
		(&web.AdminAPI{Token: token, TrustedProxies: trusted}).Mount(r)
		send := func(client, tok string) int {
			req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader("{}"))
			from(req, client)
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			return rec.Code
		}
		for i := range 10 {
			if code := send(guess(i), fmt.Sprintf("guess-%02d-0123456789", i)); code != http.StatusUnauthorized {
				t.Fatalf("guess %d: status %d, want 401", i, code)
			}
		}
		if code := send(guesser, token); code != http.StatusTooManyRequests {
			t.Errorf("the right token from the guessing client %s: status %d, want 429", guesser, code)
		}
		if code := send(other, token); code != http.StatusBadRequest {
			t.Errorf("the right token from another client %s: status %d, want 400", other, code)
		}
	})
}

// TestAdminReplayWithoutConsumerIsAConflict: a replay of letters whose
// destination has no consumer is refused with 409, not 503: retrying
// cannot help until the destination is configured again.
func TestAdminReplayWithoutConsumerIsAConflict(t *testing.T) {
	f := start(t) // one letter of the default destination, no consumer yet
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/replay", strings.NewReader(`{"all":true}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "has no consumer") {
		t.Errorf("status %d, body %s; want 409 naming the missing consumer", rec.Code, rec.Body)
	}
}

// TestAdminRefusesABodyOfSeveralValues: a purge (or replay, or
// re-forward) whose body holds more than one JSON value is refused with
// 400 and does nothing. Only the first value was read: a purge sent as
// {"all":true} {"dryRun":true} deleted every dead letter for good.
func TestAdminRefusesABodyOfSeveralValues(t *testing.T) {
	f := start(t) // one dead letter
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, body := range []string{`{"all":true} {"dryRun":true}`, `{"all":true}x`} {
		req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "more than one value") {
			t.Errorf("purge with body %s: status %d, body %s; want 400 naming the extra value", body, rec.Code, rec.Body)
		}
	}
	left, err := f.store.List(t.Context(), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 {
		t.Errorf("%d dead letters left, want the one there was", len(left))
	}
}

// TestAdminRefusesAKeyGivenTwice: a purge whose body gives a key twice,
// in any case, is refused with 400 and does nothing: the decode kept the
// last, so {"all":true,"dryRun":true,"dryRun":false} deleted every dead
// letter for good. A body over 64 KiB is 413, as the webhook's.
func TestAdminRefusesAKeyGivenTwice(t *testing.T) {
	f := start(t) // one dead letter
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, tt := range []struct {
		body string
		code int
		want string
	}{
		{`{"all":true,"dryRun":true,"dryRun":false}`, http.StatusBadRequest, "dryRun: given twice"},
		{`{"dryRun":true,"all":true,"DryRun":false}`, http.StatusBadRequest, "DryRun: given twice"},
		{`{"all":true,"study":"1.2.3","study":"1.2.4"}`, http.StatusBadRequest, "study: given twice"},
		{`{"all":true,"dryRun":true,"x":"` + strings.Repeat("a", 70<<10) + `"}`, http.StatusRequestEntityTooLarge, "over 64 KiB"},
	} {
		req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(tt.body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("purge with body %.60s: status %d, body %.200s; want %d naming %q", tt.body, rec.Code, rec.Body, tt.code, tt.want)
		}
	}
	left, err := f.store.List(t.Context(), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 {
		t.Errorf("%d dead letters left, want the one there was", len(left))
	}
}

// TestAdminPurgeLogsEachStudy: a purge through the admin API deletes
// dead letters for good, and its log line said only how many ("dead
// letters purged", count 1): which studies a night's purge took was
// nowhere. Each letter purged is logged by its study and destination, as
// the status page's replay logs it.
func TestAdminPurgeLogsEachStudy(t *testing.T) {
	f := start(t) // one dead letter
	const token = "admin-token-0123456789"
	var logs strings.Builder
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.NewJSONHandler(&logs, nil))}).Mount(r)
	purge := func(body string) {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("purge %s: status %d, body %s", body, rec.Code, rec.Body)
		}
	}
	// A dry run purges nothing, and the log must not say it did.
	purge(`{"all":true,"dryRun":true}`)
	if strings.Contains(logs.String(), "purged") {
		t.Errorf("a dry run's log says letters were purged:\n%s", logs.String())
	}
	purge(`{"all":true}`)
	var entry map[string]any
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, `"msg":"dead letter purged through the admin API"`) {
			if err := json.Unmarshal([]byte(line), &entry); err != nil {
				t.Fatal(err)
			}
		}
	}
	if entry == nil {
		t.Fatalf("no log line names the purged study:\n%s", logs.String())
	}
	for k, want := range map[string]any{"orthanc_study_id": f.ev.OrthancStudyID, "study_instance_uid": f.ev.StudyInstanceUID,
		"destination": natsjs.DefaultDestination, "source": f.ev.Source, "dead_letter_seq": 1.0} {
		if entry[k] != want {
			t.Errorf("the purge's log line has %s %v, want %v", k, entry[k], want)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"dead letters purged through the admin API","count":1`) {
		t.Errorf("no summary line of the purge:\n%s", logs.String())
	}
}

// publishEvents stores n events of distinct studies in the event stream.
func publishEvents(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	for i := range n {
		ev, err := events.NewStudyStable("orthanc-a", fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-5392598%d", i), "1.2.3", "20261126T101500")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsjs.Publisher{JS: js}).Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// slowJS is JetStream over a slow link: every publish waits delay first,
// as over a NATS cluster whose replicas each acknowledge it.
type slowJS struct {
	jetstream.JetStream
	delay time.Duration
}

func (s slowJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	time.Sleep(s.delay)
	return s.JetStream.PublishMsg(ctx, msg, opts...)
}

// TestAdminAnswersOperationsLongerThanWriteTimeout: a re-forward that
// takes longer than the server's WriteTimeout (many events over a slow
// NATS cluster) still gets its answer. Without it the operator got an
// empty reply for an operation that ran, and sending it again queued
// every study a second time.
func TestAdminAnswersOperationsLongerThanWriteTimeout(t *testing.T) {
	ns := testnats.Start(t)
	publishEvents(t, ns.JS, 3)
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: slowJS{ns.JS, 100 * time.Millisecond}, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	srv := web.NewServer(r, slog.New(slog.DiscardHandler))
	srv.WriteTimeout = 150 * time.Millisecond // the three publishes take 300 ms
	ln, err := web.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	req, err := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/admin/reforward", strings.NewReader(`{"since":"1h"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("re-forward longer than the WriteTimeout: %v, want its answer", err)
	}
	defer resp.Body.Close()
	var body struct{ Count int }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.Count != 3 {
		t.Errorf("status %d, count %d (%v); want 200, 3 events re-forwarded", resp.StatusCode, body.Count, err)
	}
}

// failingJS is JetStream that stops taking publishes after the first ok.
type failingJS struct {
	jetstream.JetStream
	mu sync.Mutex
	ok int
}

func (f *failingJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ok == 0 {
		return nil, errors.New("nats: timeout")
	}
	f.ok--
	return f.JetStream.PublishMsg(ctx, msg, opts...)
}

// TestAdminReforwardFailedPartwaySaysWhatItQueued: a re-forward that
// fails after queuing some events answers 503 with those events, so the
// operator retries the rest only. The answer said only that it failed,
// and operations.md says to try a 503 again: the retry queued every study
// already queued a second time.
func TestAdminReforwardFailedPartwaySaysWhatItQueued(t *testing.T) {
	ns := testnats.Start(t)
	publishEvents(t, ns.JS, 3)
	rec := postReforwardHour(t, &failingJS{JetStream: ns.JS, ok: 1})
	var body struct {
		Error  string
		Count  int
		Events []events.StudyStable
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusServiceUnavailable || body.Error == "" || body.Count != 1 || len(body.Events) != 1 {
		t.Errorf("status %d, body %s; want 503 with the error and the one event queued before it", rec.Code, rec.Body)
	}
}

// TestAdminReforwardSaysWhenTheWindowPrecedesTheStream: a re-forward
// whose window starts before the event stream's oldest event answers a
// note saying so (the stream keeps EVENTS_RETENTION): what came from
// since until that event was not queued, and all of a window that ends
// before it. One within the stream answers none. The note named since
// as the cut-off ("any received before since"), true of every window,
// and a window wholly before the stream, answering count 0, read as
// covered.
func TestAdminReforwardSaysWhenTheWindowPrecedesTheStream(t *testing.T) {
	ns := testnats.Start(t)
	publishEvents(t, ns.JS, 1)
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	first, err := deadletter.StreamStart(t.Context(), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	oldest := first.UTC().Format(time.RFC3339)
	for _, tt := range []struct {
		window string   // the request's since and until
		want   []string // in the note; none: no note
	}{
		{`"since":"8760h"`, []string{"the event stream holds the events received since " + oldest, "any received from ", " until then were not queued", "--from source"}},
		{`"since":"8760h","until":"8700h"`, []string{"the whole window, ", "precedes the event stream's oldest event, received " + oldest, "nothing in it could be queued", "--from source"}},
		{`"since":"8760h","until":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"`, []string{"any received from "}},
		{`"since":"` + time.Now().Add(time.Minute).UTC().Format(time.RFC3339) + `"`, nil},
	} {
		req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader(`{`+tt.window+`,"dryRun":true}`))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var body struct{ Note string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d, body %s (%v)", tt.window, rec.Code, rec.Body, err)
		}
		if len(tt.want) == 0 && body.Note != "" {
			t.Errorf("%s: note %q, want none", tt.window, body.Note)
		}
		for _, w := range tt.want {
			if !strings.Contains(body.Note, w) {
				t.Errorf("%s: note %q lacks %q", tt.window, body.Note, w)
			}
		}
	}
}

// TestAdminReforwardReportsUnreadableEvents: a re-forward answers how
// many messages of its window it could not read (not queued), and 409
// over an event of a newer ingest, queuing nothing. It skipped both and
// answered 200: from an older forwarder in a rollback, studies newer
// forwarders had forwarded were left out, reported success.
func TestAdminReforwardReportsUnreadableEvents(t *testing.T) {
	newer := fmt.Sprintf(`{"type":%q,"version":%d,"source":"orthanc-a","orthancStudyId":"x"}`, events.TypeStudyStable, events.Version+1)
	for _, tt := range []struct {
		name   string
		raw    []string
		status int
	}{
		{"not an event", []string{"not an event"}, http.StatusOK},
		{"a newer ingest's event", []string{"not an event", newer}, http.StatusConflict},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			publishEvents(t, ns.JS, 1)
			for _, data := range tt.raw {
				if _, err := ns.JS.Publish(t.Context(), natsjs.EventSubject("orthanc-a"), []byte(data)); err != nil {
					t.Fatal(err)
				}
			}
			rec := postReforwardHour(t, ns.JS)
			var body struct {
				Count            int
				UnreadableEvents int
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			wantCount := 1 // the event this build reads is queued, a newer one's or not
			if rec.Code != tt.status || body.UnreadableEvents != 1 || body.Count != wantCount {
				t.Errorf("status %d, body %s; want %d, unreadableEvents 1, count %d", rec.Code, rec.Body, tt.status, wantCount)
			}
		})
	}
}

// TestAdminListsDeadLettersInPages: a listing answers at most limit
// letters and the sequence to continue after; the pages together hold
// every letter the filter selects, once. Without pages an outage's
// thousands of letters (each up to half a megabyte) made one answer.
func TestAdminListsDeadLettersInPages(t *testing.T) {
	f := start(t) // letter 1: the default destination
	for i := range 6 {
		ev := f.ev
		ev.OrthancStudyID = fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-5392599%d", i)
		l := &forward.DeadLetter{Event: ev, Class: forward.Permanent, Reason: fmt.Sprintf("letter %d", i+2),
			Attempts: 1, DeadLetteredAt: time.Now().UTC()}
		if i%2 == 0 {
			l.Destination = "ai" // letters 2, 4, 6
		}
		if _, _, err := f.store.Add(t.Context(), l); err != nil {
			t.Fatal(err)
		}
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	list := func(query string) (status int, seqs []uint64, next uint64) {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/admin/deadletters?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var answer struct {
			Entries []struct {
				Seq uint64 `json:"seq"`
			} `json:"entries"`
			Next uint64 `json:"next"`
		}
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
		}
		for _, e := range answer.Entries {
			seqs = append(seqs, e.Seq)
		}
		return rec.Code, seqs, answer.Next
	}
	for _, tt := range []struct {
		query string
		seqs  []uint64
		next  uint64
	}{
		{"", []uint64{1, 2, 3, 4, 5, 6, 7}, 0},
		{"limit=3", []uint64{1, 2, 3}, 3},
		{"limit=3&after=3", []uint64{4, 5, 6}, 6},
		{"limit=3&after=6", []uint64{7}, 0},
		{"limit=2&destination=ai", []uint64{2, 4}, 4},
		{"limit=2&destination=ai&after=4", []uint64{6}, 0},
		{"limit=1&seq=4&after=3", []uint64{4}, 0},
		{"seq=4&after=4", nil, 0},
		{"after=99", nil, 0},
		// The bounds of limit= are pages too.
		{"limit=1", []uint64{1}, 1},
		{"limit=1000", []uint64{1, 2, 3, 4, 5, 6, 7}, 0},
	} {
		status, seqs, next := list(tt.query)
		if status != http.StatusOK || fmt.Sprint(seqs) != fmt.Sprint(tt.seqs) || next != tt.next {
			t.Errorf("%q: status %d, letters %v, next %d; want 200, %v, %d", tt.query, status, seqs, next, tt.seqs, tt.next)
		}
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=-1"} {
		if status, _, _ := list(q); status != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400", q, status)
		}
	}
	// A page ends early past its bytes, at least one letter in it.
	if entries, more, err := f.store.Page(t.Context(), deadletter.Filter{All: true}, 0, 0, 1); err != nil || len(entries) != 1 || !more {
		t.Errorf("a page of at most 1 byte: %d letters, more %v, err %v; want 1, true", len(entries), more, err)
	}
	// A replay or purge answer names the letters, without their failed
	// instances (a thousand each, for thousands of letters).
	req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(`{"all":true,"dryRun":true}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var answer struct {
		Count   int              `json:"count"`
		Entries []map[string]any `json:"entries"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || rec.Code != http.StatusOK || answer.Count != 7 || len(answer.Entries) != 7 {
		t.Fatalf("purge dry run: status %d, %s (%v)", rec.Code, rec.Body, err)
	}
	if e := answer.Entries[1]; e["seq"] != 2.0 || e["destination"] != "ai" || e["studyInstanceUid"] == "" || e["failures"] != nil || e["event"] != nil {
		t.Errorf("purge dry run entry %v: want the letter's summary", e)
	}
}

// TestAdminReplayAnswerIsBounded: a purge of more letters than an answer
// names (thousands after an outage) names the first 1,000 and counts the
// others; count is all of them.
func TestAdminReplayAnswerIsBounded(t *testing.T) {
	f := start(t) // letter 1
	const letters = 1003
	for i := 2; i <= letters; i++ {
		ev := f.ev // one letter a study
		ev.OrthancStudyID = fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-539%05d", i)
		l := &forward.DeadLetter{Event: ev, Class: forward.Permanent, Reason: "refused", Attempts: 1, DeadLetteredAt: time.Now().UTC()}
		if _, _, err := f.store.Add(t.Context(), l); err != nil {
			t.Fatal(err)
		}
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(`{"all":true}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var answer struct {
		Count   int `json:"count"`
		Omitted int `json:"entriesOmitted"`
		Entries []struct {
			Seq uint64 `json:"seq"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("purge: status %d, %v", rec.Code, err)
	}
	if answer.Count != letters || len(answer.Entries) != 1000 || answer.Omitted != letters-1000 || answer.Entries[999].Seq != 1000 {
		t.Errorf("purge of %d letters: count %d, %d entries (last seq %d), %d omitted; want %d, 1000 (1000), %d",
			letters, answer.Count, len(answer.Entries), answer.Entries[len(answer.Entries)-1].Seq, answer.Omitted, letters, letters-1000)
	}
	if left, _, err := f.store.Page(t.Context(), deadletter.Filter{All: true}, 0, 10, 1<<20); err != nil || len(left) != 0 {
		t.Errorf("after the purge: %d letters left (%v), want none", len(left), err)
	}
}

// TestAdminAnswersAWrongRequestInJSON: a wrong path or method under
// /admin is answered in JSON naming what is wrong, as every other error
// of the API: an operator's GET of .../replay was told "seq: not a
// dead-letter sequence number", a POST to the listing got an empty 405
// and a mistyped path chi's plain-text 404. Nothing is read or changed,
// so no store is needed.
func TestAdminAnswersAWrongRequestInJSON(t *testing.T) {
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, tt := range []struct {
		method, path string
		status       int
		says         string
	}{
		{http.MethodGet, "/admin/deadletters/replay", http.StatusMethodNotAllowed, "POST"},
		{http.MethodGet, "/admin/deadletters/purge", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPost, "/admin/deadletters", http.StatusMethodNotAllowed, "GET"},
		{http.MethodGet, "/admin/reforward", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPost, "/admin/replay", http.StatusNotFound, "/admin/deadletters/replay"},
	} {
		req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(`{"all":true}`))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var answer struct{ Error string }
		err := json.Unmarshal(rec.Body.Bytes(), &answer)
		if rec.Code != tt.status || err != nil || !strings.Contains(answer.Error, tt.says) {
			t.Errorf("%s %s: status %d, body %q; want %d and a JSON error naming %s", tt.method, tt.path, rec.Code, rec.Body, tt.status, tt.says)
		}
	}
	// Still behind the token.
	req := httptest.NewRequest(http.MethodGet, "/admin/nothing", nil)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("GET /admin/nothing without the token: status %d, want 401", rec.Code)
	}
}

// TestAdminTakesSeqAsANumber: a replay or purge body names a letter by
// its seq as the listings answer it, a JSON number ({"seq": 1}), or as a
// string, as before. A number was refused with Go's "cannot unmarshal
// number into Go struct field ... of type string".
func TestAdminTakesSeqAsANumber(t *testing.T) {
	f := start(t) // dead letter 1
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, body := range []string{`{"seq":1,"dryRun":true}`, `{"seq":"1","dryRun":true}`} {
		req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var answer struct{ Count int }
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); rec.Code != http.StatusOK || err != nil || answer.Count != 1 {
			t.Errorf("%s: status %d, body %s; want 200 and count 1", body, rec.Code, rec.Body)
		}
	}
	for _, body := range []string{`{"seq":-1}`, `{"seq":1.5}`, `{"seq":"x"}`, `{"seq":true}`} {
		req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "seq") {
			t.Errorf("%s: status %d, body %s; want 400 naming seq", body, rec.Code, rec.Body)
		}
	}
	if _, err := f.store.Get(t.Context(), 1); err != nil {
		t.Errorf("dead letter 1 after dry runs and refusals: %v", err)
	}
}

// TestAdminRefusesWhatNamesNothing: seq 0 names no dead letter (JetStream
// numbers from 1), and a re-forward window whose until is not after its
// since holds no event; each is refused with 400 naming its field, before
// the store or the event stream is asked, not answered as an outage (503)
// or as a re-forward of nothing that looks done.
func TestAdminRefusesWhatNamesNothing(t *testing.T) {
	f := start(t) // dead letter 1
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, tt := range []struct {
		method, path, body, says string
	}{
		{http.MethodGet, "/admin/deadletters/0", "", "seq: not a dead-letter sequence number"},
		{http.MethodPost, "/admin/reforward", `{"since":"2026-11-01T00:00Z","until":"2026-11-01T00:00Z","dryRun":true}`, "until: must be after since"},
		{http.MethodPost, "/admin/reforward", `{"since":"2026-11-02T00:00Z","until":"2026-11-01T00:00Z","dryRun":true}`, "until: must be after since"},
	} {
		req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), tt.says) {
			t.Errorf("%s %s %s: status %d, body %s; want 400 saying %q", tt.method, tt.path, tt.body, rec.Code, rec.Body, tt.says)
		}
	}
}

// TestAdminRefusesAFilterGivenEmpty: a purge of {"destination":
// "default", "study": ""} (a script's unset variable) dropped the empty
// filter and purged every dead letter of the destination. A filter given
// empty is refused, naming it; so is an empty query parameter of the
// listing, its limit= and after= too (an empty after= started again from
// the first page: a paging script looped for ever).
func TestAdminRefusesAFilterGivenEmpty(t *testing.T) {
	f := start(t) // dead letter 1
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, tt := range []struct {
		method, path, body, names string
	}{
		{http.MethodPost, "/admin/deadletters/purge", `{"destination":"default","study":""}`, "study: empty"},
		{http.MethodPost, "/admin/deadletters/replay", `{"destination":"default","orthancStudyId":""}`, "orthancStudyId: empty"},
		{http.MethodPost, "/admin/deadletters/purge", `{"seq":"","all":true}`, "seq: empty"},
		{http.MethodGet, "/admin/deadletters?destination=default&study=", "", "study: empty"},
		{http.MethodGet, "/admin/deadletters?destination=default&after=", "", "after: empty"},
		{http.MethodGet, "/admin/deadletters?limit=&after=1", "", "limit: empty"},
		// Not "empty", but refused alike: a misspelt key listed every letter.
		{http.MethodGet, "/admin/deadletters?clas=permanent", "", "clas: not a key of this listing"},
		{http.MethodGet, "/admin/deadletters?class=permanent&class=transient", "", "class: given twice"},
		{http.MethodPost, "/admin/reforward", `{"since":"1h","destination":"","dryRun":true}`, "destination: empty"},
		{http.MethodPost, "/admin/reforward", `{"since":"1h","destination":null,"dryRun":true}`, "destination: null"},
		{http.MethodPost, "/admin/reforward", `{"since":"1h","until":"","dryRun":true}`, "until: empty"},
		{http.MethodPost, "/admin/reforward", `{"since":"1h","until":null,"dryRun":true}`, "until: null"},
		{http.MethodPost, "/admin/deadletters/purge", `{"seq":null,"all":true}`, "seq: null"},
		{http.MethodPost, "/admin/deadletters/purge", `{"destination":"default","study":null}`, "study: null"},
		{http.MethodPost, "/admin/deadletters/replay", `{"destination":null,"all":true}`, "destination: null"},
		{http.MethodPost, "/admin/deadletters/purge", `{"all":true,"dryRun":null}`, "dryRun: null"},
	} {
		req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var answer struct{ Error string }
		err := json.Unmarshal(rec.Body.Bytes(), &answer)
		if rec.Code != http.StatusBadRequest || err != nil || !strings.Contains(answer.Error, tt.names) {
			t.Errorf("%s %s %s: status %d, body %s; want 400 saying %q", tt.method, tt.path, tt.body, rec.Code, rec.Body, tt.names)
		}
	}
	if _, err := f.store.Get(t.Context(), 1); err != nil {
		t.Errorf("dead letter 1 after refused requests: %v", err)
	}
}

// TestAdminRefusesAMutationWithoutAFilter: a purge or replay whose body
// names no filter ({}, a script that built none) is refused with 400
// asking for one, or "all": true, and touches no letter; the store's own
// refusal would answer it as a failure of the server.
func TestAdminRefusesAMutationWithoutAFilter(t *testing.T) {
	f := start(t) // dead letter 1
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, path := range []string{"/admin/deadletters/purge", "/admin/deadletters/replay"} {
		for _, body := range []string{`{}`, `{"dryRun":true}`} {
			req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			var answer struct{ Error string }
			err := json.Unmarshal(rec.Body.Bytes(), &answer)
			if rec.Code != http.StatusBadRequest || err != nil || !strings.HasPrefix(answer.Error, "give a filter") {
				t.Errorf("POST %s %s: status %d, body %s; want 400 asking for a filter", path, body, rec.Code, rec.Body)
			}
		}
	}
	if _, err := f.store.Get(t.Context(), 1); err != nil {
		t.Errorf("dead letter 1 after refused requests: %v", err)
	}
}

// TestAdminSaysABodyIsEmpty: a replay, purge or re-forward without a
// body (curl -X POST without -d) is told so, with an example, not
// "malformed JSON body: EOF".
func TestAdminSaysABodyIsEmpty(t *testing.T) {
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, path := range []string{"/admin/deadletters/replay", "/admin/deadletters/purge", "/admin/reforward"} {
		req := httptest.NewRequest(http.MethodPost, path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var answer struct{ Error string }
		err := json.Unmarshal(rec.Body.Bytes(), &answer)
		if rec.Code != http.StatusBadRequest || err != nil || !strings.HasPrefix(answer.Error, "empty body: send one JSON object") {
			t.Errorf("POST %s without a body: status %d, body %s; want 400 saying the body is empty", path, rec.Code, rec.Body)
		}
	}
}

// TestAdminReforwardAnswerIsBounded: a re-forward of more events than an
// answer names (a busy week's window) names the first 1,000 and counts
// the others, as a replay's answer; count is all of them. The answer
// named every event, tens of thousands of them.
func TestAdminReforwardAnswerIsBounded(t *testing.T) {
	ns := testnats.Start(t)
	const n = 1003
	for i := range n {
		ev, err := events.NewStudyStable("orthanc-a", fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-539%05d", i), "1.2.3", "20261126T101500")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader(`{"since":"1h","dryRun":true}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var answer struct {
		Count   int                  `json:"count"`
		Omitted int                  `json:"eventsOmitted"`
		Events  []events.StudyStable `json:"events"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("re-forward: status %d, %v", rec.Code, err)
	}
	if answer.Count != n || len(answer.Events) != 1000 || answer.Omitted != n-1000 {
		t.Errorf("re-forward of %d events: count %d, %d events, %d omitted; want %d, 1000, %d", n, answer.Count, len(answer.Events), answer.Omitted, n, n-1000)
	}
}

// heapAtStream is a JetStream that notes the live heap, after a
// collection, at each stream look-up: as the re-forward starts to read
// the event stream, then at WindowNote's, as the answer is built.
type heapAtStream struct {
	jetstream.JetStream
	mu   sync.Mutex
	live []uint64
}

func (h *heapAtStream) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h.mu.Lock()
	h.live = append(h.live, m.HeapAlloc)
	h.mu.Unlock()
	return h.JetStream.Stream(ctx, name)
}

// TestAdminReforwardHoldsTheAnswersEventsOnly: once the window is read, a
// re-forward's answer keeps the events it names (maxSummaries), not the
// window's: it kept a slice of them that held every event read (tens of
// thousands over a busy week) while the answer was built and written.
func TestAdminReforwardHoldsTheAnswersEventsOnly(t *testing.T) {
	ns := testnats.Start(t)
	const n = 10000
	for i := range n {
		ev, err := events.NewStudyStable("orthanc-a", fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-%08x", i), fmt.Sprint("1.2.826.0.1.3680043.2.1143.", i), "20261126T101500")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	const token = "admin-token-0123456789"
	js := &heapAtStream{JetStream: ns.JS}
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: js, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader(`{"since":"1h","dryRun":true}`))
	req.Header.Set("Authorization", "Bearer "+token)
	// A first run, for the server's caches of the stream (in this
	// process) to fill.
	r.ServeHTTP(httptest.NewRecorder(), req.Clone(t.Context()))
	// The heap is the whole process's, the in-process server's caches
	// too, which may expire and fill again within a run on a busy
	// machine: the least of three runs is the handler's.
	held := int64(math.MaxInt64)
	for range 3 {
		js.live = nil
		req = httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader(`{"since":"1h","dryRun":true}`))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || len(js.live) != 2 {
			t.Fatalf("re-forward: status %d, %d stream look-ups, want 2: %s", rec.Code, len(js.live), rec.Body)
		}
		// An event decoded is some 300 bytes (its struct, 144, and its
		// strings): the window's would be 3 MB, the answer's 0.3 MB.
		held = min(held, int64(js.live[1])-int64(js.live[0]))
	}
	t.Logf("%d KB held once the window was read (%d events)", held>>10, n)
	if held > 1<<20 {
		t.Errorf("%d KB held once the window of %d events was read, want at most 1 MB (the answer's %d events)", held>>10, n, 1000)
	}
}

// postReforwardHour asks an admin API on js to re-forward the last hour.
func postReforwardHour(t *testing.T, js jetstream.JetStream) *httptest.ResponseRecorder {
	t.Helper()
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: js, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodPost, "/admin/reforward", strings.NewReader(`{"since":"1h"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	return rec
}

// TestAdminSaysWhyABodyIsNoUTF8JSON: a purge whose body is compressed or
// UTF-16 is refused naming that, and does nothing; a UTF-8 byte-order
// mark is read past. They were "malformed JSON body: invalid character
// 'ï'" (or '\x1f'), which named no cause.
func TestAdminSaysWhyABodyIsNoUTF8JSON(t *testing.T) {
	f := start(t) // one dead letter
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	const purge = `{"all":true}`
	for _, tt := range []struct {
		name, body, encoding string
		code                 int
		want                 string
	}{
		{"gzip header", purge, "gzip", http.StatusUnsupportedMediaType, `gzip\" is not supported: send the body uncompressed`},
		{"gzip bytes", "\x1f\x8b\x08\x00rest", "", http.StatusBadRequest, "gzip-compressed"},
		{"UTF-16 LE with its mark", "\xff\xfe{\x00\"\x00", "", http.StatusBadRequest, "UTF-16"},
		{"UTF-16 BE without a mark", "\x00{\x00\"", "", http.StatusBadRequest, "UTF-16"},
		{"UTF-8 mark", "\xef\xbb\xbf" + `{"all":true,"dryRun":true}`, "identity", http.StatusOK, `"dryRun":true`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/admin/deadletters/purge", strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer "+token)
			if tt.encoding != "" {
				req.Header.Set("Content-Encoding", tt.encoding)
			}
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.want) {
				t.Errorf("status %d, body %.200s; want %d naming %q", rec.Code, rec.Body, tt.code, tt.want)
			}
		})
	}
	left, err := f.store.List(t.Context(), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 {
		t.Errorf("%d dead letters left, want the one there was", len(left))
	}
}

// A replay or a re-forward goes to the low lane unless the request's
// "priority" names another, as the commands' --priority: a dead-lettered
// stat study replayed through the API waited behind the backfills and
// for the low lane's FORWARD_WINDOWS. A purge has no lane.
func TestAdminReplaysInALane(t *testing.T) {
	f := start(t) // letter 1, of source orthanc-a
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), f.ns.JS, []string{natsjs.DefaultDestination}); err != nil {
		t.Fatal(err)
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, Store: f.store, JS: f.ns.JS, Log: slog.New(slog.DiscardHandler), Destinations: []string{natsjs.DefaultDestination}}).Mount(r)
	post := func(path, body string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec
	}
	lastSubject := func() string {
		t.Helper()
		s, err := f.ns.JS.Stream(t.Context(), natsjs.EventStream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetLastMsgForSubject(t.Context(), ">")
		if err != nil {
			t.Fatal(err)
		}
		return m.Subject
	}
	for _, tt := range []struct{ path, body string }{
		{"/admin/deadletters/purge", `{"all":true,"priority":"stat"}`},
		{"/admin/deadletters/replay", `{"seq":1,"priority":"urgent"}`},
		{"/admin/reforward", `{"since":"1h","priority":"urgent"}`},
	} {
		if rec := post(tt.path, tt.body); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "priority") {
			t.Errorf("%s %s: status %d, body %s; want 400 naming priority", tt.path, tt.body, rec.Code, rec.Body)
		}
	}
	if rec := post("/admin/deadletters/replay", `{"seq":1,"priority":"stat"}`); rec.Code != http.StatusOK {
		t.Fatalf("replay: status %d, body %s", rec.Code, rec.Body)
	}
	if got, want := lastSubject(), natsjs.LaneSubject(events.PriorityStat, natsjs.DefaultDestination, "orthanc-a"); got != want {
		t.Errorf("replayed on %s, want %s", got, want)
	}
	// The re-forward takes the events Orthanc announced, not replays.
	if _, err := (natsjs.Publisher{JS: f.ns.JS}).Publish(t.Context(), &f.ev); err != nil {
		t.Fatal(err)
	}
	if rec := post("/admin/reforward", `{"since":"1h","priority":"routine","destination":"default"}`); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"count":1`) {
		t.Fatalf("reforward: status %d, body %s", rec.Code, rec.Body)
	}
	if got, want := lastSubject(), natsjs.LaneSubject(events.PriorityRoutine, natsjs.DefaultDestination, "orthanc-a"); got != want {
		t.Errorf("re-forwarded on %s, want %s", got, want)
	}
}
