package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// TestStatOvertakesBackfill: a backfill of older studies runs through a
// slow link (the destination throttled, one STOW request of two instances
// at a time) in one of the two shared workers (the low lane takes at most
// FORWARDER_CONCURRENCY-1); a large routine study arrives and takes the
// other one, while the backfill goes on. Every shared worker is busy when
// a study PRIORITY_RULE makes stat arrives: the stat worker sends it at
// once, and it is stored before the routine study and the backfill are.
// Then the link is fast again and everything completes, each instance
// sent once.
func TestStatOvertakesBackfill(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{nats: true})
	s.env["RECONCILE_ENABLED"] = "false"
	s.env["FORWARDER_CONCURRENCY"] = "2"
	s.env["STOW_MAX_INSTANCES"] = "2"
	s.env["STOW_PARALLEL_REQUESTS"] = "1"
	s.env["PRIORITY_RULE"] = "'MR' in study.modalities"
	src := s.sources["main"]
	dest := s.dests[0]

	// About 33 kB an instance, 66 kB a request: 2 s a request through
	// the throttled link, 8 s a study.
	large := func() []string {
		files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
			PatientID: "SITE", PatientName: "Synthetic^Site", InstancesPerSeries: 8, Rows: 128, Columns: 128,
		})
		if err != nil {
			t.Fatal(err)
		}
		return files
	}
	// The backfill's studies are in Orthanc before stowline runs: with
	// the reconciler off they have no event until the backfill.
	var backfillUIDs []string
	for range 5 {
		files := large()
		send(t, src, files...)
		backfillUIDs = append(backfillUIDs, sopUIDs(t, files...)...)
	}
	src.WaitStable(t, 30*time.Second)

	s.start(t)
	fwdMetrics := "http://" + s.fwdAddr + "/metrics"
	inFlight := func(lane string) func() bool {
		return func() bool {
			v, ok := testharness.Metric(t, fwdMetrics, `stowline_forwarder_lane_in_flight{lane="`+lane+`"}`)
			return ok && v == 1
		}
	}
	s.proxy.Throttle(32 << 10)
	out := s.command(t, app.RunBackfill, "--destination", "default", "--since", "1h", "--from", "source")
	if !strings.Contains(out, "5 studies queued for default") {
		t.Fatalf("backfill:\n%s", out)
	}
	testharness.WaitFor(t, "the backfill to be sending", 30*time.Second, inFlight("low"))

	routine := large()
	send(t, src, routine...)
	routineUIDs := sopUIDs(t, routine...)
	testharness.WaitFor(t, "the routine study to be sending beside the backfill", 30*time.Second, inFlight("routine"))

	stat := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "MR", Instances: 2})
	send(t, src, stat...)
	statUIDs := sopUIDs(t, stat...)
	took := dest.waitHolds(t, statUIDs, 30*time.Second)
	t.Logf("the stat study was stored %s after it was sent", took.Round(100*time.Millisecond))

	have := dest.uids(t)
	count := func(uids []string) int {
		n := 0
		for _, uid := range uids {
			if have[uid] {
				n++
			}
		}
		return n
	}
	t.Logf("then the destination held %d of %d backfill instances and %d of %d of the routine study's",
		count(backfillUIDs), len(backfillUIDs), count(routineUIDs), len(routineUIDs))
	if count(backfillUIDs) == len(backfillUIDs) {
		t.Error("the backfill was complete before the stat study arrived: nothing to overtake (make the link slower)")
	}
	if count(routineUIDs) == len(routineUIDs) {
		t.Error("the routine study was complete before the stat study arrived: every shared worker was not busy")
	}
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
	dest.waitHolds(t, append(slices.Clone(backfillUIDs), routineUIDs...), time.Minute)
	s.waitIdle(t, 30*time.Second, "default")
	sends := s.proxy.Sends()
	for _, uid := range append(append(backfillUIDs, statUIDs...), routineUIDs...) {
		if sends[uid] != 1 {
			t.Errorf("instance %s was stored %d times, want once", uid, sends[uid])
		}
	}
}
