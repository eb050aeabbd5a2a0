package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/web"
)

// docPermissions reads the permission blocks of docs/nats-permissions.md
// (each a ```json fence after a "<!-- permissions: NAME -->" line), so the
// test runs the services under exactly what the documentation says.
func docPermissions(t *testing.T) map[string]*server.Permissions {
	t.Helper()
	doc, err := os.ReadFile("../../docs/nats-permissions.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- permissions: ([a-z]+) -->\\s*```json\\n(.*?)```")
	out := map[string]*server.Permissions{}
	for _, m := range re.FindAllSubmatch(doc, -1) {
		var p struct {
			Publish, Subscribe struct{ Allow, Deny []string }
		}
		dec := json.NewDecoder(strings.NewReader(string(m[2])))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("permissions %s in docs/nats-permissions.md: %v", m[1], err)
		}
		out[string(m[1])] = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: p.Publish.Allow, Deny: p.Publish.Deny},
			Subscribe: &server.SubjectPermission{Allow: p.Subscribe.Allow, Deny: p.Subscribe.Deny},
		}
	}
	for _, name := range []string{"ingest", "forwarder"} {
		if out[name] == nil {
			t.Fatalf("docs/nats-permissions.md has no permissions block for %s", name)
		}
	}
	return out
}

// TestLeastPrivilegeNATSPermissions runs the real ingest and forwarder,
// each as its own NATS user with exactly the documented permissions, on a
// nats-server with authorization enabled: the webhook stores an event,
// the forwarder sends the study and acks it, the status page and the
// admin API answer, the admin API replays and purges a dead letter,
// nothing was refused on the way, and publishes outside
// the permissions are refused.
func TestLeastPrivilegeNATSPermissions(t *testing.T) {
	testharness.RequireBinary(t, "Orthanc")
	testharness.RequireBinary(t, "storescu")
	perms := docPermissions(t)
	const (
		adminPass     = "admin-nats-password-0123"
		ingestPass    = "ingest-nats-password-0123"
		forwarderPass = "forwarder-nats-password-0123"
	)

	r := &rig{storeDir: t.TempDir()}
	r.dest = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest", DicomWeb: true})
	r.proxy = faultproxy.Start(t, r.dest.URL)
	r.src = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "src"})
	r.forwarderAddr = testharness.FreeAddr(t)

	serverLog := &testharness.LogBuffer{}
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir: r.storeDir, ServerName: "authz", Port: -1,
		Configure: func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "test-admin", Password: adminPass},
				{Username: "stowline-ingest", Password: ingestPass, Permissions: perms["ingest"]},
				{Username: "stowline-forwarder", Password: forwarderPass, Permissions: perms["forwarder"]},
			}
		},
	}, slog.New(slog.NewTextHandler(serverLog, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server log:\n%s", serverLog.String())
		}
	})
	u, _ := url.Parse(srv.ClientURL())
	r.natsPort, _ = strconv.Atoi(u.Port())

	// Authorization is on: no credentials, no connection.
	if nc, err := nats.Connect(r.natsURL()); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	}
	r.nc, err = nats.Connect(r.natsURL(), nats.UserInfo("test-admin", adminPass))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.nc.Close)
	if r.js, err = jetstream.New(r.nc); err != nil {
		t.Fatal(err)
	}

	// The ingest, with its reconciler and status page.
	ingestAddr := testharness.FreeAddr(t)
	ingestEnv := map[string]string{
		"NATS_URL":                r.natsURL(),
		"NATS_USER":               "stowline-ingest",
		"NATS_PASSWORD":           ingestPass,
		"INGEST_ADDR":             ingestAddr,
		"INGEST_TOKEN":            "ingest-token-0123456789",
		"ORTHANC_URL":             r.src.URL,
		"ORTHANC_SOURCE_NAME":     "src",
		"RECONCILE_POLL_INTERVAL": "200ms",
		"ADMIN_TOKEN":             adminToken,
		"LOG_LEVEL":               "debug",
	}
	runIngest := func(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
		return app.Main[config.IngestService](ctx, "ingest", args, getenv, environ, stdout, stderr, app.RunIngest)
	}
	ingest := testharness.StartProgram(t, "ingest", runIngest, ingestEnv)
	testharness.WaitHTTP(t, "http://"+ingestAddr+"/readyz", 30*time.Second)
	// Its reconciler reads the event stream at a start without a cursor,
	// to tell a lost cursor from a first start.
	waitLogLine(t, ingest.Logs, "(first start)", 30*time.Second)
	if strings.Contains(ingest.Logs.String(), "could not read the event stream") {
		t.Error("the ingest's reconciler could not read the event stream with the documented permissions")
	}

	// The forwarder, with its admin API.
	r.startForwarder(t, map[string]string{"NATS_USER": "stowline-forwarder", "NATS_PASSWORD": forwarderPass})

	// A study arrives; Orthanc's script would post this event.
	postStable := func(studyID string) {
		t.Helper()
		var s struct {
			MainDicomTags map[string]string
			LastUpdate    string
		}
		r.src.GetJSON(t, "/studies/"+studyID, &s)
		body, _ := json.Marshal(map[string]any{
			"type": events.TypeStudyStable, "version": events.Version, "source": "src",
			"orthancStudyId": studyID, "studyInstanceUid": s.MainDicomTags["StudyInstanceUID"], "lastUpdate": s.LastUpdate,
		})
		req, _ := http.NewRequest(http.MethodPost, "http://"+ingestAddr+web.WebhookPath, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+ingestEnv["INGEST_TOKEN"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("webhook answered %d, want 202", resp.StatusCode)
		}
	}
	postStable(r.addStudy(t, 3, 32))
	r.waitDest(t, 3, 60*time.Second)
	r.waitQueueEmpty(t, 30*time.Second)
	r.assertIdentical(t)

	// What operators read works under the same permissions.
	get := func(url string, set func(*http.Request)) int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		set(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("http://"+ingestAddr+"/ui/", func(r *http.Request) { r.SetBasicAuth("op", adminToken) }); code != http.StatusOK {
		t.Errorf("ingest status page answered %d, want 200", code)
	}
	if code := get("http://"+r.forwarderAddr+"/admin/deadletters", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+adminToken) }); code != http.StatusOK {
		t.Errorf("forwarder admin API answered %d, want 200", code)
	}
	for _, addr := range []string{ingestAddr, r.forwarderAddr} {
		testharness.WaitHTTP(t, "http://"+addr+"/readyz", 10*time.Second)
		if code := get("http://"+addr+"/metrics", func(*http.Request) {}); code != http.StatusOK {
			t.Errorf("%s/metrics answered %d", addr, code)
		}
	}

	// The admin API's writes under the same permissions: a study refused
	// for good (415) becomes a dead letter; replaying it after the fix
	// stores it; a second one is purged.
	// A request the server refuses a JetStream call for waits out its
	// context: the client's time limit turns that into a failure.
	adminClient := &http.Client{Timeout: 20 * time.Second}
	admin := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+r.forwarderAddr+"/admin"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := adminClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	waitDeadLetter := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, out := admin(http.MethodGet, "/deadletters", "")
			if entries, _ := out["entries"].([]any); code == http.StatusOK && len(entries) == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no dead letter after 30s: %d %v", code, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	r.proxy.SetStatus(http.StatusUnsupportedMediaType, "refused by the test proxy")
	postStable(r.addStudy(t, 2, 32))
	waitDeadLetter()
	r.proxy.SetStatus(0, "")
	// Reads with an ordered consumer: the ingest's status page shows the
	// dead letter; a since later than every letter ends on the consumer's
	// info (nothing delivered); a re-forward (dry run) reads the event
	// stream, whose ordered consumer has a random name.
	if code := get("http://"+ingestAddr+"/ui/", func(r *http.Request) { r.SetBasicAuth("op", adminToken) }); code != http.StatusOK {
		t.Errorf("ingest status page with a dead letter answered %d, want 200", code)
	}
	later := url.QueryEscape(time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if code, out := admin(http.MethodGet, "/deadletters?since="+later, ""); code != http.StatusOK || out["entries"] == nil || len(out["entries"].([]any)) != 0 {
		t.Fatalf("admin list with a later since under the forwarder's permissions: %d %v, want no entries", code, out)
	}
	if code, out := admin(http.MethodPost, "/reforward", `{"since":"1h","dryRun":true}`); code != http.StatusOK || out["count"] == nil || out["count"].(float64) < 2 {
		t.Fatalf("admin reforward (dry run) under the forwarder's permissions: %d %v, want the 2 studies' events", code, out)
	}
	// The ingest's status page replays it (its Replay button).
	_, listed := admin(http.MethodGet, "/deadletters", "")
	seq := strconv.FormatFloat(listed["entries"].([]any)[0].(map[string]any)["seq"].(float64), 'f', 0, 64)
	replayFromPage(t, "http://"+ingestAddr, adminToken, seq)
	r.waitDest(t, 5, 60*time.Second)
	r.proxy.SetStatus(http.StatusUnsupportedMediaType, "refused by the test proxy")
	postStable(r.addStudy(t, 2, 32))
	waitDeadLetter()
	r.proxy.SetStatus(0, "")
	if code, out := admin(http.MethodPost, "/deadletters/replay", `{"all":true}`); code != http.StatusOK || out["count"] != 1.0 {
		t.Fatalf("admin replay under the forwarder's permissions: %d %v", code, out)
	}
	r.waitDest(t, 7, 60*time.Second)
	r.proxy.SetStatus(http.StatusUnsupportedMediaType, "refused by the test proxy")
	postStable(r.addStudy(t, 2, 32))
	waitDeadLetter()
	if code, out := admin(http.MethodPost, "/deadletters/purge", `{"all":true}`); code != http.StatusOK || out["count"] != 1.0 {
		t.Fatalf("admin purge under the forwarder's permissions: %d %v", code, out)
	}
	if code, out := admin(http.MethodGet, "/deadletters", ""); code != http.StatusOK || len(out["entries"].([]any)) != 0 {
		t.Errorf("after the purge: %d %v, want no dead letters", code, out)
	}
	r.proxy.SetStatus(0, "")

	if v := serverLog.String(); strings.Contains(v, "Violation") {
		t.Errorf("the normal flow was refused something; nats-server log:\n%s", grepLines(v, "Violation"))
	}

	// Outside the permissions: refused.
	forbidden := []struct {
		user, pass, subject string
	}{
		{"stowline-ingest", ingestPass, "stowline.deadletter.src"},                              // dead letters are the forwarder's
		{"stowline-ingest", ingestPass, "$KV.stowline_forwarded.x"},                             // the ledger is the forwarder's
		{"stowline-ingest", ingestPass, "$JS.API.STREAM.DELETE.STOWLINE_EVENTS"},                // nobody deletes the stream
		{"stowline-ingest", ingestPass, "$JS.ACK.STOWLINE_EVENTS.stowline-forwarder.1.1.1.1.1"}, // nor acks events
		{"stowline-forwarder", forwarderPass, "$KV.stowline_reconcile.x"},                       // the cursors are the ingest's
		{"stowline-forwarder", forwarderPass, "$JS.API.STREAM.PURGE.STOWLINE_EVENTS"},
		{"stowline-forwarder", forwarderPass, "$JS.API.CONSUMER.DELETE.STOWLINE_EVENTS.stowline-forwarder"},
	}
	for _, f := range forbidden {
		t.Run(f.user+" "+f.subject, func(t *testing.T) {
			var mu sync.Mutex
			var asyncErr error
			nc, err := nats.Connect(r.natsURL(), nats.UserInfo(f.user, f.pass), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				mu.Lock()
				asyncErr = err
				mu.Unlock()
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_, err = nc.Request(f.subject, []byte("{}"), 2*time.Second)
			if err == nil {
				t.Fatalf("request to %s answered", f.subject)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				mu.Lock()
				e := asyncErr
				mu.Unlock()
				if e != nil || errors.Is(err, nats.ErrPermissionViolation) {
					if e != nil && !errors.Is(e, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(e.Error()), "permissions violation") {
						t.Errorf("error %v, want a permissions violation", e)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("no permissions violation reported for %s (request error: %v)", f.subject, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	if !strings.Contains(serverLog.String(), `Publish Violation - Subject \"$JS.API.STREAM.DELETE.STOWLINE_EVENTS\"`) {
		t.Error("nats-server did not log the refused stream delete")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// replayFromPage presses the status page's Replay button of dead letter
// seq, as an operator's browser does (cookie, CSRF token, Origin), and wants the
// page's redirect to the replayed letter.
func replayFromPage(t *testing.T, base, adminToken, seq string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, base+"/ui/", nil)
	req.SetBasicAuth("op", adminToken)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	token := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if token == nil {
		t.Fatalf("status page (%d) has no replay form", resp.StatusCode)
	}
	form := url.Values{"seq": {seq}, "csrf": {string(token[1])}}
	req, _ = http.NewRequest(http.MethodPost, base+"/ui/replay", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	req.SetBasicAuth("op", adminToken)
	if resp, err = c.Do(req); err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.Contains(loc, "replayed="+seq) {
		t.Fatalf("status page replay of dead letter %s under the ingest's permissions: %d %q\n%s", seq, resp.StatusCode, loc, body)
	}
}
