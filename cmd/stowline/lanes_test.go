package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// TestStatOvertakesBackfill: a backfill of older studies runs through a
// slow link (the destination throttled, one STOW request of two instances
// at a time); a study PRIORITY_RULE makes stat, then a routine one,
// arrive and reach the destination while the backfill is still running:
// the stat study in the stat lane's own worker, the routine one in the
// worker the low lane leaves free (FORWARDER_CONCURRENCY=2: the low lane
// takes at most one). Then the link is fast again and the backfill
// completes.
func TestStatOvertakesBackfill(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{nats: true})
	s.env["RECONCILE_ENABLED"] = "false"
	s.env["FORWARDER_CONCURRENCY"] = "2"
	s.env["STOW_MAX_INSTANCES"] = "2"
	s.env["STOW_PARALLEL_REQUESTS"] = "1"
	s.env["PRIORITY_RULE"] = "'MR' in study.modalities"
	src := s.sources["main"]

	// The backfill's studies are in Orthanc before stowline runs: with
	// the reconciler off they have no event until the backfill.
	var backfillUIDs []string
	for range 5 {
		files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
			PatientID: "SITE", PatientName: "Synthetic^Site", InstancesPerSeries: 8, Rows: 128, Columns: 128,
		})
		if err != nil {
			t.Fatal(err)
		}
		send(t, src, files...)
		backfillUIDs = append(backfillUIDs, sopUIDs(t, files...)...)
	}
	src.WaitStable(t, 30*time.Second)

	s.start(t)
	fwdMetrics := "http://" + s.fwdAddr + "/metrics"
	// About 33 kB an instance, 66 kB a request: 2 s a request, 8 s a
	// study, 40 s for the backfill in one worker.
	s.proxy.Throttle(32 << 10)
	out := s.command(t, app.RunBackfill, "--destination", "default", "--since", "1h", "--from", "source")
	if !strings.Contains(out, "5 studies queued for default") {
		t.Fatalf("backfill:\n%s", out)
	}
	waitUntil(t, 30*time.Second, "the backfill to be sending", func() bool {
		v, ok := testharness.Metric(t, fwdMetrics, `stowline_forwarder_lane_in_flight{lane="low"}`)
		return ok && v == 1
	})

	stat := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "MR", Instances: 2})
	send(t, src, stat...)
	statUIDs := sopUIDs(t, stat...)
	routine := generate(t, "", 2)
	send(t, src, routine...)
	routineUIDs := sopUIDs(t, routine...)
	took := s.dests[0].waitHolds(t, append(statUIDs, routineUIDs...), 30*time.Second)
	t.Logf("the stat and routine studies were stored %s after they were sent, amid the backfill", took.Round(100*time.Millisecond))

	have := s.dests[0].uids(t)
	backfilled := 0
	for _, uid := range backfillUIDs {
		if have[uid] {
			backfilled++
		}
	}
	if backfilled == len(backfillUIDs) {
		t.Fatal("the backfill was complete before the stat study arrived: nothing to overtake (make the link slower)")
	}
	t.Logf("%d of %d backfill instances were at the destination then", backfilled, len(backfillUIDs))
	for lane, want := range map[string]float64{"stat": 1, "routine": 1} {
		if got := metricValue(t, fwdMetrics, `stowline_forwarder_lane_pulls_total{lane="`+lane+`"}`); got != want {
			t.Errorf("%s lane pulls = %v, want %v", lane, got, want)
		}
	}
	if got := metricValue(t, "http://"+s.ingestAddr+"/metrics", `stowline_ingest_priority_total{by="rule",priority="stat"}`); got != 1 {
		t.Errorf("events PRIORITY_RULE made stat = %v, want 1", got)
	}
	if got := metricValue(t, fwdMetrics, `stowline_queue_lane_pending_events{lane="low"}`); got == 0 {
		t.Error("the low lane's queue is empty while the backfill runs")
	}

	s.proxy.Throttle(0)
	s.dests[0].waitHolds(t, backfillUIDs, time.Minute)
	s.waitIdle(t, 30*time.Second, "default")
	sends := s.proxy.Sends()
	for _, uid := range append(append(backfillUIDs, statUIDs...), routineUIDs...) {
		if sends[uid] != 1 {
			t.Errorf("instance %s was stored %d times, want once", uid, sends[uid])
		}
	}
}
