package natsjs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

func TestLaneOfConsumer(t *testing.T) {
	for _, d := range []string{natsjs.DefaultDestination, "archive", "stat", "low", "ai-2"} {
		for _, lane := range events.Priorities {
			gotD, gotLane, ok := natsjs.LaneOfConsumer(natsjs.LaneConsumerName(d, lane))
			if !ok || gotD != d || gotLane != lane {
				t.Errorf("LaneOfConsumer(LaneConsumerName(%q, %s)) = %q, %s, %v", d, lane, gotD, gotLane, ok)
			}
		}
		// Only the routine consumer names a destination for the commands
		// that list destinations.
		if _, ok := natsjs.DestinationOfConsumer(natsjs.LaneConsumerName(d, events.PriorityStat)); ok {
			t.Errorf("DestinationOfConsumer(stat consumer of %q) = ok", d)
		}
	}
	for _, name := range []string{"", "stowline-stat-", "stowline-low-a.b", "audit-ordered-1"} {
		if d, lane, ok := natsjs.LaneOfConsumer(name); ok {
			t.Errorf("LaneOfConsumer(%q) = %q, %s", name, d, lane)
		}
	}
}

// TestLanesTakeTheirSubjects: each event reaches exactly one lane of each
// destination it is for, the lane its subject names; events for one
// destination only reach that destination, in the low lane by default.
func TestLanesTakeTheirSubjects(t *testing.T) {
	js, ctx, topo := eventStream(t)
	lanes, err := topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination, "ai"})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(subject string) {
		t.Helper()
		ev := event("20261126T101500")
		if _, err := natsjs.PublishTo(ctx, js, subject, ev, subject); err != nil {
			t.Fatal(err)
		}
	}
	for _, lane := range events.Priorities {
		publish(natsjs.LaneSubject(lane, "", "orthanc-a"))
		publish(natsjs.LaneSubject(lane, "ai", "orthanc-a"))
	}
	// What a build without lanes publishes: routine, and low for one
	// destination.
	publish(natsjs.EventSubject("orthanc-b"))
	publish(natsjs.DestinationSubject("ai", "orthanc-b"))

	want := map[string]map[events.Priority]uint64{
		natsjs.DefaultDestination: {events.PriorityStat: 1, events.PriorityRoutine: 2, events.PriorityLow: 1},
		"ai":                      {events.PriorityStat: 2, events.PriorityRoutine: 3, events.PriorityLow: 3},
	}
	// The server counts a consumer's pending events when the stream
	// signals it, after the publish is acknowledged: wait for the count.
	for d, byLane := range want {
		for lane, n := range byLane {
			info := waitPending(t, ctx, lanes[d][lane], n)
			if info.NumPending != n {
				t.Errorf("%s %s lane: %d pending, want %d (filters %v)", d, lane, info.NumPending, n, info.Config.FilterSubjects)
			}
		}
	}
}

// waitPending waits up to 30 s (a loaded machine) for c to count n
// pending events, and returns its last info.
func waitPending(t *testing.T, ctx context.Context, c jetstream.Consumer, n uint64) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == n || time.Now().After(deadline) {
			return info
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLanesUpgrade: a deployment from before lanes has one consumer per
// destination taking every subject. After EnsureLanes it keeps its
// routine events; the backfill events it had not acked move to the new
// low lane, and none is lost.
func TestLanesUpgrade(t *testing.T) {
	js, ctx, topo := eventStream(t)
	// The consumer as the build before lanes made it.
	old := topo.ConsumerConfig(natsjs.DefaultDestination, false)
	old.FilterSubjects = []string{natsjs.EventSubjectPrefix + ">", natsjs.DestinationSubjectPrefix + natsjs.DefaultDestination + ".>"}
	oldC, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, old)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		ev := event(fmt.Sprintf("20261126T10150%d", i))
		subject := natsjs.EventSubject("orthanc-a")
		if i%2 == 1 {
			subject = natsjs.DestinationSubject(natsjs.DefaultDestination, "orthanc-a")
		}
		if _, err := natsjs.PublishTo(ctx, js, subject, ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
	}
	// The old forwarder forwarded the first (routine) event.
	msg, err := oldC.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}

	lanes, err := topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	pending := func(lane events.Priority) uint64 {
		info, err := lanes[natsjs.DefaultDestination][lane].Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.NumPending + uint64(info.NumAckPending)
	}
	if got := pending(events.PriorityRoutine); got != 1 {
		t.Errorf("routine: %d pending, want 1 (the second routine event)", got)
	}
	if got := pending(events.PriorityLow); got != 2 {
		t.Errorf("low: %d pending, want the 2 backfill events", got)
	}
	if got := pending(events.PriorityStat); got != 0 {
		t.Errorf("stat: %d pending, want 0", got)
	}
	// Running it again (every replica at start) changes nothing.
	if _, err := topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination}); err != nil {
		t.Fatal(err)
	}
	if got := pending(events.PriorityLow); got != 2 {
		t.Errorf("low after a second start: %d pending, want 2", got)
	}
}

// TestLanesUpgradeWaitsForAnUnreadableConsumer: at an upgrade from a
// build without lanes, the routine consumer cannot be read (a cluster
// electing its leader past the reads' bound). Made as if new, the stat
// and low consumers started with new events, not just after its ack
// floor: the low events it had not acknowledged went to no queue once it
// was narrowed (and, alone in the stream, a lane took every event the
// stream held). The start fails, naming it, with nothing made or
// updated; the next start, once it reads, upgrades it.
func TestLanesUpgradeWaitsForAnUnreadableConsumer(t *testing.T) {
	js, ctx, topo := eventStream(t)
	d := natsjs.DefaultDestination
	old := topo.ConsumerConfig(d, false)
	old.FilterSubjects = []string{natsjs.EventSubjectPrefix + ">", natsjs.DestinationSubjectPrefix + d + ".>"}
	if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, old); err != nil {
		t.Fatal(err)
	}
	ev := event("20261205T181500")
	if _, err := natsjs.PublishTo(ctx, js, natsjs.DestinationSubject(d, "orthanc-a"), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	unread := &testnats.PartialListing{JetStream: js, Hidden: map[string]bool{natsjs.ConsumerName(d): true}, UnreadErr: nats.ErrTimeout}
	_, err := topo.EnsureLanes(ctx, unread, []string{d})
	if err == nil || !strings.Contains(err.Error(), natsjs.ConsumerName(d)) || !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("start with the routine consumer unreadable: %v; want an error naming %s and its cause", err, natsjs.ConsumerName(d))
	}
	for _, lane := range []events.Priority{events.PriorityStat, events.PriorityLow} {
		if _, err := js.Consumer(ctx, natsjs.EventStream, natsjs.LaneConsumerName(d, lane)); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("%s lane after the failed start: %v; want no consumer", lane, err)
		}
	}
	routine, err := js.Consumer(ctx, natsjs.EventStream, natsjs.ConsumerName(d))
	if err != nil {
		t.Fatal(err)
	}
	if got := routine.CachedInfo().Config.FilterSubjects; !slices.Equal(got, old.FilterSubjects) {
		t.Errorf("routine consumer after the failed start takes %v, want %v unchanged", got, old.FilterSubjects)
	}

	lanes, err := topo.EnsureLanes(ctx, js, []string{d})
	if err != nil {
		t.Fatal(err)
	}
	if info := waitPending(t, ctx, lanes[d][events.PriorityLow], 1); info.NumPending != 1 {
		t.Errorf("low lane once upgraded: %d pending, want the backfill event", info.NumPending)
	}
}

// TestLanesRollbackAndUpgradeAgain: a rollback to a build without lanes
// makes the routine consumer take every subject again, from where it is:
// the stat and low events queued before wait in their lanes, which that
// build does not read. The next upgrade sends them; nothing is lost
// (docs/operations.md, Upgrades and rollbacks).
func TestLanesRollbackAndUpgradeAgain(t *testing.T) {
	js, ctx, topo := eventStream(t)
	d := natsjs.DefaultDestination
	lanes, err := topo.EnsureLanes(ctx, js, []string{d})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(lane events.Priority, destination, lastUpdate string) {
		t.Helper()
		ev := event(lastUpdate)
		if _, err := natsjs.PublishTo(ctx, js, natsjs.LaneSubject(lane, destination, "orthanc-a"), ev, ev.MsgID()); err != nil {
			t.Fatal(err)
		}
	}
	publish(events.PriorityStat, "", "20261126T101501")
	publish(events.PriorityLow, d, "20261126T101502")
	publish(events.PriorityRoutine, "", "20261126T101503")
	// This build forwards the routine event, then is rolled back.
	msg, err := lanes[d][events.PriorityRoutine].Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	old := topo.ConsumerConfig(d, false)
	old.FilterSubjects = []string{natsjs.EventSubjectPrefix + ">", natsjs.DestinationSubjectPrefix + d + ".>"}
	oldC, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, old)
	if err != nil {
		t.Fatal(err)
	}
	if info := waitPending(t, ctx, oldC, 0); info.NumPending != 0 {
		t.Fatalf("rolled back: the routine consumer has %d pending, want 0 (the stat and low events stay in their lanes)", info.NumPending)
	}
	// A stat study queued during the rollback goes to the older build.
	publish(events.PriorityStat, "", "20261126T101504")
	if info := waitPending(t, ctx, oldC, 1); info.NumPending != 1 {
		t.Fatalf("rolled back: a new stat event is not pending on the routine consumer (%d)", info.NumPending)
	}

	lanes, err = topo.EnsureLanes(ctx, js, []string{d})
	if err != nil {
		t.Fatal(err)
	}
	// Both stat events (the second one also went to the older build,
	// and is sent again) and the low one.
	for lane, n := range map[events.Priority]uint64{events.PriorityStat: 2, events.PriorityLow: 1} {
		if info := waitPending(t, ctx, lanes[d][lane], n); info.NumPending != n {
			t.Errorf("upgraded again: %s lane has %d pending, want %d", lane, info.NumPending, n)
		}
	}
}

// Two replicas of a new deployment start together: one has made the
// destination's stat consumer when the other lists the consumers. The
// other's routine consumer still starts at the beginning of the stream
// (the destination's own consumers do not make the deployment a running
// one), so an event queued before the forwarders started is delivered.
// Another destination's consumer does make it one: a destination added
// then starts with new events.
func TestLanesConcurrentStartKeepsQueuedEvents(t *testing.T) {
	js, ctx, topo := eventStream(t)
	ev := event("20261203T134500")
	if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	// The first replica's stat consumer, made before the other listed.
	if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, topo.LaneConsumerConfig(natsjs.DefaultDestination, events.PriorityStat, []string{natsjs.DefaultDestination})); err != nil {
		t.Fatal(err)
	}
	lanes, err := topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lanes[natsjs.DefaultDestination][events.PriorityRoutine].Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.DeliverPolicy != jetstream.DeliverAllPolicy || info.NumPending != 1 {
		t.Errorf("routine consumer: deliver policy %v, %d pending; want all, the queued event", info.Config.DeliverPolicy, info.NumPending)
	}
	// A destination added to this (now running) deployment starts new.
	lanes, err = topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination, "ai"})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := lanes["ai"][events.PriorityRoutine].Info(ctx); err != nil || info.NumPending != 0 {
		t.Errorf("added destination: %+v, %v; want no pending event", info, err)
	}
}

// TestLanesStartOfAnotherDestination: where a destination's first
// consumer starts when another destination already has one. One made at
// the same first start (by a replica starting at the same time, or by
// one that stopped before it made them all) names both destinations, and
// the destination takes what the stream holds; one made before the
// destination was configured, or by a build that kept no record, marks a
// running deployment, where it starts with new events.
func TestLanesStartOfAnotherDestination(t *testing.T) {
	for _, tc := range []struct {
		name       string
		configured []string // of the configuration that made a's consumer
		start      jetstream.DeliverPolicy
		made       time.Duration // a's consumer was made this long before the first start ended
		pending    uint64        // b's routine consumer, after one queued event
	}{
		{"same first start", []string{"a", "b"}, jetstream.DeliverAllPolicy, 0, 1},
		{"b added later", []string{"a"}, jetstream.DeliverAllPolicy, 0, 0},
		{"made by a build without the record", nil, jetstream.DeliverAllPolicy, 0, 0},
		// a was itself added to a running deployment, with b: b is
		// added to a running deployment too.
		{"added to a running deployment together", []string{"a", "b"}, jetstream.DeliverNewPolicy, 0, 0},
		// b was there from the first start, its consumers were removed
		// (destinations remove) and it is configured again: it does not
		// get every event the stream still holds once more.
		{"b configured again after its consumers were removed", []string{"a", "b"}, jetstream.DeliverAllPolicy, time.Nanosecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			ev := event("20261203T150000")
			if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			made := topo.LaneConsumerConfig("a", events.PriorityStat, tc.configured)
			made.DeliverPolicy = tc.start
			if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, made); err != nil {
				t.Fatal(err)
			}
			if tc.made > 0 {
				topo = topo.WithFirstStart(tc.made)
			}
			lanes, err := topo.EnsureLanes(ctx, js, []string{"a", "b"})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{"a", "b"} {
				info, err := lanes[d][events.PriorityRoutine].Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				want := tc.pending
				if d == "a" {
					want = 1 // its own stat consumer never makes a running deployment
				}
				if info.NumPending != want {
					t.Errorf("%s's routine consumer: deliver policy %v, %d pending; want %d", d, info.Config.DeliverPolicy, info.NumPending, want)
				}
			}
			// a's stat consumer keeps the configuration it was made by.
			info, err := lanes["a"][events.PriorityStat].Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := info.Config.Metadata["stowline.destinations"], strings.Join(tc.configured, ","); got != want {
				t.Errorf("a's stat consumer was made by %q, now says %q", want, got)
			}
		})
	}
}

// TestLanesSeeConsumersLeftOutOfTheListing: on a cluster, CONSUMER.LIST
// leaves out a consumer whose leader did not answer the server in time
// yet counts it in its total, and nats.go's listing asks for the same
// page again until the context ends. A destination b added to a running
// deployment whose destination a's consumers were all left out started
// with every event the stream held (7 days of old studies sent to a new
// vendor); the listing that was to be checked against the names never
// ended. The start reads the consumers' names (complete) and each
// consumer by itself: one named but not readable makes b's start with
// new events (a running deployment); one of a start's own fails the
// start, and nothing is made for b. A real cluster does not leave one out
// on demand: the listing is a fake (testnats.PartialListing) over a real
// server.
func TestLanesSeeConsumersLeftOutOfTheListing(t *testing.T) {
	hidden := map[string]bool{}
	for _, lane := range events.Priorities {
		hidden[natsjs.LaneConsumerName("a", lane)] = true
	}
	for _, tc := range []struct {
		name         string
		hidden       map[string]bool
		unread       error // of a's consumers, at every read
		answerOnce   error // of a's consumers, at their first read
		destinations []string
		fails        bool
	}{
		{"listing complete", nil, nil, nil, []string{"a", "b"}, false},
		{"a's consumers left out", hidden, nil, nil, []string{"a", "b"}, false},
		{"a's consumers left out and unreadable, b started alone", hidden, nats.ErrTimeout, nil, []string{"b"}, false},
		{"a's consumers left out and unreadable, a started too", hidden, nats.ErrTimeout, nil, []string{"a", "b"}, true},
		// A cluster member assigned a consumer it has not made yet.
		{"a's consumers not found at first, b started alone", hidden, nil, jetstream.ErrConsumerNotFound, []string{"b"}, false},
		{"a's consumers not found at first, a started too", hidden, nil, jetstream.ErrConsumerNotFound, []string{"a", "b"}, false},
		{"a's consumers named but never found, b started alone", hidden, jetstream.ErrConsumerNotFound, nil, []string{"b"}, false},
		{"a's consumers named but never found, a started too", hidden, jetstream.ErrConsumerNotFound, nil, []string{"a", "b"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			ev := event("20261203T150000")
			if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			if _, err := topo.EnsureLanes(ctx, js, []string{"a"}); err != nil {
				t.Fatal(err)
			}
			lanes, err := topo.EnsureLanes(ctx, &testnats.PartialListing{JetStream: js, Hidden: tc.hidden, UnreadErr: tc.unread, AnswerOnce: tc.answerOnce}, tc.destinations)
			if tc.fails {
				if name := natsjs.LaneConsumerName("a", events.PriorityStat); err == nil || !strings.Contains(err.Error(), name) || !errors.Is(err, tc.unread) {
					t.Fatalf("start with a's consumers unreadable: %v; want an error naming %s and its cause %v", err, name, tc.unread)
				}
				if _, err := js.Consumer(ctx, natsjs.EventStream, natsjs.ConsumerName("b")); !errors.Is(err, jetstream.ErrConsumerNotFound) {
					t.Errorf("b's routine consumer after a failed start: %v; want none made", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			info, err := lanes["b"][events.PriorityRoutine].Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.DeliverPolicy != jetstream.DeliverNewPolicy || info.NumPending != 0 {
				t.Errorf("b added to a running deployment: deliver policy %v, %d pending; want new events only", info.Config.DeliverPolicy, info.NumPending)
			}
		})
	}
}

// TestLanesServedStartWithAnotherGroupsConsumerUnreadable: a's routine
// consumer cannot be read (an R1 consumer on a lost server). A forwarder
// group serving only b failed every start for it, until that server was
// back, though it uses b's consumers alone: it starts, a's consumers
// left out (not made or updated: a's own forwarders do). A group serving
// a still fails, naming it.
func TestLanesServedStartWithAnotherGroupsConsumerUnreadable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		served []string
		fails  bool
	}{
		{"b served", []string{"b"}, false},
		{"a served", []string{"a"}, true},
		{"both served", []string{"a", "b"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			if _, err := topo.EnsureLanes(ctx, js, []string{"a", "b"}); err != nil {
				t.Fatal(err)
			}
			name := natsjs.ConsumerName("a")
			fake := &testnats.PartialListing{JetStream: js, Hidden: map[string]bool{name: true}, UnreadErr: nats.ErrTimeout}
			lanes, err := topo.EnsureLanesServing(ctx, fake, []string{"a", "b"}, tc.served)
			if tc.fails {
				if err == nil || !strings.Contains(err.Error(), name) || !errors.Is(err, nats.ErrTimeout) {
					t.Fatalf("start serving %v: %v; want an error naming %s and its cause", tc.served, err, name)
				}
				return
			}
			if err != nil {
				t.Fatalf("start serving %v with a's routine consumer unreadable: %v", tc.served, err)
			}
			if _, ok := lanes["a"]; ok {
				t.Errorf("a's lanes returned, want a left out")
			}
			for _, lane := range events.Priorities {
				if lanes["b"][lane] == nil {
					t.Errorf("b's %s lane missing", lane)
				}
			}
		})
	}
}

// TestLaneConsumersLeaveOutOneDeletedSinceTheNames: a consumer deleted
// between CONSUMER.NAMES and its CONSUMER.INFO (destinations remove, nats
// consumer rm) answers "not found", as does a cluster member assigned one
// it has not made yet. Both were asked again until the caller's bound
// ended and counted as unreadable: a scrape without the destination's
// totals, `forwarder destinations` exiting 1, a start failed. Still not
// found when asked again, the names are read once more: one no longer
// named is left out at once; one still named is asked again, unreadable.
func TestLaneConsumersLeaveOutOneDeletedSinceTheNames(t *testing.T) {
	name := natsjs.ConsumerName("a")
	for _, tc := range []struct {
		name    string
		deleted bool          // since the names were read; else hidden, always "not found"
		bound   time.Duration // of the reads
		unread  bool
	}{
		{"deleted since the names", true, 10 * time.Second, false},
		{"named, not made yet", false, time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			if _, err := topo.EnsureLanes(ctx, js, []string{"a", "b"}); err != nil {
				t.Fatal(err)
			}
			fake := &testnats.PartialListing{JetStream: js, Hidden: map[string]bool{name: true}, UnreadErr: jetstream.ErrConsumerNotFound}
			if tc.deleted {
				fake = &testnats.PartialListing{JetStream: js, DeletedAfterNames: map[string]bool{name: true}}
			}
			s, err := fake.Stream(ctx, natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, tc.bound)
			defer cancel()
			infos, unread, err := natsjs.LaneConsumers(rctx, s)
			if err != nil {
				t.Fatal(err)
			}
			// a's stat and low consumers, b's three.
			if _, ok := infos[name]; ok || len(infos) != 5 {
				t.Errorf("read %d consumers (%s among them: %v); want the 5 others", len(infos), name, ok)
			}
			if got := unread[name] != nil; got != tc.unread || len(unread) > 1 {
				t.Errorf("unreadable: %v; want %s unreadable: %v", unread, name, tc.unread)
			}
			if rctx.Err() != nil && !tc.unread {
				t.Errorf("the reads lasted the whole bound (%v)", tc.bound)
			}
		})
	}
}

// TestLanesReadAgainAConsumerJustMade: on a cluster, a consumer another
// replica has just made has no leader for a moment: its INFO gets no
// answer, or its servers answer at once "JetStream system temporarily
// unavailable" (10008) while they elect one. Asked once, a first start of
// destinations a and b that found a's consumer named took it for a
// running deployment's, and b's queue started with new events, skipping
// what the stream held (or the request waited out the whole start and
// failed it). It is asked again.
func TestLanesReadAgainAConsumerJustMade(t *testing.T) {
	for _, tc := range []struct {
		name       string
		silentOnce bool
		answerOnce error
	}{
		{"no answer", true, nil},
		{"leader being elected", false, errLeaderless},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			ev := event("20261205T090000")
			if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			// Another replica of the same configuration made a's first consumer.
			made := topo.LaneConsumerConfig("a", events.PriorityStat, []string{"a", "b"})
			if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, made); err != nil {
				t.Fatal(err)
			}
			fake := &testnats.PartialListing{JetStream: js, Hidden: map[string]bool{made.Durable: true}, SilentOnce: tc.silentOnce, AnswerOnce: tc.answerOnce}
			lanes, err := topo.EnsureLanes(ctx, fake, []string{"a", "b"})
			if err != nil {
				t.Fatal(err)
			}
			info, err := lanes["b"][events.PriorityRoutine].Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.DeliverPolicy != jetstream.DeliverAllPolicy || info.NumPending != 1 {
				t.Errorf("b at the first start: deliver policy %v, %d pending; want every event the stream holds", info.Config.DeliverPolicy, info.NumPending)
			}
		})
	}
}

// TestLanesKeepAConsumerMadeSinceTheListing: a's stat consumer, made by
// another replica after this start read the names (here: left out of
// them), with another start, is read and kept, also when its servers are
// still electing its leader: that read failed the start.
func TestLanesKeepAConsumerMadeSinceTheListing(t *testing.T) {
	js, ctx, topo := eventStream(t)
	made := topo.LaneConsumerConfig("a", events.PriorityStat, []string{"a"})
	made.DeliverPolicy = jetstream.DeliverNewPolicy
	if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, made); err != nil {
		t.Fatal(err)
	}
	fake := &testnats.PartialListing{JetStream: js, Unnamed: map[string]bool{made.Durable: true}, Hidden: map[string]bool{made.Durable: true}, AnswerOnce: errLeaderless}
	lanes, err := topo.EnsureLanes(ctx, fake, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lanes["a"][events.PriorityStat].Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.DeliverPolicy != jetstream.DeliverNewPolicy {
		t.Errorf("a's stat consumer: deliver policy %v, want the one it was made with (new)", info.Config.DeliverPolicy)
	}
}

// TestLanesKeepTheMaxDeliverOfAConsumerMadeSinceTheListing: a consumer
// made by another replica since this start read the names, already
// retrying an event, is kept with its MaxDeliver when this start's is
// lower (FORWARDER_MAX_DELIVERIES lowered): JetStream would drop that
// event from the queue with no dead letter.
func TestLanesKeepTheMaxDeliverOfAConsumerMadeSinceTheListing(t *testing.T) {
	js, ctx, topo := eventStream(t)
	made := topo.LaneConsumerConfig("a", events.PriorityRoutine, []string{"a"})
	made.DeliverPolicy, made.MaxDeliver = jetstream.DeliverNewPolicy, 5
	c, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, made)
	if err != nil {
		t.Fatal(err)
	}
	ev := event("20261205T182000")
	if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	// Delivered, refused, delivered again: being retried.
	for range 2 {
		msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := msg.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	lowered := topo
	lowered.MaxDeliver = 2
	fake := &testnats.PartialListing{JetStream: js, Unnamed: map[string]bool{made.Durable: true}}
	lanes, err := lowered.EnsureLanes(ctx, fake, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lanes["a"][events.PriorityRoutine].Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.DeliverPolicy != jetstream.DeliverNewPolicy || info.Config.MaxDeliver != made.MaxDeliver {
		t.Errorf("a's routine consumer: deliver policy %v, MaxDeliver %d; want new, %d (it holds an event being retried)", info.Config.DeliverPolicy, info.Config.MaxDeliver, made.MaxDeliver)
	}
}

// errLeaderless is nats-server's answer for a consumer whose servers are
// electing its leader.
var errLeaderless = &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}

// eventStream starts a server with the event stream of the default
// topology, as every process makes it at start.
func eventStream(t *testing.T) (jetstream.JetStream, context.Context, natsjs.Topology) {
	t.Helper()
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureEvents(ctx, js); err != nil {
		t.Fatal(err)
	}
	return js, ctx, topo
}

// TestLanesFirstStartIgnoresLocalClock: whether another destination's
// consumer was made at this first start is read on the NATS server's
// clock alone. A forwarder whose clock runs an hour ahead (a VM whose
// hardware clock keeps local time, without NTP) took a replica's
// consumer made a moment ago for an old one, and started the second
// destination with new events, skipping what the stream held; one whose
// clock runs behind took an old consumer for one of this first start,
// and a destination configured again got the whole stream once more.
func TestLanesFirstStartIgnoresLocalClock(t *testing.T) {
	for _, tc := range []struct {
		name       string
		skew       time.Duration // of the forwarder's clock
		firstStart time.Duration // 0: the default hour
		pending    uint64        // b's routine consumer, after one queued event
	}{
		{"clock ahead, same first start", 2 * time.Hour, 0, 1},
		{"clock behind, consumer made before the first start ended", -2 * time.Hour, time.Nanosecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, topo := eventStream(t)
			ev := event("20261204T130000")
			if _, err := natsjs.PublishTo(ctx, js, natsjs.EventSubject("orthanc-a"), ev, ev.MsgID()); err != nil {
				t.Fatal(err)
			}
			// Another replica of the same configuration made a's first
			// consumer.
			if _, err := js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, topo.LaneConsumerConfig("a", events.PriorityStat, []string{"a", "b"})); err != nil {
				t.Fatal(err)
			}
			if tc.firstStart > 0 {
				topo = topo.WithFirstStart(tc.firstStart)
			}
			topo = topo.WithClock(func() time.Time { return time.Now().Add(tc.skew) })
			lanes, err := topo.EnsureLanes(ctx, js, []string{"a", "b"})
			if err != nil {
				t.Fatal(err)
			}
			info, err := lanes["b"][events.PriorityRoutine].Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.NumPending != tc.pending {
				t.Errorf("b's routine consumer: deliver policy %v, %d pending; want %d", info.Config.DeliverPolicy, info.NumPending, tc.pending)
			}
		})
	}
}

// TestLanesLeaveAnotherGroupsConsumerSettings: forwarder groups split the
// destinations (FORWARDER_DESTINATIONS). Group A serves x with the
// defaults; group B, serving y with a shorter ack wait and
// FORWARDER_MAX_DELIVERIES=5 (MaxDeliver 10), restarted and set x's
// consumers to its own values: JetStream then dropped, without a dead
// letter, each x event from its 10th delivery while A dead-letters
// later, and moved events in flight to another of A's forwarders after
// B's ack wait. B leaves x's consumers' AckWait and MaxDeliver as they
// are, still makes x's missing one (with x's settings), and changes its
// own, with a warning for each change.
func TestLanesLeaveAnotherGroupsConsumerSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		served  []string // by group B
		changed []string // destinations whose consumers B changes
	}{
		{"B serves y", []string{"y"}, []string{"y"}},
		{"B serves x and y", []string{"x", "y"}, []string{"x", "y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, ctx, a := eventStream(t)
			all := []string{"x", "y"}
			if _, err := a.EnsureLanesServing(ctx, js, all, []string{"x"}); err != nil {
				t.Fatal(err)
			}
			// x's low consumer removed since (nats consumer rm): B makes it.
			missing := natsjs.LaneConsumerName("x", events.PriorityLow)
			if err := js.DeleteConsumer(ctx, natsjs.EventStream, missing); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			b := a
			b.AckWait, b.MaxDeliver = 10*time.Second, 10
			b.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			if _, err := b.EnsureLanesServing(ctx, js, all, tc.served); err != nil {
				t.Fatal(err)
			}
			type change struct{ setting, from, to string }
			logged := map[string][]change{}
			for line := range strings.Lines(logs.String()) {
				var r struct{ Level, Consumer, Setting, From, To string }
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatal(err)
				}
				if r.Level == "WARN" && r.Setting != "" {
					logged[r.Consumer] = append(logged[r.Consumer], change{r.Setting, r.From, r.To})
				}
			}
			for _, d := range all {
				changed := slices.Contains(tc.changed, d)
				for _, lane := range events.Priorities {
					name := natsjs.LaneConsumerName(d, lane)
					c, err := js.Consumer(ctx, natsjs.EventStream, name)
					if err != nil {
						t.Fatalf("%s after B's start: %v", name, err)
					}
					cfg := c.CachedInfo().Config
					want, wantLogged := a, []change(nil)
					if changed {
						want = b
						if name != missing {
							wantLogged = []change{{"AckWait", "1m0s", "10s"}, {"MaxDeliver", "1000", "10"}}
						}
					}
					if cfg.AckWait != want.AckWait || cfg.MaxDeliver != want.MaxDeliver {
						t.Errorf("%s after B's start: AckWait %s, MaxDeliver %d; want %s, %d", name, cfg.AckWait, cfg.MaxDeliver, want.AckWait, want.MaxDeliver)
					}
					if got := logged[name]; !slices.Equal(got, wantLogged) {
						t.Errorf("%s: warnings %v, want %v\n%s", name, got, wantLogged, logs.String())
					}
				}
			}
		})
	}
}

// TestLanesKeepAnotherGroupsConsumerMadeSinceTheListing: groups A
// (serving x) and B (serving y, FORWARDER_MAX_DELIVERIES=5) start
// together, and A makes x's consumers after B read the names. B's
// create-or-update of a consumer it took for missing, of the same start,
// set A's consumers to B's AckWait and MaxDeliver; it leaves them as A
// made them.
func TestLanesKeepAnotherGroupsConsumerMadeSinceTheListing(t *testing.T) {
	js, ctx, a := eventStream(t)
	all := []string{"x", "y"}
	if _, err := a.EnsureLanesServing(ctx, js, all, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	unnamed := map[string]bool{}
	for _, lane := range events.Priorities {
		unnamed[natsjs.LaneConsumerName("x", lane)] = true
	}
	b := a
	b.AckWait, b.MaxDeliver = 10*time.Second, 10
	if _, err := b.EnsureLanesServing(ctx, &testnats.PartialListing{JetStream: js, Unnamed: unnamed}, all, []string{"y"}); err != nil {
		t.Fatal(err)
	}
	for name := range unnamed {
		c, err := js.Consumer(ctx, natsjs.EventStream, name)
		if err != nil {
			t.Fatal(err)
		}
		if cfg := c.CachedInfo().Config; cfg.AckWait != a.AckWait || cfg.MaxDeliver != a.MaxDeliver {
			t.Errorf("%s, made by A since B read the names: AckWait %s, MaxDeliver %d after B's start; want A's %s, %d", name, cfg.AckWait, cfg.MaxDeliver, a.AckWait, a.MaxDeliver)
		}
	}
}
