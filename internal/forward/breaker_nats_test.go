package forward

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// With the destination down (503 to everything, its QIDO-RS probe too),
// the breaker opens at the first failure and holds the study on its first
// delivery, for more than FORWARDER_MAX_DELIVERIES' worth of retries and
// the ack wait; when the
// destination answers again the study is stored within that delivery. A
// study held at shutdown goes back to the queue at once, without waiting
// for the shutdown grace.
func TestBreakerHoldsWithinOneDelivery(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(4)
	var k sink
	k.status.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	topo := natsjs.DefaultTopology()
	topo.AckWait = 3 * time.Second
	cons, err := topo.EnsureConsumer(context.Background(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	dls := &memDeadLetters{}
	rec := &recordingObserver{}
	prober := newProber(t, srv.URL)
	start := func() (*Forwarder, context.CancelFunc, chan error) {
		f := newForwarder(t, src, srv.URL, cons, func(o *Options) {
			o.DeadLetters, o.MaxDeliveries = dls, 2
			o.Concurrency = 1
			o.ShutdownGrace = time.Minute // a held study must not wait for it
			o.Observer = rec
			o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: prober}
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		return f, cancel, done
	}
	waitHeld := func(f *Forwarder) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for b := f.Status(); b.State != "open" || b.Held != 1; b = f.Status() {
			if time.Now().After(deadline) {
				t.Fatalf("breaker %+v, want open with 1 study held", b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	f, cancel, done := start()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(context.Background(), testEvent()); err != nil {
		t.Fatal(err)
	}
	waitHeld(f)
	// Several ack waits and probe intervals: the progress signal keeps the
	// message, the probes keep failing.
	time.Sleep(4 * time.Second)
	waitHeld(f)
	k.status.Store(0)
	info := waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	if info.Delivered.Consumer != 1 || info.NumRedelivered != 0 {
		t.Errorf("delivered %d times (%d redelivered), want once", info.Delivered.Consumer, info.NumRedelivered)
	}
	if n := len(dls.all()); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	if b := f.Status(); b.State != "closed" || b.Held != 0 || b.Failures != 0 {
		t.Errorf("breaker after the outage: %+v", b)
	}

	// Down again, and the forwarder stops while it holds a study.
	k.status.Store(http.StatusServiceUnavailable)
	ev := testEvent()
	ev.OrthancStudyID, ev.StudyInstanceUID = "00000002-4f66fb14-03f4081b-f9341db2-53925988", "1.2.4"
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	waitHeld(f)
	stopped := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still holds the study 10 s after shutdown (grace 1 min)")
	}
	t.Logf("stopped %s after shutdown began", time.Since(stopped).Round(time.Millisecond))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.finished[ResultForwarded] != 1 || rec.finished[ResultInterrupted] != 1 || rec.started != 2 {
		t.Errorf("%d attempts, finished %v; want the first forwarded, the second returned to the queue", rec.started, rec.finished)
	}
	// The status page is told of each hold, and of its end.
	if h := rec.holds; len(h) < 4 || h[0] != "held: destination down (circuit breaker open)" || h[len(h)-1] != "" {
		t.Errorf("the observer was told of holds %q, want each hold and its end", h)
	}
	if n := len(dls.all()); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}

// A study held for its destination after some of it was stored is sent
// again whole within the same delivery: what the first run stored counts
// as already stored, as on a later delivery, where the destination stores
// repeats without a word (the sink, as Orthanc). Before, only a delivery
// after the first read the record, and the log and metrics showed 0.
func TestHeldStudyCountsWhatItStoredBefore(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	stores := k.handler(nil)
	var posts atomic.Int32
	var down atomic.Bool
	down.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The first request is stored; then the destination is down.
		if (r.Method == http.MethodPost && posts.Add(1) == 1) || !down.Load() {
			stores.ServeHTTP(w, r)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	prober := newProber(t, srv.URL)
	rec := &recordingObserver{}
	f := newForwarder(t, newMemSource(8), srv.URL, cons, func(o *Options) {
		o.Concurrency = 1
		o.Failures = &memFailureLog{}
		o.Observer = rec
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: prober}
	})
	runForwarder(t, f)
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), testEvent()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for b := f.Status(); b.Held != 1; b = f.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("breaker %+v, want 1 study held", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	down.Store(false)
	for rec.results()[ResultForwarded] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("finished %v, want the study forwarded", rec.results())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rep := rec.reports[len(rec.reports)-1]; rep.Instances != 8 || rep.AlreadyStored != 4 {
		t.Errorf("%d instances, %d already stored; want 8, the 4 of the first run already stored", rep.Instances, rep.AlreadyStored)
	}
}

// TestQueueAgesWhileTheBreakerIsOpen: JetStream deletes an event
// EVENTS_RETENTION after it arrived, forwarded or not. While the
// breaker is open nothing is pulled, so an age taken at each pull stood
// still at the last one's (a few seconds) however long the outage, and
// StowlineEventsNearRetention could not fire before a destination down
// for a week lost its queue. The lane's age keeps counting from the
// oldest event in hand.
func TestQueueAgesWhileTheBreakerIsOpen(t *testing.T) {
	const retention = 7 * 24 * time.Hour
	ns := testnats.Start(t)
	var k sink
	k.status.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	reg := prometheus.NewRegistry()
	var skew atomic.Int64 // how far the forwarder's clock is moved on
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.Concurrency = 1
		o.EventsRetention = retention
		o.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		o.Registerer = reg
		o.ShutdownGrace = time.Minute // a held study must not wait for it
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Hour}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for b := f.Status(); b.State != "open" || b.Held != 1; b = f.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("breaker %+v, want open with the study held", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Six days into the outage, nothing pulled since.
	skew.Store(int64(6 * 24 * time.Hour))
	if got, want := laneAge(t, reg, "routine"), 6*24*time.Hour; got < want || got > want+time.Minute {
		t.Errorf("routine lane's age %v six days into the outage, want about %v (StowlineEventsNearRetention fires above %v)", got, want, retention/4*3)
	}
}

// laneAge scrapes stowline_forwarder_lane_event_age_seconds of lane.
func laneAge(t *testing.T, reg *prometheus.Registry, lane string) time.Duration {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "stowline_forwarder_lane_event_age_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "lane" && l.GetValue() == lane {
					return time.Duration(m.GetGauge().GetValue() * float64(time.Second))
				}
			}
		}
	}
	t.Fatalf("no lane age of %s", lane)
	return 0
}

// deliveryObserver records each event's delivery number, as JetStream
// counts it (NumDelivered), by stream sequence.
type deliveryObserver struct {
	recordingObserver
	mu        sync.Mutex
	delivered map[uint64]uint64
}

// snapshot returns the delivery numbers seen so far.
func (o *deliveryObserver) snapshot() map[uint64]uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.delivered)
}

// waitProbes waits, 30 s at most, until n probes have passed or done
// reports true (what the test guards against came anyway).
func waitProbes(t *testing.T, probes *atomic.Int32, n int32, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for probes.Load() < n && !done() {
		if time.Now().After(deadline) {
			t.Fatalf("%d probes in 30 s", probes.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (o *deliveryObserver) Started(a *Attempt) {
	o.recordingObserver.Started(a)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.delivered[a.Seq] = max(o.delivered[a.Seq], a.Number)
}

// A destination whose QIDO-RS answers while every STOW-RS gets a 500 (a
// write path down, a store full behind a proxy: a fault a real Orthanc
// cannot be made to show), with FORWARDER_MAX_DELIVERIES 3 and a probe
// every 100 ms: before, each probe passed, a held study went as the
// trial, failed and spent a delivery, and the four studies were
// dead-lettered within a second or two. Now the first failed trial
// spends one delivery, the others are held (the later trials pulled from
// the queue when every held study failed one), and once the store
// answers every study is stored.
func TestBreakerStoreDownWhileQIDOAnswersJetStream(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	stores := k.handler(nil)
	var storeDown atomic.Bool
	storeDown.Store(true)
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet:
			answerProbe(w, &probes)
		case storeDown.Load():
			http.Error(w, "store failing", http.StatusInternalServerError)
		default:
			stores.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	prober := newProber(t, srv.URL)
	dls := &memDeadLetters{}
	obs := &deliveryObserver{delivered: map[uint64]uint64{}}
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.DeadLetters, o.MaxDeliveries = dls, 3
		// Two workers, and so two trials pulled beside them at most: the
		// four studies are held in the end.
		o.Concurrency = 2
		o.Observer = obs
		o.ShutdownGrace = time.Minute // held studies go back at once
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 50 * time.Millisecond, MaxProbeInterval: 100 * time.Millisecond, Prober: prober}
	})
	runForwarder(t, f)
	const studies = 4
	publishStudies(t, ns, 0, studies)
	// Sixty probes passed, each followed by a trial (or every study was
	// dead-lettered, as before).
	waitProbes(t, &probes, 60, func() bool { return len(dls.all()) >= studies })
	delivered := obs.snapshot()
	var total uint64
	for seq, n := range delivered {
		total += n
		if n > 2 {
			t.Errorf("event %d delivered %d times over %d probes, want at most twice", seq, n, probes.Load())
		}
	}
	if len(delivered) != studies || total > studies+1 {
		t.Errorf("deliveries %v over %d probes: want each of the %d events delivered, one of them twice at most", delivered, probes.Load(), studies)
	}
	if n := len(dls.all()); n != 0 {
		t.Fatalf("%d dead letters while the store was down", n)
	}
	// All held but, perhaps, the study whose failed trial spent its
	// delivery, while it waits out its retry delay. Read while the
	// breaker is open: half-open, the trial is out of its hold, being
	// sent.
	deadline := time.Now().Add(30 * time.Second)
	for b := f.Status(); b.State != "open" || b.Held < studies-1; b = f.Status() {
		if b.State == "closed" || time.Now().After(deadline) {
			t.Fatalf("breaker %+v while the store is down, want open with %d held, or %d", b, studies, studies-1)
		}
		time.Sleep(time.Millisecond)
	}

	storeDown.Store(false)
	info := waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool {
		return i.AckFloor.Stream == studies && i.NumAckPending == 0
	})
	if info.Delivered.Consumer > studies+1 {
		t.Errorf("%d deliveries of %d events", info.Delivered.Consumer, studies)
	}
	if n := len(dls.all()); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	obs.waitFinished(t, ResultForwarded, studies)
}

// newProber is a breaker prober of the destination at url (QIDO-RS).
func newProber(t *testing.T, url string) *dicomweb.Client {
	t.Helper()
	c, err := dicomweb.New(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// answerProbe answers a QIDO-RS probe with an empty list, counting it.
func answerProbe(w http.ResponseWriter, probes *atomic.Int32) {
	probes.Add(1)
	w.Header().Set("Content-Type", "application/dicom+json")
	io.WriteString(w, "[]")
}

// publishStudies publishes the events of studies from to to-1, each its
// own study (Orthanc ID and Study Instance UID 1.2.4.i).
func publishStudies(t *testing.T, ns *testnats.Server, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		ev := testEvent()
		ev.OrthancStudyID = fmt.Sprintf("%08x-4f66fb14-03f4081b-f9341db2-53925988", i)
		ev.StudyInstanceUID = fmt.Sprintf("1.2.4.%d", i)
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// runForwarder runs f until the test ends.
func runForwarder(t *testing.T, f *Forwarder) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitOpenHolding waits, up to 15 s, for f's breaker open with held
// studies held.
func waitOpenHolding(t *testing.T, f *Forwarder, held int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for b := f.Status(); b.State != "open" || b.Held != held; b = f.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("breaker %+v, want open with %d held", b, held)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failingSource is a memSource whose study reads fail, as an Orthanc that
// stops answering, while fail is set.
type failingSource struct {
	*memSource
	fail  atomic.Bool
	only  string       // if set, only this study's reads fail
	calls atomic.Int32 // failed reads
}

func (s *failingSource) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	if s.fail.Load() && (s.only == "" || s.only == id) {
		s.calls.Add(1)
		return nil, &orthancapi.Error{Method: http.MethodGet, Path: "/studies/" + id + "/instances", StatusCode: http.StatusServiceUnavailable}
	}
	return s.memSource.StudyInstances(ctx, id)
}

// A held study let through as the trial after queries kept failing, whose
// source then fails before any request reaches the destination, says
// nothing of the destination: the breaker stays open and probes on.
// Before, the source's error closed it, and the held studies went, each
// a failure spending a delivery, to a destination still down.
func TestBreakerTrialFailingAtItsSource(t *testing.T) {
	ns := testnats.Start(t)
	src := &failingSource{memSource: newMemSource(2)}
	var k sink
	k.status.Store(http.StatusServiceUnavailable) // its QIDO-RS too
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons, err := natsjs.DefaultTopology().EnsureConsumer(context.Background(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	prober := newProber(t, srv.URL)
	f := newForwarder(t, src.memSource, srv.URL, cons, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.DeadLetters, o.MaxDeliveries = &memDeadLetters{}, 10
		o.Concurrency = 1
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 50 * time.Millisecond, MaxProbeInterval: 50 * time.Millisecond, Prober: prober}
	})
	runForwarder(t, f)
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(context.Background(), testEvent()); err != nil {
		t.Fatal(err)
	}
	waitOpenHolding(t, f, 1)
	deadline := time.Now().Add(15 * time.Second)
	src.fail.Store(true)
	// Two trials (4 failed probes each), or, before, the trial and the
	// study's retry with the breaker closed.
	for src.calls.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d failed reads, want 2", src.calls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b := f.Status(); b.State == "closed" {
		t.Errorf("breaker %+v after trials failing at their source, with the destination and its queries down: want still open", b)
	}
}

// The destination is back, its probe passes, and the oldest held study,
// the trial, reaches no destination (its source fails; its rules, changed
// meanwhile, select none of it): the next held study is the trial at
// once, and is stored after that one probe. Before, the breaker opened
// again on it, doubled its wait, and a second probe came first.
func TestBreakerTrialHandsOverWhenItSaysNothing(t *testing.T) {
	for _, tt := range []string{"source fails", "rules select none"} {
		t.Run(tt, func(t *testing.T) { testBreakerTrialHandsOver(t, tt == "source fails") })
	}
}

func testBreakerTrialHandsOver(t *testing.T, sourceFails bool) {
	ns := testnats.Start(t)
	first := testEvent()
	src := &failingSource{memSource: newMemSource(2), only: first.OrthancStudyID}
	var skipFirst atomic.Bool
	var k sink
	stores := k.handler(nil)
	var storeDown atomic.Bool
	storeDown.Store(true)
	var posts, probes, probesAtStore atomic.Int32
	bothSent := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet:
			answerProbe(w, &probes)
		case storeDown.Load():
			// Both studies in flight before either fails: both held.
			if posts.Add(1) == 2 {
				close(bothSent)
			}
			select {
			case <-bothSent:
			case <-time.After(10 * time.Second):
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
		default:
			probesAtStore.CompareAndSwap(0, probes.Load())
			stores.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	prober := newProber(t, srv.URL)
	f := newForwarder(t, src.memSource, srv.URL, cons, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.Router = routerFunc(func() Router {
			if skipFirst.Load() {
				return skipStudy(first.OrthancStudyID)
			}
			return nil
		})
		o.DeadLetters, o.MaxDeliveries = &memDeadLetters{}, 10
		o.Concurrency, o.RequestConcurrency, o.MinRequestConcurrency = 2, 2, 2
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 3 * time.Second, MaxProbeInterval: time.Minute, Prober: prober}
	})
	runForwarder(t, f)
	second := testEvent()
	second.OrthancStudyID, second.StudyInstanceUID = "00000002-4f66fb14-03f4081b-f9341db2-53925988", "1.2.4"
	for _, ev := range []*events.StudyStable{first, second} {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	waitOpenHolding(t, f, 2)
	deadline := time.Now().Add(20 * time.Second)
	if sourceFails {
		src.fail.Store(true)
	} else {
		skipFirst.Store(true)
	}
	storeDown.Store(false)
	probes.Store(0)
	for probesAtStore.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing stored after %d probes", probes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sourceFails && src.calls.Load() == 0 {
		t.Fatal("the first study's source did not fail: it was not the trial")
	}
	if n := probesAtStore.Load(); n != 1 {
		t.Errorf("the second study stored after %d probes, want after the first", n)
	}
}

// skipStudy is a Router that selects none of one study.
type skipStudy string

func (s skipStudy) Select(_ context.Context, _, studyID string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
	if studyID == string(s) {
		return nil, nil
	}
	return in, nil
}

// A destination throttling every request for longer than the limiter
// pauses (429 with Retry-After: 3600, a quota spent for the day) opens the
// breaker and holds the study within one delivery: each study retried on
// its own spent its deliveries and was dead-lettered. (The recovery is
// TestBreakerHoldsWithinOneDelivery's; here a trial would wait out the
// limiter's 5-minute pause first.)
func TestBreakerHoldsThroughALongThrottle(t *testing.T) {
	ns := testnats.Start(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		http.Error(w, "quota exceeded", http.StatusTooManyRequests)
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.DeadLetters, o.MaxDeliveries, o.Concurrency = dls, 2, 1
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: newProber(t, srv.URL)}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	testharness.WaitFor(t, "the study held by the open breaker", 15*time.Second, func() bool {
		b := f.Status()
		return b.State == "open" && b.Held == 1
	})
	// Past the ack wait and several probes (a trial may be let through
	// after failed ones: it waits out the limiter's pause, in hand).
	time.Sleep(4 * time.Second)
	if info, err := cons.Info(ctx); err != nil || info.Delivered.Consumer != 1 || info.NumRedelivered != 0 || info.NumAckPending != 1 {
		t.Fatalf("consumer %+v (%v), want the study delivered once and in hand", info, err)
	}
	if n := len(dls.all()); n != 0 {
		t.Fatalf("%d dead letters during the throttle", n)
	}
}

// sizedSource lists every instance of its memSource for the study big,
// the first one alone for any other.
type sizedSource struct {
	*memSource
	big string
}

func (s sizedSource) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	if id == s.big {
		return s.instances, nil
	}
	return s.instances[:1], nil
}

// trialRig is a fresh JetStream's lanes, a large study of n instances
// (its source lists them all) and a stat study of one, for the tests of
// the breaker's trial.
type trialRig struct {
	ns        *testnats.Server
	lanes     map[events.Priority]jetstream.Consumer
	big, stat *events.StudyStable
	src       sizedSource
}

func newTrialRig(t *testing.T, n int) *trialRig {
	t.Helper()
	r := &trialRig{ns: testnats.Start(t)}
	topo := natsjs.DefaultTopology()
	topo.AckWait = 3 * time.Second
	all, err := topo.EnsureLanes(t.Context(), r.ns.JS, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	r.lanes = all[natsjs.DefaultDestination]
	r.big, r.stat = testEvent(), testEvent()
	r.big.OrthancStudyID, r.big.StudyInstanceUID = "bbbbbbbb-4f66fb14-03f4081b-f9341db2-53925988", "1.2.9.1"
	r.stat.OrthancStudyID, r.stat.StudyInstanceUID = "aaaaaaaa-4f66fb14-03f4081b-f9341db2-53925988", "1.2.9.2"
	r.src = sizedSource{memSource: newMemSource(n), big: r.big.OrthancStudyID}
	return r
}

// publish stores ev in lane for every destination.
func (r *trialRig) publish(t *testing.T, ev *events.StudyStable, lane events.Priority) {
	t.Helper()
	if _, err := natsjs.PublishTo(t.Context(), r.ns.JS, natsjs.LaneSubject(lane, "", ev.Source), ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
}

// TestBreakerTrialEndsAtItsFirstStoredRequest: after a short outage, the
// held study that is the half-open breaker's trial is a large one, sent
// again whole. The destination's first answer storing some of it closes
// the breaker: a stat study published meanwhile is stored while the
// trial still sends. Before, the breaker stayed half-open for the whole
// re-send (hours for 20,000 instances) and no worker pulled, the stat
// one included.
func TestBreakerTrialEndsAtItsFirstStoredRequest(t *testing.T) {
	r := newTrialRig(t, 40)
	lanes, big, stat, src := r.lanes, r.big, r.stat, r.src

	var k sink
	stores := k.handler(nil)
	var down atomic.Bool
	down.Store(true)
	var storedPosts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case down.Load():
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.Method == http.MethodGet:
			answerProbe(w, new(atomic.Int32))
		default:
			// A slow destination: the large study's 20 requests, one at
			// a time, take 6 s.
			time.Sleep(300 * time.Millisecond)
			stores.ServeHTTP(w, r)
			storedPosts.Add(1)
		}
	}))
	t.Cleanup(srv.Close)
	f := newForwarder(t, src.memSource, srv.URL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.Concurrency, o.StatWorkers = 1, 1
		o.MaxInstances, o.RequestConcurrency = 2, 1
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: newProber(t, srv.URL)}
	})
	runForwarder(t, f)
	r.publish(t, big, events.PriorityRoutine)
	waitOpenHolding(t, f, 1)
	down.Store(false)
	// The trial is sending: its first request was stored.
	deadline := time.Now().Add(15 * time.Second)
	for storedPosts.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no trial request stored; breaker %+v", f.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.publish(t, stat, events.PriorityStat)
	waitConsumer(t, lanes[events.PriorityStat], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 })
	info, err := lanes[events.PriorityRoutine].Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 0 || info.NumAckPending != 1 {
		t.Fatalf("the stat study was stored only after the trial's whole re-send (large study acked up to %d, %d in hand; %d requests stored)",
			info.AckFloor.Stream, info.NumAckPending, storedPosts.Load())
	}
	// The trial goes on as an ordinary study, and is stored whole.
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	if st := f.Status(); st.State != "closed" || st.Held != 0 || st.Failures != 0 {
		t.Errorf("breaker %+v, want closed, nothing held", st)
	}
}

// TestBreakerTrialSendsWhatTheDestinationLacksFirst: a 503 outage
// catches a large study three quarters sent, and halves the limit down to
// its floor. The held study is the trial: sent again from its start, it
// re-sent first, one request at a time, the 30 requests the destination
// held already, none ending the trial, while every other study, a stat
// one too, was held. Now its first request after the outage carries what
// the destination lacks, closes the breaker, and the stat study goes.
func TestBreakerTrialSendsWhatTheDestinationLacksFirst(t *testing.T) {
	r := newTrialRig(t, 80)
	lanes, big, stat, src := r.lanes, r.big, r.stat, r.src

	var mu sync.Mutex
	held := map[string]bool{}
	var outage, recovered bool
	var afterOutage []bool // whether each POST after the outage carried an instance the destination lacked
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		down := outage
		mu.Unlock()
		if r.Method == http.MethodGet {
			if down {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			answerProbe(w, new(atomic.Int32))
			return
		}
		uids := partUIDs(r)
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		fresh := false
		var items []string
		for _, u := range uids {
			fresh = fresh || !held[u]
			held[u] = true
			items = append(items, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["`+u+`"]}}`)
		}
		if recovered {
			afterOutage = append(afterOutage, fresh)
		} else if len(held) >= 60 {
			outage = true
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
	}))
	t.Cleanup(srv.Close)
	f := newForwarder(t, src.memSource, srv.URL, nil, func(o *Options) {
		o.Lanes = laneList(lanes)
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.Concurrency, o.StatWorkers = 1, 1
		o.Failures = &memFailureLog{}
		o.MaxInstances, o.RequestConcurrency, o.MinRequestConcurrency = 2, 8, 1
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: newProber(t, srv.URL)}
	})
	runForwarder(t, f)
	r.publish(t, big, events.PriorityRoutine)
	waitOpenHolding(t, f, 1)
	mu.Lock()
	t.Logf("breaker open; the destination holds %d of 80 instances; limit %d", len(held), f.Status().Requests)
	outage, recovered = false, true
	mu.Unlock()
	r.publish(t, stat, events.PriorityStat)
	waitConsumer(t, lanes[events.PriorityStat], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 })
	waitConsumer(t, lanes[events.PriorityRoutine], func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(held) != 80 {
		t.Errorf("the destination holds %d of 80 instances", len(held))
	}
	if len(afterOutage) == 0 || !afterOutage[0] {
		first := slices.Index(afterOutage, true)
		t.Fatalf("the trial's first request after the outage re-sent only instances the destination held (%d such requests before the first with one it lacked)", first)
	}
}

// A destination whose storage fills while a study is half sent: from
// then on it refuses each new instance 0xA700 (out of resources), in a
// 409, while its QIDO-RS answers, and answers each instance it holds
// from its index: 0x0111 (duplicate), or as stored again (Orthanc). The
// held study is the trial and is sent again from its start: its first
// request, answered for duplicates alone, closed the breaker (a2a10110),
// which spent a delivery at every trial and dead-lettered the study,
// where an outage spends two at most.
func TestBreakerTrialNotEndedByDuplicatesAlone(t *testing.T) {
	for _, orthancLike := range []bool{false, true} {
		t.Run(map[bool]string{false: "0x0111", true: "stored again"}[orthancLike], func(t *testing.T) {
			trialNotEndedByDuplicates(t, orthancLike)
		})
	}
}

func trialNotEndedByDuplicates(t *testing.T, orthancLike bool) {
	ns := testnats.Start(t)
	var mu sync.Mutex
	held := map[string]bool{}
	var posts, probes atomic.Int32
	item := func(uid string, code int) string {
		return fmt.Sprintf(`{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["%s"]},"00081197":{"vr":"US","Value":[%d]}}`, uid, code)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			answerProbe(w, &probes)
			return
		}
		uids := partUIDs(r)
		n := posts.Add(1)
		w.Header().Set("Content-Type", "application/dicom+json")
		mu.Lock()
		defer mu.Unlock()
		if n <= 2 { // stored: the storage fills after these
			var items []string
			for _, u := range uids {
				held[u] = true
				items = append(items, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["`+u+`"]}}`)
			}
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
			return
		}
		var failed, stored []string
		for _, u := range uids {
			switch {
			case !held[u]:
				failed = append(failed, item(u, 0xA700))
			case orthancLike:
				stored = append(stored, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["`+u+`"]}}`)
			default:
				failed = append(failed, item(u, 0x0111))
			}
		}
		switch {
		case len(failed) == 0:
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(stored, ","))
		case len(stored) == 0:
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[%s]}}`, strings.Join(failed, ","))
		default:
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[%s]},"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(failed, ","), strings.Join(stored, ","))
		}
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	obs := &deliveryObserver{delivered: map[uint64]uint64{}}
	f := newForwarder(t, newMemSource(8), srv.URL, cons, func(o *Options) {
		o.Concurrency, o.MaxInstances, o.RequestConcurrency = 1, 2, 1
		o.Failures = &memFailureLog{}
		o.DeadLetters, o.MaxDeliveries = dls, 6
		o.Observer = obs
		o.RetryDelay, o.RetryMaxDelay = 100*time.Millisecond, 200*time.Millisecond
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: newProber(t, srv.URL)}
	})
	runForwarder(t, f)
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), testEvent()); err != nil {
		t.Fatal(err)
	}
	// Thirty probes passed, each followed by a trial (or the study was
	// dead-lettered, as before).
	waitProbes(t, &probes, 30, func() bool { return len(dls.all()) > 0 })
	delivered := obs.snapshot()
	if len(dls.all()) > 0 || delivered[1] > 2 {
		t.Errorf("the study spent %d deliveries (%d dead letters) over %d probes while the destination's storage was full, want at most 2",
			delivered[1], len(dls.all()), probes.Load())
	}
}
