package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/orthancapi"
)

// A source without a configured name takes over the cursor its Orthanc's
// change log has under another name (Orthanc renamed) only once no
// replica serves that name: while one does (an older build during an
// upgrade, or another deployment naming this Orthanc differently), taking
// it made the two take it from each other in turn. Its check says why it
// waits.
func TestRenamedCursorTakenOnceItsLeaseIsFree(t *testing.T) {
	for _, tc := range []struct {
		name  string
		held  bool
		stale bool // a free cursor of an earlier rename, behind the held one
	}{
		{"old name's lease released", false, false},
		{"old name's lease held", true, false},
		{"old name's lease held, an earlier name's cursor free", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			ctx := t.Context()
			o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
			o.log.addStudy(1) // changes 1 to 4
			// A study the old name's cursor waits for, not stable yet.
			o.log.studies[orthancID(9)] = orthancapi.Study{ID: orthancID(9), StudyInstanceUID: "1.2.3.9", LastUpdate: "20261203T150000"}
			old := cursor{Seq: 4, Change: markOf(o.log.changes[3]), Pending: map[string]int64{orthancID(9): 2}}
			b, err := json.Marshal(old)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, cursorKey("old"), b); err != nil {
				t.Fatal(err)
			}
			if tc.stale {
				b, err := json.Marshal(cursor{Seq: 2, Change: markOf(o.log.changes[1])})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := kv.Put(ctx, cursorKey("older"), b); err != nil {
					t.Fatal(err)
				}
			}
			if tc.held {
				// Written just now by a holder whose clock runs 3 h
				// behind: still held (TestLeaseLiveJudgedByTheServersClock).
				lv, err := json.Marshal(leaseValue{Holder: "other", RenewedAt: time.Now().Add(-3 * time.Hour).UTC(), TTL: "1h"})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := kv.Put(ctx, leaseKey("old"), lv); err != nil {
					t.Fatal(err)
				}
			}
			// Orthanc's Name is empty: the source is "orthanc".
			r, _ := runReconciler(t, Options{Sources: []Source{{Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			adopted := func() bool {
				c, found, err := (&cursorStore{kv: kv, key: cursorKey("orthanc")}).load(ctx)
				return err == nil && found && c.Seq == 4 && c.Pending[orthancID(9)] == 2
			}
			if tc.held {
				check := r.Checks()["reconcile"]
				waitUntil(t, "the check to say why the reconciler waits", func() bool {
					err := check(ctx)
					return err != nil && strings.Contains(err.Error(), "reconciled under another source name too")
				})
				if _, err := kv.Get(ctx, cursorKey("orthanc")); !errors.Is(err, jetstream.ErrKeyNotFound) {
					t.Fatalf("a cursor was stored under the new name while the old name's lease is held: %v", err)
				}
				if err := kv.Delete(ctx, leaseKey("old")); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, "the old name's cursor, pending studies included, under the new name", adopted)
			// The old name's cursor is deleted after the new one is
			// stored (never none stored): waited for, not read at once.
			waitUntil(t, "the old name's cursor deleted", func() bool {
				_, err := kv.Get(ctx, cursorKey("old"))
				return errors.Is(err, jetstream.ErrKeyNotFound)
			})
		})
	}
}

// While leading, another Name is followed at the second answer in a row
// (Orthancs of other Names behind one URL would rename the source at
// every poll); as a lease is taken, at the first: a standby replica that
// took the lease its renamed leader released would otherwise poll a whole
// interval under the old name, queuing studies the Lua script queues
// under the new one. The old Name answered in between starts the count
// again.
func TestRenameFollowedAtOnceAsTheLeaseIsTaken(t *testing.T) {
	for _, tc := range []struct {
		name    string
		twice   bool
		answers []string // Orthanc's Name at each check
		want    []error
	}{
		{"leading", true, []string{"new", "new"}, []error{nil, errRenamed}},
		{"taking the lease", false, []string{"new", "new"}, []error{errRenamed, errRenamed}},
		// The old Name in between: "new" is not twice in a row.
		{"leading, the old name in between", true, []string{"new", "old", "new"}, []error{nil, nil, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sourceRunner{name: "old", log: slog.New(slog.DiscardHandler)}
			for i, name := range tc.answers {
				if err := s.sameName(orthancapi.System{Name: name}, tc.twice); !errors.Is(err, tc.want[i]) && err != tc.want[i] {
					t.Errorf("answer %d (%s): %v, want %v", i+1, name, err, tc.want[i])
				}
			}
		})
	}
}

// Two configured sources of one reconciler never take each other's
// cursor, even when their Orthancs log the same changes in step (a
// study fed to both at once, both databases new): the change a cursor
// points at is then in both logs. One without a cursor starts at the
// end of its log, and the other keeps its own.
func TestConfiguredSourcesKeepTheirCursors(t *testing.T) {
	_, kv := testBucket(t)
	ctx := t.Context()
	mirrored := &changeLog{studies: map[string]orthancapi.Study{}}
	mirrored.addStudy(1) // changes 1 to 4, in both logs
	a, b := &swappableOrthanc{log: mirrored}, &swappableOrthanc{log: mirrored}
	aCursor := cursor{Seq: 2, Change: markOf(mirrored.changes[1]), Pending: map[string]int64{orthancID(1): 2}}
	v, err := json.Marshal(aCursor)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, cursorKey("a"), v); err != nil {
		t.Fatal(err)
	}
	r, _ := runReconciler(t, Options{Sources: []Source{{Name: "b", Orthanc: b}, {Name: "a", Orthanc: a}}, KV: kv,
		Publisher: &publishedIDs{}, PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	load := func(name string) (cursor, bool) {
		c, found, err := (&cursorStore{kv: kv, key: cursorKey(name)}).load(ctx)
		return c, err == nil && found
	}
	waitUntil(t, "source a past its cursor's changes", func() bool { c, ok := load("a"); return ok && c.Seq == 4 })
	waitUntil(t, "source b's own cursor", func() bool { _, ok := load("b"); return ok })
	if c, _ := load("b"); c.Seq != 4 || len(c.Pending) != 0 {
		t.Errorf("source b's cursor is %+v: want its own, at the end of its log, nothing pending", c)
	}
	if _, ok := load("a"); !ok {
		t.Error("source a's cursor is gone")
	}
	for _, name := range []string{"a", "b"} {
		if err := r.Checks()["reconcile_"+name](ctx); err != nil {
			t.Errorf("source %s's check: %v", name, err)
		}
	}
}

// TestConfiguredSourceAdoptsOnlyTheNamedCursor: two deployments share
// one NATS; B's Orthanc was restored from A's backup, so A's cursor
// points into B's change log too. While A's ingest is down (its lease
// expired), B's configured source, starting without a cursor, took A's
// and deleted it: A, back, started at the end of its log and missed
// what came meanwhile. A configured source carries over only the cursor
// of the source named by AdoptCursor.From (RECONCILE_ADOPT_CURSOR_FROM).
func TestConfiguredSourceAdoptsOnlyTheNamedCursor(t *testing.T) {
	for _, tc := range []struct {
		name, from string
		adopted    bool
	}{
		{"no source named", "", false},
		{"another source named", "c", false},
		{"that source named", "a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			ctx := t.Context()
			l := &changeLog{studies: map[string]orthancapi.Study{}}
			l.addStudy(1) // changes 1 to 4, in A's log and in its backup
			aCursor := cursor{Seq: 2, Change: markOf(l.changes[1]), Pending: map[string]int64{orthancID(1): 2}}
			v, err := json.Marshal(aCursor)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, cursorKey("a"), v); err != nil {
				t.Fatal(err)
			}
			var to string
			if tc.from != "" {
				to = "b"
			}
			runReconciler(t, Options{Sources: []Source{{Name: "b", Orthanc: &swappableOrthanc{log: l}}}, KV: kv, AdoptCursor: CursorAdoption{To: to, From: tc.from},
				Publisher: &publishedIDs{}, PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			store := &cursorStore{kv: kv, key: cursorKey("b")}
			waitUntil(t, "source b's cursor", func() bool {
				c, found, err := store.load(ctx)
				return err == nil && found && c.Seq == 4
			})
			_, err = kv.Get(ctx, cursorKey("a"))
			if kept := err == nil; kept == tc.adopted {
				t.Errorf("source a's cursor kept: %v (%v), want %v", kept, err, !tc.adopted)
			}
		})
	}
}

// RECONCILE_ADOPT_CURSOR_FROM names the source that adopts: ORTHANC_URL
// (source MyOrthanc) moved into ORTHANC_SOURCES=main,mr. Both are buffer
// mode, the change at the old cursor gone from both logs, and both logs
// go past it: without the target, whichever source started first took
// the cursor, and mr could take main's while main started at its end.
func TestOnlyTheNamedSourceAdoptsTheCursor(t *testing.T) {
	_, kv := testBucket(t)
	ctx := t.Context()
	newOrthanc := func() *swappableOrthanc {
		o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
		o.log.addStudy(1) // changes 1 to 4
		return o
	}
	mainO, mrO := newOrthanc(), newOrthanc()
	b, err := json.Marshal(cursor{Seq: 4, Change: markOf(mainO.log.changes[3])})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, cursorKey("MyOrthanc"), b); err != nil {
		t.Fatal(err)
	}
	// Buffer mode deleted study 1 and its changes in both; a study came
	// to each while the ingest was down (changes 5 to 8).
	for i, o := range []*swappableOrthanc{mainO, mrO} {
		o.log.remove(1, 4)
		delete(o.log.studies, orthancID(1))
		o.log.addStudy(2 + i)
	}
	pub := &publishedIDs{}
	// main reads no change before mr has started: mr, unnamed, would
	// otherwise have taken the cursor only when it asked first.
	gated := &gatedOrthanc{swappableOrthanc: mainO, gate: make(chan struct{})}
	runReconciler(t, Options{Sources: []Source{{Name: "main", Orthanc: gated}, {Name: "mr", Orthanc: mrO}}, KV: kv, Publisher: pub,
		AdoptCursor:  CursorAdoption{To: "main", From: "MyOrthanc"},
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	mrStore := &cursorStore{kv: kv, key: cursorKey("mr")}
	waitUntil(t, "mr's cursor", func() bool {
		_, found, err := mrStore.load(ctx)
		return err == nil && found
	})
	close(gated.gate)
	for _, name := range []string{"main", "mr"} {
		store := &cursorStore{kv: kv, key: cursorKey(name)}
		waitUntil(t, name+"'s cursor at the end of its log", func() bool {
			c, found, err := store.load(ctx)
			return err == nil && found && c.Seq >= 8
		})
	}
	waitUntil(t, "main's study stored while the ingest was down", func() bool { return pub.has(orthancID(2)) })
	if pub.has(orthancID(3)) {
		t.Error("mr published a study before the end of its log: it took MyOrthanc's cursor")
	}
	if _, err := kv.Get(ctx, cursorKey("MyOrthanc")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("MyOrthanc's cursor is still stored (%v)", err)
	}
}

// warnings records the messages logged at Warn and above, with their
// "reason" and "previous_source" attributes.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnings) WithGroup(string) slog.Handler                { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" || a.Key == "previous_source" {
			msg += " " + a.Key + "=" + a.Value.String()
		}
		return true
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
	return nil
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

// has reports whether a warning contains every one of parts.
func (w *warnings) has(parts ...string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(m, p)
		}
		if all {
			return true
		}
	}
	return false
}

// Buffer mode deletes a study once forwarded, and Orthanc deletes its
// changes with it: the change a configured source's old cursor points
// at is gone by the time the source is renamed. Named by the operator
// (RECONCILE_ADOPT_CURSOR_FROM), the cursor is carried over unless the
// change log ends before it (a recreated database): a study stored
// while the ingest was down, or one pending in it, is then published.
// Renamed while idle, no change is after the cursor, and GET
// /changes?last (the newest change still in the log) is before it: the
// log's end is the highest number Orthanc gave. Not carried over, a
// Warn says why, and the old cursor is kept.
func TestAdoptedCursorWhoseChangeWasDeleted(t *testing.T) {
	for _, tc := range []struct {
		name string
		// build logs the studies and deletes those buffer mode
		// forwarded; it returns the old name's cursor and the study
		// its adoption publishes.
		build   func(l *changeLog) (cursor, string)
		adopted bool
		reason  string
	}{
		{"its change deleted with its study", func(l *changeLog) (cursor, string) {
			return studyAfterForwarded(l, 4), orthancID(2)
		}, true, ""},
		{"the log ends before it", func(l *changeLog) (cursor, string) {
			return studyAfterForwarded(l, 20), orthancID(2)
		}, false, "ends at 8, before its position (20)"},
		{"renamed while idle, its pending study left", func(l *changeLog) (cursor, string) {
			l.addStudy(1) // changes 1 to 4: not stable yet when the ingest stopped
			l.addStudy(2) // changes 5 to 8: forwarded, deleted with its changes
			c := cursor{Seq: 8, Change: markOf(l.changes[7]), Pending: map[string]int64{orthancID(1): 2}}
			l.remove(5, 8)
			delete(l.studies, orthancID(2))
			return c, orthancID(1)
		}, true, ""},
		{"a shorter log, idle", func(l *changeLog) (cursor, string) {
			l.addStudy(1) // changes 1 to 4
			return cursor{Seq: 9, Change: markOf(l.changes[3]), Pending: map[string]int64{orthancID(1): 2}}, orthancID(1)
		}, false, "ends at 4, before its position (9)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			ctx := t.Context()
			o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
			old, want := tc.build(o.log)
			b, err := json.Marshal(old)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, cursorKey("old"), b); err != nil {
				t.Fatal(err)
			}
			warned := &warnings{}
			pub := &publishedIDs{}
			runReconciler(t, Options{Sources: []Source{{Name: "new", Orthanc: o}}, KV: kv, Publisher: pub,
				AdoptCursor: CursorAdoption{To: "new", From: "old"}, Logger: slog.New(warned),
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			store := &cursorStore{kv: kv, key: cursorKey("new")}
			waitUntil(t, "the new name's cursor", func() bool {
				_, found, err := store.load(ctx)
				return err == nil && found
			})
			if tc.adopted {
				// Logged before the new name's cursor is stored.
				if warned.has("RECONCILE_ADOPT_CURSOR_FROM") {
					t.Fatalf("the cursor was not carried over; warnings: %q", warned.all())
				}
				waitUntil(t, "the study the old name's cursor left to publish", func() bool { return pub.has(want) })
				if _, err := kv.Get(ctx, cursorKey("old")); !errors.Is(err, jetstream.ErrKeyNotFound) {
					t.Errorf("the old name's cursor is still stored (%v)", err)
				}
				return
			}
			if !warned.has("RECONCILE_ADOPT_CURSOR_FROM", "previous_source=old", tc.reason) {
				t.Errorf("no Warn saying why the cursor was not carried over; warnings: %q", warned.all())
			}
			if pub.has(want) {
				t.Error("a study before the end of the log was published from a cursor not carried over")
			}
			if _, err := kv.Get(ctx, cursorKey("old")); err != nil {
				t.Errorf("the old name's cursor was not kept: %v", err)
			}
		})
	}
}

// studyAfterForwarded logs study 1 (changes 1 to 4), which buffer mode
// forwarded and deleted with its changes, then study 2 (changes 5 to 8),
// stored while the ingest was down, its webhook lost. It returns a
// cursor at seq whose change was study 1's StableStudy.
func studyAfterForwarded(l *changeLog, seq int64) cursor {
	l.addStudy(1)
	c := cursor{Seq: seq, Change: markOf(l.changes[3])}
	l.remove(1, 4)
	delete(l.studies, orthancID(1))
	l.addStudy(2)
	return c
}

// A configured source renamed without RECONCILE_ADOPT_CURSOR_FROM (which
// builds before c2aacd1 did not need) starts at the end of the log and
// keeps the other name's cursor (another deployment on the same NATS may
// own it), but a Warn names it and the setting. Its start reads GET
// /system once, for the change log's filter and the name looked under
// (adoptRenamed read it a second time).
func TestConfiguredSourceToldOfAMatchingCursor(t *testing.T) {
	_, kv := testBucket(t)
	ctx := t.Context()
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	o.log.addStudy(1) // changes 1 to 4
	b, err := json.Marshal(cursor{Seq: 2, Change: markOf(o.log.changes[1])})
	if err != nil {
		t.Fatal(err)
	}
	// Orthanc's Name is empty: an unnamed source would have been "orthanc".
	if _, err := kv.Put(ctx, cursorKey("orthanc"), b); err != nil {
		t.Fatal(err)
	}
	warned := &warnings{}
	runReconciler(t, Options{Sources: []Source{{Name: "new", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		Logger: slog.New(warned), PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitUntil(t, "the new name's cursor at the end of the log", func() bool {
		c, found, err := (&cursorStore{kv: kv, key: cursorKey("new")}).load(ctx)
		return err == nil && found && c.Seq == 4
	})
	if !warned.has("RECONCILE_ADOPT_CURSOR_FROM", "previous_source=orthanc") {
		t.Errorf("no Warn naming the matching cursor and RECONCILE_ADOPT_CURSOR_FROM; warnings: %q", warned.all())
	}
	if _, err := kv.Get(ctx, cursorKey("orthanc")); err != nil {
		t.Errorf("the other name's cursor was not kept: %v", err)
	}
	if n := o.systemReads.Load(); n != 1 {
		t.Errorf("GET /system read %d times at the start, want 1", n)
	}
}

// A source following Orthanc's Name took over any free cursor its change
// log matched: with two deployments on one NATS, one whose Orthanc was
// restored from the other's backup, that was the other deployment's
// configured source's cursor, deleted with it. It takes over only a
// cursor an unnamed source wrote (or an older build, unmarked), and
// names a configured one it skips in a Warn.
func TestUnnamedSourceLeavesAConfiguredSourcesCursor(t *testing.T) {
	for _, tc := range []struct {
		name       string
		configured bool
	}{
		{"written by an unnamed source", false},
		{"written by a configured source", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			ctx := t.Context()
			o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
			o.log.addStudy(1) // changes 1 to 4
			other := &cursorStore{kv: kv, key: cursorKey("other"), configured: tc.configured}
			if err := other.save(ctx, cursor{Seq: 2, Change: markOf(o.log.changes[1])}); err != nil {
				t.Fatal(err)
			}
			// Orthanc's Name is empty: the source is "orthanc".
			warned := &warnings{}
			runReconciler(t, Options{Sources: []Source{{Orthanc: o}}, KV: kv, Publisher: &publishedIDs{}, Logger: slog.New(warned),
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			waitUntil(t, "the source's cursor at the end of the log", func() bool {
				c, found, err := (&cursorStore{kv: kv, key: cursorKey("orthanc")}).load(ctx)
				return err == nil && found && c.Seq == 4
			})
			_, err := kv.Get(ctx, cursorKey("other"))
			if kept := err == nil; kept != tc.configured {
				t.Errorf("the other cursor kept: %v (%v), want %v", kept, err, tc.configured)
			}
			// Skipped, it is named: it may be this Orthanc's own.
			if said := warned.has("a cursor a configured source wrote", "previous_source=other"); said != tc.configured {
				t.Errorf("Warn naming the skipped cursor: %v, want %v; warnings %q", said, tc.configured, warned.all())
			}
		})
	}
}

// unlistedKV refuses to list its keys, as NATS does for the documented
// ingest user (no consumer on the bucket: docs/nats-permissions.md).
type unlistedKV struct{ jetstream.KeyValue }

func (unlistedKV) ListKeysFiltered(context.Context, ...string) (jetstream.KeyLister, error) {
	return nil, errors.New("nats: permissions violation")
}

// TestUnnamedSourceStartsWithoutListingCursors: a source following
// Orthanc's Name whose NATS user may not list the bucket's keys starts
// at the end of the log with a Warn. The refused list failed every poll
// of its first start: the reconciler never ran.
func TestUnnamedSourceStartsWithoutListingCursors(t *testing.T) {
	_, kv := testBucket(t)
	ctx := t.Context()
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	o.log.addStudy(1) // changes 1 to 4
	warned := &warnings{}
	runReconciler(t, Options{Sources: []Source{{Orthanc: o}}, KV: unlistedKV{kv}, Publisher: &publishedIDs{}, Logger: slog.New(warned),
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitUntil(t, "the source's cursor at the end of the log", func() bool {
		c, found, err := (&cursorStore{kv: kv, key: cursorKey("orthanc")}).load(ctx)
		return err == nil && found && c.Seq == 4
	})
	if !warned.has("cannot list the reconciler's cursors") {
		t.Errorf("no Warn for the cursors not listed; warnings %q", warned.all())
	}
}

// gatedOrthanc answers GET /changes once gate is closed.
type gatedOrthanc struct {
	*swappableOrthanc
	gate chan struct{}
}

func (o *gatedOrthanc) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	select {
	case <-o.gate:
	case <-ctx.Done():
		return orthancapi.Changes{}, ctx.Err()
	}
	return o.swappableOrthanc.Changes(ctx, since, limit, types...)
}

// namedOrthanc answers GET /system with name as Orthanc's Name.
type namedOrthanc struct {
	*swappableOrthanc
	mu   sync.Mutex
	name string
}

func (o *namedOrthanc) System(ctx context.Context) (orthancapi.System, error) {
	sys, err := o.swappableOrthanc.System(ctx)
	o.mu.Lock()
	defer o.mu.Unlock()
	sys.Name = o.name
	return sys, err
}

// Buffer mode deletes a forwarded study, and Orthanc its changes with it:
// when Orthanc is renamed, the change at the old name's cursor is mostly
// gone, and a source following Orthanc's Name cannot tell that cursor
// from another Orthanc's by the change log. It started at the end of the
// log silently. The runner that served the old name carries its own
// cursor over, unwritten since (its revision).
func TestRenamedSourceCarriesItsOwnCursorOver(t *testing.T) {
	_, kv := testBucket(t)
	ctx := t.Context()
	o := &namedOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}, name: "old"}
	warned := &warnings{}
	pub := &publishedIDs{}
	runReconciler(t, Options{Sources: []Source{{Orthanc: o}}, KV: kv, Publisher: pub, Logger: slog.New(warned),
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	oldStore := &cursorStore{kv: kv, key: cursorKey("old")}
	waitUntil(t, "the old name's cursor", func() bool {
		_, found, err := oldStore.load(ctx)
		return err == nil && found
	})
	o.swappableOrthanc.mu.Lock()
	o.log.addStudy(1) // changes 1 to 4
	o.swappableOrthanc.mu.Unlock()
	waitUntil(t, "study 1 published and the cursor past it", func() bool {
		c, _, err := oldStore.load(ctx)
		return err == nil && c.Seq >= 4 && pub.has(orthancID(1))
	})
	// Forwarded, buffer mode deleted it and its changes; then the rename.
	o.swappableOrthanc.mu.Lock()
	o.log.remove(1, 4)
	delete(o.log.studies, orthancID(1))
	o.swappableOrthanc.mu.Unlock()
	o.mu.Lock()
	o.name = "new"
	o.mu.Unlock()
	waitUntil(t, "the new name's cursor", func() bool {
		_, found, err := (&cursorStore{kv: kv, key: cursorKey("new")}).load(ctx)
		return err == nil && found
	})
	waitUntil(t, "the old name's cursor deleted, carried over", func() bool {
		_, err := kv.Get(ctx, cursorKey("old"))
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if c, _, err := (&cursorStore{kv: kv, key: cursorKey("new")}).load(ctx); err != nil || c.Seq != 4 {
		t.Errorf("the new name's cursor at %d (%v), want the old one's, 4", c.Seq, err)
	}
	if warned.has("not carried over") {
		t.Errorf("warned of a cursor not carried over: %q", warned.all())
	}
}

// Whether a replica still serves a name is judged by when the NATS server
// stored its lease, not by the RenewedAt its writer put in: that is
// another host's clock. A live holder whose clock runs behind looked dead
// (its cursor taken while it polled), and a dead one whose clock ran
// ahead looked alive for as long.
func TestLeaseLiveJudgedByTheServersClock(t *testing.T) {
	for _, tc := range []struct {
		name     string
		skew     time.Duration // of the writer's clock
		ttl      string
		wantLive bool
	}{
		{"writer's clock right, renewed", 0, "15s", true},
		{"writer's clock 40s behind, renewed", -40 * time.Second, "15s", true},
		{"writer's clock an hour behind, renewed", -time.Hour, "15s", true},
		{"writer's clock an hour ahead, stopped renewing", time.Hour, "50ms", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			ctx := t.Context()
			lv, err := json.Marshal(leaseValue{Holder: "other", RenewedAt: time.Now().Add(tc.skew).UTC(), TTL: tc.ttl})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, leaseKey("old"), lv); err != nil {
				t.Fatal(err)
			}
			s := &sourceRunner{r: &Reconciler{opts: Options{KV: kv, LeaseTTL: 15 * time.Second}}}
			live := func() bool {
				t.Helper()
				live, err := s.leaseLive(ctx, "old")
				if err != nil {
					t.Fatal(err)
				}
				return live
			}
			if tc.wantLive {
				if !live() {
					t.Fatal("a lease written just now was judged dead")
				}
				return
			}
			// Two TTLs after the write, on the server's clock.
			waitUntil(t, "the lease its holder stopped renewing judged dead", func() bool { return !live() })
		})
	}
}
