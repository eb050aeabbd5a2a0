package main

import (
	"slices"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// STOW_VERIFY=qido against a destination that answers 200 for a request
// but loses one of its instances (the fault proxy drops the first part of
// the first request and still reports it stored). Without verification
// the instance is lost, and in buffer mode deleted from the source too;
// with it, the archive's QIDO-RS listing shows the gap, the instance is
// sent again and arrives, and buffer mode deletes only once the
// destination lists every instance. On one Orthanc release.
func TestVerifyCatchesALostInstance(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	tests := []struct {
		name   string
		verify string
		buffer bool
		// instanceRetries 0: the gap fails the delivery; the next
		// delivery sends the study again.
		instanceRetries string
		wantLost        bool
	}{
		{name: "off loses it", verify: "off", wantLost: true},
		{name: "off in buffer mode deletes it unstored", verify: "off", buffer: true, wantLost: true},
		{name: "qido sends it again", verify: "qido", instanceRetries: "3"},
		{name: "qido in buffer mode deletes only once all are listed", verify: "qido", buffer: true, instanceRetries: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSiteWith(t, siteOptions{nats: true})
			s.env["STOW_VERIFY"] = tt.verify
			// One request for the study, so that the lost part is one of
			// several.
			s.env["STOW_PARALLEL_REQUESTS"] = "1"
			if tt.instanceRetries != "" {
				s.env["FORWARDER_INSTANCE_RETRIES"] = tt.instanceRetries
			}
			if tt.buffer {
				s.env["FORWARDER_DELETE_FROM_SOURCE"] = "true"
				// Room to look at the source between the failed delivery
				// and the next.
				s.env["FORWARDER_RETRY_DELAY"] = "3s"
			}
			s.proxy.DropNext()
			s.start(t)
			src := s.sources["main"]
			files := generate(t, "", 4)
			uids := sopUIDs(t, files...)
			want := fileDatasetMD5s(t, files...)
			send(t, src, files...)
			fwd := "http://" + s.fwdAddr + "/metrics"

			if tt.buffer && !tt.wantLost {
				// The delivery that found the gap failed; nothing left
				// the source.
				waitLog(t, s.logs, `"msg":"study not forwarded; will retry"`, `STOW_VERIFY=qido`)
				checkSourceHolds(t, src, uids)
			}
			if tt.buffer {
				waitSourceHolds(t, src)
				s.waitIdle(t, 30*time.Second, "default")
			} else {
				s.waitRecorded(t, 1, time.Minute, "default")
			}
			dropped := s.proxy.Dropped()
			if len(dropped) != 1 || !slices.Contains(uids, dropped[0]) {
				t.Fatalf("the proxy dropped %q, want one of the study's instances", dropped)
			}
			if tt.wantLost {
				if s.dests[0].uids(t)[dropped[0]] {
					t.Fatalf("the destination holds the dropped instance %s; the fault did not happen", dropped[0])
				}
				delete(want, dropped[0])
			}
			s.dests[0].checkDatasets(t, want)
			checks := map[string]float64{
				`stowline_forwarder_verifications_total{result="error"}`: 0,
			}
			if tt.verify == "qido" {
				checks[`stowline_forwarder_verifications_total{result="missing"}`] = 1
				checks[`stowline_forwarder_verifications_total{result="verified"}`] = 1
				checks[`stowline_forwarder_verify_missing_instances_total`] = 1
			} else {
				checks[`stowline_forwarder_verifications_total{result="missing"}`] = 0
				checks[`stowline_forwarder_verifications_total{result="verified"}`] = 0
			}
			if tt.buffer {
				checks[`stowline_forwarder_source_deletes_total{result="deleted"}`] = 4
			}
			for sample, v := range checks {
				if got := metricValue(t, fwd, sample); got != v {
					t.Errorf("%s = %v, want %v", sample, got, v)
				}
			}
			if got := metricValue(t, fwd, `stowline_forwarder_verify_duration_seconds_count`); (got > 0) != (tt.verify == "qido") {
				t.Errorf("%v QIDO-RS queries timed with STOW_VERIFY=%s", got, tt.verify)
			}
			if tt.buffer && tt.verify == "off" && !hasLine(s.logText(), `"msg":"buffer mode without verification`, `STOW_VERIFY=qido`) {
				t.Error("no startup warning about buffer mode without verification")
			}
		})
	}
}

