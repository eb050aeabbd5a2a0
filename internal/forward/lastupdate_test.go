package forward

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testharness"
)

// The ledger records the earlier of the event's LastUpdate and the one
// the forwarder read from the source: an event's is taken as sent (a
// forged one, an Orthanc whose clock ran ahead), and a ledger record
// never moves back, so a far-future one kept the study "forwarded" for
// good. A far-past one is recorded: the audit then queues the study
// again, the safe direction.
func TestLedgerRecordsTheSourcesLastUpdate(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	src := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "lastupdate-src"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "lastupdate-dest", DicomWeb: true})
	genuine, client := uploadStudy(t, src, 2)
	for _, tt := range []struct {
		name, lastUpdate, want string
	}{
		{"genuine", genuine.LastUpdate, genuine.LastUpdate},
		{"far future", "99991231T235959", genuine.LastUpdate},
		{"far past", "00010101T000000", "00010101T000000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var recorded []string
			f, ns, cons, dls := orthancForwarder(t, client, dest, func(o *Options) {
				o.Completed = func(_ context.Context, ev *events.StudyStable, _ Completion) error {
					mu.Lock()
					defer mu.Unlock()
					recorded = append(recorded, ev.LastUpdate)
					return nil
				}
			})
			ev := *genuine
			ev.LastUpdate = tt.lastUpdate
			forwardOne(t, f, ns, cons, &ev)
			if letters := dls.all(); len(letters) != 0 {
				t.Fatalf("dead-lettered as %q: %s", letters[0].Class, letters[0].Reason)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(recorded) != 1 || recorded[0] != tt.want {
				t.Errorf("the ledger was told %q, want %q once", recorded, tt.want)
			}
		})
	}
}

// The source's LastUpdate, read mid-attempt, may be the second an
// instance the listing missed was stored in; the event's was sent only
// once its second had passed. The earlier of the two is recorded.
func TestRecordedStateIsTheEarlierLastUpdate(t *testing.T) {
	for _, tt := range []struct {
		name, event, source, want string
	}{
		{"the same", "20261207T101010", "20261207T101010", "20261207T101010"},
		{"the study changed since the event", "20261207T101010", "20261207T101011", "20261207T101010"},
		{"a day later in the source", "20261207T101010", "20261208T101010", "20261207T101010"},
		{"an event ahead of the source", "99991231T235959", "20261207T101010", "20261207T101010"},
		{"an event a second ahead", "20261207T101011", "20261207T101010", "20261207T101010"},
		{"a source that cannot tell", "20261207T101010", "", "20261207T101010"},
		{"not an Orthanc timestamp in the source", "20261207T101010", "2026-12-07T10:10:09", "20261207T101010"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := &events.StudyStable{Source: "main", OrthancStudyID: "s", LastUpdate: tt.event}
			got := recordedState(ev, Report{lastUpdate: tt.source}, slog.New(slog.DiscardHandler))
			if got.LastUpdate != tt.want {
				t.Errorf("recorded %q, want %q", got.LastUpdate, tt.want)
			}
			if ev.LastUpdate != tt.event {
				t.Errorf("the event changed to %q", ev.LastUpdate)
			}
		})
	}
}
