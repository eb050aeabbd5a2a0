package deadletter_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// BenchmarkReplay replays 2,000 letters a run: over the embedded
// server's in-process connection, where an ack costs CPU alone, and over
// a link that delays each direction by half a millisecond, as a NATS
// server on another host does (a cluster's acks wait for its peers too).
func BenchmarkReplay(b *testing.B) {
	for _, bb := range []struct {
		name  string
		delay time.Duration
	}{{"in-process", 0}, {"1ms-round-trip", 500 * time.Microsecond}} {
		b.Run(bb.name, func(b *testing.B) { benchmarkReplay(b, 2000, bb.delay) })
	}
}

func benchmarkReplay(b *testing.B, letters int, delay time.Duration) {
	ns := testnats.StartWith(b, func(o *server.Options) { o.DontListen, o.Port = false, server.RANDOM_PORT })
	ctx := context.Background()
	dl, err := natsjs.DefaultTopology().EnsureDeadLetters(ctx, ns.JS)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := natsjs.DefaultTopology().EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination); err != nil {
		b.Fatal(err)
	}
	// Letters are added in-process: only the replay crosses the link.
	add := deadletter.NewStore(ns.JS, dl)
	js := ns.JS
	if delay > 0 {
		nc, err := nats.Connect(testnats.SlowLink(b, strings.TrimPrefix(ns.ClientURL(), "nats://"), delay))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		if js, err = jetstream.New(nc); err != nil {
			b.Fatal(err)
		}
	}
	store, err := deadletter.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now()
	for run := 0; run < b.N; run++ {
		b.StopTimer()
		for i := range letters {
			// A new study each run, so that no replay is a duplicate.
			if _, _, err := add.Add(ctx, letter(run*letters+i+1, forward.Permanent, "HTTP 415", at)); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		n, err := store.Replay(ctx, deadletter.Filter{All: true}, false, func(*deadletter.Entry) {})
		if err != nil || n != letters {
			b.Fatalf("Replay = %d, %v; want %d", n, err, letters)
		}
	}
}
