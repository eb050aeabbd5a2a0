package reconcile_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/testharness"
)

// A cursor lost while the event stream holds the source's events (its
// bucket recreated, the key deleted) is no first start: a Warn naming
// `forwarder audit --enqueue` and stowline_reconcile_cursor_missing_total.
// A first start, with only another source's events queued, stays an Info
// and counts nothing.
func TestLostCursorIsNoFirstStart(t *testing.T) {
	tests := []struct {
		name string
		// queued is the source of the event in the stream before the
		// start without a cursor; lost: the reconciler ran before and
		// its cursor was deleted.
		queued  string
		lost    bool
		want    float64
		wantLog string
	}{
		{"first start", "other", false, 0, `level=INFO msg="reconciler starts at the end of the source's change log (first start)`},
		{"cursor lost", "b", true, 1, `level=WARN msg="no reconciler cursor for a source whose events the event stream holds`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, testharness.Release{}, "b")
			ctx := context.Background()
			stream, err := r.nats.JS.Stream(ctx, natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			withStream := func(logs io.Writer) func(*reconcile.Options) {
				return func(o *reconcile.Options) {
					o.Events = stream
					o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
				}
			}
			if tt.lost {
				first := &testharness.LogBuffer{}
				_, _, stop := r.start(t, "b", withStream(first))
				waitCursor(t, r.kv, "cursor.b")
				stop()
				if err := r.kv.Delete(ctx, "cursor.b"); err != nil {
					t.Fatal(err)
				}
			}
			files := writeStudy(t, 1)
			upload(t, r.orthanc, files)
			var study []struct{ ID, LastUpdate string }
			r.orthanc.GetJSON(t, "/studies?expand", &study)
			ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: tt.queued,
				OrthancStudyID: study[0].ID, StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.1", LastUpdate: study[0].LastUpdate,
				ReceivedAt: time.Now().UTC()}
			if _, err := (natsjs.Publisher{JS: r.nats.JS}).Publish(ctx, ev); err != nil {
				t.Fatal(err)
			}

			logs := &testharness.LogBuffer{}
			_, reg, _ := r.start(t, "b", withStream(logs))
			waitCursor(t, r.kv, "cursor.b")
			testharness.WaitFor(t, "the start's log line", 10*time.Second, func() bool {
				return strings.Contains(logs.String(), tt.wantLog)
			})
			if got := metric(t, reg, "stowline_reconcile_cursor_missing_total", map[string]string{"source": "b"}); got != tt.want {
				t.Errorf("stowline_reconcile_cursor_missing_total = %v, want %v", got, tt.want)
			}
		})
	}
}

// waitCursor waits until the bucket holds key.
func waitCursor(t *testing.T, kv jetstream.KeyValue, key string) {
	t.Helper()
	testharness.WaitFor(t, key, 20*time.Second, func() bool {
		_, err := kv.Get(context.Background(), key)
		return err == nil
	})
}
