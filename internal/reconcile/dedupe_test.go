package reconcile_test

import (
	"context"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// A reconciler that reaches a study's StableStudy change more than the
// event stream's dedupe window (EVENTS_DEDUPE_WINDOW, its Duplicates)
// after the webhook queued that study (it was stopped, or held back by a
// long catch-up) queues it a second time: JetStream no longer knows the
// dedupe ID, and the reconciler cannot tell a study the webhook queued
// from one whose webhook was lost. At least once, by design; the forwarder
// then sends the study again (docs/guarantees.md). The reconciler counts
// it as a study the webhook missed.
func TestCatchUpPastTheDedupeWindowQueuesAgain(t *testing.T) {
	r := newRig(t, testharness.Release{}, "recon-w")
	ctx := t.Context()
	topo := natsjs.DefaultTopology()
	topo.DedupeWindow = time.Second
	if _, err := topo.EnsureEvents(ctx, r.nats.JS); err != nil {
		t.Fatal(err)
	}
	_, _, stop := r.start(t, "w")
	testharness.WaitFor(t, "the first start's cursor", 10*time.Second, func() bool { return cursorSeq(t, r, "w") >= 0 })
	stop() // held back from here on

	upload(t, r.orthanc, writeStudy(t, 1))
	waitStable(t, r)
	var studies []string
	r.orthanc.GetJSON(t, "/studies", &studies)
	st, err := r.client.Study(ctx, studies[0])
	if err != nil {
		t.Fatal(err)
	}
	webhook, err := events.NewStudyStable("w", st.ID, st.StudyInstanceUID, st.LastUpdate)
	if err != nil {
		t.Fatal(err)
	}
	// probe, queued with it, tells when JetStream forgot their IDs.
	probe, err := events.NewStudyStable("w", "00000000-00000000-00000000-00000000-00000000", "1.2.3", st.LastUpdate)
	if err != nil {
		t.Fatal(err)
	}
	pub := natsjs.Publisher{JS: r.nats.JS}
	for _, ev := range []*events.StudyStable{webhook, probe} {
		if _, err := pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	testharness.WaitFor(t, "the dedupe window to pass", 20*time.Second, func() bool {
		ack, err := pub.Publish(context.Background(), probe)
		return err == nil && !ack.Duplicate
	})

	_, reg, _ := r.start(t, "w")
	testharness.WaitFor(t, "the reconciler to publish the study", 20*time.Second, func() bool {
		return metric(t, reg, "stowline_reconcile_events_published_total", map[string]string{"source": "w", "result": "stored"})+
			metric(t, reg, "stowline_reconcile_events_published_total", map[string]string{"source": "w", "result": "duplicate"}) >= 1
	})
	var copies int
	for _, ev := range streamEvents(t, r.nats.JS) {
		if ev.MsgID == webhook.MsgID() {
			copies++
		}
	}
	if copies != 2 {
		t.Errorf("the study is queued %d times, want 2: the webhook's and the reconciler's past the window", copies)
	}
	if got := metric(t, reg, "stowline_reconcile_events_published_total", map[string]string{"source": "w", "result": "stored"}); got != 1 {
		t.Errorf("stored = %v, want 1 (counted as a study the webhook missed)", got)
	}
}
