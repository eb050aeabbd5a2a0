package status

import (
	"testing"

	"github.com/stowline/stowline/events"
)

func TestLaneSummary(t *testing.T) {
	tests := []struct {
		lanes map[events.Priority]LaneQueue
		want  string
	}{
		{nil, ""},
		{map[events.Priority]LaneQueue{events.PriorityRoutine: {Pending: 5}}, ""},
		{map[events.Priority]LaneQueue{events.PriorityRoutine: {Pending: 3}, events.PriorityLow: {Pending: 40}, events.PriorityStat: {Pending: 1}}, "stat 1 · routine 3 · low 40"},
		{map[events.Priority]LaneQueue{events.PriorityLow: {Pending: 2, AckPending: 1}}, "low 2"},
	}
	for _, tt := range tests {
		if got := (DestinationQueue{Lanes: tt.lanes}).LaneSummary(); got != tt.want {
			t.Errorf("LaneSummary(%v) = %q, want %q", tt.lanes, got, tt.want)
		}
	}
}
