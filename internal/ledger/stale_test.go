package ledger

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/orthancapi"
)

// Completed's compare-and-set stays right when a read is stale (a
// leader change, a reader behind the last write): the write over a stale
// revision is refused, and the next read, after a pause, decides again.
// Whatever was kept of the state stays kept. A reader stale every time
// makes it give up after maxAttempts, having paused between them.
func TestCompletedAfterAStaleRead(t *testing.T) {
	const lu, older = "20261126T100000", "20261126T090000"
	ev := func(lastUpdate string) *events.StudyStable {
		return &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "a",
			OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3.4", LastUpdate: lastUpdate}
	}
	selected := []orthancapi.Instance{{ID: "i1", SOPInstanceUID: "1.1"}, {ID: "i2", SOPInstanceUID: "1.2"}}
	tests := []struct {
		name string
		// stale answers instead of the bucket: the revisions of the
		// writes before (the record of an older state, then this
		// state's keeping 1.1).
		stale     func(revs []uint64) entry
		staleOnly bool // every read is stale
		wantReads int
	}{
		{"no record yet", func([]uint64) entry { return entry{} }, false, 2},
		{"the older state's record", func(revs []uint64) entry {
			return entry{value: []byte(`{"lastUpdate":"` + older + `"}`), revision: revs[0], live: true}
		}, false, 2},
		{"stale every time", func(revs []uint64) entry {
			return entry{value: []byte(`{"lastUpdate":"` + older + `"}`), revision: revs[0], live: true}
		}, true, maxAttempts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			js, kv := NewTestBucket(t)
			l := New(js, kv)
			var revs []uint64
			for _, w := range []struct {
				lu   string
				kept []string
			}{{older, nil}, {lu, []string{"1.1"}}} {
				if err := l.Completed(ctx, ev(w.lu), Outcome{Selected: selected, Kept: w.kept}); err != nil {
					t.Fatal(err)
				}
				e, err := l.latest(ctx, Key("a", ev(lu).OrthancStudyID))
				if err != nil {
					t.Fatal(err)
				}
				revs = append(revs, e.revision)
			}
			stale := New(js, kv)
			reads := 0
			stale.read = func(ctx context.Context, key string) (entry, error) {
				reads++
				if reads == 1 || tt.staleOnly {
					return tt.stale(revs), nil
				}
				return stale.latest(ctx, key)
			}
			start := time.Now()
			err := stale.Completed(ctx, ev(lu), Outcome{Selected: selected}) // this state again, keeping nothing
			elapsed := time.Since(start)
			if reads != tt.wantReads {
				t.Errorf("%d reads, want %d", reads, tt.wantReads)
			}
			if tt.staleOnly {
				if err == nil || !strings.Contains(err.Error(), "still conflicting") {
					t.Fatalf("err = %v, want still conflicting", err)
				}
				// 1+2+...+(maxAttempts-1) pauses: a lower bound only.
				if least := attemptPause * maxAttempts * (maxAttempts - 1) / 2; elapsed < least {
					t.Errorf("gave up after %v, want at least %v of pauses", elapsed, least)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := l.Lookup(ctx, "a", ev(lu).OrthancStudyID)
			if err != nil {
				t.Fatal(err)
			}
			if r.LastUpdate != lu || !slices.Equal(r.Kept, []string{"1.1"}) {
				t.Errorf("record %s kept %v, want %s kept [1.1]", r.LastUpdate, r.Kept, lu)
			}
		})
	}
}
