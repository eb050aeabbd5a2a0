package natsjs_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
)

// TestOldestHeld: the oldest event a destination's lanes hold not
// acknowledged, over its lanes; none when they hold nothing, when a lane
// has no consumer, or when the destination has none.
func TestOldestHeld(t *testing.T) {
	js, ctx, topo := eventStream(t)
	lanes, err := topo.EnsureLanes(ctx, js, []string{"ai", "pacs"})
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, natsjs.EventStream, natsjs.LaneConsumerName("ai", events.PriorityStat)); err != nil {
		t.Fatal(err)
	}
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
	held("ai", low)
	held("pacs", time.Time{})
	held("gone", time.Time{})
	msg, err := lanes["ai"][events.PriorityLow].Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	held("ai", routine)
}
