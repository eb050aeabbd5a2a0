package main

import (
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// Two forwarder replicas share STOW_MAX_BYTES_PER_SECOND: each counts the
// replicas on the status bucket and takes half, so together they send
// within 10% of the cap (1 MB/s), measured at the proxy over the time
// request bodies were arriving, not twice it.
func TestBandwidthCapSharedByReplicas(t *testing.T) {
	const limit = 1_000_000
	r := newRig(t)
	var replicas []*testharness.Program
	for i, addr := range []string{r.forwarderAddr, testharness.FreeAddr(t)} {
		env := r.env(map[string]string{"STOW_MAX_BYTES_PER_SECOND": "1MB", "FORWARDER_CONCURRENCY": "2", "FORWARDER_ADDR": addr})
		replicas = append(replicas, testharness.StartProgram(t, "forwarder-"+string(rune('a'+i)), run, env))
		testharness.WaitHTTP(t, "http://"+addr+"/healthz", 30*time.Second)
	}
	// Each has found the other (the status bucket is written and read
	// every 5 s).
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range replicas {
		for !testharness.HasLogLine(p.Logs.String(), `"msg":"bandwidth share changed"`, `"replicas":2`, `"bytes_per_second":500000`) {
			if time.Now().After(deadline) {
				t.Fatal("the replicas did not share the cap")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Four studies of 4 × 512 KiB: one for each of the four workers.
	var ids []string
	for range 4 {
		ids = append(ids, r.addStudy(t, 4, 512))
	}
	for _, id := range ids {
		r.publish(t, id)
	}
	r.waitDest(t, 16, 2*time.Minute)
	r.assertIdentical(t)

	bytes, busy := r.proxy.BodyRate()
	rate := float64(bytes) / busy.Seconds()
	t.Logf("two replicas: %d bytes of STOW-RS bodies in %s: %.0f B/s, cap %d B/s (%.1f%%)", bytes, busy.Round(time.Millisecond), rate, limit, 100*rate/limit)
	if rate < 0.9*limit || rate > 1.1*limit {
		t.Errorf("rate %.0f B/s, want within 10%% of %d", rate, limit)
	}
}

// A replica shutting down goes on counting the others while it finishes
// its studies: when a new replica starts during its drain (a rolling
// update), the draining one lowers its share too, so the two stay within
// the cap instead of 1.5 times it.
func TestBandwidthShareCountsReplicasWhileDraining(t *testing.T) {
	r := newRig(t)
	// 3 × 512 KiB at 100 KB/s: about 16 s of sending, the old replica's
	// share halved after about 6 s, within its 30 s shutdown grace.
	env := r.env(map[string]string{"STOW_MAX_BYTES_PER_SECOND": "100KB"})
	old := testharness.StartProgram(t, "forwarder-old", run, env)
	testharness.WaitHTTP(t, "http://"+r.forwarderAddr+"/healthz", 30*time.Second)
	r.publish(t, r.addStudy(t, 3, 512))
	testharness.WaitFor(t, "the old replica to send", 30*time.Second, func() bool { return r.proxy.STOWRequests() > 0 })

	stopped := make(chan error, 1)
	go func() { stopped <- old.Stop() }()
	testharness.WaitFor(t, "the old replica to start its shutdown", 10*time.Second, func() bool {
		return testharness.HasLogLine(old.Logs.String(), `"msg":"shutdown: no more studies are pulled`)
	})
	addr := testharness.FreeAddr(t)
	env["FORWARDER_ADDR"] = addr
	testharness.StartProgram(t, "forwarder-new", run, env)
	testharness.WaitHTTP(t, "http://"+addr+"/healthz", 30*time.Second)

	testharness.WaitFor(t, "the draining replica to take half the cap", 20*time.Second, func() bool {
		return testharness.HasLogLine(old.Logs.String(), `"msg":"bandwidth share changed"`, `"replicas":2`, `"bytes_per_second":50000`)
	})
	if err := <-stopped; err != nil {
		t.Fatalf("old replica: %v", err)
	}
}
