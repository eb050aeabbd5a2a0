package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// changeLog is an Orthanc database's change log and stable studies.
type changeLog struct {
	changes []orthancapi.Change
	studies map[string]orthancapi.Study
	// datedFrom is how many seconds after the first database's first
	// change this one's is dated: a database made later logs later.
	datedFrom int
	// last is the highest number given, which Orthanc keeps when
	// changes are deleted (remove).
	last int64
}

func orthancID(n int) string { return fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", n) }

func (l *changeLog) add(typ, id string) {
	l.last++
	seq := l.last
	date := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC).Add(time.Duration(l.datedFrom+int(seq)) * time.Second)
	l.changes = append(l.changes, orthancapi.Change{Seq: seq, ChangeType: typ, ID: id, Date: date.Format("20060102T150405")})
}

// remove deletes the changes numbered from..to, as Orthanc deletes a
// resource's changes with it, or DELETE /changes all of them.
func (l *changeLog) remove(from, to int64) {
	l.changes = slices.DeleteFunc(l.changes, func(c orthancapi.Change) bool { return c.Seq >= from && c.Seq <= to })
}

// addStudy logs a stable study with the changes Orthanc logs for it,
// two of them of types a filtered read leaves out.
func (l *changeLog) addStudy(n int) {
	id := orthancID(n)
	l.add("NewPatient", orthancID(1000+n))
	l.add("NewStudy", id)
	l.add("StableSeries", orthancID(2000+n))
	l.add("StableStudy", id)
	l.studies[id] = orthancapi.Study{ID: id, StudyInstanceUID: fmt.Sprintf("1.2.3.%d", n), LastUpdate: "20261203T150000", IsStable: true}
}

// swappableOrthanc answers /changes as Orthanc does, filtered by type
// when it says it can (1.12.5 on); its database can be swapped.
// systemReads counts its answers to GET /system.
type swappableOrthanc struct {
	mu          sync.Mutex
	log         *changeLog
	filtered    bool
	systemReads atomic.Int32
}

func (o *swappableOrthanc) System(context.Context) (orthancapi.System, error) {
	o.systemReads.Add(1)
	var s orthancapi.System
	s.Capabilities.HasExtendedChanges = o.filtered
	return s, nil
}

func (o *swappableOrthanc) Changes(_ context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return changesPage(o.log.changes, o.log.last, since, limit, types), nil
}

// changesPage answers GET /changes as Orthanc does over changes, last
// the highest number given: those after since (of the types, if any), at
// most limit, Last the last one's number (last when none).
func changesPage(changes []orthancapi.Change, last, since int64, limit int, types []string) orthancapi.Changes {
	page := orthancapi.Changes{Changes: []orthancapi.Change{}, Done: true, Last: last}
	for _, c := range changes {
		if c.Seq <= since || len(types) > 0 && !slices.Contains(types, c.ChangeType) {
			continue
		}
		if len(page.Changes) == limit {
			page.Done = false
			break
		}
		page.Changes = append(page.Changes, c)
	}
	if n := len(page.Changes); n > 0 {
		page.Last = page.Changes[n-1].Seq
	}
	return page
}

// LastChange answers GET /changes?last as Orthanc does: the newest change
// still in the log, the highest number given only when it is empty.
func (o *swappableOrthanc) LastChange(context.Context) (int64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := len(o.log.changes); n > 0 {
		return o.log.changes[n-1].Seq, nil
	}
	return o.log.last, nil
}

func (o *swappableOrthanc) Study(_ context.Context, id string) (orthancapi.Study, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.log.studies[id]; ok {
		return s, nil
	}
	return orthancapi.Study{}, orthancapi.ErrNotFound
}

func (o *swappableOrthanc) Now(context.Context) (time.Time, error) { return time.Now(), nil }

func (o *swappableOrthanc) Exists(_ context.Context, _, id string) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.log.studies[id]
	return ok, nil
}

func (o *swappableOrthanc) SeriesStudy(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, orthancapi.ErrNotFound
}

func (o *swappableOrthanc) InstanceStudy(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, orthancapi.ErrNotFound
}

// publishedIDs records the Orthanc IDs of the studies published.
type publishedIDs struct {
	mu  sync.Mutex
	ids []string
}

func (p *publishedIDs) Publish(_ context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids = append(p.ids, ev.OrthancStudyID)
	return &jetstream.PubAck{Sequence: uint64(len(p.ids))}, nil
}

func (p *publishedIDs) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Contains(p.ids, id)
}

// TestRecreatedDatabaseFound: Orthanc's database is swapped for one whose
// log is already past the cursor, with a change of another type at the
// cursor's number. Read filtered by type, that change is not in the page,
// which must not be taken for a deleted change: the reconciler rescans
// the new log and publishes its studies.
func TestRecreatedDatabaseFound(t *testing.T) {
	for _, filtered := range []bool{false, true} {
		t.Run(fmt.Sprintf("filtered=%v", filtered), func(t *testing.T) {
			_, kv := testBucket(t)
			o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}, filtered: filtered}
			pub := &publishedIDs{}
			_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
				PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second, PageSize: 3})

			store := &cursorStore{kv: kv, key: cursorKey("s")}
			cursorAt := func(seq int64) func() bool {
				return func() bool {
					c, found, err := store.load(ctx)
					return err == nil && found && c.Seq == seq
				}
			}
			waitUntil(t, "the first start's cursor", cursorAt(0))
			o.mu.Lock()
			for n := 1; n <= 3; n++ {
				o.log.addStudy(n) // changes 1 to 12, the last a StableStudy
			}
			o.mu.Unlock()
			waitUntil(t, "the first database's studies", func() bool { return pub.has(orthancID(3)) && cursorAt(12)() })

			swapped := &changeLog{studies: map[string]orthancapi.Study{}, datedFrom: 100}
			swapped.add("StableSeries", orthancID(3000))
			for n := 10; n <= 14; n++ {
				swapped.addStudy(n) // change 12 is a StableSeries
			}
			o.mu.Lock()
			o.log = swapped
			o.mu.Unlock()
			waitUntil(t, "the new database's first study", func() bool { return pub.has(orthancID(10)) })
		})
	}
}

// TestRestoredDatabaseFoundWhileIdle: the database is replaced by one
// whose log reaches the cursor's number with changes of types a filtered
// read leaves out only (Orthanc 1.12, a backup restored and a study
// received since). The filtered page is empty and Last is not below the
// cursor: the change at the cursor is read whole, the reset found and
// the new log's studies published without waiting for another change.
func TestRestoredDatabaseFoundWhileIdle(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}, filtered: true}
	for n := 1; n <= 3; n++ {
		o.log.addStudy(n) // changes 1 to 12, the last a StableStudy
	}
	store := &cursorStore{kv: kv, key: cursorKey("s")}
	if err := store.save(t.Context(), cursor{Seq: 12, Change: markOf(o.log.changes[11])}); err != nil {
		t.Fatal(err)
	}
	restored := &changeLog{studies: map[string]orthancapi.Study{}, datedFrom: 100}
	restored.addStudy(10)
	restored.addStudy(11) // changes 1 to 8
	for n := 9; n <= 12; n++ {
		restored.add("StablePatient", orthancID(4000+n)) // left out by the filter
	}
	o.log = restored
	pub := &publishedIDs{}
	runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitUntil(t, "the restored database's studies", func() bool { return pub.has(orthancID(10)) && pub.has(orthancID(11)) })
}

// TestShorterDatabaseFound: Orthanc's database is replaced by one whose
// log ends below the cursor (fewer changes than the old one had when the
// cursor was stored): a reset, rescanned from the start, and its study
// published. Taken for a trimmed log, its studies waited until the new
// log passed the old cursor's number, which may be never.
func TestShorterDatabaseFound(t *testing.T) {
	for _, filtered := range []bool{false, true} {
		t.Run(fmt.Sprintf("filtered=%v", filtered), func(t *testing.T) {
			_, kv := testBucket(t)
			o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}, filtered: filtered}
			for n := 1; n <= 3; n++ {
				o.log.addStudy(n) // changes 1 to 12
			}
			store := &cursorStore{kv: kv, key: cursorKey("s")}
			if err := store.save(t.Context(), cursor{Seq: 12, Change: markOf(o.log.changes[11])}); err != nil {
				t.Fatal(err)
			}
			replaced := &changeLog{studies: map[string]orthancapi.Study{}, datedFrom: 100}
			replaced.addStudy(10) // changes 1 to 4, dated after the cursor's
			o.log = replaced
			pub := &publishedIDs{}
			runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
				PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
			waitUntil(t, "the new database's study", func() bool { return pub.has(orthancID(10)) })
		})
	}
}

// TestResetAfterClockSetBackSkipsNothing: the last change handled is
// dated ahead of the clock (Orthanc's clock was ahead, and set back since
// its database was recreated): the rescan cannot tell old changes from
// new ones by their date, and skips none of them.
func TestResetAfterClockSetBackSkipsNothing(t *testing.T) {
	_, kv := testBucket(t)
	ahead := int(time.Since(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)).Seconds()) + 24*3600 // a day ahead
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}, datedFrom: ahead}}
	pub := &publishedIDs{}
	_, _ = runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitFirstCursor(context.Background(), t, kv, "s")
	o.mu.Lock()
	o.log.addStudy(1)
	o.mu.Unlock()
	waitUntil(t, "the first database's study", func() bool { return pub.has(orthancID(1)) })

	o.mu.Lock()
	o.log = &changeLog{studies: map[string]orthancapi.Study{}}
	o.log.addStudy(2) // shorter than the cursor, dated a day before its change
	o.mu.Unlock()
	waitUntil(t, "the new database's study", func() bool { return pub.has(orthancID(2)) })
}

// A second reset found while the first one's rescan skips keeps the
// date the first kept: the last change handled then is one the rescan
// skipped, dated before it. Before, the skip moved back to that date, and
// the changes between were published again (each study past the dedupe
// window forwarded again).
func TestSecondResetKeepsTheLaterSkip(t *testing.T) {
	_, kv := testBucket(t)
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := &sourceRunner{r: &Reconciler{m: m}, name: "s", log: slog.New(slog.DiscardHandler),
		store: &cursorStore{kv: kv, key: cursorKey("s")}, orthanc: aheadOrthanc{}}
	// The rescan of a first reset skips, up to a change of 20261201T080000.
	s.cur = cursor{Seq: 40, Change: &changeMark{Date: "20261130T090000"}, SkipBefore: "20261201T080000"}
	if err := s.reset(t.Context(), orthancapi.Changes{Last: 12}); err != nil {
		t.Fatal(err)
	}
	if s.cur.SkipBefore != "20261201T080000" {
		t.Errorf("after a second reset the rescan skips what is dated before %q, want 20261201T080000", s.cur.SkipBefore)
	}
	// Nothing handled since the first reset (no change mark): kept too.
	s.cur = cursor{Seq: 0, SkipBefore: "20261201T080000"}
	if err := s.reset(t.Context(), orthancapi.Changes{}); err != nil {
		t.Fatal(err)
	}
	if s.cur.SkipBefore != "20261201T080000" {
		t.Errorf("after a reset with no change handled the rescan skips what is dated before %q, want 20261201T080000", s.cur.SkipBefore)
	}
}

// aheadOrthanc is an Orthanc whose clock is ahead of this host's.
type aheadOrthanc struct {
	Orthanc
	ahead time.Duration
}

func (o aheadOrthanc) Now(context.Context) (time.Time, error) { return time.Now().Add(o.ahead), nil }

// A reset's skip is judged on Orthanc's clock, in which its change dates
// are: an Orthanc an hour ahead of this host, whose last change handled
// was half an hour ago on its clock, was taken for one set back, and the
// whole restored log was published again.
func TestResetJudgedOnOrthancsClock(t *testing.T) {
	_, kv := testBucket(t)
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := &sourceRunner{r: &Reconciler{m: m}, name: "s", log: slog.New(slog.DiscardHandler),
		store: &cursorStore{kv: kv, key: cursorKey("s")}, orthanc: aheadOrthanc{ahead: time.Hour}}
	handled := time.Now().Add(30 * time.Minute).UTC().Format(orthancapi.TimeLayout)
	s.cur = cursor{Seq: 40, Change: &changeMark{Date: handled}}
	if err := s.reset(t.Context(), orthancapi.Changes{Last: 12}); err != nil {
		t.Fatal(err)
	}
	if s.cur.SkipBefore != handled {
		t.Errorf("the rescan skips what is dated before %q, want %q: the last change handled, before Orthanc's now", s.cur.SkipBefore, handled)
	}
}

// waitFirstCursor waits for the first start of the source's runner to
// save its cursor, and returns the store to read it from.
func waitFirstCursor(ctx context.Context, t *testing.T, kv jetstream.KeyValue, source string) *cursorStore {
	t.Helper()
	store := &cursorStore{kv: kv, key: cursorKey(source)}
	waitUntil(t, "the first start's cursor", func() bool {
		_, found, err := store.load(ctx)
		return err == nil && found
	})
	return store
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// busyOrthanc fails the first study lookups of new instances with an
// HTTP status, as Orthanc or a reverse proxy before it answers while
// overloaded or restarting.
type busyOrthanc struct {
	*swappableOrthanc
	status int
	fails  atomic.Int32 // lookups still to fail
}

func (o *busyOrthanc) InstanceStudy(_ context.Context, id string) (orthancapi.Study, error) {
	if o.fails.Add(-1) >= 0 {
		return orthancapi.Study{}, &orthancapi.Error{Method: http.MethodGet, Path: "/instances/" + id + "/study", StatusCode: o.status}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.log.studies[orthancID(1)], nil
}

// TestTransientAnswerDoesNotSkipAChange: a lookup that fails with a
// status saying "try again later" (a proxy's 502 or 504, 503, 429, 408)
// is not a broken resource, however many polls it lasts: the change is
// not skipped, and the study Orthanc forgot to call stable (it restarted
// before StableAge, so only its NewInstance change tells of it) is
// published once the lookup succeeds. Orthanc's own error is skipped
// only after stuckAfter polls in a row: fewer may be a database busy for
// a moment, and a change skipped then leaves the study out of the pending
// list, lost if Orthanc restarts before calling it stable.
func TestTransientAnswerDoesNotSkipAChange(t *testing.T) {
	type failure struct {
		status int
		polls  int32 // polls whose lookup fails
	}
	tests := []failure{{http.StatusInternalServerError, stuckAfter - 1}}
	for _, status := range []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		http.StatusTooManyRequests, http.StatusRequestTimeout} {
		tests = append(tests, failure{status, 3 * stuckAfter})
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %d times", tt.status, tt.polls), func(t *testing.T) {
			_, kv := testBucket(t)
			o := &busyOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}, status: tt.status}
			o.fails.Store(tt.polls)
			pub := &publishedIDs{}
			r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})

			waitFirstCursor(ctx, t, kv, "s")
			o.mu.Lock()
			o.log.add("NewInstance", orthancID(5000))
			o.log.studies[orthancID(1)] = orthancapi.Study{ID: orthancID(1), StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000", IsStable: true}
			o.mu.Unlock()
			skipped := func() float64 { return testutil.ToFloat64(r.m.changesSkipped.WithLabelValues("s")) }
			waitUntil(t, "the study's event or the change skipped", func() bool { return pub.has(orthancID(1)) || skipped() > 0 })
			if got := skipped(); got != 0 {
				t.Errorf("changes skipped = %v, want 0: the study is never published", got)
			}
		})
	}
}

// TestChangedStudyPublishedAgain: a study published in this lease term
// that received instances since (a late series: a new LastUpdate, a new
// StableStudy change) is published again, as the new event it is. The
// term's memory of what it published skips only the same state again:
// it skipped the study whole, and with the Lua script's post of the new
// state lost, the late series was never forwarded.
func TestChangedStudyPublishedAgain(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	pub := &publishedIDs{}
	_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second})
	waitFirstCursor(ctx, t, kv, "s")
	o.mu.Lock()
	o.log.addStudy(1)
	o.mu.Unlock()
	published := func() int {
		pub.mu.Lock()
		defer pub.mu.Unlock()
		return len(pub.ids)
	}
	waitUntil(t, "the study published", func() bool { return pub.has(orthancID(1)) })

	o.mu.Lock()
	st := o.log.studies[orthancID(1)]
	st.LastUpdate = "20261203T160000"
	o.log.studies[orthancID(1)] = st
	o.log.add("StableStudy", orthancID(1))
	o.mu.Unlock()
	waitUntil(t, "the changed study published again", func() bool { return published() == 2 })
}

// filterRefusingOrthanc announces that it filters its change log by
// type (GET /system) and answers 400 to a read that asks it to.
type filterRefusingOrthanc struct{ *swappableOrthanc }

func (o filterRefusingOrthanc) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	if len(types) > 0 {
		return orthancapi.Changes{}, &orthancapi.Error{Method: http.MethodGet, Path: "/changes", StatusCode: http.StatusBadRequest}
	}
	return o.swappableOrthanc.Changes(ctx, since, limit)
}

// TestRefusedTypeFilterReadsTheWholeLog: an Orthanc that announces the
// change log's type filter but refuses it (400) is read whole instead,
// its studies published; failing the poll on it would have stopped its
// reconciliation for good.
func TestRefusedTypeFilterReadsTheWholeLog(t *testing.T) {
	_, kv := testBucket(t)
	o := filterRefusingOrthanc{&swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}, filtered: true}}
	pub := &publishedIDs{}
	_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitFirstCursor(ctx, t, kv, "s")
	o.mu.Lock()
	o.log.addStudy(1)
	o.mu.Unlock()
	waitUntil(t, "the study published", func() bool { return pub.has(orthancID(1)) })
}

// TestPendingGaugeLeftWithTheLease: a replica that loses the lease stops
// reporting the studies it was waiting for, as it stops reporting its
// lag: the replica that took over reports them, and a sum over replicas
// counts each once.
func TestPendingGaugeLeftWithTheLease(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		// A TTL of a second: with 300 ms the holder stepped down when a
		// renewal came 200 ms after the last on a loaded CI host.
		PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second})

	gauge := func(g *prometheus.GaugeVec) func() float64 {
		return func() float64 { return testutil.ToFloat64(g.WithLabelValues("s")) }
	}
	held, pending := gauge(r.m.leaseHeld), gauge(r.m.pending)
	waitUntil(t, "the lease", func() bool { return held() == 1 })
	// Held before the first cursor is stored: a change added in between
	// would be behind it, the study never pending.
	waitFirstCursor(ctx, t, kv, "s")
	o.mu.Lock()
	o.log.add("NewStudy", orthancID(1)) // a study still receiving instances
	o.log.studies[orthancID(1)] = orthancapi.Study{ID: orthancID(1), StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000"}
	o.mu.Unlock()
	waitUntil(t, "the study pending", func() bool { return pending() == 1 })

	// Another replica takes the lease and keeps renewing it.
	other, err := json.Marshal(leaseValue{Holder: "other", TTL: "300ms"})
	if err != nil {
		t.Fatal(err)
	}
	renewing := make(chan struct{})
	rctx, stopRenewing := context.WithCancel(ctx)
	go func() {
		defer close(renewing)
		for rctx.Err() == nil {
			_, _ = kv.Put(rctx, leaseKey("s"), other)
			sleep(rctx, 50*time.Millisecond)
		}
	}()
	t.Cleanup(func() { stopRenewing(); <-renewing })
	waitUntil(t, "the lease lost", func() bool { return held() == 0 })
	waitUntil(t, "the pending studies no longer reported", func() bool { return held() == 0 && pending() == 0 })
}

// TestCursorConflictKeepsTheLease: a cursor written by another replica
// (mostly a late write of one that held the lease before) makes the
// holder reload it and poll on with its lease. It logged "reconciler
// lease lost: another replica polls the source now", which reads as a
// failover.
func TestCursorConflictKeepsTheLease(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	pub := &publishedIDs{}
	var logs testharness.LogBuffer
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), PollInterval: 10 * time.Millisecond, LeaseTTL: time.Second})
	held := func() float64 { return testutil.ToFloat64(r.m.leaseHeld.WithLabelValues("s")) }
	waitUntil(t, "the lease", func() bool { return held() == 1 })
	store := waitFirstCursor(ctx, t, kv, "s")
	// The late write.
	if err := store.save(ctx, cursor{Seq: 0}); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.log.addStudy(1)
	o.mu.Unlock()
	waitUntil(t, "the study's event", func() bool { return pub.has(orthancID(1)) })
	if !strings.Contains(logs.String(), "another replica wrote the reconciler cursor") {
		t.Fatalf("no cursor conflict logged; the test did not make one:\n%s", logs.String())
	}
	// The conflict ends lead, whose gauge reads 0 until the next
	// attempt takes the lease back (at once: this replica holds it); the
	// gauge read in between made the test fail now and then.
	waitUntil(t, "the lease taken back", func() bool { return held() == 1 })
	if strings.Contains(logs.String(), "lease lost") || strings.Contains(logs.String(), "lease released") {
		t.Errorf("logs:\n%s\nwant the lease kept: no loss or release logged", logs.String())
	}
}

// runReconciler runs a reconciler with opts (its log discarded) until the
// test ends; ctx ends with it.
func runReconciler(t *testing.T, opts Options) (*Reconciler, context.Context) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, _ := startReconciler(t, r)
	return r, ctx
}

// startReconciler runs r until stop, or the test's end; ctx ends with it.
// stop returns once Run has.
func startReconciler(t *testing.T, r *Reconciler) (ctx context.Context, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return ctx, stop
}

// TestClockSetBackSkipsNoNewStudy: Orthanc's clock is set back, so its
// new changes are dated before the last one the reconciler handled. The
// rescan's skip (cursor.SkipBefore) exists only while a reset change log
// is rescanned, up to its first change dated from then on: outside it,
// changes are read by number and their dates do not matter. A study
// logged after the clock went back is published, with no reset, and
// after a reset whose rescan has ended.
func TestClockSetBackSkipsNoNewStudy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reset bool
	}{
		{"no reset", false},
		{"after a reset's rescan", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			first := &changeLog{studies: map[string]orthancapi.Study{}}
			o := &swappableOrthanc{log: first}
			pub := &publishedIDs{}
			_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
				PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second, PageSize: 3})
			waitFirstCursor(ctx, t, kv, "s")
			o.mu.Lock()
			for n := 1; n <= 3; n++ {
				o.log.addStudy(n) // changes 1 to 12
			}
			o.mu.Unlock()
			waitUntil(t, "the first studies", func() bool { return pub.has(orthancID(3)) })

			if tc.reset {
				// A backup of the database with the first two studies is
				// restored: its log ends below the cursor.
				restored := &changeLog{studies: map[string]orthancapi.Study{}}
				restored.addStudy(1)
				restored.addStudy(2)
				restored.datedFrom = 3600 // a study an hour later ends the rescan's skip
				restored.addStudy(4)
				o.mu.Lock()
				o.log = restored
				o.mu.Unlock()
				waitUntil(t, "the study after the restore", func() bool { return pub.has(orthancID(4)) })
			}
			o.mu.Lock()
			o.log.datedFrom = -24 * 3600 // the clock is set back a day
			o.log.addStudy(5)
			o.mu.Unlock()
			waitUntil(t, "the study logged after the clock was set back", func() bool { return pub.has(orthancID(5)) })
			pub.mu.Lock()
			defer pub.mu.Unlock()
			for _, n := range []int{1, 2} {
				if c := slices.Index(pub.ids, orthancID(n)); slices.Index(pub.ids[c+1:], orthancID(n)) >= 0 {
					t.Errorf("study %d published again: %v", n, pub.ids)
				}
			}
		})
	}
}

// TestFullPendingListHoldsTheCursor: a bulk migration puts 20,000
// studies in Orthanc within its StableAge, each pending until it is
// stable. The cursor holding them is one JetStream message: past about
// 18,000 its write exceeded NATS's 1 MiB payload and every poll failed.
// Now a full list holds the cursor at the next change that would add to
// it, and the studies published as they become stable make room.
func TestFullPendingListHoldsTheCursor(t *testing.T) {
	const studies = 2 * maxPending
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	pub := &publishedIDs{}
	var logs testharness.LogBuffer
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), PollInterval: 10 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond, LeaseTTL: 5 * time.Second, PageSize: 1000})
	store := waitFirstCursor(ctx, t, kv, "s")
	o.mu.Lock()
	for n := range studies {
		o.log.add("NewStudy", orthancID(n)) // still receiving instances
		o.log.studies[orthancID(n)] = orthancapi.Study{ID: orthancID(n), StudyInstanceUID: fmt.Sprintf("1.2.3.%d", n), LastUpdate: "20261203T150000"}
	}
	heldAt := o.log.changes[maxPending-1].Seq
	o.mu.Unlock()

	pollErrors := func() float64 { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) }
	waitUntil(t, "the cursor held with a full pending list, or a poll failing", func() bool {
		c, _, err := store.load(ctx)
		return pollErrors() > 0 || err == nil && c.Seq == heldAt && len(c.Pending) == maxPending
	})
	if n := pollErrors(); n > 0 {
		t.Fatalf("%v polls failed, want none; log:\n%.2000s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "pending list is full") {
		t.Errorf("the held cursor is not logged:\n%.2000s", logs.String())
	}

	// They become stable: all are published, and the cursor moves on.
	o.mu.Lock()
	for id, st := range o.log.studies {
		st.IsStable = true
		o.log.studies[id] = st
	}
	end := o.log.last
	o.mu.Unlock()
	waitUntil(t, "every study published and the cursor at the end", func() bool {
		c, _, err := store.load(ctx)
		return err == nil && c.Seq == end && len(c.Pending) == 0
	})
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if got := len(pub.ids); got != studies {
		t.Errorf("%d events published, want %d", got, studies)
	}
	if n := pollErrors(); n > 0 {
		t.Errorf("%v polls failed, want none", n)
	}
	if !strings.Contains(logs.String(), "pending list has room again") {
		t.Errorf("the cursor moving on is not logged")
	}
	// Held polls succeed: StowlineReconcilerFailing counts them.
	if n := testutil.ToFloat64(r.m.polls.WithLabelValues("s")); n < 2 {
		t.Errorf("stowline_reconcile_polls_total = %v, want the polls counted", n)
	}
}

// parentsOrthanc answers the study of each new instance from parents,
// counting the lookups and the change log's reads.
type parentsOrthanc struct {
	*swappableOrthanc
	parents        map[string]string // instance ID -> study ID
	lookups, reads atomic.Int32
}

func (o *parentsOrthanc) InstanceStudy(_ context.Context, id string) (orthancapi.Study, error) {
	o.lookups.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	if st, ok := o.log.studies[o.parents[id]]; ok {
		return st, nil
	}
	return orthancapi.Study{}, orthancapi.ErrNotFound
}

func (o *parentsOrthanc) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	o.reads.Add(1)
	return o.swappableOrthanc.Changes(ctx, since, limit, types...)
}

// While the pending list is full, the cursor moves past the new instances
// of studies it holds, and holds at the first of a study it does not,
// without asking Orthanc for the study of every instance of the page at
// every poll (200 requests every 10 s through a bulk migration).
func TestFullPendingListLooksUpOnlyUpToTheHold(t *testing.T) {
	_, kv := testBucket(t)
	o := &parentsOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}, parents: map[string]string{}}
	r, err := New(Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		Logger: slog.New(slog.DiscardHandler), PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r.sources[0].maxPending = 3
	ctx, _ := startReconciler(t, r)
	store := waitFirstCursor(ctx, t, kv, "s")

	o.mu.Lock()
	for n := range 3 { // the list full
		o.log.add("NewStudy", orthancID(n))
		o.log.studies[orthancID(n)] = orthancapi.Study{ID: orthancID(n), StudyInstanceUID: fmt.Sprintf("1.2.3.%d", n), LastUpdate: "20261203T150000"}
	}
	for i := range 5 { // instances of a study it holds
		id := orthancID(100 + i)
		o.log.add("NewInstance", id)
		o.parents[id] = orthancID(0)
	}
	o.log.studies[orthancID(9)] = orthancapi.Study{ID: orthancID(9), StudyInstanceUID: "1.2.3.9", LastUpdate: "20261203T150000"}
	for i := range 50 { // instances of a study it does not
		id := orthancID(200 + i)
		o.log.add("NewInstance", id)
		o.parents[id] = orthancID(9)
	}
	heldAt := o.log.changes[len(o.log.changes)-51].Seq // the last of study 0's
	o.mu.Unlock()

	waitUntil(t, "the cursor held before study 9's first instance", func() bool {
		c, _, err := store.load(ctx)
		return err == nil && c.Seq == heldAt
	})
	o.lookups.Store(0)
	reads := o.reads.Load()
	waitUntil(t, "five more polls", func() bool { return o.reads.Load() >= reads+5 })
	polls, lookups := o.reads.Load()-reads, o.lookups.Load()
	if lookups > 2*polls {
		t.Errorf("%d lookups in %d held polls, want at most one or two a poll (the held change's)", lookups, polls)
	}
}
