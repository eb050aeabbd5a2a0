package forward

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// TestQuorumLossPullWarningsSpaced: a NATS cluster that lost its quorum
// answers every pull of every lane with "no responders", and each worker
// pulls each lane every second: each failure was a warning, a dozen lines
// every ten seconds for one destination for the whole outage. Now the
// first failure of each lane is a warning (then one a minute), the others
// are at debug level, and the lane's first answer after it is logged with
// the count.
func TestQuorumLossPullWarningsSpaced(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	_, js := cluster.Connect(t)
	topo := natsjs.DefaultTopology()
	topo.Replicas = 3
	topo.AckWait = 3 * time.Second
	if _, err := topo.EnsureEvents(t.Context(), js); err != nil {
		t.Fatal(err)
	}
	cons, err := topo.EnsureLanes(t.Context(), js, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	lanes := cons[natsjs.DefaultDestination]
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var logs testharness.LogBuffer
	f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.StatWorkers = 1
		o.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.NumWaiting > 0 })

	lost := cluster.Nodes[1:]
	for _, n := range lost {
		n.Kill()
	}
	waitLog(t, &logs, func(out string) bool { return strings.Count(out, "pull from JetStream failed") >= 10 })
	warnings := map[string]int{}
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, `"level":"WARN","msg":"pull from JetStream failed; retrying"`) {
			_, lane, _ := strings.Cut(line, `"lane":"`)
			lane, _, _ = strings.Cut(lane, `"`)
			warnings[lane]++
		}
	}
	if len(warnings) == 0 {
		t.Fatalf("no warning of the failed pulls:\n%s", logs.String())
	}
	for lane, n := range warnings {
		if n != 1 {
			t.Errorf("lane %s: %d warnings of failed pulls within a minute, want 1", lane, n)
		}
	}
	if t.Failed() {
		return
	}

	for _, n := range lost {
		n.Restart(t)
	}
	waitLog(t, &logs, func(out string) bool { return strings.Contains(out, `"msg":"pulls from JetStream answered again"`) })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until the log satisfies ok.
func waitLog(t *testing.T, logs *testharness.LogBuffer, ok func(string) bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !ok(logs.String()); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log never got there:\n%s", logs.String())
		}
	}
}
