package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is written by notifyOnce's goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNotifyOnceHangup: a closed terminal (SIGHUP) stops the demo through
// its cleanup, and the message tells how to kill it at once. The second
// signal's default effect (killing the process) is not tested here: it
// would kill the test.
func TestNotifyOnceHangup(t *testing.T) {
	var w syncBuffer
	ctx, stop := notifyOnce(context.Background(), &w)
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP did not end the context")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(w.String(), "Ctrl-C again") {
		if time.Now().After(deadline) {
			t.Fatalf("no message about a second Ctrl-C: %q", w.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNotifyOnceStopQuiet: a demo that ends on its own (-exit) prints no
// stopping message.
func TestNotifyOnceStopQuiet(t *testing.T) {
	var w syncBuffer
	ctx, stop := notifyOnce(context.Background(), &w)
	stop()
	<-ctx.Done()
	if w.String() != "" {
		t.Errorf("stop printed %q", w.String())
	}
}
