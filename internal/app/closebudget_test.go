package app

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// A process's close drains its NATS connection and flushes its traces
// side by side: with a NATS server and an OTLP collector that both stopped
// answering, one after the other they took 10 s, and a forwarder's whole
// stop its grace + 17 s, past the grace + 15 s the chart checks.
func TestCloseDrainsAndFlushesSideBySide(t *testing.T) {
	conn, err := natsjs.Connect(t.Context(), natsjs.ConnectOptions{URL: testnats.Silent(t)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// A subscription the drain waits for: it waits out its 5 s.
	if _, err := conn.NC.SubscribeSync("stowline.test"); err != nil {
		t.Fatal(err)
	}
	// A collector that does not answer: the flush waits out its bound.
	flushing := func() { time.Sleep(tracingShutdownTimeout) }
	p := &process{conn: conn, stopTracing: flushing, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	cancel()
	start := time.Now()
	// Each takes 5 s: side by side well under 10 s, even on a busy host.
	const within = 8 * time.Second
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30 s after its stop")
	}
	if took := time.Since(start); took >= within {
		t.Errorf("close took %s, want under %s: the drain and the flush (5 s each at most) ran one after the other", took.Round(time.Millisecond), within)
	}
}
