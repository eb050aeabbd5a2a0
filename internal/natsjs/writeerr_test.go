//go:build linux

package natsjs_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

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
	c, err := natsjs.Connect(natsjs.ConnectOptions{StoreDir: t.TempDir()}, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := testCtx(t)
	if _, err := natsjs.DefaultTopology().EnsureEvents(ctx, c.JS); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(ctx); err != nil {
		t.Fatalf("ready before the disk fills: %v", err)
	}

	// The disk is full: no file of this process may grow past 64 KB
	// (EFBIG, as ENOSPC for nats-server), then space is freed.
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
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
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

	err = c.Ready(ctx)
	if err == nil {
		t.Fatalf("ready while the embedded server refuses the event stream's writes; its log:\n%s", logs.String())
	}
	for _, want := range []string{natsjs.EventStream, "write error", "restart"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check %q does not say %q", err, want)
		}
	}
}
