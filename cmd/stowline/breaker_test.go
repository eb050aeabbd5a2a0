package main

import (
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// A compressed outage: the destination goes away (every connection
// dropped, its QIDO-RS too) for about ten times the delivery budget
// (FORWARDER_MAX_DELIVERIES=2 with 1 s retries) while studies queue. The
// circuit breaker opens after the first failures and holds the studies
// in hand without spending deliveries, so the outage ends with no dead
// letter. When the destination comes back, a probe finds it, one trial
// study closes the breaker and the backlog drains at once, not after
// retry back-offs (FORWARDER_RETRY_MAX_DELAY is 10 minutes): every
// instance arrives, byte for byte, and none is stored twice.
func TestOutageSpendsNoDelivery(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{})
	d := s.dests[0]
	s.env["FORWARDER_MAX_DELIVERIES"] = "2"
	s.env["FORWARDER_RETRY_DELAY"] = "1s"
	s.env["FORWARDER_RETRY_MAX_DELAY"] = "10m"
	s.env["FORWARDER_CONCURRENCY"] = "2"
	s.env["RECONCILE_ENABLED"] = "false"
	const outage = 25 * time.Second
	s.start(t)
	metrics := "http://" + s.fwdAddr + "/metrics"
	metric := func(sample string) float64 {
		v, _ := testharness.Metric(t, metrics, sample)
		return v
	}

	d.proxy.SetDown(true)
	studies := newStudies(t, 6, 3)
	var files, all []string
	for _, st := range studies {
		files = append(files, st.files...)
		all = append(all, st.uids...)
	}
	send(t, s.sources["main"], files...)
	testharness.WaitFor(t, "the circuit breaker opens", 30*time.Second, func() bool {
		return metric(`stowline_forwarder_breaker_state{destination="default"}`) == 2
	})
	opened := time.Now()
	// The outage lasts; nothing is dead-lettered meanwhile.
	for time.Since(opened) < outage {
		if n := metric(`stowline_forwarder_studies_total{destination="default",result="dead_lettered"}`); n > 0 {
			t.Fatalf("%v studies dead-lettered during the outage", n)
		}
		time.Sleep(time.Second)
	}
	// Held: the study whose failure opened the breaker, and the other
	// worker's if it failed after; and, as the proxy resets connections
	// (a failure that may be a study's own), the trials that rotate to
	// studies pulled from the queue, at most one a worker: not more than
	// twice FORWARDER_CONCURRENCY.
	if held := metric(`stowline_forwarder_studies_held{destination="default"}`); held < 1 || held > 4 {
		t.Errorf("%v studies held during the outage, want 1 to 4", held)
	}
	// Only the failures before the breaker opened spent a delivery: at
	// most one a worker before the second failure opened it.
	retries := metric(`stowline_forwarder_studies_total{destination="default",result="retry"}`)
	if retries > 2 {
		t.Errorf("%v deliveries spent on retries during the outage, want at most 2", retries)
	}
	if len(d.uids(t)) != 0 {
		t.Fatal("instances reached the destination during its outage: the outage is not one")
	}
	dropped := d.proxy.DroppedRequests()
	t.Logf("outage of %s after the breaker opened: %d requests dropped (STOW-RS and probes)", outage.Round(time.Second), dropped)

	d.proxy.SetDown(false)
	drained := d.waitHolds(t, all, 30*time.Second)
	t.Logf("backlog of %d studies drained %s after the destination came back", len(studies), drained.Round(time.Millisecond))
	// A probe within STOW_BREAKER_MAX_PROBE_INTERVAL (2 s), then at full
	// speed: far below one retry back-off of a study that spent its
	// deliveries (minutes).
	if drained > 15*time.Second {
		t.Errorf("backlog drained %s after the destination came back: not at full speed", drained)
	}
	s.waitRecorded(t, len(studies), 30*time.Second)

	if n := metric(`stowline_forwarder_studies_total{destination="default",result="dead_lettered"}`); n != 0 {
		t.Errorf("%v studies dead-lettered", n)
	}
	if n := metric(`stowline_deadletter_studies{destination="default"}`); n != 0 {
		t.Errorf("%v dead letters stored", n)
	}
	if n := metric(`stowline_forwarder_breaker_state{destination="default"}`); n != 0 {
		t.Errorf("breaker state %v after the outage, want 0 (closed)", n)
	}
	for _, to := range []string{"open", "half-open", "closed"} {
		if n := metric(`stowline_forwarder_breaker_transitions_total{destination="default",to="` + to + `"}`); n < 1 {
			t.Errorf("no transition to %s", to)
		}
	}
	// 0 lost: every instance, byte for byte; 0 duplicated: each reached
	// the destination in exactly one answered STOW-RS request.
	d.checkHolds(t, s.sources["main"].InstanceMD5s(t))
	sends := d.proxy.Sends()
	for _, uid := range all {
		if sends[uid] != 1 {
			t.Errorf("instance %s reached the destination %d times, want 1", uid, sends[uid])
		}
	}
	if len(sends) != len(all) {
		t.Errorf("%d instances reached the destination, want %d", len(sends), len(all))
	}
}
