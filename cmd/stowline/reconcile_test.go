package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/testharness"
)

const reconcileToken = "reconcile-test-token-0123456789"

// site is a single-host deployment for the reconciler tests: source
// Orthanc servers running the project's Lua script, the real program
// (run) with an embedded JetStream store that survives its restarts, and
// a real destination Orthanc (DICOMweb) behind a proxy that counts how
// often each instance arrives.
type site struct {
	sources    map[string]*testharness.Orthanc
	dest       *testharness.Orthanc
	proxy      *faultproxy.Proxy
	env        map[string]string
	ingestAddr string
	fwdAddr    string

	mu   sync.Mutex
	logs *testharness.LogBuffer
}

// newSite starts the destination and one source Orthanc per name, each
// on release rel and posting its events with that source name. It does
// not start stowline.
func newSite(t *testing.T, rel testharness.Release, stableAge int, names ...string) *site {
	t.Helper()
	s := &site{sources: map[string]*testharness.Orthanc{}, ingestAddr: testharness.FreeAddr(t), fwdAddr: testharness.FreeAddr(t)}
	s.dest = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest", DicomWeb: true})
	s.proxy = faultproxy.Start(t, s.dest.URL)
	lua, err := filepath.Abs("../../lua/stowline.lua")
	if err != nil {
		t.Fatal(err)
	}
	s.env = map[string]string{
		"NATS_STORE_DIR":          t.TempDir(),
		"INGEST_ADDR":             s.ingestAddr,
		"INGEST_TOKEN":            reconcileToken,
		"FORWARDER_ADDR":          s.fwdAddr,
		"DICOMWEB_URL":            s.proxy.URL + "/dicom-web",
		"FORWARDER_RETRY_DELAY":   "1s",
		"RECONCILE_POLL_INTERVAL": "200ms",
		"RECONCILE_LEASE_TTL":     "2s",
		"LOG_LEVEL":               "debug",
	}
	for _, name := range names {
		s.sources[name] = testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "orthanc-" + name,
			Release:    rel,
			LuaScripts: []string{lua},
			StableAge:  stableAge,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + s.ingestAddr + "/webhooks/orthanc",
				"IngestToken": reconcileToken,
				"Source":      name,
			}},
		})
	}
	if len(names) == 1 {
		s.env["ORTHANC_URL"] = s.sources[names[0]].URL
		s.env["ORTHANC_SOURCE_NAME"] = names[0]
	} else {
		s.env["ORTHANC_SOURCES"] = strings.Join(names, ",")
		for _, name := range names {
			s.env["ORTHANC_"+strings.ToUpper(name)+"_URL"] = s.sources[name].URL
		}
	}
	return s
}

// start runs stowline until the returned stop is called or the test ends,
// and waits until its reconciler has a cursor for every source.
func (s *site) start(t *testing.T) (stop func()) {
	t.Helper()
	p := testharness.StartProgram(t, "stowline", run, s.env)
	logs := p.Logs
	s.mu.Lock()
	s.logs = logs
	s.mu.Unlock()
	stop = func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stowline: %v", err)
		}
	}
	testharness.WaitHTTP(t, "http://"+s.ingestAddr+"/readyz", 30*time.Second)
	testharness.WaitHTTP(t, "http://"+s.fwdAddr+"/readyz", 30*time.Second)
	for name := range s.sources {
		// The cursor is stored before either line is logged.
		waitLog(t, logs, `"msg":"reconciler `, `cursor`, `"source":"`+name+`"`)
	}
	return stop
}

// waitLog waits for a log line that holds all of parts.
func waitLog(t *testing.T, logs *testharness.LogBuffer, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !hasLine(logs.String(), parts...) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with all of %q", parts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hasLine reports whether a line of logs holds all of parts.
func hasLine(logs string, parts ...string) bool {
	for line := range strings.SplitSeq(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// generate writes a study of n small instances (a new StudyInstanceUID
// unless uid is set).
func generate(t *testing.T, uid string, n int) []string {
	t.Helper()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "RECON", PatientName: "Synthetic^Reconcile",
		Series: 1, InstancesPerSeries: n, Rows: 16, Columns: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// waitArrived waits until the destination holds n instances and nothing
// more can be forwarded (waitSettled), so that a duplicate forward would
// show, and checks that every instance arrived exactly once.
func (s *site) waitArrived(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	s.dest.WaitInstances(t, n, timeout)
	s.waitSettled(t, 30*time.Second)
	sends := s.proxy.Sends()
	if len(sends) != n {
		t.Errorf("%d instances reached the destination, want %d", len(sends), n)
	}
	for uid, k := range sends {
		if k != 1 {
			t.Errorf("instance %s was sent %d times", uid, k)
		}
	}
}

// waitSettled waits until stowline can forward nothing more: for every
// source the reconciler has read the change log to its end, no study waits
// to become stable and it has published (stored, or found already stored)
// an event for each of the source's studies; and the forwarder sends
// nothing and has settled as many studies as JetStream stored events
// (from the webhook and the reconciler). An event stored after that would
// have to come from a change Orthanc has not made.
func (s *site) waitSettled(t *testing.T, timeout time.Duration) {
	t.Helper()
	ingest, fwd := "http://"+s.ingestAddr+"/metrics", "http://"+s.fwdAddr+"/metrics"
	settled := func() (bool, string) {
		stored := metricValue(t, ingest, `stowline_ingest_events_received_total{result="accepted"}`)
		for name, src := range s.sources {
			var studies []string
			src.GetJSON(t, "/studies", &studies)
			label := `{source="` + name + `"}`
			lag := metricValue(t, ingest, `stowline_reconcile_lag_changes`+label)
			pending := metricValue(t, ingest, `stowline_reconcile_pending_studies`+label)
			rstored := metricValue(t, ingest, `stowline_reconcile_events_published_total{result="stored",source="`+name+`"}`)
			rdup := metricValue(t, ingest, `stowline_reconcile_events_published_total{result="duplicate",source="`+name+`"}`)
			if lag != 0 || pending != 0 || rstored+rdup < float64(len(studies)) {
				return false, fmt.Sprintf("source %s: lag %v, pending %v, published %v for %d studies", name, lag, pending, rstored+rdup, len(studies))
			}
			stored += rstored
		}
		inFlight := metricValue(t, fwd, `stowline_forwarder_studies_in_flight`)
		done := metricValue(t, fwd, `stowline_forwarder_studies_total{result="forwarded"}`) +
			metricValue(t, fwd, `stowline_forwarder_studies_total{result="dead_lettered"}`)
		if inFlight != 0 || done != stored {
			return false, fmt.Sprintf("forwarder: %v in flight, %v of %v stored events settled", inFlight, done, stored)
		}
		return true, ""
	}
	deadline := time.Now().Add(timeout)
	for {
		ok, why := settled()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled after %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricValue sums the samples of a metric whose labels include the
// given ones (e.g. `stowline_reconcile_lease_held{source="a"}`) on a
// /metrics endpoint.
func metricValue(t *testing.T, url, sample string) float64 {
	t.Helper()
	v, ok := testharness.Metric(t, url, sample)
	if !ok {
		t.Fatalf("metric %s not found at %s", sample, url)
	}
	return v
}

// The ingest is down while 5 studies become stable, so every Lua post
// fails: once stowline is back, the reconciler finds them in the change
// log and each arrives at the destination once.
func TestIngestDownStudiesArriveAfterRestart(t *testing.T) {
	testharness.ForEachRelease(t, testIngestDown)
}

func testIngestDown(t *testing.T, rel testharness.Release) {
	s := newSite(t, rel, 1, "main")
	src := s.sources["main"]
	stop := s.start(t)
	stop()

	var files []string
	for range 5 {
		files = append(files, generate(t, "", 2)...)
	}
	src.Upload(t, files...)
	src.WaitStudies(t, 5, 10*time.Second)
	src.WaitStable(t, 20*time.Second)
	waitOrthancLog(t, src, "not announced: cannot reach", 5)

	s.start(t)
	s.waitArrived(t, 10, time.Minute)
	if got := metricValue(t, "http://"+s.ingestAddr+"/metrics", `stowline_reconcile_events_published_total{result="stored",source="main"}`); got != 5 {
		t.Errorf("reconciler stored %v events, want 5", got)
	}
	// Each instance reached the destination once: no study was forwarded
	// twice.
	sends := s.proxy.Sends()
	for uid, n := range sends {
		if n != 1 {
			t.Errorf("instance %s sent %d times", uid, n)
		}
	}
	if len(sends) != 10 {
		t.Errorf("%d instances reached the destination, want 10", len(sends))
	}
}

// waitOrthancLog waits until Orthanc's log holds s at least n times.
func waitOrthancLog(t *testing.T, o *testharness.Orthanc, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(o.LogTail(10000), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("orthanc %q logged %q %d times, want %d", o.Name, s, strings.Count(o.LogTail(10000), s), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Orthanc restarts after the last instance of a study but before
// StableAge: it forgets the study was unstable, never logs StableStudy and
// never runs the Lua callback. The reconciler saw the study arrive and
// publishes it once Orthanc calls it stable.
func TestOrthancRestartBeforeStable(t *testing.T) {
	testharness.ForEachRelease(t, testOrthancRestartBeforeStable)
}

func testOrthancRestartBeforeStable(t *testing.T, rel testharness.Release) {
	s := newSite(t, rel, 6, "main")
	src := s.sources["main"]
	s.start(t)

	src.Upload(t, generate(t, "", 3)...)
	src.Stop(t)
	src.Start(t)

	s.waitArrived(t, 3, time.Minute)
	var changes struct{ Changes []struct{ ChangeType string } }
	src.GetJSON(t, "/changes?since=0&limit=1000", &changes)
	for _, c := range changes.Changes {
		if c.ChangeType == "StableStudy" {
			t.Fatal("Orthanc logged StableStudy: the test did not restart it before StableAge")
		}
	}
	if strings.Contains(src.LogTail(10000), "stowline: study") {
		t.Error("the Lua script ran: the test did not restart Orthanc before StableAge")
	}
	if got := metricValue(t, "http://"+s.ingestAddr+"/metrics", `stowline_reconcile_events_published_total{result="stored",source="main"}`); got != 1 {
		t.Errorf("reconciler stored %v events, want 1", got)
	}
}

// Two Orthanc sources hold a study with the same StudyInstanceUID (and so
// the same Orthanc study ID) but different instances: each event is
// forwarded from its own source, so every instance of both arrives.
func TestTwoSourcesWithTheSameStudy(t *testing.T) {
	testharness.ForEachRelease(t, testTwoSources)
}

func testTwoSources(t *testing.T, rel testharness.Release) {
	s := newSite(t, rel, 1, "main", "cardio")
	s.start(t)
	uid := dicomgen.NewUID()
	s.sources["main"].Upload(t, generate(t, uid, 2)...)
	s.sources["cardio"].Upload(t, generate(t, uid, 3)...)

	s.waitArrived(t, 5, time.Minute)
	var studies []string
	s.dest.GetJSON(t, "/studies", &studies)
	if len(studies) != 1 {
		t.Errorf("destination has %d studies, want the one study with both sources' instances", len(studies))
	}
	s.mu.Lock()
	logs := s.logs.String()
	s.mu.Unlock()
	for _, name := range []string{"main", "cardio"} {
		if !hasLine(logs, `"msg":"study forwarded"`, `"source":"`+name+`"`) {
			t.Errorf("no study forwarded from source %s", name)
		}
	}
}
