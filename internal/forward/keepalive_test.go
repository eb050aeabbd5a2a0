package forward

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// A destination that closes a kept-alive connection just as the next
// study's STOW-RS request is sent on it (Orthanc's CivetWeb after 1 s
// idle, below the forwarder's 50 s IdleConnTimeout; a load balancer's
// idle time-out) costs the study nothing: the request is sent again on a
// new connection within the same attempt, with no failure, no retry
// and no delivery spent (not sent again, the attempt failed as "no
// answer", was retried with backoff and spent a delivery).
func TestKeepAliveClosedAsReusedCostsNothing(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(2)
	var k sink
	// The second request on a connection, once: closed unread.
	drop := &faultproxy.OnceOnConn{N: 2}
	srv := faultproxy.StartConnDropper(t, k.handler(nil), drop.Drop)
	cons := consumer(t, ns)
	rec := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) { o.Observer = rec })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	first, second := testEvent(), testEvent()
	second.OrthancStudyID, second.StudyInstanceUID = "3e1a0b47-5c1bd0a2-8f0e6a1d-29c44f5e-0b7d2c31", "1.2.4"
	for i, ev := range []*events.StudyStable{first, second} {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		// One study at a time: the second's request goes on the
		// connection the first one's left idle.
		waitConsumer(t, cons, func(c *jetstream.ConsumerInfo) bool { return c.AckFloor.Stream == uint64(i+1) && c.NumAckPending == 0 })
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if drop.Dropped() != 1 {
		t.Fatal("no request met a closed kept-alive connection: the test proves nothing")
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 2 {
		t.Errorf("%d deliveries for 2 studies, want 2", info.Delivered.Consumer)
	}
	if got := k.requests.Load(); got != 2 {
		t.Errorf("the destination answered %d STOW-RS requests, want 2", got)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.started != 2 || rec.finished[ResultForwarded] != 2 {
		t.Errorf("observer: %d attempts started, finished %v; want 2 attempts, both forwarded", rec.started, rec.finished)
	}
	for _, rep := range rec.reports {
		if rep.Requests != 1 || rep.Instances != 2 {
			t.Errorf("an attempt sent %d instances in %d requests, want 2 in 1", rep.Instances, rep.Requests)
		}
	}
}
