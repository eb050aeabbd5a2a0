package natsjs_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestLoweredRetentionKeepsQueuedEvents: an operator lowers
// EVENTS_RETENTION and restarts while a destination's queue still holds
// an event older than the new retention (the destination was down, a
// lane closed). JetStream would delete it at once, with no dead letter:
// the start keeps the stream's retention and says why, and a start once
// the queue has acknowledged the event lowers it.
func TestLoweredRetentionKeepsQueuedEvents(t *testing.T) {
	ctx := testCtx(t)
	js, topo, queue, ack := queuedOldEvent(t, ctx)

	var logs bytes.Buffer
	lowered := topo
	lowered.Retention, lowered.Log = time.Second, slog.New(slog.NewJSONHandler(&logs, nil))
	s, err := lowered.EnsureEvents(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != topo.Retention || info.State.Msgs != 1 {
		t.Fatalf("after a start with a lower retention and an event queued: MaxAge %v, %d events; want %v kept and the event kept", info.Config.MaxAge, info.State.Msgs, topo.Retention)
	}
	if !strings.Contains(logs.String(), "EVENTS_RETENTION not lowered") || !strings.Contains(logs.String(), `"consumer":"`+natsjs.ForwarderConsumer+`"`) {
		t.Errorf("log does not say the retention was kept for %s's queue:\n%s", natsjs.ForwarderConsumer, logs.String())
	}

	// Forwarded: the next start lowers it.
	msg, err := queue.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if meta, err := msg.Metadata(); err != nil || meta.Sequence.Stream != ack.Sequence {
		t.Fatalf("pulled %v (%v), want event %d", meta, err, ack.Sequence)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err = lowered.EnsureEvents(ctx, js); err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != lowered.Retention {
		t.Errorf("after a start with the queue forwarded: MaxAge %v, want %v", got, lowered.Retention)
	}
}

// queuedOldEvent starts a server whose event stream keeps events an hour
// and whose default destination's queue holds one event published more
// than a second ago: what a start that lowers the retention to a second
// would delete. It returns that queue's consumer and the event's ack.
func queuedOldEvent(t *testing.T, ctx context.Context) (jetstream.JetStream, natsjs.Topology, jetstream.Consumer, *jetstream.PubAck) {
	t.Helper()
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	topo := natsjs.DefaultTopology()
	topo.Retention, topo.DedupeWindow = time.Hour, 500*time.Millisecond
	if _, err := topo.EnsureEvents(ctx, js); err != nil {
		t.Fatal(err)
	}
	lanes, err := topo.EnsureConsumers(ctx, js, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, natsjs.EventSubject("orthanc-a"), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	// The event must be older than the lowered retention on the server's
	// clock, which only time gives.
	time.Sleep(1100 * time.Millisecond)
	return js, topo, lanes[natsjs.DefaultDestination], ack
}

// TestLoweredRetentionSeesConsumersLeftOutOfTheListing: on a cluster,
// the listing of the consumers (CONSUMER.LIST) leaves out one whose
// leader did not answer in time, and nats.go's listing then asks for the
// same page until the context ends. A lower retention was applied while
// that consumer held the oldest event, which JetStream deleted, or never
// decided. Each consumer named is read by itself; when one cannot be,
// the retention is kept. The listing is a fake over a real server
// (testnats.PartialListing): a real cluster does not leave one out
// on demand.
func TestLoweredRetentionSeesConsumersLeftOutOfTheListing(t *testing.T) {
	ctx := testCtx(t)
	js, topo, _, _ := queuedOldEvent(t, ctx)

	hidden := map[string]bool{natsjs.ForwarderConsumer: true}
	for _, tc := range []struct {
		name   string
		unread error
		why    string // what the log says kept the retention
	}{
		{"left out, unreadable", nats.ErrTimeout, "cannot tell whether it would delete events not forwarded yet"},
		{"left out, read by itself", nil, `"consumer":"` + natsjs.ForwarderConsumer + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			lowered := topo
			lowered.Retention, lowered.Log = time.Second, slog.New(slog.NewJSONHandler(&logs, nil))
			if _, err := lowered.EnsureEvents(ctx, &testnats.PartialListing{JetStream: js, Hidden: hidden, UnreadErr: tc.unread}); err != nil {
				t.Fatal(err)
			}
			s, err := js.Stream(ctx, natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			if info := s.CachedInfo(); info.Config.MaxAge != topo.Retention || info.State.Msgs != 1 {
				t.Fatalf("MaxAge %v, %d events; want %v kept and the event the consumer left out of the listing holds kept:\n%s", info.Config.MaxAge, info.State.Msgs, topo.Retention, logs.String())
			}
			if !strings.Contains(logs.String(), "EVENTS_RETENTION not lowered") || !strings.Contains(logs.String(), tc.why) {
				t.Errorf("log does not say the retention was kept, with %s:\n%s", tc.why, logs.String())
			}
		})
	}
}

// TestLoweredRetentionIsWarned: every process's start sets a stream's
// retention to its own setting. An ingest restarted with the default 7
// days, while the forwarders were given 14 for an outage, set the event
// stream back with one Info line, and JetStream deleted the backlog at 7
// days. A start that lowers a retention says so at Warn, naming the
// variable and both values; one that raises it stays at Info.
func TestLoweredRetentionIsWarned(t *testing.T) {
	const week = 7 * 24 * time.Hour
	for _, tt := range []struct {
		name, stream, variable string
		from, to               time.Duration
		warned                 bool
	}{
		{"events lowered", natsjs.EventStream, "EVENTS_RETENTION", 2 * week, week, true},
		{"events raised", natsjs.EventStream, "EVENTS_RETENTION", week, 2 * week, false},
		{"dead letters lowered", natsjs.DeadLetterStream, "DEADLETTER_RETENTION", 4 * week, week, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
			ctx := testCtx(t)
			ensure := func(retention time.Duration, log *slog.Logger) {
				t.Helper()
				topo := natsjs.DefaultTopology()
				topo.Retention, topo.DeadLetterRetention, topo.Log = retention, retention, log
				var err error
				if tt.stream == natsjs.EventStream {
					_, err = topo.EnsureEvents(ctx, js)
				} else {
					_, err = topo.EnsureDeadLetters(ctx, js)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			ensure(tt.from, nil)
			var logs bytes.Buffer
			ensure(tt.to, slog.New(slog.NewJSONHandler(&logs, nil)))
			out := logs.String()
			if !strings.Contains(out, `"max_age":"`+tt.from.String()+" -> "+tt.to.String()+`"`) || !strings.Contains(out, `"variable":"`+tt.variable+`"`) {
				t.Errorf("the change does not name %s and both values:\n%s", tt.variable, out)
			}
			if warned := strings.Contains(out, `"level":"WARN"`); warned != tt.warned {
				t.Errorf("warned %v, want %v:\n%s", warned, tt.warned, out)
			}
		})
	}
}

// TestLoweredMaxDeliverKeepsRetriedEvents: an operator lowers
// FORWARDER_MAX_DELIVERIES (the consumer's MaxDeliver is twice it) and
// restarts while an event is being retried and was delivered more times
// than the new MaxDeliver allows. JetStream would drop it from the queue
// with no dead letter: the start keeps the higher MaxDeliver so that the
// forwarders get it once more and dead-letter it, and a start once it is
// settled lowers it.
func TestLoweredMaxDeliverKeepsRetriedEvents(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	topo := natsjs.DefaultTopology()
	topo.MaxDeliver = 10
	if _, err := topo.EnsureEvents(ctx, js); err != nil {
		t.Fatal(err)
	}
	dest := []string{natsjs.DefaultDestination}
	lanes, err := topo.EnsureConsumers(ctx, js, dest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, natsjs.EventSubject("orthanc-a"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		msg, err := lanes[natsjs.DefaultDestination].Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := msg.Nak(); err != nil {
			t.Fatal(err)
		}
	}

	lowered := topo
	lowered.MaxDeliver = 4
	if lanes, err = lowered.EnsureConsumers(ctx, js, dest); err != nil {
		t.Fatal(err)
	}
	c := lanes[natsjs.DefaultDestination]
	if got := c.CachedInfo().Config.MaxDeliver; got != topo.MaxDeliver {
		t.Errorf("MaxDeliver %d after a start that lowers it with an event delivered 6 times, want %d kept", got, topo.MaxDeliver)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("the event delivered 6 times is not delivered again for the forwarders to dead-letter: %v", err)
	}
	if meta, err := msg.Metadata(); err != nil || meta.NumDelivered != 7 {
		t.Fatalf("delivery %v (%v), want the 7th", meta, err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if lanes, err = lowered.EnsureConsumers(ctx, js, dest); err != nil {
		t.Fatal(err)
	}
	if got := lanes[natsjs.DefaultDestination].CachedInfo().Config.MaxDeliver; got != lowered.MaxDeliver {
		t.Errorf("MaxDeliver %d after a start with nothing being retried, want %d", got, lowered.MaxDeliver)
	}
}
