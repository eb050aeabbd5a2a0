package app

import (
	"testing"

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
