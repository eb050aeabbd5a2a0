package app

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/natsjs"
)

// On a single host the embedded JetStream listens on no port, so the
// operator's commands (replay, destinations, audit, backfill) open its
// store directly, with stowline stopped; docs/operations.md says so.
func TestToolsOpenAStoppedSingleHostStore(t *testing.T) {
	dir := t.TempDir()
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			conn.Close()
		}
	})
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureEvents(replayCtx(t), conn.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureDeadLetters(replayCtx(t), conn.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureConsumer(replayCtx(t), conn.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	type command func(env map[string]string) (string, error)
	replay := func(env map[string]string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := RunReplay(replayCtx(t), []string{"list", "--json"}, func(k string) string { return env[k] }, &stdout, &stderr)
		return stdout.String(), err
	}
	destinations := func(env map[string]string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := RunDestinations(replayCtx(t), []string{"list"}, func(k string) string { return env[k] }, &stdout, &stderr)
		return stdout.String(), err
	}
	env := map[string]string{"NATS_STORE_DIR": dir}

	// While stowline runs, the store is its own: say what to do.
	for name, run := range map[string]command{"replay": replay, "destinations": destinations} {
		if _, err := run(env); !errors.Is(err, natsjs.ErrStoreInUse) || !strings.Contains(err.Error(), "stop stowline") {
			t.Errorf("%s on a running single host's store: err = %v, want ErrStoreInUse saying to stop stowline", name, err)
		}
	}
	conn.Close()
	stopped = true

	tests := []struct {
		name string
		run  command
		want string
	}{
		{"replay list", replay, "[]"},
		{"destinations list", destinations, "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.run(env)
			if err != nil || !strings.Contains(out, tt.want) {
				t.Errorf("%s on a stopped single host's store = %v, stdout %q; want %q", tt.name, err, out, tt.want)
			}
		})
	}

	// A directory without a store (NATS_URL forgotten on a cluster's
	// host): refused, naming both ways, and nothing is created there.
	empty := filepath.Join(t.TempDir(), "nats")
	for name, run := range map[string]command{"replay": replay, "destinations": destinations} {
		_, err := run(map[string]string{"NATS_STORE_DIR": empty})
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "NATS_URL") || !strings.Contains(err.Error(), "NATS_STORE_DIR") {
			t.Errorf("%s without NATS_URL or a store: err = %v, want a usage error naming NATS_URL and NATS_STORE_DIR", name, err)
		}
	}
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Errorf("%s: created or stat failed (%v); a refused command must leave no store behind", empty, err)
	}
}
