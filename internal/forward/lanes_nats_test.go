package forward

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// startLanes starts a JetStream server with the default destination's
// lane consumers (ack wait 3 s), and a STOW-RS sink to forward into.
func startLanes(t *testing.T) (*testnats.Server, map[events.Priority]jetstream.Consumer, string) {
	t.Helper()
	ns := testnats.Start(t)
	topo := natsjs.DefaultTopology()
	topo.AckWait = 3 * time.Second
	cons, err := topo.EnsureLanes(t.Context(), ns.JS, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	return ns, cons[natsjs.DefaultDestination], srv.URL
}

// laneList is lanes as Options.Lanes takes them, highest first.
func laneList(lanes map[events.Priority]jetstream.Consumer) []Lane {
	var out []Lane
	for _, p := range events.Priorities {
		out = append(out, Lane{Priority: p, Consumer: lanes[p]})
	}
	return out
}

// probedLanes is a forwarder of lanes, its consumers probed every 20 ms
// (watchLanes) in the event stream of ns; opts set the rest.
func probedLanes(t *testing.T, ns *testnats.Server, lanes map[events.Priority]jetstream.Consumer, sinkURL string, opts ...func(*Options)) *Forwarder {
	t.Helper()
	stream, err := ns.JS.Stream(t.Context(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	f := newForwarder(t, newMemSource(2), sinkURL, nil, append([]func(*Options){func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Stream = stream
	}}, opts...)...)
	f.plan.probeEvery = 20 * time.Millisecond
	return f
}

// TestForwardWindowClosesLane: with the low lane outside its window, a
// routine event is forwarded and the low one is not pulled, though the
// workers are idle and waiting; once the clock reaches the window, it is.
func TestForwardWindowClosesLane(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	noon := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var now atomic.Pointer[time.Time]
	now.Store(&noon)
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Windows = hours{events.PriorityLow: {0, 7}}
		o.Now = func() time.Time { return *now.Load() }
	})
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	publish := func(lane events.Priority, lastUpdate string) {
		t.Helper()
		ev := testEvent()
		ev.LastUpdate = lastUpdate
		if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(lane, "", ev.Source), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
	}
	publish(events.PriorityLow, "20261126T101500")
	publish(events.PriorityRoutine, "20261126T101501")

	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool {
		// Acked, and a worker waits on the routine lane again: it asked
		// every open lane before it waited.
		return i.AckFloor.Stream == 2 && i.NumWaiting > 0
	})
	// The low lane's consumer was there before its event: the server
	// counts the event when the stream signals it, asynchronously, so
	// wait for it to be counted (pending, or delivered), then check.
	info := waitConsumer(t, lanes[events.PriorityLow], func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending > 0 || i.Delivered.Stream > 0
	})
	if info.NumPending != 1 || info.NumAckPending != 0 || info.Delivered.Stream != 0 {
		t.Fatalf("low lane outside its window: %+v, want its event not delivered", info)
	}
	if n := testutil.ToFloat64(f.m.lanePulls.WithLabelValues("low")); n != 0 {
		t.Errorf("low pulls = %v outside the window", n)
	}

	night := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	now.Store(&night)
	waitConsumer(t, lanes[events.PriorityLow], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r, l := testutil.ToFloat64(f.m.lanePulls.WithLabelValues("routine")), testutil.ToFloat64(f.m.lanePulls.WithLabelValues("low")); r != 1 || l != 1 {
		t.Errorf("pulls: routine %v, low %v; want 1 each", r, l)
	}
}

// TestDeletedLaneLeftAlone: a lane whose consumer is deleted while the
// forwarder runs is reported once, as an error naming the consumer, and
// left alone; the other lanes go on (a stat event is forwarded), and no
// worker warns about it every second.
func TestDeletedLaneLeftAlone(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var logs testharness.LogBuffer
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.StatWorkers = 1
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	routine := lanes[events.PriorityRoutine].CachedInfo().Name
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.NumWaiting > 0 })
	if err := ns.JS.DeleteConsumer(ctx, natsjs.EventStream, routine); err != nil {
		t.Fatal(err)
	}
	ev := testEvent()
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityStat, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	waitConsumer(t, lanes[events.PriorityStat], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	// Long enough for every worker to have pulled a few times.
	time.Sleep(2500 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if n := strings.Count(out, `"msg":"this lane's consumer was deleted`); n != 1 {
		t.Errorf("%d reports of the deleted consumer, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, `"consumer":"`+routine+`"`) {
		t.Errorf("the report does not name consumer %s:\n%s", routine, out)
	}
	if n := strings.Count(out, "pull from JetStream failed"); n > 0 {
		t.Errorf("%d pull warnings, want none:\n%s", n, out)
	}
}

// TestUpgradeInFlightEventSentOnce: a forwarder of a build without lanes
// stopped (or was killed) with a backfill event in hand, which its one
// consumer took through its old filter. The upgrade narrows that
// consumer to the routine subjects and starts the low lane just after
// its ack floor, so the low lane delivers the event, and JetStream
// redelivers it on the routine consumer too once its ack wait runs out:
// it must be sent once, by the low lane.
func TestUpgradeInFlightEventSentOnce(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	topo := natsjs.DefaultTopology()
	topo.AckWait = time.Second
	// The one consumer as a build without lanes made it.
	old := topo.ConsumerConfig(natsjs.DefaultDestination, false)
	old.FilterSubjects = []string{natsjs.EventSubjectPrefix + ">", natsjs.DestinationSubjectPrefix + natsjs.DefaultDestination + ".>"}
	oldC, err := ns.JS.CreateOrUpdateConsumer(ctx, natsjs.EventStream, old)
	if err != nil {
		t.Fatal(err)
	}
	ev := testEvent()
	// A backfill of that build: for the default destination only.
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.DestinationSubject(natsjs.DefaultDestination, ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	// The old forwarder takes it, and stops before it acks.
	if _, err := oldC.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
		t.Fatal(err)
	}

	all, err := topo.EnsureLanes(ctx, ns.JS, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	lanes := all[natsjs.DefaultDestination]
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	var logs testharness.LogBuffer
	fctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.AckWait = time.Second
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	done := make(chan error, 1)
	go func() { done <- f.Run(fctx) }()

	settled := func(i *jetstream.ConsumerInfo) bool {
		return i.AckFloor.Stream == 1 && i.NumAckPending == 0 && i.NumPending == 0
	}
	waitConsumer(t, lanes[events.PriorityLow], settled)
	// The routine consumer's redelivery comes an ack wait after the old
	// delivery; it is settled once it came and was handled.
	waitConsumer(t, lanes[events.PriorityRoutine], settled)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := k.requests.Load(); n != 1 {
		t.Errorf("the study was sent %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"subject":"`+natsjs.DestinationSubject(natsjs.DefaultDestination, ev.Source)+`"`) {
		t.Errorf("the routine consumer's old delivery is not logged with its subject:\n%s", logs.String())
	}
}

// TestEventsPulledLateInRetention: JetStream deletes an event
// EVENTS_RETENTION after it arrived, forwarded or not, without a dead
// letter. A backlog pulled late in that time (a backfill of a whole
// archive at the uplink's pace) is shown in
// stowline_forwarder_lane_event_age_seconds and warned about past three
// quarters of it; a fresh one is not, and the age goes back to 0 once
// the lane is found empty, so the alert ends with the backlog.
func TestEventsPulledLateInRetention(t *testing.T) {
	const retention = 7 * 24 * time.Hour
	for _, tt := range []struct {
		name string
		// waited is how long the event waited in the stream when pulled
		// (the forwarder's clock is moved on by that much).
		waited time.Duration
		warned bool
	}{
		{"fresh", 0, false},
		{"half the retention", retention / 2, false},
		{"six days of seven", 6 * 24 * time.Hour, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns, lanes, sinkURL := startLanes(t)
			ctx := t.Context()
			var logs testharness.LogBuffer
			f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
				o.Lanes = laneList(lanes)
				o.EventsRetention = retention
				o.Now = func() time.Time { return time.Now().Add(tt.waited) }
				o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			})
			if got := testutil.ToFloat64(f.m.retention); got != retention.Seconds() {
				t.Errorf("retention gauge %v, want %v", got, retention.Seconds())
			}
			ev := testEvent()
			if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityLow, "", ev.Source), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			age := f.m.laneAge.WithLabelValues("low")
			// A worker's pull, as Run's workers do it; again while it
			// finds nothing (on a loaded host the event may reach the
			// lane's consumer after the first pull's wait).
			msg, done := pullFrom(t, f, events.PriorityLow)
			if got, want := testutil.ToFloat64(age), tt.waited.Seconds(); got < want || got > want+60 {
				t.Errorf("low lane's age %v s, want about %v s", got, want)
			}
			out := logs.String()
			if warned := strings.Contains(out, "events are pulled late in their retention"); warned != tt.warned {
				t.Errorf("warned %v, want %v:\n%s", warned, tt.warned, out)
			}
			if tt.warned && !strings.Contains(out, `"lane":"low"`) {
				t.Errorf("the warning does not name the lane:\n%s", out)
			}
			if err := msg.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
			done()
			// The next pull finds every lane empty: the age goes back to 0.
			if msg, _, _ := f.next(ctx, false); msg != nil {
				t.Fatalf("pulled %v from empty lanes", msg)
			}
			if got := testutil.ToFloat64(age); got != 0 {
				t.Errorf("low lane's age %v s with the lane empty, want 0", got)
			}
		})
	}
}

// TestEventsRetentionIsTheStreams: every process's start sets the event
// stream's retention to its own EVENTS_RETENTION. A site that raised it
// to 14 days on its forwarders only, during an outage, had it set back
// to 7 days by the ingest's restart: JetStream deleted the backlog at 7
// days while the forwarders' gauge said 14, so the alert (three quarters
// of it) and the late-pull warning stayed silent. The forwarder reads
// the stream's retention with its lane probe: the gauge follows it, the
// change is warned about, and a 6-day-old event is pulled late.
func TestEventsRetentionIsTheStreams(t *testing.T) {
	const (
		raised = 14 * 24 * time.Hour
		waited = 6 * 24 * time.Hour
	)
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	start := func(retention time.Duration) {
		t.Helper()
		topo := natsjs.DefaultTopology()
		topo.Retention = retention
		if _, err := topo.EnsureEvents(ctx, ns.JS); err != nil {
			t.Fatal(err)
		}
	}
	start(raised) // the forwarders' start
	var logs testharness.LogBuffer
	f := probedLanes(t, ns, lanes, sinkURL, func(o *Options) {
		o.EventsRetention = raised
		o.Now = func() time.Time { return time.Now().Add(waited) }
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		f.watchLanes(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-watched
	})

	start(natsjs.DefaultTopology().Retention) // the ingest's, with the default
	want := natsjs.DefaultTopology().Retention.Seconds()
	for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(f.m.retention) != want; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("retention gauge %v s after another process set the stream's to %v s", testutil.ToFloat64(f.m.retention), want)
		}
	}
	if !strings.Contains(logs.String(), "the event stream's retention changed") || !strings.Contains(logs.String(), `"max_age":"336h0m0s -> 168h0m0s"`) {
		t.Errorf("the change is not warned about with both values:\n%s", logs.String())
	}

	ev := testEvent()
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityLow, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	msg, done := pullFrom(t, f, events.PriorityLow)
	defer done()
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "events are pulled late in their retention") || !strings.Contains(out, `"events_retention":"168h0m0s"`) {
		t.Errorf("an event %s old, with the stream keeping events %s, is not warned about as pulled late:\n%s", waited, natsjs.DefaultTopology().Retention, out)
	}
}

// TestLaneAgeCountsEventsInHand: JetStream's retention deletes an event
// even while a worker holds it (circuit breaker, source outage), so a
// free worker finding the lane empty must not take the lane's age to 0
// while an old event of it is in hand: it used to, and
// StowlineEventsNearRetention could not fire for it. Once that event is
// settled, the age goes back to 0.
func TestLaneAgeCountsEventsInHand(t *testing.T) {
	const waited = 6 * 24 * time.Hour
	ns, lanes, sinkURL := startLanes(t)
	ctx := t.Context()
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Now = func() time.Time { return time.Now().Add(waited) }
	})
	ev := testEvent()
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	age := f.m.laneAge.WithLabelValues("routine")
	msg, done := pullFrom(t, f, events.PriorityRoutine)
	// Another worker, free, finds the lane empty while the first holds
	// its event.
	if other, _, _ := f.next(ctx, false); other != nil {
		t.Fatalf("pulled %v from an empty lane", other)
	}
	if got := testutil.ToFloat64(age); got < waited.Seconds() || got > waited.Seconds()+60 {
		t.Errorf("routine lane's age %v s with its event in hand, want about %v s", got, waited.Seconds())
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	done()
	if got := testutil.ToFloat64(age); got != 0 {
		t.Errorf("routine lane's age %v s once its event is settled and the lane empty, want 0", got)
	}
}

// lowGate closes the low lane while closed is set.
type lowGate struct{ closed atomic.Bool }

func (g *lowGate) Open(lane events.Priority, _ time.Time) bool {
	return lane != events.PriorityLow || !g.closed.Load()
}

// TestClosedLaneAgeTellsWhatItHolds: no worker pulls a lane outside its
// FORWARD_WINDOWS, so its age used to stay what it was when it closed:
// the head of a backfill whose last event was acked just then counted on
// for an empty lane (a false StowlineEventsNearRetention), and a lane
// found empty before it closed read 0 for the events arriving while it
// was closed (no alert however long it stays closed). While closed, the
// lane's consumer is asked what it holds: 0 once empty, and the age of
// its oldest event once one waits.
func TestClosedLaneAgeTellsWhatItHolds(t *testing.T) {
	const waited = 6 * 24 * time.Hour
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	var gate lowGate
	f := probedLanes(t, ns, lanes, sinkURL, func(o *Options) {
		o.Windows = &gate
		o.Now = func() time.Time { return time.Now().Add(waited) }
	})
	age := f.m.laneAge.WithLabelValues("low")
	waitAge := func(ok func(float64) bool, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(testutil.ToFloat64(age)); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("low lane's age %v s, want %s", testutil.ToFloat64(age), what)
			}
		}
	}
	publishLow := func(lastUpdate string) {
		t.Helper()
		ev := testEvent()
		ev.LastUpdate = lastUpdate
		if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityLow, "", ev.Source), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
	}

	// The backfill's last event is pulled and acknowledged; the lane
	// closes before any worker finds it empty.
	publishLow("20261126T101500")
	msg, done := pullFrom(t, f, events.PriorityLow)
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	done()
	gate.closed.Store(true)
	if got := testutil.ToFloat64(age); got < waited.Seconds() {
		t.Fatalf("low lane's age %v s after its pull, want at least %v s", got, waited.Seconds())
	}
	run := make(chan error, 1)
	go func() { run <- f.Run(ctx) }()
	waitAge(func(a float64) bool { return a == 0 }, "0 for a closed lane found empty")

	// Events arrive while it is closed: its age is theirs.
	publishLow("20261126T101501")
	waitAge(func(a float64) bool { return a >= waited.Seconds() && a < waited.Seconds()+60 }, "that of the event waiting in it")
	if n := testutil.ToFloat64(f.m.lanePulls.WithLabelValues("low")); n != 1 {
		t.Errorf("low pulls = %v, want the one before it closed", n)
	}
	cancel()
	if err := <-run; err != nil {
		t.Fatal(err)
	}
}

// TestLaneAgeCountsRetryWaits: a study that failed waits in its lane
// for its retry delay (up to FORWARDER_RETRY_MAX_DELAY, deliveries after
// deliveries), given back, in no worker's hands, and not deliverable:
// the free workers found the lane empty and its age read 0, though
// JetStream's retention deletes that event as any other. The lane's
// consumer is asked once a minute for its oldest event not acknowledged.
func TestLaneAgeCountsRetryWaits(t *testing.T) {
	const waited = 6 * 24 * time.Hour
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	f := probedLanes(t, ns, lanes, sinkURL, func(o *Options) { o.Now = func() time.Time { return time.Now().Add(waited) } })
	ev := testEvent()
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	msg, done := pullFrom(t, f, events.PriorityRoutine)
	// It failed: retried in an hour.
	if err := msg.NakWithDelay(time.Hour); err != nil {
		t.Fatal(err)
	}
	done()
	run := make(chan error, 1)
	go func() { run <- f.Run(ctx) }()
	age := f.m.laneAge.WithLabelValues("routine")
	// The workers find the lane empty (the event waits for its delay):
	// its age is still the event's.
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.NumWaiting > 0 })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if got := testutil.ToFloat64(age); got >= waited.Seconds() && got < waited.Seconds()+60 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("routine lane's age %v s with its event waiting for a retry, want about %v s", testutil.ToFloat64(age), waited.Seconds())
		}
	}
	cancel()
	if err := <-run; err != nil {
		t.Fatal(err)
	}
}

// TestLaneProbeDropsAStaleHead: once its consumer says what it holds, a
// lane's age no longer counts the event last pulled: after it is acked
// nothing else pulls while a breaker is open or every worker holds a
// study for its source, and an open lane kept the head's age (a false
// StowlineEventsNearRetention for an empty lane). A consumer gone holds
// nothing: its last reading must not count on either.
func TestLaneProbeDropsAStaleHead(t *testing.T) {
	const waited = 6 * 24 * time.Hour
	ns, lanes, sinkURL := startLanes(t)
	ctx := t.Context()
	f := probedLanes(t, ns, lanes, sinkURL)
	age := f.m.laneAge.WithLabelValues("routine")
	var routine Lane
	for _, l := range f.plan.lanes {
		if l.Priority == events.PriorityRoutine {
			routine = l
		}
	}
	// A worker pulled an old event, which was then stored and acked.
	f.m.laneAge.set(events.PriorityRoutine, time.Now().Add(-waited))
	f.probeLane(ctx, routine)
	if got := testutil.ToFloat64(age); got != 0 {
		t.Errorf("routine lane's age %v s, its consumer holding nothing, want 0", got)
	}

	// A reading of an old event, then the consumer is deleted.
	f.m.laneAge.setQueued(events.PriorityRoutine, time.Now().Add(-waited))
	if err := ns.JS.DeleteConsumer(ctx, natsjs.EventStream, lanes[events.PriorityRoutine].CachedInfo().Name); err != nil {
		t.Fatal(err)
	}
	f.probeLane(ctx, routine)
	if got := testutil.ToFloat64(age); got != 0 {
		t.Errorf("routine lane's age %v s, its consumer gone, want 0", got)
	}
}

// TestLaneAgeKeptThroughUnansweredPulls: a pull JetStream does not
// answer (NATS unreachable, its client reconnecting; a cluster that lost
// its consumer's leader) ends as one that found the lane empty, and the
// lane's head was dropped: its age read 0 for the events still queued,
// for as long as the outage lasted (the probe failing too keeps its last
// reading: none, if the lane was found empty before), and
// StowlineEventsNearRetention could not fire. A pull that finds the lane
// empty still takes it to 0 (TestEventsPulledLateInRetention).
func TestLaneAgeKeptThroughUnansweredPulls(t *testing.T) {
	const waited = 6 * 24 * time.Hour
	for _, tt := range []struct {
		name  string
		lanes func(map[events.Priority]jetstream.Consumer) []Lane
	}{
		// A worker of several lanes looks into each without waiting
		// (FetchNoWait), then waits on its home lane (Next).
		{"every lane", laneList},
		{"routine only", func(c map[events.Priority]jetstream.Consumer) []Lane {
			return []Lane{{Priority: events.PriorityRoutine, Consumer: c[events.PriorityRoutine]}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns, lanes, sinkURL := startLanes(t)
			ctx := t.Context()
			f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
				o.Lanes = tt.lanes(lanes)
				o.Now = func() time.Time { return time.Now().Add(waited) }
			})
			for _, lastUpdate := range []string{"20261126T101500", "20261126T101501"} {
				ev := testEvent()
				ev.LastUpdate = lastUpdate
				if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
					t.Fatal(err)
				}
			}
			age := f.m.laneAge.WithLabelValues("routine")
			// The first is pulled and forwarded; the second still waits.
			msg, done := pullFrom(t, f, events.PriorityRoutine)
			if err := msg.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
			done()
			// NATS goes away: the forwarder's pulls are not answered.
			ns.Shutdown()
			if msg, _, _ := f.next(ctx, false); msg != nil {
				t.Fatalf("pulled %v with NATS down", msg)
			}
			if got := testutil.ToFloat64(age); got < waited.Seconds() || got > waited.Seconds()+60 {
				t.Errorf("routine lane's age %v s after pulls not answered, an event still queued, want about %v s", got, waited.Seconds())
			}
		})
	}
}

// pullFrom pulls one event as a worker does, again while it finds none
// (on a loaded host the event may reach the lane's consumer after the
// first pull's wait), and fails the test unless it came from lane.
func pullFrom(t *testing.T, f *Forwarder, lane events.Priority) (jetstream.Msg, func()) {
	t.Helper()
	var msg jetstream.Msg
	var got events.Priority
	var done func()
	for deadline := time.Now().Add(10 * time.Second); msg == nil && time.Now().Before(deadline); {
		msg, got, done = f.next(t.Context(), false)
	}
	if msg == nil || got != lane {
		t.Fatalf("pulled %v from %q, want the %s lane's event", msg, got, lane)
	}
	return msg, done
}

// infoCounter counts a consumer's Info requests.
type infoCounter struct {
	jetstream.Consumer
	calls atomic.Int32
}

func (c *infoCounter) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	c.calls.Add(1)
	return c.Consumer.Info(ctx)
}

// Pulls that bring nothing, one after the other on a lane with a head
// and events waiting (a consumer at its MaxAckPending), ask its consumer
// once, not once each.
func TestUnansweredPullsAskOnce(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ev := testEvent()
	if _, err := natsjs.PublishTo(t.Context(), ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	cons := &infoCounter{Consumer: lanes[events.PriorityRoutine]}
	lane := Lane{Priority: events.PriorityRoutine, Consumer: cons}
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) { o.Lanes = []Lane{lane} })
	f.m.laneAge.set(events.PriorityRoutine, time.Now().Add(-time.Hour))
	for range 5 {
		f.unansweredPull(t.Context(), lane)
	}
	if n := cons.calls.Load(); n != 1 {
		t.Errorf("5 pulls with no answer asked the consumer %d times, want once", n)
	}
}

// After pulls that brought nothing, a lane's consumer is asked whether
// its head is gone at most every headCheckInterval, by a process: at
// MaxAckPending the server leaves every pull unanswered while events
// wait, and each worker asked after each pull (tens of consumer info
// requests a second to the consumer's leader over a saturated backlog).
func TestLaneHeadCheckSpaced(t *testing.T) {
	now := time.Date(2026, 12, 5, 13, 0, 0, 0, time.UTC)
	g := &laneAgeGauge{now: func() time.Time { return now }, heads: map[events.Priority]time.Time{}}
	if g.headCheckDue(events.PriorityRoutine) {
		t.Error("a lane without a head is asked")
	}
	g.heads[events.PriorityRoutine] = now.Add(-time.Hour)
	for _, step := range []struct {
		after time.Duration
		want  bool
	}{{0, true}, {time.Second, false}, {headCheckInterval - time.Second - time.Nanosecond, false}, {time.Nanosecond, true}, {0, false}} {
		now = now.Add(step.after)
		if got := g.headCheckDue(events.PriorityRoutine); got != step.want {
			t.Errorf("%s: asked %v, want %v", now.Format(time.TimeOnly), got, step.want)
		}
	}
	if g.headCheckDue(events.PriorityStat) {
		t.Error("the stat lane, without a head, is asked")
	}
}

// TestPausedForwarderPullsNothing (Options.Paused, the de-identification
// key guard's): a paused forwarder pulls no event; one a pull made before
// the pause brings is given back unsent, and offered again once the
// pause ends, one delivery spent.
func TestPausedForwarderPullsNothing(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var paused atomic.Bool
	var logs testharness.LogBuffer
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Paused = paused.Load
		o.PauseReason = func() string { return PausedNotCompared }
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	routine := lanes[events.PriorityRoutine]
	publish := func(lastUpdate string) {
		t.Helper()
		ev := testEvent()
		ev.LastUpdate = lastUpdate
		if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
	}

	// Paused from the start: a worker's pull takes nothing.
	paused.Store(true)
	publish("20261126T101500")
	waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.NumPending == 1 })
	if msg, _, _ := f.next(ctx, false); msg != nil {
		t.Fatal("a paused forwarder pulled an event")
	}
	if st := f.Status(); !st.Paused || st.PausedReason != PausedNotCompared {
		t.Errorf("the status a paused forwarder reports (the status page's) says paused %v, for %q; want paused, for %q", st.Paused, st.PausedReason, PausedNotCompared)
	}
	if info := waitConsumer(t, routine, func(*jetstream.ConsumerInfo) bool { return true }); info.Delivered.Stream != 0 {
		t.Fatalf("delivered while paused: %+v", info)
	}

	// Running, the event sent.
	paused.Store(false)
	if st := f.Status(); st.Paused || st.PausedReason != "" {
		t.Errorf("the status says paused %v, for %q, once the pause ended", st.Paused, st.PausedReason)
	}
	if msg, lane, done := f.next(ctx, false); msg == nil {
		t.Fatal("nothing pulled once running")
	} else {
		f.handle(ctx, msg, lane)
		done()
	}
	waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })

	// A pull made before the pause brings the next event as it starts:
	// it is given back. The pull is made here, not left to a worker's
	// outstanding one, which may expire (1 s with three lanes) before
	// the event is published.
	publish("20261126T101501")
	var msg jetstream.Msg
	var lane events.Priority
	done := func() {}
	testharness.WaitFor(t, "the next event pulled", 15*time.Second, func() bool {
		msg, lane, done = f.next(ctx, false)
		return msg != nil
	})
	paused.Store(true)
	if !f.givenBackPaused(ctx, msg, lane) {
		t.Fatal("the event pulled as the pause started was not given back")
	}
	done()
	if !testharness.HasLogLine(logs.String(), `"msg":"event pulled as the forwarder paused: given back to the queue"`, `"stream_seq":2`) {
		t.Errorf("give-back not logged:\n%s", logs.String())
	}
	if info := waitConsumer(t, routine, func(*jetstream.ConsumerInfo) bool { return true }); info.AckFloor.Stream != 1 {
		t.Fatalf("the event pulled as the pause started was settled: %+v", info)
	}
	// Paused, the workers pull nothing; unpaused, they take it once it
	// is offered again (after longPull).
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- f.Run(runCtx) }()
	for end := time.Now().Add(2 * idlePull); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if info := waitConsumer(t, routine, func(*jetstream.ConsumerInfo) bool { return true }); info.Delivered.Stream != 2 || info.NumRedelivered != 0 {
			t.Fatalf("delivered while paused: %+v", info)
		}
	}
	paused.Store(false)
	waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 })
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "given back to the queue"); n != 1 {
		t.Errorf("given back %d times, want once", n)
	}
}

// An event pulled as the pause starts is given back, which spends a
// delivery: one on its last delivery (FORWARDER_MAX_DELIVERIES) would
// come back past the limit and be dead-lettered as if forwarders had
// crashed on it. It is kept in hand, in progress, until the pause ends,
// then handled. If shutdown comes first it is dead-lettered, saying why
// (given back, the next forwarder dead-lettered it as a crash, with no
// attempt); without a dead-letter store (no limit then) given back.
func TestPausedKeepsAnEventOnItsLastDelivery(t *testing.T) {
	tests := []struct {
		name          string
		maxDeliveries int
		noDeadLetters bool
		shutdown      bool // shutdown starts while it is kept
		wantKept      bool
	}{
		{name: "deliveries left: given back", maxDeliveries: 2},
		{name: "last delivery: kept until the pause ends", maxDeliveries: 1, wantKept: true},
		{name: "last delivery: kept, then dead-lettered at shutdown", maxDeliveries: 1, shutdown: true, wantKept: true},
		{name: "last delivery, no dead-letter store: kept, then given back at shutdown", maxDeliveries: 1, noDeadLetters: true, shutdown: true, wantKept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, lanes, sinkURL := startLanes(t)
			ctx, cancel := context.WithCancel(t.Context())
			t.Cleanup(cancel)
			var paused atomic.Bool
			var logs testharness.LogBuffer
			dls := &memDeadLetters{}
			f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
				o.Lanes = laneList(lanes)
				o.Paused = paused.Load
				o.MaxDeliveries = tt.maxDeliveries
				o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
				if !tt.noDeadLetters {
					o.DeadLetters = dls
				}
			})
			routine := lanes[events.PriorityRoutine]
			ev := testEvent()
			if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			// Pulled before the pause, seen after it.
			var msg jetstream.Msg
			var lane events.Priority
			done := func() {}
			testharness.WaitFor(t, "the event pulled", 15*time.Second, func() bool {
				msg, lane, done = f.next(ctx, false)
				return msg != nil
			})
			paused.Store(true)
			given := make(chan bool, 1)
			go func() { given <- f.givenBackPaused(ctx, msg, lane) }()
			if !tt.wantKept {
				if !<-given {
					t.Fatal("not given back")
				}
				done()
				return
			}
			testharness.WaitFor(t, "the event kept", 15*time.Second, func() bool {
				return testharness.HasLogLine(logs.String(), `"msg":"event on its last delivery pulled as the forwarder paused: kept in progress`, `"attempt":1`)
			})
			// Past the ack wait (3 s) it is still this one's delivery:
			// the in-progress signals keep it.
			for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
				select {
				case g := <-given:
					t.Fatalf("kept no longer while paused (given back: %v)", g)
				default:
				}
			}
			if info := waitConsumer(t, routine, func(*jetstream.ConsumerInfo) bool { return true }); info.NumRedelivered != 0 || info.NumAckPending != 1 {
				t.Fatalf("the kept event was delivered again: %+v", info)
			}
			if tt.shutdown {
				cancel()
				if !<-given {
					t.Fatal("not settled at shutdown")
				}
				done()
				if !tt.noDeadLetters {
					letters := dls.all()
					if len(letters) != 1 || !strings.Contains(letters[0].Reason, "paused at its last delivery") ||
						letters[0].Attempts != 1 || letters[0].OriginalSeq != 1 {
						t.Fatalf("dead letters %+v; want the event's, paused at its last delivery", letters)
					}
					waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumPending == 0 })
					return
				}
				// Offered again at once, not after the ack wait (3 s).
				again, err := routine.Next(jetstream.FetchMaxWait(2 * time.Second))
				if err != nil {
					t.Fatalf("not offered again at once: %v", err)
				}
				if meta, err := again.Metadata(); err != nil || meta.NumDelivered != 2 {
					t.Fatalf("offered again: %+v, %v; want its second delivery", meta, err)
				}
				return
			}
			paused.Store(false)
			if <-given {
				t.Fatal("given back once the pause ended")
			}
			f.handle(ctx, msg, lane)
			done()
			waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
		})
	}
}

// A half-open breaker's pulled trial finds nothing while the forwarder is
// paused (Options.Paused): that says nothing of the queue. The breaker
// stays half-open, the trial waiting for the pause to end, then tries a
// queued study. Before, taken for an empty queue (nothing held, no failed
// probe), it closed the breaker, and at the pause's end every worker went
// to the destination with no trial.
func TestBreakerTrialWaitsForThePause(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	var paused atomic.Bool
	paused.Store(true)
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Paused = paused.Load
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Minute, MaxProbeInterval: time.Minute}
	})
	t.Cleanup(f.breaker.stop)
	ev := testEvent()
	if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(events.PriorityRoutine, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	routine := lanes[events.PriorityRoutine]
	waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.NumPending == 1 })
	// Half-open, nothing held, no failed probe: the trial is pulled.
	b := f.breaker
	b.mu.Lock()
	b.setState(BreakerHalfOpen)
	b.pulling, b.pulledTrials = true, 1
	b.mu.Unlock()
	ended := make(chan struct{})
	go func() { defer close(ended); f.runPulledTrial(ctx, ctx) }()
	// Three pulls' worth (idlePull each) of the pause: still half-open.
	for end := time.Now().Add(3 * idlePull); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if s := b.status().state; s != BreakerHalfOpen {
			t.Fatalf("breaker %v while the paused trial found nothing, want half-open", s)
		}
	}
	if info := waitConsumer(t, routine, func(*jetstream.ConsumerInfo) bool { return true }); info.Delivered.Stream != 0 {
		t.Fatalf("delivered while paused: %+v", info)
	}
	paused.Store(false)
	select {
	case <-ended:
	case <-time.After(15 * time.Second):
		t.Fatal("the trial did not end after the pause")
	}
	waitConsumer(t, routine, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	if s := b.status().state; s != BreakerClosed {
		t.Errorf("breaker %v after the trial stored the queued study, want closed", s)
	}
}

// startOrder records the LastUpdate of each study started, in order.
type startOrder struct {
	noObserver
	mu    sync.Mutex
	order []string
}

func (s *startOrder) Started(a *Attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.order = append(s.order, a.Event.LastUpdate)
}

func (s *startOrder) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

// TestFreeWorkerTakesStatFirst: a worker free for every lane (no stat
// worker of its own) takes the stat event waiting before the routine one
// queued earlier. Only the stat workers' own pulls were tested: taking
// the lanes in reverse order passed every test.
func TestFreeWorkerTakesStatFirst(t *testing.T) {
	ns, lanes, sinkURL := startLanes(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, p := range []struct {
		lane       events.Priority
		lastUpdate string
	}{{events.PriorityRoutine, "20261126T101500"}, {events.PriorityStat, "20261126T101501"}} {
		ev := testEvent()
		ev.LastUpdate = p.lastUpdate
		if _, err := natsjs.PublishTo(ctx, ns.JS, natsjs.LaneSubject(p.lane, "", ev.Source), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
		waitConsumer(t, lanes[p.lane], func(i *jetstream.ConsumerInfo) bool { return i.NumPending == 1 })
	}
	obs := &startOrder{}
	f := newForwarder(t, newMemSource(2), sinkURL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.Concurrency, o.StatWorkers = 1, 0
		o.Observer = obs
	})
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := obs.get(); !slices.Equal(got, []string{"20261126T101501", "20261126T101500"}) {
		t.Errorf("studies started in the order %v, want the stat one (…01) before the routine one (…00)", got)
	}
}
