package app

import (
	"testing"

	"github.com/stowline/stowline/internal/status"
)

// Each replica's share of a bandwidth cap counts the live forwarder
// processes that serve the destination, itself always included.
func TestReplicasServing(t *testing.T) {
	serving := func(id string, destinations ...string) status.Snapshot {
		s := status.Snapshot{ID: id}
		for _, d := range destinations {
			s.Tokens = append(s.Tokens, status.TokenStatus{Destination: d})
		}
		return s
	}
	snaps := []status.Snapshot{
		serving("self", "archive", "ai"),
		serving("b", "archive"),
		serving("c", "ai"),
		serving("d", "archive", "ai"),
	}
	tests := []struct {
		name        string
		snaps       []status.Snapshot
		destination string
		want        int
	}{
		{"three serve archive", snaps, "archive", 3},
		{"three serve ai", snaps, "ai", 3},
		{"none other serves it", snaps, "mr", 1},
		{"self not shared yet", snaps[1:], "archive", 3},
		{"bucket empty", nil, "archive", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := replicasServing(tt.snaps, tt.destination, "self"); got != tt.want {
				t.Errorf("replicasServing = %d, want %d", got, tt.want)
			}
		})
	}
}
