package app

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
)

// A NATS connection the client closed for good (it gives up after the
// same authentication error twice, reconnects notwithstanding) ends the
// process with an error, for its supervisor to restart it.
func TestRunEndsWhenNATSCloses(t *testing.T) {
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close) // and its embedded server, should run not return
	p := &process{conn: conn, log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- p.run(context.Background()) }()
	conn.NC.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed for good") {
			t.Fatalf("run = %v, want the closed connection's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run goes on after its NATS connection closed for good")
	}
}
