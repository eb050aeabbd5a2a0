package app

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"

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
