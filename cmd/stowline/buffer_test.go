package main

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// Buffer mode (FORWARDER_DELETE_FROM_SOURCE) with two destinations whose
// rules overlap: the archive takes every series but research ones, ai the
// images of MR studies. Nothing of a study leaves the source Orthanc
// until every destination that selects some of it has stored it: with ai
// down, the studies ai does not select go, the MR study stays whole (its
// shared series, ai's own and the archive's own report) until ai is back;
// instances neither selects stay for good, counted as kept_unselected. On one Orthanc release
// (TestBufferModeDeletesForwardedInstances in cmd/forwarder covers
// deleting on both).
func TestBufferModeWithTwoDestinations(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{destinations: []string{"archive", "ai"}, nats: true})
	archive, ai := s.destination(t, "archive"), s.destination(t, "ai")
	s.env["FORWARDER_DELETE_FROM_SOURCE"] = "true"
	s.env["FORWARDER_RETRY_MAX_DELAY"] = "2s"
	s.env[archive.varName("INSTANCE_MATCH")] = `!instance.seriesDescription.startsWith('research')`
	s.env[ai.varName("MATCH")] = aiMatch
	s.env[ai.varName("INSTANCE_MATCH")] = aiInstanceMatch
	s.start(t)
	src := s.sources["main"]
	fwd := "http://" + s.fwdAddr + "/metrics"

	// Both up: a study both select leaves once both have stored it.
	earlyFiles := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "MR", Description: "clinical t2", Instances: 3})
	early := sopUIDs(t, earlyFiles...)
	send(t, src, earlyFiles...)
	archive.waitHolds(t, early, time.Minute)
	ai.waitHolds(t, early, time.Minute)
	waitSourceHolds(t, src)
	s.waitIdle(t, 30*time.Second, "archive", "ai")
	// Each destination counts the 3 after its ack and its deletes: the
	// source can be empty, and the consumers idle, before the last count.
	testharness.WaitFor(t, "each destination to count what became of the first study's instances", 30*time.Second, func() bool {
		for _, d := range []string{"archive", "ai"} {
			if n, _ := testharness.Metric(t, fwd, `stowline_forwarder_source_deletes_total{destination="`+d+`"}`); n < float64(len(early)) {
				return false
			}
		}
		return true
	})
	earlyDeletes, earlyKept, earlyGone := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, d := range []string{"archive", "ai"} {
		earlyDeletes[d], _ = testharness.Metric(t, fwd, `stowline_forwarder_source_deletes_total{destination="`+d+`",result="deleted"}`)
		earlyKept[d], _ = testharness.Metric(t, fwd, `stowline_forwarder_source_deletes_total{destination="`+d+`",result="waiting"}`)
		earlyGone[d], _ = testharness.Metric(t, fwd, `stowline_forwarder_source_deletes_total{destination="`+d+`",result="gone"}`)
	}
	// Both finish within moments: each either keeps the 3 for the
	// other, deletes them, or finds them deleted by the other (gone).
	if n, g := earlyDeletes["archive"]+earlyDeletes["ai"], earlyGone["archive"]+earlyGone["ai"]; n < 3 || earlyKept["archive"]+earlyKept["ai"]+g != 6-n {
		t.Errorf("first study: deleted %v, kept waiting %v, gone %v; want its 3 deleted by the last to store them (by both: 6 deleted or gone, none kept)", earlyDeletes, earlyKept, earlyGone)
	}
	mr := generateSeries(t, "",
		dicomgen.SeriesSpec{Modality: "MR", Description: "clinical t1", Instances: 3},     // both
		dicomgen.SeriesSpec{Modality: "MR", Description: "research dwi", Instances: 2},    // ai only
		dicomgen.SeriesSpec{Modality: "SR", Description: "clinical report", Instances: 1}) // archive only
	ct := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "CT", Description: "clinical ct", Instances: 2})       // archive only
	research := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "CT", Description: "research ct", Instances: 2}) // nobody
	both, aiOnly, report := sopUIDs(t, mr[:3]...), sopUIDs(t, mr[3:5]...), sopUIDs(t, mr[5:]...)
	archiveOnly := append(slices.Clone(report), sopUIDs(t, ct...)...)
	nobody := sopUIDs(t, research...)

	// ai is down while the studies arrive.
	ai.proxy.SetStatus(http.StatusServiceUnavailable, "ai is down")
	send(t, src, append(append(mr, ct...), research...)...)
	src.WaitStable(t, 30*time.Second)
	archive.waitHolds(t, append(slices.Clone(both), archiveOnly...), time.Minute)
	// The CT study, which ai does not select, leaves; the MR study stays
	// whole for ai, and what nobody selects stays.
	waitSourceHolds(t, src, both, aiOnly, report, nobody)
	// ai tries again and fails twice more; nothing else leaves meanwhile.
	refused := ai.proxy.Refused()
	testharness.WaitFor(t, "ai is refused twice more", 30*time.Second, func() bool { return ai.proxy.Refused() >= refused+2 })
	checkSourceHolds(t, src, both, aiOnly, report, nobody)
	if got := ai.uids(t); len(got) != len(early) {
		t.Fatalf("ai holds %d instances during its outage, want the first study's %d", len(got), len(early))
	}

	// ai is back: it stores its instances, and the MR study leaves the
	// source; the research CT stays.
	ai.proxy.SetStatus(0, "")
	ai.waitHolds(t, append(slices.Clone(both), aiOnly...), time.Minute)
	waitSourceHolds(t, src, nobody)
	s.waitIdle(t, 30*time.Second, "archive", "ai")
	checkSourceHolds(t, src, nobody)
	// The source no longer holds most of them, so the data sets stored
	// are compared with the files sent (storescu sends the data set;
	// Orthanc writes a file meta group of its own).
	sent := fileDatasetMD5s(t, slices.Concat(earlyFiles, mr, ct, research)...)
	archive.checkDatasets(t, subset(sent, early, both, archiveOnly))
	ai.checkDatasets(t, subset(sent, early, both, aiOnly))

	counts := []struct {
		sample string
		want   float64
	}{
		// The archive deletes the CT study's 2 and keeps the MR study's 4
		// it sent for ai, which deletes those with its own 5. (The first
		// study's 3 are counted apart: each destination records the
		// study, then reads the other's record, so the last to record
		// deletes them, and both do when they record at the same moment.)
		{`stowline_forwarder_source_deletes_total{destination="archive",result="deleted"}`, 2 + earlyDeletes["archive"]},
		{`stowline_forwarder_source_deletes_total{destination="archive",result="waiting"}`, 4 + earlyKept["archive"]},
		{`stowline_forwarder_source_deletes_total{destination="ai",result="deleted"}`, 6 + earlyDeletes["ai"]},
		{`stowline_forwarder_source_deletes_total{destination="ai",result="waiting"}`, earlyKept["ai"]},
		// The research CT, which nobody selects, stays: counted once, by
		// the forwarder of the destination whose name sorts first (ai,
		// listed second).
		{`stowline_forwarder_source_deletes_total{destination="ai",result="kept_unselected"}`, float64(len(nobody))},
		{`stowline_forwarder_source_deletes_total{destination="archive",result="kept_unselected"}`, 0},
		{`stowline_forwarder_source_deletes_total{result="failed"}`, 0},
		{`stowline_forwarder_source_deletes_total{result="skipped"}`, 0},
	}
	// A destination counts its deletes after its ack and the deletes
	// themselves: the source and the consumers can show them done first.
	counted := func() bool {
		for _, c := range counts {
			if got, _ := testharness.Metric(t, fwd, c.sample); got != c.want {
				return false
			}
		}
		return true
	}
	waitUntil(30*time.Second, counted)
	for _, c := range counts {
		if got, _ := testharness.Metric(t, fwd, c.sample); got != c.want {
			t.Errorf("%s = %v, want %v", c.sample, got, c.want)
		}
	}
}

// sourceHolds says how the instances of o differ from want ("" when they
// are the same).
func sourceHolds(t *testing.T, o *testharness.Orthanc, want ...[]string) string {
	t.Helper()
	w := map[string]bool{}
	for _, uids := range want {
		for _, u := range uids {
			w[u] = true
		}
	}
	got := orthancUIDs(t, o)
	if maps.Equal(got, w) {
		return ""
	}
	missing, extra := 0, 0
	for u := range w {
		if !got[u] {
			missing++
		}
	}
	for u := range got {
		if !w[u] {
			extra++
		}
	}
	return fmt.Sprintf("the source lacks %d of the instances it should hold and holds %d it should not", missing, extra)
}

func waitSourceHolds(t *testing.T, o *testharness.Orthanc, want ...[]string) {
	t.Helper()
	var why string
	deadline := time.Now().Add(time.Minute)
	for why = sourceHolds(t, o, want...); why != ""; why = sourceHolds(t, o, want...) {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, %s", why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func checkSourceHolds(t *testing.T, o *testharness.Orthanc, want ...[]string) {
	t.Helper()
	if why := sourceHolds(t, o, want...); why != "" {
		t.Error(why)
	}
}
