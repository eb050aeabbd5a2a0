package deadletter_test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
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
		nc, err := nats.Connect(slowLink(b, strings.TrimPrefix(ns.ClientURL(), "nats://"), delay))
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

// slowLink relays TCP connections to target, delivering what each side
// sends delay later, in order; it returns the address to dial.
func slowLink(tb testing.TB, target string, delay time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go delayed(up, c, delay)
			go delayed(c, up, delay)
		}
	}()
	return ln.Addr().String()
}

// delayed copies from src to dst, each chunk written delay after it was
// read, until either fails.
func delayed(dst io.WriteCloser, src io.ReadCloser, delay time.Duration) {
	type chunk struct {
		data []byte
		due  time.Time
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{buf[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
