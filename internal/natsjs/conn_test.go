package natsjs_test

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
)

// silentServer is a NATS server that completes the handshake, then
// answers nothing: a server whose node is being drained.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(`INFO {"server_id":"silent","version":"2.12.0","proto":1,"max_payload":1048576,"headers":true}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(conn)
		for answered := false; ; {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "PING") && !answered {
				answered = true // the handshake's: the last answer
				if _, err := conn.Write([]byte("PONG\r\n")); err != nil {
					return
				}
			}
		}
	}()
	return "nats://" + ln.Addr().String()
}

// Close returns within its bound when the server stops answering while
// a subscription is open: the drain waited the client's default 30 s for
// it, then 5 s for the flush, past the forwarder's stop timeout.
func TestCloseBoundedWhenServerStopsAnswering(t *testing.T) {
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: silentServer(t)}, slog.New(slog.DiscardHandler))
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
