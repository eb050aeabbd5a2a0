package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

func studyID(i int) string { return fmt.Sprintf("%08x-4f66fb14-03f4081b-f9341db2-53925988", i) }

func event(i int) *events.StudyStable {
	return &events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: studyID(i), StudyInstanceUID: fmt.Sprintf("1.2.826.0.1.%d", i),
		LastUpdate: "20261126T101500", ReceivedAt: time.Now().UTC(),
	}
}

func timeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// queueFixture publishes n events, creates the forwarders' consumer and
// takes (without acking) `take` of them.
func queueFixture(t *testing.T, n, take int) (*testnats.Server, jetstream.Consumer, []jetstream.Msg) {
	t.Helper()
	ns := testnats.Start(t)
	ctx := timeout(t)
	for i := range n {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := natsjs.DefaultTopology().EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for range take {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	return ns, cons, msgs
}

func addDeadLetters(t *testing.T, js jetstream.JetStream, n int) *deadletter.Store {
	t.Helper()
	ctx := timeout(t)
	dlStream, err := natsjs.DefaultTopology().EnsureDeadLetters(ctx, js)
	store := deadletter.NewStore(js, dlStream)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ev := event(100 + i)
		if _, _, err := store.Add(ctx, &forward.DeadLetter{Event: *ev, Class: forward.Permanent, Reason: "HTTP 415",
			Attempts: 1, OriginalSeq: uint64(1000 + i), DeadLetteredAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	return store
}

// twoDestinations publishes 5 events to a deployment with the default
// destination and "ai": the default's forwarders hold 2 of them
// unacknowledged, ai's forwarded 1. The default has two dead letters, one
// from before destinations (no destination in its subject), ai one. An
// ordered consumer on the event stream (as audit and replay make) is no
// destination's.
func twoDestinations(t *testing.T) *testnats.Server {
	t.Helper()
	ns := testnats.Start(t)
	ctx := timeout(t)
	for i := range 5 {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := natsjs.DefaultTopology().EnsureConsumers(ctx, ns.JS, []string{natsjs.DefaultDestination, "ai"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := cons[natsjs.DefaultDestination].Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := cons["ai"].Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.JS.OrderedConsumer(ctx, natsjs.EventStream, jetstream.OrderedConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
	store := addDeadLetters(t, ns.JS, 1)
	ev := event(200)
	if _, _, err := store.Add(ctx, &forward.DeadLetter{Destination: "ai", Event: *ev, Class: forward.Permanent, Reason: "HTTP 400",
		Attempts: 1, OriginalSeq: 3, DeadLetteredAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	addOldDeadLetter(t, ns.JS, event(300))
	return ns
}

// addOldDeadLetter stores a dead letter as forwarders did before
// destinations: no destination, subject stowline.deadletter.<source>.
func addOldDeadLetter(t *testing.T, js jetstream.JetStream, ev *events.StudyStable) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"event": ev, "class": forward.Permanent, "reason": "HTTP 415 (old forwarder)",
		"attempts": 1, "originalSeq": 4, "deadLetteredAt": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(timeout(t), natsjs.DeadLetterSubjectPrefix+ev.Source, data); err != nil {
		t.Fatal(err)
	}
}

func TestReadQueuePerDestination(t *testing.T) {
	ns := twoDestinations(t)
	q, err := status.ReadQueue(timeout(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	// Every event is routine: the stat and low lanes are empty.
	lanes := func(pending, ackPending uint64) map[events.Priority]status.LaneQueue {
		return map[events.Priority]status.LaneQueue{events.PriorityStat: {}, events.PriorityRoutine: {Pending: pending, AckPending: ackPending}, events.PriorityLow: {}}
	}
	want := []status.DestinationQueue{
		{Destination: "ai", ConsumerExists: true, Pending: 4, DeadLetters: 1, Lanes: lanes(4, 0)},
		{Destination: "default", ConsumerExists: true, Pending: 3, AckPending: 2, DeadLetters: 2, Lanes: lanes(3, 2)},
	}
	if fmt.Sprint(q.Destinations) != fmt.Sprint(want) {
		t.Errorf("destinations = %+v\nwant           %+v", q.Destinations, want)
	}
	if !q.ConsumerExists || q.Pending != 7 || q.AckPending != 2 || q.DeadLetters != 3 {
		t.Errorf("totals = %+v; want 7 pending, 2 ack pending, 3 dead letters", q)
	}
	if d, ok := q.Destination("default"); !ok || d.Depth() != 5 {
		t.Errorf("default's depth = %d (%v), want 5", d.Depth(), ok)
	}
	// The letters say their destination; the old one says none.
	dls, n, err := status.RecentDeadLetters(timeout(t), ns.JS, 10)
	if err != nil {
		t.Fatal(err)
	}
	var dests []string
	for _, e := range dls {
		dests = append(dests, fmt.Sprintf("%q", e.Destination))
	}
	if n != 3 || strings.Join(dests, " ") != `"" "ai" ""` {
		t.Errorf("dead letters (newest first) of %d: destinations %v; want the old one, ai's, the default's", n, dests)
	}
}

func TestQueueCollector(t *testing.T) {
	ns := twoDestinations(t)

	reg := prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(ns.JS, time.Second, nil, status.WithScrapeReuse(0)))
	want := `
# HELP stowline_deadletter_studies Studies of the destination in the dead-letter stream, waiting for an operator to replay or purge them.
# TYPE stowline_deadletter_studies gauge
stowline_deadletter_studies{destination="ai"} 1
stowline_deadletter_studies{destination="default"} 2
# HELP stowline_jetstream_info_success 1 if JetStream answered this scrape's queue queries in time, else 0 (and the queue metrics are absent).
# TYPE stowline_jetstream_info_success gauge
stowline_jetstream_info_success 1
# HELP stowline_queue_ack_pending_events Events delivered to the destination's forwarders and not yet acknowledged: being sent, or waiting for a retry (consumer num_ack_pending).
# TYPE stowline_queue_ack_pending_events gauge
stowline_queue_ack_pending_events{destination="ai"} 0
stowline_queue_ack_pending_events{destination="default"} 2
# HELP stowline_queue_pending_events Events stored in JetStream and not yet delivered to the destination's forwarders (consumer num_pending).
# TYPE stowline_queue_pending_events gauge
stowline_queue_pending_events{destination="ai"} 4
stowline_queue_pending_events{destination="default"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "stowline_deadletter_studies", "stowline_jetstream_info_success",
		"stowline_queue_ack_pending_events", "stowline_queue_pending_events"); err != nil {
		t.Error(err)
	}
	// The lanes' parts add up to the destination's.
	for dest, want := range map[string]float64{"default": 2, "ai": 0} {
		var sum float64
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "stowline_queue_lane_ack_pending_events" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "destination" && l.GetValue() == dest {
						sum += m.GetGauge().GetValue()
					}
				}
			}
		}
		if sum != want {
			t.Errorf("%s: lane ack pending sums to %v, want %v", dest, sum, want)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}

	// JetStream gone: the scrape still answers, in time, and says so.
	ns.NC.Close()
	start := time.Now()
	if got := testutil.ToFloat64(collectorOnly(t, reg, "stowline_jetstream_info_success")); got != 0 {
		t.Errorf("stowline_jetstream_info_success = %v with JetStream unreachable", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a scrape with JetStream unreachable took %s", d)
	}
}

// collectorOnly gathers reg and returns the one metric named name as a
// collector for testutil.ToFloat64.
func collectorOnly(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "copy"})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("%s not gathered", name)
	return nil
}

func TestReadQueueBeforeAnyForwarder(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	for i := range 4 {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	q, err := status.ReadQueue(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	if q.ConsumerExists || q.Pending != 4 || q.AckPending != 0 || q.DeadLetters != 0 || len(q.Destinations) != 0 {
		t.Errorf("queue = %+v; want 4 pending (a new consumer starts at the first event), no destination, no dead letters", q)
	}
	// The destinations are not known yet: the events are pending under
	// none.
	reg := prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(ns.JS, time.Second, nil))
	want := `
# HELP stowline_queue_pending_events Events stored in JetStream and not yet delivered to the destination's forwarders (consumer num_pending).
# TYPE stowline_queue_pending_events gauge
stowline_queue_pending_events{destination=""} 4
# HELP stowline_deadletter_studies Studies of the destination in the dead-letter stream, waiting for an operator to replay or purge them.
# TYPE stowline_deadletter_studies gauge
stowline_deadletter_studies{destination=""} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "stowline_queue_pending_events", "stowline_deadletter_studies"); err != nil {
		t.Error(err)
	}
}

// The tracker shows what the forwarder tells it: a study in flight with
// its progress, then its result among the recent ones and the totals.
func TestTrackerFollowsAStudy(t *testing.T) {
	ns, cons, _ := queueFixture(t, 2, 0)
	ctx := timeout(t)
	tw, err := status.NewTokenWatch("default", "dicom.example.org", "login.example.org", true, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tr := status.NewTracker(4, tw)

	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	a := &forward.Attempt{Event: ev, Number: 1, Seq: 1}
	tr.Started(a)
	snap := tr.Snapshot()
	if len(snap.InFlight) != 1 || snap.InFlight[0].OrthancStudyID != ev.OrthancStudyID || snap.InFlight[0].Attempt != 1 || snap.InFlight[0].Instances != 0 {
		t.Fatalf("after delivery: in flight = %+v", snap.InFlight)
	}
	tr.Progress(a, forward.Report{Listed: 10})
	tr.Progress(a, forward.Report{Listed: 10, Instances: 4, Bytes: 4000, Requests: 1})
	if f := tr.Snapshot().InFlight[0]; f.Instances != 10 || f.Sent != 4 || f.Bytes != 4000 {
		t.Errorf("progress = %d/%d, %d bytes; want 4/10, 4000", f.Sent, f.Instances, f.Bytes)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	tr.Finished(a, forward.ResultForwarded, forward.Report{Listed: 10, Instances: 10, Bytes: 10000, Requests: 3})

	// A second study fails and is NAKed for a retry.
	msg2, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ev2, err := events.Decode(msg2.Data())
	if err != nil {
		t.Fatal(err)
	}
	a2 := &forward.Attempt{Event: ev2, Number: 1, Seq: 2}
	tr.Started(a2)
	if err := msg2.NakWithDelay(time.Minute); err != nil {
		t.Fatal(err)
	}
	tr.Finished(a2, forward.ResultRetry, forward.Report{})
	tr.Finished(a2, forward.ResultRetry, forward.Report{}) // a second report of the same end counts once
	// A third study is for ai, whose rules select nothing of it.
	a3 := &forward.Attempt{Destination: "ai", Event: event(9), Number: 1, Seq: 3}
	tr.Started(a3)
	if f := tr.Snapshot().InFlight; len(f) != 1 || f[0].Destination != "ai" {
		t.Errorf("in flight = %+v, want the study for ai", f)
	}
	tr.Finished(a3, forward.ResultNotSelected, forward.Report{})
	tw.Observe(nil, 10*time.Millisecond)
	tw.Observe(errors.New("auth: cannot obtain token from https://login.example.org/token: 401 invalid_client"), time.Millisecond)

	snap = tr.Snapshot()
	if len(snap.InFlight) != 0 {
		t.Errorf("in flight after ack and NAK: %+v", snap.InFlight)
	}
	if snap.Totals.Forwarded != 1 || snap.Totals.Retry != 1 || snap.Totals.NotSelected != 1 {
		t.Errorf("totals = %+v, want 1 forwarded, 1 retry and 1 not selected (not counted as forwarded)", snap.Totals)
	}
	if len(snap.Recent) != 3 || snap.Recent[0].Result != forward.ResultNotSelected || snap.Recent[0].Destination != "ai" ||
		snap.Recent[1].Result != forward.ResultRetry || snap.Recent[2].Result != forward.ResultForwarded ||
		snap.Recent[2].Instances != 10 || snap.Recent[2].Bytes != 10000 || snap.Recent[2].StudyInstanceUID != ev.StudyInstanceUID {
		t.Errorf("recent (newest first) = %+v", snap.Recent)
	}
	if len(snap.Tokens) != 1 {
		t.Fatalf("token statuses = %+v, want the one destination's", snap.Tokens)
	}
	if tok := snap.Tokens[0]; tok.Destination != "default" || tok.Host != "dicom.example.org" || !tok.OAuth || tok.Fetches != 2 || tok.Errors != 1 || tok.OK() || !strings.Contains(tok.LastError, "invalid_client") {
		t.Errorf("token status = %+v", tok)
	}
	q, err := status.ReadQueue(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	if q.Pending != 0 || q.AckPending != 1 {
		t.Errorf("queue = %+v; want the NAKed study ack-pending (waiting for its retry)", q)
	}
}

// The count a study's progress and its recent entry show is what the
// destination's rules selected, the instances it can be sent, not all
// Orthanc listed: 40 of 100 selected and all sent reads 40 / 40.
func TestTrackerCountsSelectedInstances(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		progress, finished     forward.Report
		wantFlight, wantRecent int
	}{
		{"rules selected some", forward.Report{Listed: 100, Selected: 40, Instances: 10},
			forward.Report{Listed: 100, Selected: 40, Instances: 40}, 40, 40},
		{"every instance selected", forward.Report{Listed: 100, Selected: 100, Instances: 10},
			forward.Report{Listed: 100, Selected: 100, Instances: 100}, 100, 100},
		// Routing failed before it selected: only the listed count is known.
		{"not yet selected", forward.Report{Listed: 100},
			forward.Report{Listed: 100}, 100, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := status.NewTracker(1)
			a := &forward.Attempt{Destination: "ai", Event: event(1), Number: 1, Seq: 1}
			tr.Started(a)
			tr.Progress(a, tc.progress)
			if f := tr.Snapshot().InFlight[0]; f.Instances != tc.wantFlight || f.Sent != tc.progress.Instances {
				t.Errorf("in flight = %d / %d, want %d / %d", f.Sent, f.Instances, tc.progress.Instances, tc.wantFlight)
			}
			tr.Finished(a, forward.ResultForwarded, tc.finished)
			if r := tr.Snapshot().Recent[0]; r.Instances != tc.wantRecent {
				t.Errorf("recent instances = %d, want %d", r.Instances, tc.wantRecent)
			}
		})
	}
}

func TestTokenMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	tw, err := status.NewTokenWatch("default", "dicom.example.org", "login.example.org", true, reg)
	if err != nil {
		t.Fatal(err)
	}
	tw.Observe(nil, 20*time.Millisecond)
	tw.Observe(errors.New("down"), 20*time.Millisecond)
	tw.Observe(nil, 20*time.Millisecond)
	want := `
# HELP stowline_forwarder_token_fetch_errors_total Requests to the destination's OAuth2 token endpoint that gave no token (endpoint down, credentials refused).
# TYPE stowline_forwarder_token_fetch_errors_total counter
stowline_forwarder_token_fetch_errors_total{destination="default"} 1
# HELP stowline_forwarder_token_fetches_total Requests to the destination's OAuth2 token endpoint (successful or not).
# TYPE stowline_forwarder_token_fetches_total counter
stowline_forwarder_token_fetches_total{destination="default"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "stowline_forwarder_token_fetches_total", "stowline_forwarder_token_fetch_errors_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	if !tw.Status().OK() {
		t.Error("a success after an error is OK again")
	}
	// The duration histogram reaches the token client's 30 s time-out.
	if top := testharness.HistogramTop(t, reg, "stowline_forwarder_token_fetch_duration_seconds"); top < 30 {
		t.Errorf("token fetch duration: top bucket %g s, want at least 30 s", top)
	}
	// Without OAuth2 nothing is registered (no alert on a token that is never fetched).
	reg2 := prometheus.NewRegistry()
	if _, err := status.NewTokenWatch("default", "dicom.example.org", "", false, reg2); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(reg2); n != 0 {
		t.Errorf("%d metrics registered without OAuth2", n)
	}
}

func TestShareAndReadShared(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	if got, err := status.ReadShared(ctx, ns.JS); err != nil || len(got) != 0 {
		t.Fatalf("before any forwarder: %v, %v", got, err)
	}
	kv, err := natsjs.DefaultTopology().EnsureStatus(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	a, b := status.NewTracker(4), status.NewTracker(2)
	shareCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- a.Share(shareCtx, kv, 50*time.Millisecond, nil) }()
	go func() { done <- b.Share(shareCtx, kv, 50*time.Millisecond, nil) }()

	var got []status.Snapshot
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		if got, err = status.ReadShared(ctx, ns.JS); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ids := map[string]int{}
	for _, s := range got {
		ids[s.ID] = s.Concurrency
	}
	if len(got) != 2 || ids[a.ID()] != 4 || ids[b.ID()] != 2 {
		t.Fatalf("shared snapshots = %+v", got)
	}

	stop()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Share returned %v", err)
		}
	}
	if got, err := status.ReadShared(ctx, ns.JS); err != nil || len(got) != 0 {
		t.Errorf("after the forwarders stopped: %d snapshots (err %v), want none", len(got), err)
	}

	// A live replica whose clock is behind: its snapshot counts (left
	// out, the others would take its share of the caps too).
	behind, err := json.Marshal(status.Snapshot{ID: "behind", Host: "h", Concurrency: 3, UpdatedAt: time.Now().Add(-2 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "behind", behind); err != nil {
		t.Fatal(err)
	}
	if got, err := status.ReadShared(ctx, ns.JS); err != nil || len(got) != 1 {
		t.Errorf("a replica whose clock is 2 minutes behind: %d snapshots (err %v), want it", len(got), err)
	}
}

// clock returns a clock that starts at base and advances a minute at
// each reading, so that records of two ledgers interleave in a known
// order.
func clock(base time.Time) func() time.Time {
	var mu sync.Mutex
	n := 0
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		n++
		return base.Add(time.Duration(n) * time.Minute)
	}
}

func TestReadLedgers(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	if _, err := status.ReadLedgers(ctx, ns.JS, 5); !errors.Is(err, status.ErrNoLedger) {
		t.Fatalf("without a ledger: err = %v", err)
	}
	// Buckets that are not ledgers are not read as ones.
	if _, err := natsjs.DefaultTopology().EnsureStatus(ctx, ns.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := status.ReadLedgers(ctx, ns.JS, 5); !errors.Is(err, status.ErrNoLedger) {
		t.Fatalf("with only the status bucket: err = %v", err)
	}
	base := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	open := func(dest string, base time.Time) *ledger.Ledger {
		kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, dest)
		if err != nil {
			t.Fatal(err)
		}
		return ledger.New(ns.JS, kv, ledger.WithClock(clock(base)))
	}
	// The default destination's records at minutes 1..9, ai's at
	// 1:30..3:30 (two of them not selected) and at 30 minutes.
	def := open(natsjs.DefaultDestination, base)
	ai := open("ai", base.Add(30*time.Second))
	for i := range 8 {
		if err := def.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Study 2 forwarded again later: it moves to the top, once.
	again := event(2)
	again.LastUpdate = "20261126T120000"
	if err := def.Record(ctx, again); err != nil {
		t.Fatal(err)
	}
	if err := ai.Completed(ctx, event(50), ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{51, 52} {
		if err := ai.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}

	got, err := status.ReadLedgers(ctx, ns.JS, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Destination != "ai" || got[1].Destination != "default" {
		t.Fatalf("ledgers = %+v, want ai's and default's", got)
	}
	order := func(fs []status.Forward) string {
		var out []string
		for _, f := range fs {
			s := f.Destination + ":" + f.OrthancStudyID[:8] + "@" + f.LastUpdate[9:]
			if f.Result == forward.ResultNotSelected {
				s += "(not selected)"
			} else if f.Result != forward.ResultForwarded {
				s += "(" + string(f.Result) + ")"
			}
			out = append(out, s)
			if f.Source != "orthanc-a" || f.StudyInstanceUID == "" || f.FinishedAt.IsZero() {
				t.Errorf("record = %+v", f)
			}
		}
		return strings.Join(out, " ")
	}
	if got, want := order(got[1].Recent), "default:00000002@120000 default:00000007@101500 default:00000006@101500 default:00000005@101500 default:00000004@101500"; got != want {
		t.Errorf("default's recent = %s\nwant               %s", got, want)
	}
	if got, want := order(got[0].Recent), "ai:00000034@101500(not selected) ai:00000033@101500(not selected) ai:00000032@101500"; got != want {
		t.Errorf("ai's recent = %s\nwant          %s", got, want)
	}
	// Last success: the newest record that sent something.
	if want := base.Add(9 * time.Minute); !got[1].LastForwarded.Equal(want) {
		t.Errorf("default's last forward = %s, want %s", got[1].LastForwarded, want)
	}
	if want := base.Add(90 * time.Second); !got[0].LastForwarded.Equal(want) {
		t.Errorf("ai's last forward = %s, want %s (its newer records are not selected)", got[0].LastForwarded, want)
	}
	if got, want := order(status.NewestForwards(got, 6)),
		"default:00000002@120000 default:00000007@101500 default:00000006@101500 default:00000005@101500 default:00000004@101500 ai:00000034@101500(not selected)"; got != want {
		t.Errorf("newest = %s\nwant     %s", got, want)
	}

	// ai's newest records all "not selected": its last forward is still
	// found behind them.
	for i := 60; i < 70; i++ {
		if err := ai.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	got, err = status.ReadLedgers(ctx, ns.JS, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Recent) != 5 || got[0].Recent[0].Result != forward.ResultNotSelected || !got[0].LastForwarded.Equal(base.Add(90*time.Second)) {
		t.Errorf("ai = %d records, last forward %s; want 5 (not selected), last forward at 1:30", len(got[0].Recent), got[0].LastForwarded)
	}
	if got[0].OlderUnread {
		t.Error("ai's ledger was read to its last forward, yet older records are said unread")
	}

	// More "not selected" records than the read's bound (200 for 5):
	// no last forward within reach, and the ledger says older records
	// were left unread. All of a ledger read, none of them sent: none
	// left unread.
	for i := 100; i < 300; i++ {
		if err := ai.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	mr := open("mr", base)
	for i := range 3 {
		if err := mr.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	got, err = status.ReadLedgers(ctx, ns.JS, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Destination != "ai" || got[2].Destination != "mr" {
		t.Fatalf("ledgers = %+v, want ai's, default's and mr's", got)
	}
	if a := got[0]; !a.LastForwarded.IsZero() || !a.OlderUnread || a.Read != 200 || len(a.Recent) != 5 {
		t.Errorf("ai past the bound: last forward %s, older unread %v, %d read, %d recent; want none, true, 200, 5", a.LastForwarded, a.OlderUnread, a.Read, len(a.Recent))
	}
	if m := got[2]; !m.LastForwarded.IsZero() || m.OlderUnread || m.Read != 3 {
		t.Errorf("mr, read whole: last forward %s, older unread %v, %d read; want none, false, 3", m.LastForwarded, m.OlderUnread, m.Read)
	}
}

func TestRecentDeadLetters(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	if got, n, err := status.RecentDeadLetters(ctx, ns.JS, 3); err != nil || n != 0 || len(got) != 0 {
		t.Fatalf("no stream yet: %v %d %v", got, n, err)
	}
	store := addDeadLetters(t, ns.JS, 6)
	// Replays go to a destination with a consumer, as a forwarder makes.
	if _, err := natsjs.DefaultTopology().EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	// Replay the newest: a gap at the end of the stream.
	if _, err := store.Replay(ctx, deadletter.Filter{Seq: 6}, false, func(*deadletter.Entry) {}); err != nil {
		t.Fatal(err)
	}
	got, n, err := status.RecentDeadLetters(ctx, ns.JS, 3)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range got {
		seqs = append(seqs, e.Seq)
	}
	if n != 5 || fmt.Sprint(seqs) != "[5 4 3]" {
		t.Errorf("got %v of %d; want [5 4 3] of 5", seqs, n)
	}
	got, _, err = status.RecentDeadLetters(ctx, ns.JS, 10)
	if err != nil || len(got) != 5 || got[0].Seq != 5 || got[4].Seq != 1 {
		t.Errorf("all: %d entries, err %v", len(got), err)
	}
	// A bulk replay at the end, longer than the backwards scan: the
	// older letters are still found.
	stream, err := ns.JS.Stream(ctx, natsjs.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 400 {
		ack, _, err := store.Add(ctx, &forward.DeadLetter{Event: *event(i), Class: forward.Transient, Reason: "HTTP 503",
			Attempts: 1, OriginalSeq: uint64(5000 + i), DeadLetteredAt: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.DeleteMsg(ctx, ack); err != nil {
			t.Fatal(err)
		}
	}
	got, n, err = status.RecentDeadLetters(ctx, ns.JS, 3)
	seqs = seqs[:0]
	for _, e := range got {
		seqs = append(seqs, e.Seq)
	}
	if err != nil || n != 5 || fmt.Sprint(seqs) != "[5 4 3]" {
		t.Errorf("after 400 replayed: %v of %d, %v; want [5 4 3] of 5", seqs, n, err)
	}
}

// cutJS opens the status bucket with a watch that ends after its first
// `after` entries (testnats.CutWatch).
type cutJS struct {
	jetstream.JetStream
	after int
}

func (c cutJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := c.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return testnats.CutWatch(kv, c.after), nil
}

// TestReadSharedEndedWatchIsAnError: a watch of the status bucket that
// ends before its initial values are all read gives an error, never the
// snapshots read so far as if they were every live forwarder: the
// replicas count each other from it, and one that counted too few took a
// larger share of STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND
// than its own.
func TestReadSharedEndedWatchIsAnError(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	kv, err := natsjs.DefaultTopology().EnsureStatus(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		data, err := json.Marshal(status.Snapshot{ID: id, Host: "h-" + id, Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, after := range []int{0, 1, 2} {
		t.Run(fmt.Sprintf("ended after %d of 3", after), func(t *testing.T) {
			got, err := status.ReadShared(ctx, cutJS{JetStream: ns.JS, after: after})
			if err == nil {
				t.Errorf("ReadShared = %d snapshots and no error, want an error", len(got))
			}
		})
	}
	if got, err := status.ReadShared(ctx, ns.JS); err != nil || len(got) != 3 {
		t.Errorf("whole watch: %d snapshots (err %v), want 3", len(got), err)
	}
}

// TestReadLedgersRoundTrips: a page load reads each ledger's newest
// records in a few batch reads, not one request a record: a destination
// whose rules select few studies has "not selected" records on top, and
// the read went through maxScan (500 for the page's 20) of them, a
// request each, to find its last success. Real nats-server; requests
// counted as the messages the client sends.
func TestReadLedgersRoundTrips(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, "ai")
	if err != nil {
		t.Fatal(err)
	}
	l := ledger.New(ns.JS, kv, ledger.WithClock(clock(time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC))))
	if err := l.Completed(ctx, event(1), ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 700; i++ {
		if err := l.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Records written again (a study forwarded again): gaps in the stream.
	for i := 600; i < 650; i++ {
		if err := l.Completed(ctx, event(i), ledger.Outcome{NotSelected: true}); err != nil {
			t.Fatal(err)
		}
	}
	const n = 20
	sent := ns.JS.Conn().Stats().OutMsgs
	start := time.Now()
	got, err := status.ReadLedgers(ctx, ns.JS, n)
	took := time.Since(start)
	requests := ns.JS.Conn().Stats().OutMsgs - sent
	if err != nil || len(got) != 1 {
		t.Fatalf("ReadLedgers = %+v, %v", got, err)
	}
	t.Logf("%d requests, %s", requests, took)
	// The bound is on sequences, the rewritten records' old places
	// among them: 500 of them hold 450 records.
	if a := got[0]; len(a.Recent) != n || !a.LastForwarded.IsZero() || !a.OlderUnread || a.Read != 450 {
		t.Errorf("last forward %s, older unread %v, %d read, %d recent; want none, true, 450, %d", a.LastForwarded, a.OlderUnread, a.Read, len(a.Recent), n)
	}
	if requests > 10 {
		t.Errorf("%d requests to read one ledger, want at most 10", requests)
	}

	// A stream without direct gets (as a server without batch gets) is
	// read a record at a time, to the same records.
	stream, err := ns.JS.Stream(ctx, "KV_"+natsjs.LedgerBucketOf("ai"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.AllowDirect = false
	if _, err := ns.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	again, err := status.ReadLedgers(ctx, ns.JS, n)
	if err != nil || len(again) != 1 {
		t.Fatalf("ReadLedgers without direct gets = %+v, %v", again, err)
	}
	if a, b := got[0], again[0]; !slices.Equal(a.Recent, b.Recent) || a.Read != b.Read || a.OlderUnread != b.OlderUnread || !a.LastForwarded.Equal(b.LastForwarded) {
		t.Errorf("read a record at a time: %d read, older unread %v, recent %v\nwant (batches)   %d read, older unread %v, recent %v", b.Read, b.OlderUnread, b.Recent, a.Read, a.OlderUnread, a.Recent)
	}
}

// TestReadQueueSumsTheLanes: a destination's redelivered events and its
// idle workers' pulls are those of all its lanes (stat, routine and low
// consumers), as its pending and ack-pending ones: one event retried in
// each of two lanes, and a worker waiting on each of them, are 2 and 2,
// not the figure of whichever lane was read last.
func TestReadQueueSumsTheLanes(t *testing.T) {
	ns := testnats.Start(t)
	ctx := timeout(t)
	lanes, err := natsjs.DefaultTopology().EnsureLanes(ctx, ns.JS, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	for i, lane := range []events.Priority{events.PriorityStat, events.PriorityRoutine} {
		ev := event(i)
		if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(lane, "", ev.Source), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
		c := lanes[natsjs.DefaultDestination][lane]
		// Delivered, refused, delivered again: redelivered and unacked.
		for _, settle := range []func(jetstream.Msg) error{func(m jetstream.Msg) error { return m.Nak() }, func(jetstream.Msg) error { return nil }} {
			m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("%s lane: %v", lane, err)
			}
			if err := settle(m); err != nil {
				t.Fatal(err)
			}
		}
		// A worker's pull, left open on the now empty lane.
		if _, err := c.Fetch(1, jetstream.FetchMaxWait(20*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	var d status.DestinationQueue
	for {
		q, err := status.ReadQueue(ctx, ns.JS)
		if err != nil {
			t.Fatal(err)
		}
		d, _ = q.Destination(natsjs.DefaultDestination)
		if d.Redelivered == 2 && d.Waiting == 2 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	if d.Redelivered != 2 || d.Waiting != 2 || d.AckPending != 2 {
		t.Errorf("default's queue: %d redelivered, %d waiting pulls, %d ack pending; want 2, 2, 2 (one of each in the stat and routine lanes)",
			d.Redelivered, d.Waiting, d.AckPending)
	}
}

// TestTrackerTotalsByResult: each way an attempt ends is counted under its
// own total (the status page's card of this process): an ack that failed
// is no interruption, a dead letter no retry.
func TestTrackerTotalsByResult(t *testing.T) {
	for _, tt := range []struct {
		result forward.Result
		want   status.Totals
	}{
		{forward.ResultForwarded, status.Totals{Forwarded: 1}},
		{forward.ResultNotSelected, status.Totals{NotSelected: 1}},
		{forward.ResultRetry, status.Totals{Retry: 1}},
		{forward.ResultDeadLettered, status.Totals{DeadLettered: 1}},
		{forward.ResultInterrupted, status.Totals{Interrupted: 1}},
		{forward.ResultAckFailed, status.Totals{AckFailed: 1}},
	} {
		tr := status.NewTracker(4)
		a := &forward.Attempt{Event: event(1), Number: 1, Seq: 1}
		tr.Started(a)
		tr.Finished(a, tt.result, forward.Report{})
		if got := tr.Snapshot().Totals; got != tt.want {
			t.Errorf("%s: totals %+v, want %+v", tt.result, got, tt.want)
		}
	}
}

// TestTrackerListsStudiesWaitingForARetry: a study back in the queue
// after a failure is listed, with why and when it is due, until it is
// taken again, or a minute past its due time (another replica took it);
// at most 50, those due latest kept, with their reasons cut short: the
// snapshot is written to the status bucket every few seconds, and an
// outage fails every study.
func TestTrackerListsStudiesWaitingForARetry(t *testing.T) {
	tr := status.NewTracker(4)
	now := time.Now()
	retry := func(i int, due time.Time, reason string) *forward.Attempt {
		a := &forward.Attempt{Destination: "archive", Event: event(i), Number: 2, Seq: uint64(i)}
		tr.Started(a)
		tr.Retrying(a, forward.Transient, reason, due)
		tr.Finished(a, forward.ResultRetry, forward.Report{})
		return a
	}
	long := strings.Repeat("x", 1000)
	for i := 1; i <= 51; i++ {
		retry(i, now.Add(time.Duration(i)*time.Minute), "HTTP 503: "+long)
	}
	w := tr.Snapshot().Waiting
	if len(w) != 50 || w[0].OrthancStudyID != event(2).OrthancStudyID || w[49].OrthancStudyID != event(51).OrthancStudyID {
		t.Fatalf("%d waiting, from %+v; want 50, the one due soonest dropped", len(w), w[0])
	}
	if r := w[0].Reason; len(r) > 310 || !strings.HasPrefix(r, "HTTP 503: x") || w[0].Class != forward.Transient || w[0].Attempt != 2 {
		t.Errorf("waiting %+v; want the class, attempt and the reason cut to about 300 bytes", w[0])
	}
	// Taken again: no longer waiting.
	tr.Started(&forward.Attempt{Destination: "archive", Event: event(2), Number: 3, Seq: 2})
	// Long past due: taken by another replica.
	retry(60, now.Add(-2*time.Minute), "HTTP 500")
	for _, x := range tr.Snapshot().Waiting {
		if x.OrthancStudyID == event(2).OrthancStudyID || x.OrthancStudyID == event(60).OrthancStudyID {
			t.Errorf("still waiting: %+v", x)
		}
	}
}

// TestTrackerKeepsARetryHeldByItsLaneOrBreaker: a study whose retry is
// due while its lane is outside its FORWARD_WINDOWS hours, or while its
// destination's breaker is open, is not pulled at its due time. It was
// dropped a minute past it all the same, its reason with it, though it
// was still queued; it stays listed now, saying what holds it.
func TestTrackerKeepsARetryHeldByItsLaneOrBreaker(t *testing.T) {
	opens := time.Now().Add(14 * time.Hour).Truncate(time.Minute)
	for _, tc := range []struct {
		name      string
		state     forward.DestinationStatus
		wantHeld  string
		wantOpens time.Time
	}{
		{"nothing holds it", forward.DestinationStatus{Destination: "archive", State: "closed"}, "", time.Time{}},
		{"its lane closed", forward.DestinationStatus{Destination: "archive", State: "closed",
			ClosedLanes: []forward.ClosedLane{{Lane: events.PriorityRoutine, Opens: opens}}}, status.HeldLane, opens},
		{"its lane closed, not within two days", forward.DestinationStatus{Destination: "archive", State: "closed",
			ClosedLanes: []forward.ClosedLane{{Lane: events.PriorityRoutine}}}, status.HeldLane, time.Time{}},
		{"another lane closed", forward.DestinationStatus{Destination: "archive", State: "closed",
			ClosedLanes: []forward.ClosedLane{{Lane: events.PriorityLow, Opens: opens}}}, "", time.Time{}},
		{"another destination's lane closed", forward.DestinationStatus{Destination: "other", State: "closed",
			ClosedLanes: []forward.ClosedLane{{Lane: events.PriorityRoutine, Opens: opens}}}, "", time.Time{}},
		{"its breaker open", forward.DestinationStatus{Destination: "archive", State: "open"}, status.HeldBreaker, time.Time{}},
		{"its breaker half-open", forward.DestinationStatus{Destination: "archive", State: "half-open"}, status.HeldBreaker, time.Time{}},
		{"its breaker off", forward.DestinationStatus{Destination: "archive", State: "off"}, "", time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := status.NewTracker(4)
			tr.WatchDestination(func() forward.DestinationStatus { return tc.state })
			a := &forward.Attempt{Destination: "archive", Event: event(1), Number: 2, Seq: 1}
			tr.Started(a)
			tr.Retrying(a, forward.Transient, "HTTP 503", time.Now().Add(-2*time.Minute))
			tr.Finished(a, forward.ResultRetry, forward.Report{})
			w := tr.Snapshot().Waiting
			if tc.wantHeld == "" {
				if len(w) != 0 {
					t.Fatalf("waiting %+v; want it dropped a minute past its due time", w)
				}
				return
			}
			if len(w) != 1 {
				t.Fatalf("%d waiting; want the held study listed", len(w))
			}
			if w[0].HeldBy != tc.wantHeld || !w[0].Opens.Equal(tc.wantOpens) || w[0].Lane != events.PriorityRoutine || w[0].Reason != "HTTP 503" {
				t.Errorf("waiting %+v; want held by %q until %v, lane routine, its reason kept", w[0], tc.wantHeld, tc.wantOpens)
			}
		})
	}
}
