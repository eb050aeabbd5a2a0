package forward

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testharness"
)

// The ledger records the study's LastUpdate the forwarder read from the
// source, not the event's: an event's is taken as sent (a forged one, an
// Orthanc whose clock ran ahead), and a ledger record never moves back,
// so a far-future one kept the study "forwarded" for good.
func TestLedgerRecordsTheSourcesLastUpdate(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	src := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "lastupdate-src"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "lastupdate-dest", DicomWeb: true})
	genuine, client := uploadStudy(t, src, 2)
	for _, tt := range []struct {
		name, lastUpdate string
	}{
		{"genuine", genuine.LastUpdate},
		{"far future", "99991231T235959"},
		{"far past", "00010101T000000"},
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
			if len(recorded) != 1 || recorded[0] != genuine.LastUpdate {
				t.Errorf("the ledger was told %q, want the source's %q once", recorded, genuine.LastUpdate)
			}
		})
	}
}
