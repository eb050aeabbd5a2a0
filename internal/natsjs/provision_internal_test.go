package natsjs

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

// TestProvisionLogsReadsQuietly: a read that times out (readiness probes
// and metric scrapes while NATS is down) is retried without a warning of
// a create-or-update request; a create-or-update's retry still warns.
func TestProvisionLogsReadsQuietly(t *testing.T) {
	for _, read := range []bool{true, false} {
		var logs bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		calls := 0
		_, err := provision(t.Context(), log, "stream X", read, func(ctx context.Context) (int, error) {
			calls++
			if calls == 1 {
				return 0, context.DeadlineExceeded
			}
			return 1, nil
		})
		if err != nil || calls != 2 {
			t.Fatalf("read %v: err %v after %d calls, want a retry that succeeds", read, err, calls)
		}
		if warned := strings.Contains(logs.String(), "create-or-update"); warned == read {
			t.Errorf("read %v: logged %q", read, logs.String())
		}
	}
}
