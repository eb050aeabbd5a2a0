package natsjs

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestWaitReadyOutlastsARecovery: the embedded server may take minutes to
// accept connections while JetStream recovers a large store; the wait
// lasts, says why every readyLogEvery, and gives up only at its timeout,
// or within readyPoll of a stop signal (ctx), which must not wait out
// the recovery (systemd's TimeoutStopSec would kill it mid-way, and the
// next start recover all over again).
func TestWaitReadyOutlastsARecovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readyAt   time.Duration // when the server is ready; 0: never
		stopAt    time.Duration // when ctx ends; 0: never
		want      bool
		wantLines int
	}{
		{name: "ready at once", readyAt: time.Second, want: true},
		{name: "a long recovery", readyAt: 4 * time.Minute, want: true, wantLines: 15},
		{name: "never ready", want: false, wantLines: 3},
		{name: "stopped during a recovery", readyAt: 4 * time.Minute, stopAt: 40 * time.Second, want: false, wantLines: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				ready := func(d time.Duration) bool {
					if tc.readyAt > 0 && time.Since(start)+d >= tc.readyAt {
						time.Sleep(tc.readyAt - time.Since(start))
						return true
					}
					time.Sleep(d)
					return false
				}
				var logs bytes.Buffer
				timeout := 10 * time.Minute
				if tc.readyAt == 0 {
					timeout = time.Minute
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				if tc.stopAt > 0 {
					time.AfterFunc(tc.stopAt, cancel)
				}
				got := waitReady(ctx, ready, timeout, readyLogEvery, slog.New(slog.NewTextHandler(&logs, nil)))
				if got != tc.want {
					t.Errorf("waitReady = %v after %s, want %v", got, time.Since(start), tc.want)
				}
				if took := time.Since(start); tc.stopAt > 0 && took > tc.stopAt+readyPoll {
					t.Errorf("waitReady returned %s after the start, %s after the stop, want within %s", took, took-tc.stopAt, readyPoll)
				}
				if n := strings.Count(logs.String(), "JetStream is recovering its store"); n != tc.wantLines {
					t.Errorf("%d log lines, want %d:\n%s", n, tc.wantLines, logs.String())
				}
			})
		})
	}
}
