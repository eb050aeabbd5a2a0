package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

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
		if !testharness.HasLogLine(logs, `"msg":"study forwarded"`, `"source":"`+name+`"`) {
			t.Errorf("no study forwarded from source %s", name)
		}
	}
}
