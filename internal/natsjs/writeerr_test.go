//go:build linux

package natsjs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// TestEmbeddedWriteErrorIsNotReady: on a single host whose disk filled
// up (Orthanc's files share it), the embedded server's write of an event
// fails. nats-server then refuses every write to that stream, without an
// answer, until it restarts: freeing space is not enough. /readyz said
// "ready" all along while every webhook timed out with "JetStream did not
// acknowledge". The jetstream check now fails naming the write error and
// what to do.
func TestEmbeddedWriteErrorIsNotReady(t *testing.T) {
	var logs testharness.LogBuffer
	c := connectWithEvents(t, natsjs.ConnectOptions{StoreDir: t.TempDir()}, slog.New(slog.NewJSONHandler(&logs, nil)))
	ctx := testCtx(t)

	// The disk fills up, then space is freed.
	breakEventStream(t, c)

	err := c.Ready(ctx)
	if err == nil {
		t.Fatalf("ready while the embedded server refuses the event stream's writes; its log:\n%s", logs.String())
	}
	for _, want := range []string{natsjs.EventStream, "write error", "restart"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check %q does not say %q", err, want)
		}
	}
}

// TestEmbeddedWriteErrorFailsPublishesAtOnce: a publish to a stream the
// embedded server can no longer write fails at once, saying why. It
// waited for its whole time-out (INGEST_PUBLISH_TIMEOUT, 10 s) and said
// "context deadline exceeded": each webhook held Orthanc's Lua callback
// (and with it Orthanc's REST API) that long, for an answer that never
// came, and counted as JetStream unavailable. Other streams are written
// as before.
func TestEmbeddedWriteErrorFailsPublishesAtOnce(t *testing.T) {
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := testCtx(t)
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureEvents(ctx, c.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureDeadLetters(ctx, c.JS); err != nil {
		t.Fatal(err)
	}
	breakEventStream(t, c)

	// "At once": well before the context ends, as a publish waiting for
	// an answer or retrying would; not a bound a loaded host may miss.
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = natsjs.Publisher{JS: c.JS}.Publish(pctx, event("20261204T235959"))
	if took := time.Since(start); err == nil || took > 10*time.Second {
		t.Fatalf("publish to the broken stream: %v after %s; want an error at once", err, took.Round(time.Millisecond))
	}
	if !errors.Is(err, natsjs.ErrStorageFull) || !strings.Contains(err.Error(), "restart") {
		t.Errorf("publish error %q; want it to say the storage is full and to restart", err)
	}
	if _, err := c.JS.PublishMsg(ctx, &nats.Msg{Subject: natsjs.DeadLetterSubject(natsjs.DefaultDestination, "orthanc-a"), Data: []byte("{}")}); err != nil {
		t.Errorf("publish to the dead-letter stream, which has no write error: %v", err)
	}
}

// breakEventStream makes the embedded server fail a write of the event
// stream, as a full disk does: no file of this process may grow past
// 64 KB (EFBIG) until it fails, then the limit is lifted.
func breakEventStream(t *testing.T, c *natsjs.Conn) {
	t.Helper()
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &was); err != nil {
		t.Fatal(err)
	}
	full := was
	full.Cur = 64 << 10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &full); err != nil {
		t.Skipf("cannot limit file sizes: %v", err)
	}
	refused := false
	for i := 0; i < 1000 && !refused; i++ {
		pctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
		_, err := natsjs.Publisher{JS: c.JS}.Publish(pctx, event(fmt.Sprintf("20261204T%06d", i)))
		cancel()
		refused = err != nil
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &was); err != nil {
		t.Fatal(err)
	}
	if !refused {
		t.Fatal("the store never failed a write")
	}
}

// A process whose NATS server is gone is not ready, and /readyz says it
// is disconnected, at once, not that a request timed out.
func TestNotReadyWhileDisconnected(t *testing.T) {
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: testharness.FreePort(t)})
	c := connectWithEvents(t, natsjs.ConnectOptions{URL: srv.ClientURL()}, discard)
	ctx := testCtx(t)
	srv.Shutdown()
	for deadline := time.Now().Add(10 * time.Second); c.NC.IsConnected(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still connected 10 s after the server stopped")
		}
	}
	// "At once": well before the context ends, as a request timing out
	// would; not a bound a loaded host may miss.
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	err := c.Ready(rctx)
	if err == nil || !strings.Contains(err.Error(), "not connected to NATS") || time.Since(start) > 10*time.Second {
		t.Errorf("Ready while disconnected: %v after %s; want 'not connected to NATS' at once", err, time.Since(start).Round(time.Millisecond))
	}
}

// connectWithEvents connects as a stowline process does, closed at
// cleanup, creates the event stream and checks the connection is ready.
func connectWithEvents(t *testing.T, o natsjs.ConnectOptions, log *slog.Logger) *natsjs.Conn {
	t.Helper()
	c, err := natsjs.Connect(context.Background(), o, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), c.JS); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(testCtx(t)); err != nil {
		t.Fatalf("not ready once connected: %v", err)
	}
	return c
}
