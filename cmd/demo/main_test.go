package main

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// TestNotifyOnceHangup: a closed terminal (SIGHUP) stops the demo through
// its cleanup, and the message tells how to kill it at once. The second
// signal's default effect (killing the process) is not tested here: it
// would kill the test.
func TestNotifyOnceHangup(t *testing.T) {
	var w testharness.LogBuffer // written by notifyOnce's goroutine
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
	var w testharness.LogBuffer // written by notifyOnce's goroutine
	ctx, stop := notifyOnce(context.Background(), &w)
	stop()
	<-ctx.Done()
	if w.String() != "" {
		t.Errorf("stop printed %q", w.String())
	}
}
