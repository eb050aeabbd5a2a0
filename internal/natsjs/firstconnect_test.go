package natsjs_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// freePort is a TCP port nothing listens on (for now).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// warnings is a log that signals each warning on its channel and keeps
// all it was given.
type warnings struct {
	mu   sync.Mutex
	text bytes.Buffer
	c    chan string
}

func newWarnings() *warnings { return &warnings{c: make(chan string, 100)} }

func (w *warnings) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (w *warnings) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.text.Write(p)
	select {
	case w.c <- string(p):
	default:
	}
	return len(p), nil
}

func (w *warnings) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.text.String()
}

// await waits for a warning.
func (w *warnings) await(t *testing.T) string {
	t.Helper()
	select {
	case line := <-w.c:
		return line
	case <-time.After(10 * time.Second):
		t.Fatal("no warning logged")
		return ""
	}
}

// A NATS server that comes up after stowline is waited for: Connect
// exited with "no servers available", and the process with it.
func TestConnectWaitsForNATSStartedLate(t *testing.T) {
	port := freePort(t)
	url := "nats://stowline:s3cret-pass@127.0.0.1:" + strconv.Itoa(port)
	w := newWarnings()
	type result struct {
		c   *natsjs.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: url, Unreachable: func(error) {}}.WithFirstRetry(10*time.Millisecond), w.logger())
		done <- result{c, err}
	}()
	// Two failed attempts, so it retries rather than waits once.
	for range 2 {
		if line := w.await(t); !strings.Contains(line, "cannot reach NATS") {
			t.Fatalf("warning %s, want the failed attempt", line)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("Connect returned before NATS started: %v", r.err)
	default:
	}
	testnats.StartWith(t, func(o *server.Options) {
		o.Host, o.Port, o.DontListen = "127.0.0.1", port, false
	})
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Connect did not return once NATS was up")
	}
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	t.Cleanup(r.c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.c.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}
	logs := w.String()
	if strings.Contains(logs, "s3cret-pass") || strings.Contains(logs, "stowline:") {
		t.Errorf("the log names the URL's credentials: %s", logs)
	}
	if want := `"url":"nats://127.0.0.1:` + strconv.Itoa(port) + `"`; !strings.Contains(logs, want) {
		t.Errorf("the warnings do not name the URL (%s): %s", want, logs)
	}
}

// The wait ends with ctx: a SIGTERM stops a process waiting for NATS.
func TestConnectWaitEndsWithContext(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	w := newWarnings()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := natsjs.Connect(ctx, natsjs.ConnectOptions{URL: url, Unreachable: func(error) {}}, w.logger())
		done <- err
	}()
	w.await(t)
	cancel()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.Canceled) && !strings.Contains(err.Error(), "no NATS server reached") {
			t.Errorf("Connect = %v, want the wait given up", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Connect still waiting 2 s after ctx ended")
	}
}

func TestURLsWithoutUser(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nats://a:4222", "nats://a:4222"},
		{"nats://user:pass@a:4222, tls://token@b:4222", "nats://a:4222,tls://b:4222"},
		{"a:4222", "nats://a:4222"},
	} {
		if got := natsjs.URLsWithoutUser(tc.in); got != tc.want {
			t.Errorf("urlsWithoutUser(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Without Unreachable (the operator's commands) an unreachable server
// fails at once.
func TestConnectWithoutWaitFailsAtOnce(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	if _, err := natsjs.Connect(t.Context(), natsjs.ConnectOptions{URL: url}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Connect to nothing succeeded")
	}
}
