package reconcile_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

type publisher struct{ js jetstream.JetStream }

func (p publisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	return (natsjs.Publisher{JS: p.js}).Publish(ctx, ev)
}

type rig struct {
	orthanc *testharness.Orthanc
	client  *orthancapi.Client
	client2 reconcile.Orthanc // what the reconciler uses, client if nil
	nats    *testnats.Server
	kv      jetstream.KeyValue
}

func newRig(t *testing.T, rel testharness.Release, name string) *rig {
	t.Helper()
	return newRigAged(t, rel, name, 1)
}

// newRigAged is newRig with Orthanc's StableAge in seconds.
func newRigAged(t *testing.T, rel testharness.Release, name string, stableAge int) *rig {
	t.Helper()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: name, StableAge: stableAge, Release: rel})
	c, err := orthancapi.New(o.URL, orthancapi.WithRequestTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureReconcile(context.Background(), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{orthanc: o, client: c, nats: ns, kv: kv}
}

// start runs a reconciler until the returned stop is called (or the test
// ends).
func (r *rig) start(t *testing.T, name string, with ...func(*reconcile.Options)) (rec *reconcile.Reconciler, reg *prometheus.Registry, stop func()) {
	t.Helper()
	reg = prometheus.NewRegistry()
	var src reconcile.Orthanc = r.client
	if r.client2 != nil {
		src = r.client2
	}
	opts := reconcile.Options{
		Sources:      []reconcile.Source{{Name: name, Orthanc: src}},
		KV:           r.kv,
		Publisher:    publisher{r.nats.JS},
		PollInterval: 100 * time.Millisecond,
		LeaseTTL:     time.Second,
		MaxBackoff:   300 * time.Millisecond,
		PageSize:     4, // a study's changes span several pages
		Registerer:   reg,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range with {
		f(&opts)
	}
	rec, err := reconcile.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rec.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("reconciler did not stop within 10 s")
		}
	}
	t.Cleanup(stop)
	return rec, reg, stop
}

func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

type stored struct {
	events.StudyStable
	MsgID string
}

func streamEvents(t *testing.T, js jetstream.JetStream) []stored {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var ev stored
		if err := json.Unmarshal(m.Data, &ev.StudyStable); err != nil {
			t.Fatal(err)
		}
		ev.MsgID = m.Header.Get(jetstream.MsgIDHeader)
		out = append(out, ev)
	}
	return out
}

func writeStudy(t *testing.T, instances int) []string {
	t.Helper()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{Series: 1, InstancesPerSeries: instances, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func upload(t *testing.T, o *testharness.Orthanc, files []string) {
	t.Helper()
	if res := o.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
}

// The reconciler publishes exactly the event the Lua script would: a
// webhook event for the same study state is a duplicate.
func TestPublishesTheLuaScriptsEvent(t *testing.T) {
	testharness.ForEachRelease(t, testPublishesTheLuaScriptsEvent)
}

// filterSpy records the type filters the reconciler asks of Orthanc.
type filterSpy struct {
	*orthancapi.Client
	mu    sync.Mutex
	types map[string]bool
}

func (f *filterSpy) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	f.mu.Lock()
	f.types[strings.Join(types, ";")] = true
	f.mu.Unlock()
	return f.Client.Changes(ctx, since, limit, types...)
}

func testPublishesTheLuaScriptsEvent(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "Recon A") // source name from Orthanc's Name, as the script does
	spy := &filterSpy{Client: r.client, types: map[string]bool{}}
	r.client2 = spy
	_, reg, _ := r.start(t, "")
	const source = "Recon-A"
	// Not the lease: it is held before the first cursor is stored at
	// the end of the change log, and a study uploaded in between would
	// be behind it, never published.
	waitFirstCursor(t, r, source)

	upload(t, r.orthanc, writeStudy(t, 3))
	upload(t, r.orthanc, []string{testharness.SamplesDir(t) + "/ct-explicit-le.dcm"})
	testharness.WaitFor(t, "two events", 20*time.Second, func() bool { return len(streamEvents(t, r.nats.JS)) == 2 })
	// The reconciler counts an event, and moves its cursor, once
	// JetStream acknowledged it: after the stream holds it.
	testharness.WaitFor(t, "both events counted and the change log read", 20*time.Second, func() bool {
		return metric(t, reg, "stowline_reconcile_events_published_total", map[string]string{"source": source, "result": "stored"}) >= 2 &&
			metric(t, reg, "stowline_reconcile_lag_changes", map[string]string{"source": source}) == 0
	})

	var studies []string
	r.orthanc.GetJSON(t, "/studies", &studies)
	for _, id := range studies {
		st, err := r.client.Study(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		lua := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: source,
			OrthancStudyID: id, StudyInstanceUID: st.StudyInstanceUID, LastUpdate: st.LastUpdate}
		ack, err := (natsjs.Publisher{JS: r.nats.JS}).Publish(context.Background(), lua)
		if err != nil {
			t.Fatal(err)
		}
		if !ack.Duplicate {
			t.Errorf("study %s: the Lua script's event was not a duplicate of the reconciler's", id)
		}
	}
	for _, ev := range streamEvents(t, r.nats.JS) {
		if ev.Source != source || ev.MsgID != ev.StudyStable.MsgID() || ev.ReceivedAt.IsZero() {
			t.Errorf("event %+v", ev)
		}
	}
	if got := metric(t, reg, "stowline_reconcile_events_published_total", map[string]string{"source": source, "result": "stored"}); got != 2 {
		t.Errorf("published stored = %v, want 2", got)
	}
	if got := metric(t, reg, "stowline_reconcile_lag_changes", map[string]string{"source": source}); got != 0 {
		t.Errorf("lag = %v, want 0", got)
	}
	// 1.12 filters its change log by type (HasExtendedChanges, from
	// 1.12.5): the reconciler asks it to; 1.10 gets unfiltered requests.
	spy.mu.Lock()
	defer spy.mu.Unlock()
	want := map[string]bool{"": true}
	if rel.Name == "1.12" {
		want = map[string]bool{"StableStudy;NewStudy;NewSeries;NewInstance": true}
	}
	if !maps.Equal(spy.types, want) {
		t.Errorf("type filters asked of Orthanc %s: %v, want %v", rel.Name, spy.types, want)
	}
}

// deletingOrthanc deletes a study from the real Orthanc just before the
// reconciler looks it up: the race of a study deleted between its
// StableStudy change and the lookup. (Orthanc deletes the changes of a
// deleted resource, so an earlier deletion is never seen at all.)
type deletingOrthanc struct {
	*orthancapi.Client
	url string
}

func (d deletingOrthanc) Study(ctx context.Context, id string) (orthancapi.Study, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, d.url+"/studies/"+id, nil)
	if err != nil {
		return orthancapi.Study{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return orthancapi.Study{}, err
	}
	resp.Body.Close()
	return d.Client.Study(ctx, id)
}

// A study deleted before the reconciler reached it is skipped, and the
// cursor moves past it.
func TestDeletedStudyIsSkipped(t *testing.T) {
	testharness.ForEachRelease(t, testDeletedStudyIsSkipped)
}

func testDeletedStudyIsSkipped(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-b")
	r.client2 = deletingOrthanc{Client: r.client, url: r.orthanc.URL}
	_, reg, _ := r.start(t, "b")
	waitFirstCursor(t, r, "b")
	upload(t, r.orthanc, writeStudy(t, 2))
	testharness.WaitFor(t, "the study to be deleted", 20*time.Second, func() bool {
		return metric(t, reg, "stowline_reconcile_studies_skipped_total", map[string]string{"source": "b", "reason": "deleted"}) == 1
	})
	// The skip is counted before the cursor is saved at the poll's end:
	// wait for the save.
	var last []byte
	movedOn := func() bool {
		e, err := r.kv.Get(context.Background(), "cursor.b")
		if err != nil {
			return false
		}
		last = e.Value()
		var c struct {
			Seq     int64
			Pending map[string]int64
		}
		return json.Unmarshal(last, &c) == nil && c.Seq != 0 && len(c.Pending) == 0
	}
	for deadline := time.Now().Add(10 * time.Second); !movedOn(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("cursor %s: want it past the deleted study, with nothing pending", last)
		}
	}
	if evs := streamEvents(t, r.nats.JS); len(evs) != 0 {
		t.Errorf("events for a deleted study: %+v", evs)
	}
}

// proxiedOrthanc reads Orthanc through a reverse proxy that answers 404
// itself (as Traefik does while Orthanc's pod is replaced) during the
// first lookups of a study.
type proxiedOrthanc struct {
	*orthancapi.Client
	down    *atomic.Bool
	lookups *atomic.Int32 // lookups still to fail
}

func (p proxiedOrthanc) Study(ctx context.Context, id string) (orthancapi.Study, error) {
	if p.lookups.Add(-1) >= 0 {
		p.down.Store(true)
		defer p.down.Store(false)
	}
	return p.Client.Study(ctx, id)
}

// A proxy's 404 is not taken for a deletion: the study is published once
// Orthanc answers again, not skipped for good.
func TestProxyNotFoundIsNotADeletion(t *testing.T) {
	testharness.ForEachRelease(t, testProxyNotFoundIsNotADeletion)
}

func testProxyNotFoundIsNotADeletion(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-p")
	target, err := url.Parse(r.orthanc.URL)
	if err != nil {
		t.Fatal(err)
	}
	upstream := httputil.NewSingleHostReverseProxy(target)
	down := new(atomic.Bool)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if down.Load() {
			http.NotFound(w, req)
			return
		}
		upstream.ServeHTTP(w, req)
	}))
	t.Cleanup(proxy.Close)
	c, err := orthancapi.New(proxy.URL, orthancapi.WithRequestTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	lookups := new(atomic.Int32)
	lookups.Store(2)
	r.client2 = proxiedOrthanc{Client: c, down: down, lookups: lookups}
	_, reg, _ := r.start(t, "p")
	waitFirstCursor(t, r, "p")
	upload(t, r.orthanc, writeStudy(t, 2))
	testharness.WaitFor(t, "the study's event", 20*time.Second, func() bool {
		return len(streamEvents(t, r.nats.JS)) == 1
	})
	if lookups.Load() >= 0 {
		t.Errorf("the proxy's 404s were not met (%d lookups left)", lookups.Load())
	}
	if got := metric(t, reg, "stowline_reconcile_studies_skipped_total", map[string]string{"source": "p", "reason": "deleted"}); got > 0 {
		t.Errorf("%v studies skipped as deleted", got)
	}
}

// brokenOrthanc fails, with Orthanc's 500, every instance's study lookup
// and the first study lookups: a broken resource in Orthanc's index.
type brokenOrthanc struct {
	*orthancapi.Client
	studyFails *atomic.Int32 // study lookups still to fail
}

// orthancFailure is Orthanc's own error answer to a GET of path: a
// broken resource in its index.
func orthancFailure(path string, status int) error {
	return &orthancapi.Error{Method: "GET", Path: path, StatusCode: status, OrthancMessage: "Database plugin error"}
}

func (b brokenOrthanc) InstanceStudy(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, orthancFailure("/instances/x/study", http.StatusInternalServerError)
}

func (b brokenOrthanc) Study(ctx context.Context, id string) (orthancapi.Study, error) {
	if b.studyFails.Add(-1) >= 0 {
		return orthancapi.Study{}, orthancFailure("/studies/"+id, http.StatusInternalServerError)
	}
	return b.Client.Study(ctx, id)
}

// A change Orthanc keeps failing to read does not hold the cursor for
// good: later studies are published, and a stable study that failed is
// published once Orthanc reads it.
func TestBrokenChangeDoesNotHoldTheCursor(t *testing.T) {
	testharness.ForEachRelease(t, testBrokenChangeDoesNotHoldTheCursor)
}

func testBrokenChangeDoesNotHoldTheCursor(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-s")
	fails := new(atomic.Int32)
	fails.Store(8) // more than the polls a change may fail
	r.client2 = brokenOrthanc{Client: r.client, studyFails: fails}
	_, reg, _ := r.start(t, "s")
	waitFirstCursor(t, r, "s")
	upload(t, r.orthanc, writeStudy(t, 2))
	upload(t, r.orthanc, writeStudy(t, 1))
	testharness.WaitFor(t, "both studies' events", 30*time.Second, func() bool {
		return len(streamEvents(t, r.nats.JS)) == 2
	})
	if got := metric(t, reg, "stowline_reconcile_changes_skipped_total", map[string]string{"source": "s"}); got < 1 {
		t.Errorf("changes skipped = %v, want the broken instances' changes counted", got)
	}
}

// oneBrokenStudy fails, with Orthanc's 500 (or status when set), every
// lookup of the first study it is asked about, for good: one study Orthanc
// cannot read.
type oneBrokenStudy struct {
	*orthancapi.Client
	broken *atomic.Value // the study's Orthanc ID
	status *atomic.Int32
}

func (b oneBrokenStudy) fails(id string) bool {
	b.broken.CompareAndSwap(nil, id)
	return b.broken.Load() == id
}

func (b oneBrokenStudy) InstanceStudy(ctx context.Context, id string) (orthancapi.Study, error) {
	st, err := b.Client.InstanceStudy(ctx, id)
	if err == nil && b.fails(st.ID) {
		return orthancapi.Study{}, orthancFailure("/instances/"+id+"/study", int(b.status.Load()))
	}
	return st, err
}

func (b oneBrokenStudy) Study(ctx context.Context, id string) (orthancapi.Study, error) {
	if b.fails(id) {
		return orthancapi.Study{}, orthancFailure("/studies/"+id, int(b.status.Load()))
	}
	return b.Client.Study(ctx, id)
}

// One study Orthanc cannot read stays pending without failing the polls:
// they failed at every caught-up poll, for good, so the ingest holding the
// lease was not ready (out of its Service, its webhooks refused) and
// stowline_reconcile_poll_errors_total said Orthanc was unreachable. An
// answer that says "later" still fails them.
func TestBrokenPendingStudyIsNoOutage(t *testing.T) {
	testharness.ForEachRelease(t, testBrokenPendingStudyIsNoOutage)
}

func testBrokenPendingStudyIsNoOutage(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-b")
	status := new(atomic.Int32)
	status.Store(http.StatusInternalServerError)
	broken := new(atomic.Value)
	r.client2 = oneBrokenStudy{Client: r.client, broken: broken, status: status}
	rec, reg, _ := r.start(t, "b")
	waitFirstCursor(t, r, "b")
	check := rec.Checks()["reconcile_b"]
	pollErrors := func() float64 {
		return metric(t, reg, "stowline_reconcile_poll_errors_total", map[string]string{"source": "b"})
	}
	upload(t, r.orthanc, writeStudy(t, 2))
	upload(t, r.orthanc, writeStudy(t, 1))
	testharness.WaitFor(t, "the other study's event", 30*time.Second, func() bool {
		return len(streamEvents(t, r.nats.JS)) == 1
	})
	testharness.WaitFor(t, "ready, with the broken study pending", 15*time.Second, func() bool {
		return check(context.Background()) == nil &&
			metric(t, reg, "stowline_reconcile_pending_studies", map[string]string{"source": "b"}) == 1
	})
	// Its StableStudy change fails the polls (stuckAfter of them) until
	// the reconciler moves past it: under load it can come after the
	// other study's event, so the count is taken once the cursor is past it.
	waitPastStable(t, r, "b", broken.Load().(string))
	before := pollErrors()
	upload(t, r.orthanc, writeStudy(t, 1))
	testharness.WaitFor(t, "a third study's event", 30*time.Second, func() bool {
		return len(streamEvents(t, r.nats.JS)) == 2
	})
	if err := check(context.Background()); err != nil {
		t.Errorf("not ready while one study is unreadable: %v", err)
	}
	if got := pollErrors(); got != before {
		t.Errorf("poll errors went from %v to %v while the broken study was pending", before, got)
	}
	// An answer that says "later" (a proxy's 503, Orthanc overloaded)
	// is an outage again, not the study's fault: the polls fail.
	status.Store(http.StatusServiceUnavailable)
	testharness.WaitFor(t, "not ready while the pending study's lookups answer 503", 15*time.Second, func() bool {
		return check(context.Background()) != nil
	})
}

// waitPastStable waits until Orthanc logged study's StableStudy change
// and source's cursor, as the reconciler stored it, is at or past it.
func waitPastStable(t *testing.T, r *rig, source, study string) {
	t.Helper()
	kv, err := r.nats.JS.KeyValue(t.Context(), natsjs.ReconcileBucket)
	if err != nil {
		t.Fatal(err)
	}
	testharness.WaitFor(t, "the cursor past study "+study+"'s StableStudy change", 30*time.Second, func() bool {
		var log struct {
			Changes []struct {
				Seq        int64
				ChangeType string
				ID         string
			}
		}
		r.orthanc.GetJSON(t, "/changes?since=0&limit=1000", &log)
		stable := int64(-1)
		for _, c := range log.Changes {
			if c.ChangeType == "StableStudy" && c.ID == study {
				stable = c.Seq
			}
		}
		if stable < 0 {
			return false
		}
		e, err := kv.Get(t.Context(), "cursor."+source)
		if err != nil {
			return false
		}
		var cur struct{ Seq int64 }
		return json.Unmarshal(e.Value(), &cur) == nil && cur.Seq >= stable
	})
}

// While Orthanc is unreachable the source's readiness check fails; it
// recovers on its own.
func TestUnreachableOrthancIsNotReady(t *testing.T) {
	testharness.ForEachRelease(t, testUnreachableOrthancIsNotReady)
}

func testUnreachableOrthancIsNotReady(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-c")
	rec, reg, _ := r.start(t, "c")
	check := rec.Checks()["reconcile_c"]
	if check == nil {
		t.Fatalf("checks = %v, want reconcile_c", rec.Checks())
	}
	testharness.WaitFor(t, "the lease", 10*time.Second, func() bool {
		return metric(t, reg, "stowline_reconcile_lease_held", map[string]string{"source": "c"}) == 1
	})
	testharness.WaitFor(t, "ready", 5*time.Second, func() bool { return check(context.Background()) == nil })
	// A first cursor read after the restart would be past the study
	// uploaded then, and the study never published.
	waitFirstCursor(t, r, "c")

	r.orthanc.Stop(t)
	testharness.WaitFor(t, "not ready", 10*time.Second, func() bool { return check(context.Background()) != nil })
	t.Logf("check while Orthanc is down: %v", check(context.Background()))
	r.orthanc.Start(t)
	upload(t, r.orthanc, writeStudy(t, 1))
	testharness.WaitFor(t, "ready again and the study published", 20*time.Second, func() bool {
		return check(context.Background()) == nil && len(streamEvents(t, r.nats.JS)) == 1
	})
	if got := metric(t, reg, "stowline_reconcile_poll_errors_total", map[string]string{"source": "c"}); got < 1 {
		t.Errorf("poll errors = %v", got)
	}
}

// A study whose StudyInstanceUID breaks PS3.5 in ways Orthanc accepts
// (longer than 64 characters, a character other than digits and dots) is
// announced like any other: refusing its event lost the study, Orthanc's
// Lua script being refused the same way.
func TestNonConformantUIDIsPublished(t *testing.T) {
	testharness.ForEachRelease(t, testNonConformantUIDIsPublished)
}

func testNonConformantUIDIsPublished(t *testing.T, rel testharness.Release) {
	r := newRig(t, rel, "recon-u")
	_, reg, _ := r.start(t, "u")
	waitFirstCursor(t, r, "u")
	upload(t, r.orthanc, writeStudy(t, 1))
	var studies []string
	r.orthanc.GetJSON(t, "/studies", &studies)
	uids := []string{"1.2.826.0.1.3680043.8.498." + strings.Repeat("1234567890", 5), "1.2.826.0.1.3680043.8.498.12+34"}
	for _, uid := range uids {
		// As a modality writing such a UID would have stored the study.
		body := `{"Replace":{"StudyInstanceUID":"` + uid + `"},"Force":true}`
		if err := r.orthanc.Do(t.Context(), http.MethodPost, "/studies/"+studies[0]+"/modify", strings.NewReader(body), nil); err != nil {
			t.Fatalf("store a study of UID %s: %v", uid, err)
		}
	}
	announced := func(uid string) bool {
		for _, ev := range streamEvents(t, r.nats.JS) {
			if ev.StudyInstanceUID == uid {
				return true
			}
		}
		return false
	}
	testharness.WaitFor(t, "both studies announced or refused", 30*time.Second, func() bool {
		return announced(uids[0]) && announced(uids[1]) ||
			metric(t, reg, "stowline_reconcile_studies_skipped_total", map[string]string{"source": "u", "reason": "invalid"}) > 0
	})
	for _, uid := range uids {
		if !announced(uid) {
			t.Errorf("the study of StudyInstanceUID %s was not announced", uid)
		}
	}
}

// An Orthanc without a configured source name that refuses the
// reconciler's user (or cannot be reached) from the start is never
// reconciled: its name, and with it every series of the source, stays
// unknown. Its failures are counted all the same, so that
// StowlineReconcilerFailing fires.
func TestUnnamedSourceRefusedIsCounted(t *testing.T) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "recon-r", StableAge: 1, Username: "stowline", Password: "right-password"})
	c, err := orthancapi.New(o.URL, orthancapi.WithBasicAuth("stowline", "wrong-password"), orthancapi.WithRequestTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{orthanc: o, client: c, nats: testnats.Start(t)}
	if r.kv, err = natsjs.DefaultTopology().EnsureReconcile(context.Background(), r.nats.JS); err != nil {
		t.Fatal(err)
	}
	rec, reg, _ := r.start(t, "")
	testharness.WaitFor(t, "the failures counted", 10*time.Second, func() bool {
		return metric(t, reg, "stowline_reconcile_poll_errors_total", map[string]string{"source": "(unnamed)"}) >= 2
	})
	if err := rec.Checks()["reconcile"](context.Background()); err == nil {
		t.Error("the source's check passes while Orthanc refuses the reconciler")
	}
}
