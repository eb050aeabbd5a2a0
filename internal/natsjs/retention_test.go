package natsjs_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// TestLoweredRetentionKeepsQueuedEvents: an operator lowers
// EVENTS_RETENTION and restarts while a destination's queue still holds
// an event older than the new retention (the destination was down, a
// lane closed). JetStream would delete it at once, with no dead letter:
// the start keeps the stream's retention and says why, and a start once
// the queue has acknowledged the event lowers it.
func TestLoweredRetentionKeepsQueuedEvents(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
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
	// The new retention is a second: the event must be older than that,
	// on the server's clock, which only time gives.
	time.Sleep(1100 * time.Millisecond)

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
	msg, err := lanes[natsjs.DefaultDestination].Next(jetstream.FetchMaxWait(5 * time.Second))
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
