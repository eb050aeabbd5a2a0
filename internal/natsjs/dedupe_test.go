package natsjs_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
)

// TestForwarderKeepsDedupeWindow: every process's start set the event
// stream's duplicate window to its own EVENTS_DEDUPE_WINDOW. The ingest
// refuses one shorter than twice INGEST_HMAC_MAX_SKEW, but a forwarder
// started after it with a shorter one lowered the stream's, unseen, and a
// signed webhook replayed within the skew queued its study again. A start
// with KeepDedupeWindow (a forwarder's) only raises the window, and says
// at Warn when it keeps one it would have lowered (cut to a lowered
// retention: JetStream wants the window within the age); the ingest's
// start lowers it.
func TestForwarderKeepsDedupeWindow(t *testing.T) {
	const day = 24 * time.Hour
	for _, tt := range []struct {
		name              string
		keep              bool
		window, retention time.Duration // the second start's
		want              time.Duration
		warned            bool
	}{
		{"forwarder lowers", true, time.Minute, 7 * day, day, true},
		{"forwarder raises", true, 2 * day, 7 * day, 2 * day, false},
		{"forwarder lowers the retention below the window", true, time.Minute, 12 * time.Hour, 12 * time.Hour, true},
		{"ingest lowers", false, time.Minute, 7 * day, time.Minute, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
			ctx := testCtx(t)
			if _, err := natsjs.DefaultTopology().EnsureEvents(ctx, js); err != nil { // the ingest's: 24h
				t.Fatal(err)
			}
			var logs bytes.Buffer
			topo := natsjs.DefaultTopology()
			topo.DedupeWindow, topo.Retention, topo.KeepDedupeWindow = tt.window, tt.retention, tt.keep
			topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			s, err := topo.EnsureEvents(ctx, js)
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.Duplicates != tt.want {
				t.Errorf("duplicate window %v after a start with %v, want %v", info.Config.Duplicates, tt.window, tt.want)
			}
			out := logs.String()
			warned := strings.Contains(out, "EVENTS_DEDUPE_WINDOW not lowered")
			if warned != tt.warned {
				t.Errorf("warned %v, want %v:\n%s", warned, tt.warned, out)
			}
			if warned && !strings.Contains(out, `"events_dedupe_window":"`+tt.window.String()+`"`) {
				t.Errorf("the warning does not name this process's window:\n%s", out)
			}
		})
	}
}
