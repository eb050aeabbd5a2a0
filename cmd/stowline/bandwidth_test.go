package main

import (
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// STOW_MAX_BYTES_PER_SECOND holds what stowline sends to the destination
// to the cap: studies of about 6 MB in all, forwarded two at once, each
// in parallel requests, arrive at the destination at a rate within 10%
// of a 1 MB/s cap, measured at the proxy over the time a request body
// was arriving. The rate is the feature, so the test measures it.
func TestBandwidthCap(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	const limit = 1_000_000
	s := newSiteWith(t, siteOptions{})
	s.env["STOW_MAX_BYTES_PER_SECOND"] = "1MB"
	s.env["FORWARDER_CONCURRENCY"] = "2"
	s.env["RECONCILE_ENABLED"] = "false"
	s.start(t)

	var files, uids []string
	for range 3 {
		// 512 × 512 × 16 bits: 512 KiB of pixel data an instance.
		f, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
			PatientID: "SITE", PatientName: "Synthetic^Site",
			SeriesList: []dicomgen.SeriesSpec{{Instances: 4}}, Rows: 512, Columns: 512,
		})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f...)
		uids = append(uids, sopUIDs(t, f...)...)
	}
	send(t, s.sources["main"], files...)
	s.dests[0].waitHolds(t, uids, 2*time.Minute)

	bytes, busy := s.proxy.BodyRate()
	rate := float64(bytes) / busy.Seconds()
	t.Logf("%d bytes of STOW-RS bodies in %s: %.0f B/s, cap %d B/s (%.1f%%)", bytes, busy.Round(time.Millisecond), rate, limit, 100*rate/limit)
	if bytes < 5_000_000 {
		t.Fatalf("only %d bytes sent: too little to measure", bytes)
	}
	if rate < 0.9*limit || rate > 1.1*limit {
		t.Errorf("rate %.0f B/s, want within 10%% of %d", rate, limit)
	}
}
