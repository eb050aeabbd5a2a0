package natsjs_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// An event the forwarders' consumer stops delivering is reported.
func TestWatchMaxDeliver(t *testing.T) {
	ns := testnats.Start(t)
	topo := natsjs.DefaultTopology()
	topo.AckWait = time.Second
	topo.MaxDeliver = 2
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := topo.EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan natsjs.MaxDeliverReached, 1)
	stop, err := natsjs.WatchMaxDeliver(ns.NC, natsjs.ForwarderConsumer, func(a natsjs.MaxDeliverReached) { got <- a })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500"}
	ack, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // two deliveries nobody settles, as when each forwarder died
		if _, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	// JetStream notices the limit when it would deliver again: to a
	// forwarder still pulling.
	if msg, err := cons.Next(jetstream.FetchMaxWait(3 * time.Second)); err == nil {
		t.Fatalf("delivered a third time past MaxDeliver 2: %s", msg.Subject())
	}
	select {
	case a := <-got:
		if a.StreamSeq != ack.Sequence || a.Deliveries != 2 {
			t.Errorf("advisory = %+v, want stream seq %d after 2 deliveries", a, ack.Sequence)
		}
	case <-ctx.Done():
		t.Fatal("no advisory for an event past MaxDeliver")
	}
}
