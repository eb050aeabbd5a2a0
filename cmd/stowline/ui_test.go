package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/testbrowser"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
)

// TestStatusPage runs the real program in single-host mode between two real
// Orthanc servers (the destination behind a real OAuth2 gate and a fault
// proxy) and looks at the status page in a real headless Chromium: the
// numbers match /metrics, a study in flight shows its progress, and the
// replay button of a dead letter queues it again until it is forwarded.
// Screenshots are saved as test artifacts.
func TestStatusPage(t *testing.T) {
	testharness.RequireBinary(t, "Orthanc")
	browser := testbrowser.Start(t)

	const (
		ingestToken  = "ui-ingest-token-0123456789"
		adminToken   = "ui-admin-token-0123456789abc"
		clientID     = "stowline-ui"
		clientSecret = "ui-client-secret-abcdef012"
	)
	// Tokens outlive the test: exactly one fetch, so the page and the
	// metrics can be compared without a race.
	idp := testidp.Start(t, testidp.WithClient(clientID, clientSecret), testidp.WithTokenLifetime(10*time.Minute))
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest-b", DicomWeb: true})
	proxy := faultproxy.Start(t, idp.Gate(t, dest.URL).URL)
	src := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "source-a"})

	ingestAddr, forwarderAddr := testharness.FreeAddr(t), testharness.FreeAddr(t)
	env := map[string]string{
		"NATS_STORE_DIR":        t.TempDir(),
		"INGEST_ADDR":           ingestAddr,
		"INGEST_TOKEN":          ingestToken,
		"FORWARDER_ADDR":        forwarderAddr,
		"ORTHANC_URL":           src.URL,
		"DICOMWEB_URL":          proxy.URL + "/dicom-web",
		"OAUTH_TOKEN_URL":       idp.TokenURL,
		"OAUTH_CLIENT_ID":       clientID,
		"OAUTH_CLIENT_SECRET":   clientSecret,
		"ADMIN_TOKEN":           adminToken,
		"FORWARDER_RETRY_DELAY": "1s",
		"STOW_MAX_INSTANCES":    "4",
		// One request at a time: study C's progress shows after its first
		// request and stays visible for several more while the page and
		// /metrics are compared.
		"STOW_PARALLEL_REQUESTS": "1",
		// The test posts the webhook events itself, in its own order.
		"RECONCILE_ENABLED": "false",
		"LOG_LEVEL":         "debug",
	}
	prog := testharness.StartProgram(t, "stowline", run, env)
	logs := prog.Logs
	ingestURL, forwarderURL := "http://"+ingestAddr, "http://"+forwarderAddr
	testharness.WaitHTTP(t, ingestURL+"/readyz", 30*time.Second)
	testharness.WaitHTTP(t, forwarderURL+"/readyz", 30*time.Second) // fetches the token

	// The forwarder's readiness names its checks, the token included.
	var ready struct{ Checks []string }
	getJSON(t, forwarderURL+"/readyz", &ready)
	if !strings.Contains(strings.Join(ready.Checks, ","), "destination_token") {
		t.Errorf("forwarder /readyz checks %v lack destination_token", ready.Checks)
	}

	studyA := uploadStudy(t, src, "UI-A", "Synthetic^Alpha", 6)
	studyB := uploadStudy(t, src, "UI-B", "Synthetic^Bravo", 3)
	studyC := uploadStudy(t, src, "UI-C", "Synthetic^Charlie", 24)

	// A is forwarded; B is refused for good (415) and dead-lettered.
	postEvent(t, ingestURL, ingestToken, src, studyA)
	waitInstances(t, dest, 6, time.Minute)
	proxy.SetStatus(http.StatusUnsupportedMediaType, "unsupported media type (status page test)")
	postEvent(t, ingestURL, ingestToken, src, studyB)
	waitMetric(t, ingestURL+"/metrics", "stowline_deadletter_studies", 1, 30*time.Second)
	proxy.SetStatus(0, "")

	// C crawls through a slow link (about 2 s a request): the page shows
	// it in flight.
	proxy.Throttle(16 << 10)
	postEvent(t, ingestURL, ingestToken, src, studyC)

	testbrowser.BasicAuth(t, browser, "operator", adminToken)
	page := ingestURL + "/ui/"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := chromedp.Do(browser, chromedp.Navigate(page)); err != nil {
			t.Fatal(err)
		}
		html, err := chromedp.Run(browser, chromedp.OuterHTML(chromedp.ID("inflight")))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(html, "<progress") && !strings.Contains(html, `value="0"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed study C in flight with progress:\n%s", html)
		}
		time.Sleep(200 * time.Millisecond)
	}
	compare(t, browser, ingestURL, forwarderURL, map[string]string{
		"inflight-count":    `stowline_forwarder_studies_in_flight`,
		"queue-ack-pending": `stowline_queue_ack_pending_events`,
		"deadletter-count":  `stowline_deadletter_studies`,
	})
	if got := pageNumber(t, browser, "inflight-count"); got != 1 {
		t.Errorf("studies being sent = %v, want 1", got)
	}
	testbrowser.Screenshot(t, browser, "status-page-in-flight.png")
	proxy.Throttle(0)
	waitInstances(t, dest, 6+24, 2*time.Minute)
	waitMetric(t, ingestURL+"/metrics", "stowline_queue_ack_pending_events", 0, 30*time.Second)
	// The forwarder counts a study, and takes it off the page's in-flight
	// list, after its ack has reached JetStream (and its ledger record):
	// the queue can be empty a moment before.
	waitMetric(t, forwarderURL+"/metrics", `stowline_forwarder_studies_total{result="forwarded"}`, 2, 30*time.Second)
	waitPageNumber(t, browser, page, "forwarded-total", 2, 30*time.Second)

	// Quiet: every number on the page is the one on /metrics.
	all := map[string]string{
		"queue-pending":     `stowline_queue_pending_events`,
		"queue-ack-pending": `stowline_queue_ack_pending_events`,
		"queue-redelivered": `stowline_queue_redelivered_events`,
		"deadletter-count":  `stowline_deadletter_studies`,
		"inflight-count":    `stowline_forwarder_studies_in_flight`,
		"forwarded-total":   `stowline_forwarder_studies_total{result="forwarded"}`,
		// The one destination's row.
		"dest-default-deadletters": `stowline_deadletter_studies{destination="default"}`,
		"dest-default-inflight":    `stowline_forwarder_studies_in_flight{destination="default"}`,
	}
	compare(t, browser, ingestURL, forwarderURL, all)
	tokens, err := chromedp.Run(browser, chromedp.Text(chromedp.ID("destinations")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tokens, "OAuth2") || !strings.Contains(tokens, "ok") {
		t.Errorf("destination token status:\n%s", tokens)
	}
	if fetches := sampleValue(t, forwarderURL+"/metrics", "stowline_forwarder_token_fetches_total"); fetches != 1 {
		t.Errorf("stowline_forwarder_token_fetches_total = %v, want 1", fetches)
	}
	recent, err := chromedp.Run(browser, chromedp.Text(chromedp.ID("recent")))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*study{studyA, studyC} {
		if !strings.Contains(recent, s.uid) {
			t.Errorf("recent forwards lack study %s:\n%s", s.uid, recent)
		}
	}
	testbrowser.Screenshot(t, browser, "status-page-dead-letter.png")

	// Replay the dead letter with its button: B reaches the destination.
	if _, err := chromedp.RunResponse(browser, chromedp.Click(chromedp.ID("replay-1"))); err != nil {
		t.Fatalf("click replay: %v", err)
	}
	flash, err := chromedp.Run(browser, chromedp.Text(chromedp.ID("flash")))
	if err != nil || !strings.Contains(flash, "Dead letter 1 replayed") {
		t.Fatalf("after the replay click: flash %q (err %v)", flash, err)
	}
	waitInstances(t, dest, 6+24+3, time.Minute)
	waitMetric(t, ingestURL+"/metrics", "stowline_queue_ack_pending_events", 0, 30*time.Second)
	waitMetric(t, forwarderURL+"/metrics", `stowline_forwarder_studies_total{result="forwarded"}`, 3, 30*time.Second)
	waitPageNumber(t, browser, page, "forwarded-total", 3, 30*time.Second)
	compare(t, browser, ingestURL, forwarderURL, all)
	if got := pageNumber(t, browser, "deadletter-count"); got != 0 {
		t.Errorf("dead letters after replay = %v, want 0", got)
	}
	testbrowser.Screenshot(t, browser, "status-page-replayed.png")
	metricsDocumented(t, ingestURL+"/metrics", forwarderURL+"/metrics")

	// Nothing logged holds PHI, secrets or tokens.
	if err := prog.Stop(); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
	scanLogs(t, logs.String(), append(patientNames(t, src), ingestToken, adminToken, clientSecret))
	if !strings.Contains(logs.String(), "dead letter replayed from the status page") {
		t.Error("the replay was not logged")
	}
}

type study struct{ id, uid string }

// uploadStudy generates a study of n small instances and uploads it to o.
func uploadStudy(t *testing.T, o *testharness.Orthanc, patientID, patientName string, n int) *study {
	t.Helper()
	uid := dicomgen.NewUID()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: patientID, PatientName: patientName,
		Series: 1, InstancesPerSeries: n, Rows: 64, Columns: 64,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatalf("upload refused: %v", res.Failed)
	}
	var found []struct{ ID, Type string }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.Do(ctx, http.MethodPost, "/tools/lookup", strings.NewReader(uid), &found); err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		if f.Type == "Study" {
			return &study{id: f.ID, uid: uid}
		}
	}
	t.Fatalf("study %s not found after upload", uid)
	return nil
}

// postEvent posts the study's stable event to the webhook, as the Lua
// script does.
func postEvent(t *testing.T, ingestURL, token string, o *testharness.Orthanc, s *study) {
	t.Helper()
	var st struct{ LastUpdate string }
	o.GetJSON(t, "/studies/"+s.id, &st)
	body, err := json.Marshal(map[string]any{"type": "orthanc.study.stable", "version": 1, "source": "orthanc-a",
		"orthancStudyId": s.id, "studyInstanceUid": s.uid, "lastUpdate": st.LastUpdate})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, ingestURL+"/webhooks/orthanc", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("webhook: %d %s", resp.StatusCode, b)
	}
}

func waitInstances(t *testing.T, o *testharness.Orthanc, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for o.Statistics(t).CountInstances < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d instances after %s, want %d", o.Name, o.Statistics(t).CountInstances, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

// sampleValue returns the sum of the samples of a /metrics page that
// match series: a metric name, with the labels they must have if some
// (testharness.Metric; any destination).
func sampleValue(t *testing.T, url, series string) float64 {
	t.Helper()
	v, ok := testharness.Metric(t, url, series)
	if !ok {
		t.Fatalf("%s has no %s", url, series)
	}
	return v
}

func waitMetric(t *testing.T, url, series string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := sampleValue(t, url, series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after %s, want %v", series, got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func pageNumber(t *testing.T, browser context.Context, id string) float64 {
	t.Helper()
	s, err := chromedp.Run(browser, chromedp.Text(chromedp.ID(id)))
	if err != nil {
		t.Fatalf("page #%s: %v", id, err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		t.Fatalf("page #%s = %q: %v", id, s, err)
	}
	return v
}

// waitPageNumber loads page until its number #id is want. The forwarder
// counts a study (stowline_forwarder_studies_total) before it tells the
// page's tracker (forward's settle, then Observer.Finished), so the page
// can lag a counter waited on; a page showing the count shows the rest of
// that study's end too (its in-flight row, its recent line).
func waitPageNumber(t *testing.T, browser context.Context, page, id string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if err := chromedp.Do(browser, chromedp.Navigate(page)); err != nil {
			t.Fatal(err)
		}
		got := pageNumber(t, browser, id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("page #%s = %v after %s, want %v", id, got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// compare checks that each number on the loaded page equals its metric,
// read from the ingest's /metrics or, for forwarder metrics, the
// forwarder's.
func compare(t *testing.T, browser context.Context, ingestURL, forwarderURL string, numbers map[string]string) {
	t.Helper()
	for id, series := range numbers {
		url := ingestURL + "/metrics"
		if strings.HasPrefix(series, "stowline_forwarder_") {
			url = forwarderURL + "/metrics"
		}
		// The ingest's queue metrics stand for a second after they were
		// read (scrapeReuse), and the page reads afresh: a scrape just
		// before a change may answer the number from before it.
		deadline := time.Now().Add(5 * time.Second)
		page, metric := pageNumber(t, browser, id), sampleValue(t, url, series)
		for page != metric && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			page, metric = pageNumber(t, browser, id), sampleValue(t, url, series)
		}
		if page != metric {
			t.Errorf("page #%s = %v, but %s = %v", id, page, series, metric)
		}
	}
}

// scanLogs fails the test if the log holds any of forbidden, or anything
// shaped like a JWT (OAuth2 access tokens) or a bearer credential.
func scanLogs(t *testing.T, out string, forbidden []string) {
	t.Helper()
	for _, s := range forbidden {
		if s != "" && strings.Contains(out, s) {
			t.Errorf("the log contains %q", s)
		}
	}
	for _, s := range []string{"eyJ", "Bearer ", "Basic "} {
		if i := strings.Index(out, s); i >= 0 {
			t.Errorf("the log contains %q: %s", s, out[max(0, i-80):min(len(out), i+80)])
		}
	}
}

// metricsDocumented checks that docs/metrics.md documents every stowline
// metric the processes export.
func metricsDocumented(t *testing.T, urls ...string) {
	t.Helper()
	docs, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, url := range urls {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(body), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "stowline_") &&
				!bytes.Contains(docs, []byte("`"+f[2]+"`")) {
				t.Errorf("%s exports %s, which docs/metrics.md does not document", url, f[2])
			}
		}
	}
}
