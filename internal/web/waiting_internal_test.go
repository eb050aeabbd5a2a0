package web

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/status"
)

// waiting merges the forwarders' lists: per study and destination the
// latest failure, none for a study in flight again or finished since by
// another forwarder (a retry finishing is the failure's own attempt).
func TestWaitingMergesTheForwardersLists(t *testing.T) {
	now := time.Now()
	w := func(study string, failed time.Duration, reason string) status.Waiting {
		return status.Waiting{Destination: "archive", Source: "a", OrthancStudyID: study, Reason: reason,
			FailedAt: now.Add(-failed), Due: now.Add(time.Hour - failed)}
	}
	forwarders := []status.Snapshot{
		{Host: "one", Waiting: []status.Waiting{w("s1", 20*time.Minute, "older"), w("s2", time.Minute, "s2"), w("s3", time.Minute, "s3"), w("s4", time.Minute, "s4")}},
		{Host: "two", Waiting: []status.Waiting{w("s1", 10*time.Minute, "newer")}},
	}
	inFlight := []flightRow{{Flight: status.Flight{Destination: "archive", Source: "a", OrthancStudyID: "s2"}}}
	finished := []status.Forward{
		{Destination: "archive", Source: "a", OrthancStudyID: "s3", Result: forward.ResultForwarded, FinishedAt: now},
		{Destination: "archive", Source: "a", OrthancStudyID: "s4", Result: forward.ResultRetry, FinishedAt: now},
		{Destination: "other", Source: "a", OrthancStudyID: "s4", Result: forward.ResultForwarded, FinishedAt: now},
	}
	rows := waiting(forwarders, inFlight, finished)
	var got []string
	for _, r := range rows {
		got = append(got, r.OrthancStudyID+"/"+r.Reason+"/"+r.Host)
	}
	// Due soonest first: s1 failed longest ago.
	want := []string{"s1/newer/two", "s4/s4/one"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("waiting rows %q, want %q", got, want)
	}
}

// waiting lists the next attempts soonest first: a study its closed lane
// holds at its lane's opening, one an open breaker holds last. By Due
// alone, thirty low-lane studies held all day, their Due long past,
// filled the rows shown, and a stat retry due in four minutes was not
// among them.
func TestWaitingSortsByNextAttempt(t *testing.T) {
	now := time.Now()
	row := func(study string, lane events.Priority, due time.Duration, heldBy string, opens time.Duration) status.Waiting {
		w := status.Waiting{Destination: "archive", Source: "a", OrthancStudyID: study, Lane: lane,
			FailedAt: now.Add(-time.Hour), Due: now.Add(due), HeldBy: heldBy}
		if opens != 0 {
			w.Opens = now.Add(opens)
		}
		return w
	}
	tests := []struct {
		name    string
		waiting []status.Waiting
		first   []string // the first rows, in order
	}{
		{"held low-lane rows after sooner retries",
			append(heldLow(t, now, 30), row("stat", events.PriorityStat, 4*time.Minute, "", 0), row("routine", events.PriorityRoutine, 30*time.Minute, "", 0)),
			[]string{"stat", "routine"}},
		{"a lane opening before the due time: the due time",
			[]status.Waiting{row("due-later", events.PriorityLow, 3*time.Hour, status.HeldLane, time.Hour), row("routine", events.PriorityRoutine, 2*time.Hour, "", 0)},
			[]string{"routine", "due-later"}},
		{"a lane opening after the due time: the opening",
			[]status.Waiting{row("opens", events.PriorityLow, -time.Hour, status.HeldLane, 2*time.Hour), row("routine", events.PriorityRoutine, time.Hour, "", 0)},
			[]string{"routine", "opens"}},
		{"breaker-held last, after a lane not opening within two days",
			[]status.Waiting{row("breaker", events.PriorityStat, -time.Hour, status.HeldBreaker, 0), row("never", events.PriorityLow, -2*time.Hour, status.HeldLane, 0),
				row("routine", events.PriorityRoutine, 5*time.Hour, "", 0)},
			[]string{"routine", "never", "breaker"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows := waiting([]status.Snapshot{{Host: "one", Waiting: tt.waiting}}, nil)
			var got []string
			for _, r := range rows[:min(len(rows), len(tt.first))] {
				got = append(got, r.OrthancStudyID)
			}
			if !slices.Equal(got, tt.first) {
				t.Errorf("first rows %q, want %q", got, tt.first)
			}
			if len(rows) > recentRows && !slices.ContainsFunc(rows[:recentRows], func(r waitingRow) bool { return r.OrthancStudyID == "stat" }) {
				t.Errorf("the stat retry is not among the %d rows shown", recentRows)
			}
		})
	}
}

// heldLow is n low-lane studies a closed lane holds, due hours ago, the
// lane opening in ten hours.
func heldLow(t *testing.T, now time.Time, n int) []status.Waiting {
	t.Helper()
	var ws []status.Waiting
	for i := range n {
		ws = append(ws, status.Waiting{Destination: "archive", Source: "a", OrthancStudyID: fmt.Sprint("low", i), Lane: events.PriorityLow,
			FailedAt: now.Add(-8 * time.Hour), Due: now.Add(-7*time.Hour - time.Duration(i)*time.Minute), HeldBy: status.HeldLane, Opens: now.Add(10 * time.Hour)})
	}
	return ws
}
