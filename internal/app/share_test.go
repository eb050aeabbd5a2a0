package app

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
)

func TestReplicasByDestination(t *testing.T) {
	snaps := []status.Snapshot{
		{ID: "a", Tokens: []status.TokenStatus{{Destination: "archive"}, {Destination: "ai"}}},
		{ID: "b", Tokens: []status.TokenStatus{{Destination: "archive"}}},
		{ID: "c", Tokens: []status.TokenStatus{{Destination: "archive"}}},
	}
	got := replicasByDestination(snaps)
	if got["archive"] != 3 || got["ai"] != 1 || got["other"] != 0 {
		t.Errorf("replicas %v, want archive 3, ai 1", got)
	}
}

// TestWhenDrained: the share's context outlives the process's while a
// forwarder still drains, and ends once it returned.
func TestWhenDrained(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, stop := context.WithCancel(t.Context())
		var running sync.WaitGroup
		running.Add(1)
		drained := whenDrained(ctx, &running)
		stop()
		synctest.Wait()
		if drained.Err() != nil {
			t.Fatal("ended while a forwarder drains")
		}
		running.Done()
		synctest.Wait()
		if drained.Err() == nil {
			t.Fatal("still running after the forwarders returned")
		}
	})
}

// The status bucket is kept in memory: a NATS server that restarts (a
// single server, or every node holding the bucket) loses it while the
// forwarders run. They create it again, so that they count each other
// again; before, each found no other replica for good (until restarted)
// and took the whole STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND.
func TestStatusBucketLostIsCreatedAgain(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	conn, err := natsjs.Connect(natsjs.ConnectOptions{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithCancel(t.Context())
	var g errgroup.Group
	t.Cleanup(func() { cancel(); _ = g.Wait() })
	var first *statusWiring
	for range 2 { // two forwarder processes serving one destination
		s := newStatusWiring(conn, config.Admin{}, false, log)
		tw, err := status.NewTokenWatch("archive", "dicom.example.org", "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.track(ctx, &g, natsjs.DefaultTopology(), 1, []*status.TokenWatch{tw}, log); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = s
		}
	}
	counted := func(want int, within time.Duration) {
		t.Helper()
		got := 0
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			snaps, err := first.forwarders(ctx)
			if got = replicasByDestination(snaps)["archive"]; err == nil && got == want {
				return
			}
		}
		t.Fatalf("%d replicas counted, want %d", got, want)
	}
	counted(2, 5*time.Second)
	if err := conn.JS.DeleteKeyValue(ctx, natsjs.StatusBucket); err != nil {
		t.Fatal(err)
	}
	counted(2, 3*status.ShareInterval)
}
