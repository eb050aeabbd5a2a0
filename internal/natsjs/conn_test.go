package natsjs_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// Close returns within its bound when the server stops answering while
// a subscription is open: the drain waited the client's default 30 s for
// it, then 5 s for the flush, past the forwarder's stop timeout.
func TestCloseBoundedWhenServerStopsAnswering(t *testing.T) {
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: testnats.Silent(t)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NC.SubscribeSync("stowline.test"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	const within = 15 * time.Second // 5 s, with a margin for a busy machine
	select {
	case <-closed:
	case <-time.After(within):
		t.Fatalf("Close did not return within %s", within)
	}
	t.Logf("closed after %s", time.Since(start).Round(time.Millisecond))
}

// blackholeRelay relays TCP connections to target until blackhole is
// called: from then on the connections it relays swallow every byte in
// both directions and stay open (a host powered off, a network cut: no
// FIN, no RST). Connections made afterwards are relayed again, as to
// another server of the cluster.
type blackholeRelay struct {
	ln    net.Listener
	mu    sync.Mutex
	links []*atomic.Bool // per connection: swallowed
}

func newBlackholeRelay(t *testing.T, target string) *blackholeRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &blackholeRelay{ln: ln}
	var conns sync.WaitGroup
	var open []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		r.mu.Unlock()
		conns.Wait()
	})
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			dead := new(atomic.Bool)
			r.mu.Lock()
			open = append(open, c, up)
			r.links = append(r.links, dead)
			r.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						return
					}
					if dead.Load() {
						continue
					}
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
			}
			conns.Go(func() { pipe(up, c) })
			conns.Go(func() { pipe(c, up) })
		}
	})
	return r
}

func (r *blackholeRelay) addr() string { return r.ln.Addr().String() }

// blackhole silences every connection relayed so far.
func (r *blackholeRelay) blackhole() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, dead := range r.links {
		dead.Store(true)
	}
}

// A server lost without a TCP reset is noticed by the client's keepalive
// (Connect's PingInterval and MaxPingsOutstanding; shortened here), which
// then reconnects: with nats.go's default keepalive the dead connection
// passed for live for about 6 minutes.
func TestConnectNoticesASilentlyLostServer(t *testing.T) {
	ns := testnats.StartWith(t, func(o *server.Options) { o.DontListen = false; o.Port = -1 })
	relay := newBlackholeRelay(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	log := slog.New(slog.DiscardHandler)
	o := natsjs.ConnectOptions{URL: "nats://" + relay.addr()}.WithPingInterval(100 * time.Millisecond)
	conn, err := natsjs.Connect(t.Context(), o, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if err := conn.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	relay.blackhole()
	lost := time.Now()
	// The keepalive gives up after (MaxPingsOutstanding+1) intervals; a
	// default keepalive would not send its first ping for 2 minutes.
	select {
	case <-conn.Reconnected():
	case <-time.After(10 * time.Second):
		t.Fatalf("no reconnect %s after the server went silent (connected: %v)", time.Since(lost).Round(time.Millisecond), conn.NC.IsConnected())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := conn.NC.FlushWithContext(ctx); err != nil {
		t.Fatalf("flush after the reconnect: %v", err)
	}
}
