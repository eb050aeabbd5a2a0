package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// publishedAt records, for each study published, how far the change
// log had been read then.
type publishedAt struct {
	o  *httpOrthanc
	mu sync.Mutex
	at map[string]int64 // Orthanc study ID -> the furthest page's since
}

func (p *publishedAt) Publish(_ context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.at[ev.OrthancStudyID]; !ok {
		p.at[ev.OrthancStudyID] = p.o.furthest()
	}
	return &jetstream.PubAck{Sequence: uint64(len(p.at))}, nil
}

func (p *publishedAt) get(id string) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.at[id]
	return at, ok
}

// TestBacklogReadFasterAndResolvedOnTheWay: a backlog of new instances
// was read one study lookup after another, one Orthanc round trip each,
// and the pending studies were resolved only once the end of the change
// log was reached: a study Orthanc forgot (no StableStudy change) waited
// for the whole backlog. The lookups of a page now overlap, at most
// lookupConcurrency at a time, and the pending studies are resolved every
// resolveEveryPages pages too.
func TestBacklogReadFasterAndResolvedOnTheWay(t *testing.T) {
	const pageSize = 8
	o := newHTTPOrthanc(t, time.Now().UTC())
	o.lookupDelay = 10 * time.Millisecond
	_, kv := testBucket(t)
	pub := &publishedAt{o: o, at: map[string]int64{}}
	_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o.client}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second, PageSize: pageSize})
	waitFirstCursor(ctx, t, kv, "s")

	// A study Orthanc forgot (stable, with no StableStudy change), then
	// a backlog of another study's instances, still arriving.
	o.setStudy(1, true, time.Now().UTC().Add(-time.Hour))
	o.setStudy(2, false, time.Now().UTC())
	o.addInstance(1, 1)
	n := (resolveEveryPages + 5) * pageSize
	for i := 1; i < n; i++ {
		o.addInstance(2, i)
	}
	waitUntil(t, "the forgotten study's event", func() bool { _, ok := pub.get(orthancID(1)); return ok })
	if at, _ := pub.get(orthancID(1)); at >= int64(n-pageSize) {
		t.Errorf("the forgotten study was published once the change log was read to %d of %d: want before its end", at, n)
	}
	waitUntil(t, "the backlog read", func() bool {
		c, found, err := (&cursorStore{kv: kv, key: cursorKey("s")}).load(ctx)
		return err == nil && found && c.Seq == int64(n)
	})
	if got := o.maxInFlight.Load(); got < 2 || got > lookupConcurrency {
		t.Errorf("at most %d study lookups were in flight at once, want 2 to %d", got, lookupConcurrency)
	}
}

// TestFailedLookupHoldsTheCursor: the lookups of a page run side by
// side, but the cursor still stops at the first change whose lookup
// failed: the only change that tells of a study Orthanc forgot, in the
// middle of a page of another study's instances, fails a few times; the
// study is published once it succeeds (passed over, it never would be).
func TestFailedLookupHoldsTheCursor(t *testing.T) {
	const pageSize = 8
	o := newHTTPOrthanc(t, time.Now().UTC())
	_, kv := testBucket(t)
	pub := &publishedIDs{}
	_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o.client}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second, PageSize: pageSize})
	waitFirstCursor(ctx, t, kv, "s")
	o.setStudy(1, true, time.Now().UTC().Add(-time.Hour))
	o.setStudy(2, false, time.Now().UTC())
	for i := 1; i <= 3; i++ {
		o.addInstance(2, i)
	}
	o.addInstance(1, 1)
	o.failLookups(1, 1, 3)
	for i := 4; i <= 2*pageSize; i++ {
		o.addInstance(2, i)
	}
	waitUntil(t, "the forgotten study's event", func() bool { return pub.has(orthancID(1)) })
}

// hungOrthanc answers no study lookup of a new instance: each waits
// until its request timeout (timeout) or until it is cancelled, as when
// Orthanc is overloaded.
type hungOrthanc struct {
	*swappableOrthanc
	timeout time.Duration
	asked   atomic.Int32
}

func (o *hungOrthanc) InstanceStudy(ctx context.Context, id string) (orthancapi.Study, error) {
	o.asked.Add(1)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	<-ctx.Done()
	return orthancapi.Study{}, fmt.Errorf("orthancapi: GET /instances/%s/study: %w", id, ctx.Err())
}

// TestHungLookupsFailThePollAtOnce: a page's lookups run side by side,
// but only the first failure in page order matters (the cursor stops
// there): once a lookup fails so that the cursor is held, the later ones
// are cancelled and not started. All 200 asked, 4 at a time, a hung
// Orthanc took 50 request timeouts (25 minutes at 30 s) to fail one poll:
// no lag, no error counted, no alert meanwhile.
func TestHungLookupsFailThePollAtOnce(t *testing.T) {
	const pageSize = 200
	_, kv := testBucket(t)
	o := &hungOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}, timeout: 50 * time.Millisecond}
	for i := range pageSize {
		o.log.add("NewInstance", orthancID(5000+i))
	}
	// A cursor before them all; the first poll reads them, and the next
	// waits a poll interval: the lookups counted are the first poll's.
	if err := (&cursorStore{kv: kv, key: cursorKey("s")}).save(t.Context(), cursor{}); err != nil {
		t.Fatal(err)
	}
	r, _ := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: time.Minute, LeaseTTL: time.Second, PageSize: pageSize})
	started := time.Now()
	waitUntil(t, "the poll failed", func() bool { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) >= 1 })
	t.Logf("the poll failed after %v", time.Since(started))
	if got := o.asked.Load(); got > 2*lookupConcurrency {
		t.Errorf("%d lookups asked, want at most %d: those after the first failure hold nothing", got, 2*lookupConcurrency)
	}
}

// failingChanges fails its next reads of the change log, as many as
// failures holds.
type failingChanges struct {
	*swappableOrthanc
	failures atomic.Int32
}

func (o *failingChanges) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	if o.failures.Add(-1) >= 0 {
		return orthancapi.Changes{}, errors.New("orthancapi: GET /changes: 503 Service Unavailable")
	}
	return o.swappableOrthanc.Changes(ctx, since, limit, types...)
}

// TestPollFailuresLoggedOnceAMinute: polls that fail back to back within
// a minute are one warning and, once a poll succeeds, one line saying
// so; each is still counted. Every backoff step was a warning: an
// Orthanc failing every other poll logged each.
func TestPollFailuresLoggedOnceAMinute(t *testing.T) {
	const failures = 5
	_, kv := testBucket(t)
	o := &failingChanges{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}}
	var logs testharness.LogBuffer
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: 5 * time.Second})
	waitFirstCursor(ctx, t, kv, "s")
	polls := func() float64 { return testutil.ToFloat64(r.m.polls.WithLabelValues("s")) }
	before := polls()
	o.failures.Store(failures)
	waitUntil(t, "the failed polls", func() bool { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) == failures })
	waitUntil(t, "a poll after them", func() bool { return polls() > before+1 })
	out := logs.String()
	if n := strings.Count(out, "reconciler poll failed"); n != 1 {
		t.Errorf("%d poll failures logged, want 1 for %d within a minute:\n%s", n, failures, out)
	}
	if !strings.Contains(out, fmt.Sprintf("reconciler polls succeed again\" source=s failures=%d", failures)) {
		t.Errorf("the polls' recovery not logged with the %d failures:\n%s", failures, out)
	}
}

// TestBacklogCursorSavedEverySeconds: while a backlog is read page after
// page, the cursor (with its pending list, up to about 600 KB) is stored
// every cursorSaveEvery, and at the end of the log; it was stored at each
// page, tens of thousands of replicated writes for a long backlog.
func TestBacklogCursorSavedEverySeconds(t *testing.T) {
	const pageSize, studies = 8, 200 // 4 changes a study: 100 pages
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	for n := 1; n <= studies; n++ {
		o.log.addStudy(n)
	}
	if err := (&cursorStore{kv: kv, key: cursorKey("s")}).save(t.Context(), cursor{}); err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(t.Context(), cursorKey("s"), jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	var saves atomic.Int32
	var last atomic.Int64
	go func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var c cursor
			if json.Unmarshal(e.Value(), &c) == nil {
				saves.Add(1)
				last.Store(c.Seq)
			}
		}
	}()
	pub := &publishedIDs{}
	runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: time.Minute, LeaseTTL: 5 * time.Second, PageSize: pageSize})
	waitUntil(t, "the backlog read and stored", func() bool { return last.Load() == int64(4*studies) })
	for n := 1; n <= studies; n++ {
		if !pub.has(orthancID(n)) {
			t.Fatalf("study %d not published", n)
		}
	}
	// 100 pages in much less than a few cursorSaveEvery on any machine.
	if got := saves.Load(); got > 10 {
		t.Errorf("the cursor was stored %d times while 100 pages were read, want a few", got)
	}
}

// failingPublisher refuses every publish while refusing is set, as
// JetStream does while its stream has no leader, then records as
// publishedIDs.
type failingPublisher struct {
	publishedIDs
	refusing atomic.Bool
}

func (p *failingPublisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	if p.refusing.Load() {
		return nil, errors.New("nats: no response from stream")
	}
	return p.publishedIDs.Publish(ctx, ev)
}

// TestFailedPublishHoldsTheCursor: while JetStream refuses a stable
// study's event, more than stuckAfter polls in a row, the cursor stays before
// its StableStudy change (stuckOn moves past Orthanc's failures only);
// once JetStream takes it, the study is published and the cursor moves
// on. Only failed Orthanc lookups were tested.
func TestFailedPublishHoldsTheCursor(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	o.log.addStudy(1) // changes 1 to 4; StableStudy is 4
	if err := (&cursorStore{kv: kv, key: cursorKey("s")}).save(t.Context(), cursor{}); err != nil {
		t.Fatal(err)
	}
	pub := &failingPublisher{}
	pub.refusing.Store(true)
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: 5 * time.Second})
	store := &cursorStore{kv: kv, key: cursorKey("s")}
	waitUntil(t, "the failed polls", func() bool { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) >= stuckAfter+1 })
	if c, _, err := store.load(ctx); err != nil || c.Seq >= 4 {
		t.Fatalf("cursor %d (err %v) after %d refused publishes, want before the StableStudy change (4)", c.Seq, err, stuckAfter+1)
	}
	pub.refusing.Store(false)
	waitUntil(t, "the study published", func() bool { return pub.has(orthancID(1)) })
	waitUntil(t, "the cursor past it", func() bool { c, _, err := store.load(ctx); return err == nil && c.Seq == 4 })
}

// stallingChanges reads the change log as swappableOrthanc does up to
// stallAt. Past it, with fail, reading the log fails, as an Orthanc that
// stopped answering mid-backlog; without, the page is read and the end
// of the log asked after it (a poll that succeeds: LastChange's error is
// ignored) waits for the request's end, so that only a save at stop can
// store that page.
type stallingChanges struct {
	*swappableOrthanc
	stallAt int64
	fail    bool
	past    atomic.Bool
	reached atomic.Bool
}

func (o *stallingChanges) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	if since >= o.stallAt {
		if o.fail {
			o.reached.Store(true)
			return orthancapi.Changes{}, errors.New("orthancapi: GET /changes: 503 Service Unavailable")
		}
		o.past.Store(true)
	}
	return o.swappableOrthanc.Changes(ctx, since, limit, types...)
}

func (o *stallingChanges) LastChange(ctx context.Context) (int64, error) {
	if o.past.Load() {
		o.reached.Store(true)
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return o.swappableOrthanc.LastChange(ctx)
}

// TestBacklogProgressStoredAtStopAndFailure: within a backlog the cursor
// is stored every cursorSaveEvery, but what was read since is stored
// too when the change log cannot be read and when the reconciler stops:
// the next poll or holder does not read it again.
func TestBacklogProgressStoredAtStopAndFailure(t *testing.T) {
	for _, fail := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			const pageSize, studies = 8, 50 // 4 changes a study: 25 pages
			_, kv := testBucket(t)
			o := &stallingChanges{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}, stallAt: 120, fail: fail}
			for n := 1; n <= studies; n++ {
				o.log.addStudy(n)
			}
			store := &cursorStore{kv: kv, key: cursorKey("s")}
			if err := store.save(t.Context(), cursor{}); err != nil {
				t.Fatal(err)
			}
			r, err := New(Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{}, Logger: slog.New(slog.DiscardHandler),
				PollInterval: time.Minute, MaxBackoff: time.Minute, LeaseTTL: 5 * time.Second, PageSize: pageSize})
			if err != nil {
				t.Fatal(err)
			}
			_, stop := startReconciler(t, r)
			waitUntil(t, "the stall", o.reached.Load)
			if fail {
				waitUntil(t, "the failed poll", func() bool { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) >= 1 })
			} else {
				stop()
			}
			c, _, err := store.load(t.Context())
			if err != nil || c.Seq < 120 {
				t.Errorf("stored cursor %d (err %v), want the 120 changes read before the stall", c.Seq, err)
			}
		})
	}
}

// TestLastPollSuccessTimestamp: the last successful poll's time is
// exported per source, with RECONCILE_POLL_INTERVAL, so that
// StowlineReconcilerFailing waits as long as the interval asks: counts
// over a fixed 15 minutes could not fire at an interval above it. It
// stays put while polls fail and moves once one succeeds again.
func TestLastPollSuccessTimestamp(t *testing.T) {
	_, kv := testBucket(t)
	o := &failingChanges{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}}
	started := float64(time.Now().UnixNano()) / 1e9
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: 5 * time.Second})
	if got := testutil.ToFloat64(r.m.interval); got != 0.01 {
		t.Errorf("stowline_reconcile_poll_interval_seconds = %v, want 0.01", got)
	}
	last := func() float64 { return testutil.ToFloat64(r.m.lastSuccess.WithLabelValues("s")) }
	errs := func() float64 { return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) }
	waitFirstCursor(ctx, t, kv, "s")
	waitUntil(t, "a successful poll", func() bool { return testutil.ToFloat64(r.m.polls.WithLabelValues("s")) >= 1 })
	if l := last(); l < started {
		t.Errorf("last success %v, want at least the start, %v", l, started)
	}
	o.failures.Store(1 << 30)
	waitUntil(t, "a failed poll", func() bool { return errs() >= 1 })
	failing := last()
	waitUntil(t, "more failed polls", func() bool { return errs() >= 4 })
	if l := last(); l != failing {
		t.Errorf("last success moved from %v to %v while every poll failed", failing, l)
	}
	o.failures.Store(0)
	waitUntil(t, "the last success moving once a poll succeeds", func() bool { return last() > failing })
}
