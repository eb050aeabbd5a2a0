package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/orthancapi"
)

// TestCursorChangeGone: the change at the cursor leaves the log. Its
// study deleted and received again at once under the same ID
// (OverwriteInstances, buffer mode deleting a study sent again), the
// study is in Orthanc, but its old changes went with its deletion:
// nothing is missed, and the trim is not told (it was, and the alert
// sent operators to an audit for nothing). A log trimmed is told, once:
// not again after a restart (the position checked is in the cursor).
func TestCursorChangeGone(t *testing.T) {
	for _, tc := range []struct {
		name string
		// after removes the study's changes 1 and 2 and logs what follows.
		after   func(l *changeLog)
		trimmed float64
	}{
		{"study received again", func(l *changeLog) {
			l.add("NewStudy", orthancID(1))
			l.add("StableStudy", orthancID(1))
		}, 0},
		{"log trimmed, another study after", func(l *changeLog) {
			l.add("NewStudy", orthancID(2))
			l.add("StableStudy", orthancID(2))
		}, 1},
		{"log trimmed, nothing after", func(*changeLog) {}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			l, store := logGoneAtCursor(t, kv)
			l.studies[orthancID(1)] = orthancapi.Study{ID: orthancID(1), StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000", IsStable: true}
			l.studies[orthancID(2)] = orthancapi.Study{ID: orthancID(2), StudyInstanceUID: "1.2.3.2", LastUpdate: "20261203T150000", IsStable: true}
			tc.after(l)
			end := l.last
			for run := range 2 { // and a restart
				o := &countingSwappable{swappableOrthanc: &swappableOrthanc{log: l}}
				r, err := New(Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
					PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					t.Fatal(err)
				}
				ctx, stop := startReconciler(t, r)
				// A poll reads the log first: the third read is after
				// the first poll ended.
				waitUntil(t, "three polls, the cursor at the end of the log", func() bool {
					c, _, err := store.load(ctx)
					return err == nil && c.Seq == end && o.reads.Load() >= 3
				})
				stop()
				want := tc.trimmed
				if run == 1 {
					want = 0
				}
				if got := testutil.ToFloat64(r.m.changeLogTrimmed.WithLabelValues("s")); got != want {
					t.Errorf("run %d: trims told = %v, want %v", run, got, want)
				}
			}
		})
	}
}

// logGoneAtCursor returns a change log whose changes 1 and 2 (study 1's
// NewStudy and StableStudy) are gone, and the store of source "s" whose
// cursor is saved at change 2: the change at the cursor has left the log.
// The studies in Orthanc and the changes after are the caller's.
func logGoneAtCursor(t *testing.T, kv jetstream.KeyValue) (*changeLog, *cursorStore) {
	t.Helper()
	l := &changeLog{studies: map[string]orthancapi.Study{}}
	l.add("NewStudy", orthancID(1))
	l.add("StableStudy", orthancID(1))
	store := &cursorStore{kv: kv, key: cursorKey("s")}
	if err := store.save(t.Context(), cursor{Seq: 2, Change: markOf(l.changes[1])}); err != nil {
		t.Fatal(err)
	}
	l.remove(1, 2)
	return l, store
}

// countingSwappable counts the reads of the change log.
type countingSwappable struct {
	*swappableOrthanc
	reads atomic.Int32
}

func (o *countingSwappable) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	defer o.reads.Add(1)
	return o.swappableOrthanc.Changes(ctx, since, limit, types...)
}

// existsRefused refuses the lookup of a resource by ID (403), as a
// proxy set up before the reconciler used it does; after refusals
// refusals (0: for ever), the resource is there.
type existsRefused struct {
	countingSwappable
	asked    atomic.Int32
	refusals int32
}

func (o *existsRefused) Exists(context.Context, string, string) (bool, error) {
	if n := o.asked.Add(1); o.refusals == 0 || n <= o.refusals {
		return false, &orthancapi.Error{Method: http.MethodGet, Path: "/studies/x", StatusCode: http.StatusForbidden}
	}
	return true, nil
}

// TestCursorChangeGoneLookupRefused: a refused lookup of the cursor's
// resource is not a failure to retry: it was asked again at every poll
// while the log was idle, with only a Debug line. It is asked once per
// position (and told once).
func TestCursorChangeGoneLookupRefused(t *testing.T) {
	_, kv := testBucket(t)
	l, _ := logGoneAtCursor(t, kv) // nothing after: every poll is idle at the cursor
	o := &existsRefused{countingSwappable: countingSwappable{swappableOrthanc: &swappableOrthanc{log: l}}}
	runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second})
	waitUntil(t, "ten polls", func() bool { return o.reads.Load() >= 10 })
	if got := o.asked.Load(); got != 1 {
		t.Errorf("the refused resource was asked %d times, want once", got)
	}
}

// TestCursorChangeGoneLookupRefusedOnce: one refusal of the lookup (a
// policy or token being rolled out) marked the position checked, kept in
// the cursor: the trim was never told. The position stays unchecked and
// the lookup is asked again after a while (existsRetry).
func TestCursorChangeGoneLookupRefusedOnce(t *testing.T) {
	_, kv := testBucket(t)
	l, _ := logGoneAtCursor(t, kv) // trimmed: the study is still in Orthanc
	o := &existsRefused{countingSwappable: countingSwappable{swappableOrthanc: &swappableOrthanc{log: l}}, refusals: 1}
	r, err := New(Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.sources[0].existsRetry = 50 * time.Millisecond
	startReconciler(t, r)
	waitUntil(t, "the trim told after the refusal", func() bool {
		return testutil.ToFloat64(r.m.changeLogTrimmed.WithLabelValues("s")) == 1
	})
	if got := o.asked.Load(); got != 2 {
		t.Errorf("the resource was asked %d times, want twice (refused, then answered)", got)
	}
}

// TestCursorChangeGoneDecidedAtTheEnd: the resource of the change gone
// at the cursor, received again, is logged anew pages later (a backlog
// read one page at a time). Looked up at the first page, it was there:
// a false "trimmed". Its changes are looked for until the end of the log.
func TestCursorChangeGoneDecidedAtTheEnd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		again   bool // study 1 received again, after study 2
		trimmed float64
	}{
		{"received again beyond the first page", true, 0},
		{"log trimmed, read in pages", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			l, store := logGoneAtCursor(t, kv)
			for _, n := range []int{1, 2} {
				l.studies[orthancID(n)] = orthancapi.Study{ID: orthancID(n), StudyInstanceUID: fmt.Sprintf("1.2.3.%d", n), LastUpdate: "20261203T150000", IsStable: true}
			}
			l.add("NewStudy", orthancID(2))
			l.add("StableStudy", orthancID(2))
			l.add("StableSeries", orthancID(3))
			if tc.again {
				l.add("NewStudy", orthancID(1))
				l.add("StableStudy", orthancID(1))
			}
			end := l.last
			o := &countingSwappable{swappableOrthanc: &swappableOrthanc{log: l}}
			r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
				PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second, PageSize: 1})
			waitUntil(t, "the cursor at the end of the log, and a poll after", func() bool {
				c, _, err := store.load(ctx)
				return err == nil && c.Seq == end && c.GoneChecked == 2
			})
			if got := testutil.ToFloat64(r.m.changeLogTrimmed.WithLabelValues("s")); got != tc.trimmed {
				t.Errorf("trims told = %v, want %v", got, tc.trimmed)
			}
		})
	}
}
