package natsjs_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// aiAndPACSLanes is an event stream with the lanes of destinations ai
// and pacs, but for ai's stat lane's consumer: an event there is held by
// no one.
func aiAndPACSLanes(t *testing.T) (jetstream.JetStream, context.Context, natsjs.Topology, map[string]map[events.Priority]jetstream.Consumer) {
	t.Helper()
	js, ctx, topo := eventStream(t)
	lanes, err := topo.EnsureLanes(ctx, js, []string{"ai", "pacs"})
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, natsjs.EventStream, natsjs.LaneConsumerName("ai", events.PriorityStat)); err != nil {
		t.Fatal(err)
	}
	return js, ctx, topo, lanes
}

// ackNext takes the next event of cons and acknowledges it.
func ackNext(ctx context.Context, t *testing.T, cons jetstream.Consumer) {
	t.Helper()
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestOldestHeld: the oldest event a destination's lanes hold not
// acknowledged, over its lanes; none when they hold nothing, when a lane
// has no consumer, or when the destination has none.
func TestOldestHeld(t *testing.T) {
	js, ctx, _, lanes := aiAndPACSLanes(t)
	stream, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	// queue stores an event for ai in lane and returns its stream time.
	queue := func(lane events.Priority, id string) time.Time {
		t.Helper()
		ack, err := natsjs.PublishTo(ctx, js, natsjs.LaneSubject(lane, "ai", "orthanc-a"), event("20261126T101500"), id)
		if err != nil {
			t.Fatal(err)
		}
		m, err := stream.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		return m.Time
	}
	held := func(destination string, want time.Time) {
		t.Helper()
		got, err := natsjs.OldestHeld(ctx, js, destination)
		if err != nil || !got.Equal(want) {
			t.Errorf("OldestHeld(%s) = %v, %v; want %v", destination, got, err, want)
		}
	}
	held("ai", time.Time{})
	low := queue(events.PriorityLow, "1")
	routine := queue(events.PriorityRoutine, "2")
	queue(events.PriorityStat, "3") // no stat consumer: nobody holds it
	testnats.WaitCounted(ctx, t, js)
	held("ai", low)
	held("pacs", time.Time{})
	held("gone", time.Time{})
	ackNext(ctx, t, lanes["ai"][events.PriorityLow])
	held("ai", routine)
}

// TestHeldAlone: the studies of the events a destination's lanes hold
// for it alone, not acknowledged, with the newest LastUpdate of each;
// not the events for every destination, another destination's, those of
// a lane without a consumer, nor those acknowledged. A lane consumer that
// does not take the lane's subject for its destination alone, or one
// source's only, holds none, or that source's only: they counted all
// the same, and the audit did not repair a study such a copy named.
func TestHeldAlone(t *testing.T) {
	js, ctx, topo, lanes := aiAndPACSLanes(t)
	// Low lanes whose consumers do not take their subject for the
	// destination alone: old's takes the events for every destination
	// only (made by hand, or before the lane took that subject), one's
	// one source's events for it alone.
	for destination, filters := range map[string][]string{
		"old": {natsjs.LaneSubject(events.PriorityLow, "", "*")},
		"one": {natsjs.LaneSubject(events.PriorityLow, "one", "orthanc-a")},
	} {
		cfg := topo.LaneConsumerConfig(destination, events.PriorityLow, nil)
		cfg.FilterSubjects = filters
		if _, err := js.CreateConsumer(ctx, natsjs.EventStream, cfg); err != nil {
			t.Fatal(err)
		}
	}
	study := func(n int) natsjs.StudyKey {
		return natsjs.StudyKey{Source: "orthanc-a", OrthancStudyID: fmt.Sprintf("5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d%d", n)}
	}
	queue := func(lane events.Priority, destination string, k natsjs.StudyKey, lastUpdate string) {
		t.Helper()
		ev := event(lastUpdate)
		ev.Source, ev.OrthancStudyID = k.Source, k.OrthancStudyID
		if _, err := natsjs.PublishTo(ctx, js, natsjs.LaneSubject(lane, destination, ev.Source), ev, ev.MsgID()+"/"+destination+"/"+string(lane)); err != nil {
			t.Fatal(err)
		}
	}
	// Taken and acknowledged first: the routine lane's first event.
	queue(events.PriorityRoutine, "ai", study(1), "20261126T101500")
	ackNext(ctx, t, lanes["ai"][events.PriorityRoutine])
	queue(events.PriorityLow, "ai", study(2), "20261126T101500")
	queue(events.PriorityRoutine, "ai", study(2), "20261126T111500")
	queue(events.PriorityLow, "ai", study(2), "20261126T091500")
	queue(events.PriorityRoutine, "", study(3), "20261126T101500") // every destination
	queue(events.PriorityStat, "ai", study(4), "20261126T101500")  // no stat consumer
	queue(events.PriorityLow, "pacs", study(5), "20261126T101500")
	queue(events.PriorityLow, "", study(6), "20261126T101500") // every destination: old's holds it
	queue(events.PriorityLow, "old", study(7), "20261126T101500")
	otherSource := natsjs.StudyKey{Source: "orthanc-b", OrthancStudyID: study(8).OrthancStudyID}
	queue(events.PriorityLow, "one", study(8), "20261126T101500")
	queue(events.PriorityLow, "one", otherSource, "20261126T101500")
	testnats.WaitCounted(ctx, t, js)
	for _, tt := range []struct {
		destination string
		want        map[natsjs.StudyKey]string
	}{
		{"ai", map[natsjs.StudyKey]string{study(2): "20261126T111500"}},
		{"pacs", map[natsjs.StudyKey]string{study(5): "20261126T101500"}},
		{"gone", map[natsjs.StudyKey]string{}},
		{"old", map[natsjs.StudyKey]string{}},
		{"one", map[natsjs.StudyKey]string{study(8): "20261126T101500"}},
	} {
		got, err := natsjs.HeldAlone(ctx, js, tt.destination)
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("HeldAlone(%s) = %v, %v; want %v", tt.destination, got, err, tt.want)
		}
	}
}
