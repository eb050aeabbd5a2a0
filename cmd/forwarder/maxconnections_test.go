package main

import (
	"testing"
	"time"
)

// ORTHANC_MAX_CONNECTIONS shows on the forwarder's /metrics: the cap, and
// no slot still taken once a study forwarded in parallel requests is
// done (a slot a request kept would show here, and would stall the
// source for good at the cap).
func TestOrthancMaxConnectionsReported(t *testing.T) {
	r := newRig(t)
	r.startForwarder(t, map[string]string{
		"ORTHANC_MAX_CONNECTIONS": "2",
		"STOW_MAX_INSTANCES":      "2",
		"STOW_PARALLEL_REQUESTS":  "4",
		"STOW_PARALLEL_MIN":       "4",
	})
	study := r.addStudy(t, 12, 128)
	r.publish(t, study)
	r.waitDest(t, 12, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	r.assertIdentical(t)
	if got := r.metric(t, "stowline_orthanc_request_slots", ""); got != 2 {
		t.Errorf("stowline_orthanc_request_slots = %v, want 2", got)
	}
	if got := r.metric(t, "stowline_orthanc_request_slots_in_use", ""); got != 0 {
		t.Errorf("stowline_orthanc_request_slots_in_use = %v once the study is forwarded, want 0", got)
	}
	t.Logf("requests that waited for a slot: %v, for %vs in all",
		r.metric(t, "stowline_orthanc_request_slot_waits_total", ""), r.metric(t, "stowline_orthanc_request_slot_wait_seconds_total", ""))
}
