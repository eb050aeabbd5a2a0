package web

import (
	"testing"
	"time"

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
