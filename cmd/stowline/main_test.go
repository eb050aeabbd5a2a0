package main

import (
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// sampleFiles lists the shared sample files, all of them: the broken ones
// must not stop the rest.
func sampleFiles(t *testing.T) []string {
	t.Helper()
	dir := testharness.SamplesDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample files in %s (err %v)", dir, err)
	}
	sort.Strings(files)
	return files
}

// TestEndToEnd runs the real program in single-host mode between two real
// Orthanc servers: A receives studies from storescu and runs the project's
// Lua script; B is the STOW-RS destination (DICOMweb plugin) behind a gate
// that only lets through bearer tokens from a real OAuth2 server issuing
// tokens that expire every few seconds (and behind the site's fault
// proxy, which lets everything through here). A runs an Orthanc release under
// test; B, a stand-in for a cloud archive, the default one.
//
// With the reconciler on, it forwards every study within a poll even if
// the Lua script never posted, so the run without it is the one that
// proves the script: every study must then come through the webhook. That
// run goes on every Orthanc release under test.
func TestEndToEnd(t *testing.T) {
	t.Run("lua only", func(t *testing.T) {
		testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
			// Each run has its own Orthanc servers, IdP, ports and store.
			t.Parallel()
			testEndToEnd(t, rel, false)
		})
	})
	t.Run("lua and reconciler", func(t *testing.T) {
		t.Parallel()
		testEndToEnd(t, testharness.Release{}, true)
	})
}

// testEndToEnd is one run of TestEndToEnd, with source Orthanc A of
// release rel and the change-log reconciler on or off.
func testEndToEnd(t *testing.T, rel testharness.Release, reconcile bool) {
	testharness.RequireBinary(t, "storescu")

	const adminToken = "e2e-admin-token-0123456789"
	const tokenLifetime = 3 * time.Second
	s := newSiteWith(t, siteOptions{release: rel, stableAge: 2, oauth: true, tokenLifetime: tokenLifetime})
	src, dest, idp, gate := s.sources["main"], s.dest, s.dests[0].idp, s.dests[0].gate
	s.env["STOW_MAX_INSTANCES"] = "50"
	s.env["ADMIN_TOKEN"] = adminToken
	s.env["RECONCILE_ENABLED"] = strconv.FormatBool(reconcile)
	// The reconciler's defaults: the webhook comes first.
	delete(s.env, "RECONCILE_POLL_INTERVAL")
	delete(s.env, "RECONCILE_LEASE_TTL")
	stop := s.start(t)
	ingestAddr, forwarderAddr := s.ingestAddr, s.fwdAddr

	// The modality sends the samples (some broken on purpose) and a
	// generated 300-instance CT study.
	ctDir := t.TempDir()
	ctFiles, err := dicomgen.WriteStudy(ctDir, dicomgen.StudySpec{
		PatientID: "E2E-300", PatientName: "Synthetic^Threehundred",
		Series: 3, InstancesPerSeries: 100, Rows: 64, Columns: 64,
	})
	if err != nil {
		t.Fatal(err)
	}
	res := src.StoreSCU(t, append(sampleFiles(t), ctFiles...)...)
	t.Logf("storescu: %d stored, %d refused", len(res.Stored), len(res.Failed))
	if len(res.Failed) == 0 {
		t.Error("the broken sample files were all accepted: the test data is not what it claims")
	}

	waitForwarded(t, src, dest, 3*time.Minute)

	// A study that arrives after the first token expired must go through
	// with a renewed token: its requests pass the gate, which lets no
	// expired token through, and none is rejected (checked below).
	time.Sleep(tokenLifetime + time.Second)
	acceptedBeforeLate := gate.Accepted()
	lateFiles, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		PatientID: "E2E-LATE", PatientName: "Synthetic^Late", Series: 1, InstancesPerSeries: 10, Rows: 32, Columns: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := src.StoreSCU(t, lateFiles...); len(res.Failed) > 0 {
		t.Fatalf("storescu refused generated files: %v", res.Failed)
	}
	want, got := waitForwarded(t, src, dest, 3*time.Minute)
	if len(want) < 300+10+20 {
		t.Fatalf("source has only %d instances", len(want))
	}
	for uid, sum := range want {
		switch g, ok := got[uid]; {
		case !ok:
			t.Errorf("SOP instance %s did not reach the destination", uid)
		case g != sum:
			t.Errorf("SOP instance %s differs: md5 %s at the source, %s at the destination", uid, sum, g)
		}
	}
	if len(got) != len(want) {
		t.Errorf("destination has %d instances, source %d", len(got), len(want))
	}

	// The gate saw only valid tokens: no request was sent with an expired
	// one. Every instance arriving does not show it: a forwarder that sent
	// a stale token, got 401 and re-sent with a new one would deliver them
	// all the same.
	if n := gate.Rejected(); n != 0 {
		t.Errorf("the gate rejected %d requests; want none (no request sent with an expired token)", n)
	}
	if gate.Accepted() == acceptedBeforeLate {
		t.Error("no request of the study sent after the first token expired went through the gate")
	}
	t.Logf("tokens issued %d, gate accepted %d, rejected %d", idp.TokensIssued(), gate.Accepted(), gate.Rejected())

	// The forwarder counts instances once it has read the destination's
	// answer: the destination holds the last ones a moment before.
	waitMetricAtLeast(t, "http://"+forwarderAddr+"/metrics", "stowline_forwarder_instances_total", float64(len(want)), 30*time.Second)

	// Without the reconciler only the Lua script announces studies: the
	// ingest must have accepted a webhook event for every study (the
	// counter is bumped once JetStream has the event, which may be a
	// moment after the forwarder got it), and at most one per
	// StableStudy callback. Not exactly one per study: under load a gap
	// of StableAge in storescu's stream makes a partial study stable, and
	// the script posts it again, complete, with a new LastUpdate.
	var studies []string
	src.GetJSON(t, "/studies", &studies)
	if !reconcile {
		accepted := `stowline_ingest_events_received_total{result="accepted"}`
		waitMetricAtLeast(t, "http://"+ingestAddr+"/metrics", accepted, float64(len(studies)), 10*time.Second)
		got, stable := sampleValue(t, "http://"+ingestAddr+"/metrics", accepted), stableStudyChanges(t, src)
		if got > float64(stable) {
			t.Errorf("the ingest accepted %v webhook events, more than the %d StableStudy changes of the source", got, stable)
		}
		t.Logf("%d StableStudy changes in the source's change log", stable)
	}
	t.Logf("%d studies; webhook events accepted %v, duplicate %v", len(studies),
		sampleValue(t, "http://"+ingestAddr+"/metrics", `stowline_ingest_events_received_total{result="accepted"}`),
		sampleValue(t, "http://"+ingestAddr+"/metrics", `stowline_ingest_events_received_total{result="duplicate"}`))

	// Graceful stop.
	stop()

	// The logs never hold PHI, secrets or tokens (the OAuth2 access
	// tokens are JWTs: scanLogs looks for their "eyJ" prefix).
	out := s.logText()
	scanLogs(t, out, append(patientNames(t, src), siteIngestToken, adminToken, s.dests[0].secret))
	if !strings.Contains(out, `"msg":"study forwarded"`) {
		t.Error("no 'study forwarded' log line")
	}
	// The reconciler ran exactly when it was asked to: it logs its cursor
	// per source when it starts, and says so when it is disabled.
	if got := testharness.HasLogLine(out, `"msg":"reconciler `, `"cursor"`); got != reconcile {
		t.Errorf("reconciler cursor logged = %v, want %v (RECONCILE_ENABLED=%v)", got, reconcile, reconcile)
	}
	if got := testharness.HasLogLine(out, `"msg":"reconciler disabled`); got == reconcile {
		t.Errorf("'reconciler disabled' logged = %v with RECONCILE_ENABLED=%v", got, reconcile)
	}
}

// waitForwarded waits until dest holds as many instances as src, and
// returns both SOP Instance UID -> MD5 maps.
func waitForwarded(t *testing.T, src, dest *testharness.Orthanc, timeout time.Duration) (want, got map[string]string) {
	t.Helper()
	want = src.InstanceMD5s(t)
	deadline := time.Now().Add(timeout)
	for {
		got = dest.InstanceMD5s(t)
		if len(got) >= len(want) || time.Now().After(deadline) {
			return want, got
		}
		time.Sleep(time.Second)
	}
}

// stableStudyChanges counts the StableStudy changes in o's change log:
// each runs the Lua script's OnStableStudy once.
func stableStudyChanges(t *testing.T, o *testharness.Orthanc) int {
	t.Helper()
	n := 0
	for since := int64(0); ; {
		var page struct {
			Changes []struct{ ChangeType string }
			Done    bool
			Last    int64
		}
		o.GetJSON(t, "/changes?limit=1000&since="+strconv.FormatInt(since, 10), &page)
		for _, c := range page.Changes {
			if c.ChangeType == "StableStudy" {
				n++
			}
		}
		if page.Done || page.Last <= since {
			return n
		}
		since = page.Last
	}
}

// patientNames returns the PatientName and PatientID values stored in o,
// for the PHI scan of the logs.
func patientNames(t *testing.T, o *testharness.Orthanc) []string {
	t.Helper()
	var patients []struct {
		MainDicomTags map[string]string
	}
	o.GetJSON(t, "/patients?expand", &patients)
	var out []string
	for _, p := range patients {
		for _, k := range []string{"PatientName", "PatientID"} {
			if v := strings.TrimSpace(p.MainDicomTags[k]); len(v) > 3 {
				out = append(out, v)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no patient names found to scan for")
	}
	return out
}

// waitMetricAtLeast waits until the metric name on url is at least
// atLeast, and marks the test failed if it is not within timeout.
func waitMetricAtLeast(t *testing.T, url, name string, atLeast float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, ok := testharness.Metric(t, url, name)
		switch {
		case ok && v >= atLeast:
			return
		case time.Now().Before(deadline):
			time.Sleep(200 * time.Millisecond)
		case !ok:
			t.Errorf("metric %s not found after %s", name, timeout)
			return
		default:
			t.Errorf("metric %s = %v after %s, want at least %v", name, v, timeout, atLeast)
			return
		}
	}
}
