package forward

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// growingSource lists the first listFirst instances of its study once,
// then all of them: the study gained an instance (a dose report) after
// its first event.
type growingSource struct {
	*memSource
	listFirst int
	listed    atomic.Int32
}

func (s *growingSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	if s.listed.Add(1) == 1 {
		return s.instances[:s.listFirst], nil
	}
	return s.instances, nil
}

// slowly answers each request after a pause, so that a study's attempt
// lasts while another delivery of it arrives.
func slowly(next http.Handler, pause time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(pause)
		next.ServeHTTP(w, r)
	})
}

// TestStudySentByOneDeliveryAtATime: two events of one study (100
// instances, then 101: it gained one) delivered at once to two workers
// are sent one after the other, not side by side: the second finds the
// first's instances as stowline's own copies, not conflicts. Sent side
// by side, each took the instances the other stored for conflicts
// (45070): skip counted them and kept them in the source, deadletter
// dead-lettered the study.
func TestStudySentByOneDeliveryAtATime(t *testing.T) {
	for _, action := range []string{ConflictSkip, ConflictDeadLetter} {
		t.Run(action, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			srv := httptest.NewServer(slowly(dest, 20*time.Millisecond))
			t.Cleanup(srv.Close)
			src := &growingSource{memSource: newMemSource(101), listFirst: 100}
			for i := range src.instances {
				src.instances[i].FileUUID = fmt.Sprintf("file-%d", i)
			}
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			f := newForwarder(t, nil, srv.URL, cons, out.options, func(o *Options) {
				o.SourceFor = func(string) (Source, error) { return src, nil }
				o.Concurrency = 2
				o.MaxInstances = 10
				o.Failures, o.Registerer = &memFailureLog{}, prometheus.NewRegistry()
				o.Conflicts = azureConflicts(action)
				o.Conflicts.Method = ReplacePut
			})
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			older, newer := testEvent(), testEvent()
			newer.LastUpdate = "20261126T101600"
			for _, ev := range []*events.StudyStable{older, newer} {
				if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()
			waitConsumerWithin(t, cons, time.Minute, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 && i.NumAckPending == 0 })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			noneSkipped(t, f)
			comps := out.settled(t, 2)
			for _, c := range comps {
				if len(c.Kept) > 0 {
					t.Errorf("a completion keeps %d instances in the source (first %s), though the destination holds them as sent", len(c.Kept), c.Kept[0])
				}
			}
			if stored := strings.Count(dest.answered(), ":stored"); stored != 101 {
				t.Errorf("%d instances stored, want each of the 101 once", stored)
			}
		})
	}
}

// otherReplica is a destination to which another replica sends the same
// study just ahead of this one: it stores each instance of a request and
// records it as stowline's (fl) for that replica's event, then answers
// this one "already exists" (45070) for it.
type otherReplica struct {
	fl    *memFailureLog
	ev    *events.StudyStable // the other replica's
	files map[string]orthancapi.Instance
}

func (d *otherReplica) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var failed, ids []string
	for _, uid := range partUIDs(r) {
		ids = append(ids, sentID(d.ev, d.files[uid]))
		failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[45070]}}`, uid))
	}
	if err := d.fl.RememberSent(r.Context(), d.ev, ids); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	stowsink.WriteAnswer(w, nil, failed)
}

// TestConflictAnswerReadsTheRecordAgain: an attempt reads what stowline
// stored of its study at its first conflict answer, and again when a
// later answer names an instance that read lacks: another replica sending
// the study at the same time recorded it since. Each is stowline's own
// copy, already stored, not a conflict.
func TestConflictAnswerReadsTheRecordAgain(t *testing.T) {
	for _, action := range []string{ConflictSkip, ConflictDeadLetter} {
		t.Run(action, func(t *testing.T) {
			src := newMemSource(5)
			files := map[string]orthancapi.Instance{}
			for i := range src.instances {
				src.instances[i].FileUUID = fmt.Sprintf("file-%d", i)
				files[src.instances[i].SOPInstanceUID] = src.instances[i]
			}
			fl := &memFailureLog{}
			other := testEvent()
			other.LastUpdate = "20261126T101600"
			srv := httptest.NewServer(&otherReplica{fl: fl, ev: other, files: files})
			t.Cleanup(srv.Close)
			f := newForwarder(t, src, srv.URL, nil, func(o *Options) {
				o.Failures = fl
				o.MaxInstances = 1
				o.RequestConcurrency, o.MinRequestConcurrency = 1, 1
				o.Conflicts = azureConflicts(action)
			})
			rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Conflicts != 0 || len(rep.kept) > 0 {
				t.Errorf("%d conflicts, kept %v: want none, the other replica's copies are stowline's own", rep.Conflicts, rep.kept)
			}
			if rep.AlreadyStored != 5 || rep.Instances != 5 {
				t.Errorf("%d of %d instances already stored, want 5 of 5", rep.AlreadyStored, rep.Instances)
			}
		})
	}
}

// fakeClock is storedRecord's clock in tests: pause moves it on.
type fakeClock struct {
	mu sync.Mutex
	at time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{at: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at
}

func (c *fakeClock) pause(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = c.at.Add(d)
	return true
}

// TestStoredRecordReadsAgainOnlyForLaterAnswers: a miss reads the record
// again only for an answer that came after the last read began, so a
// study whose instances are real conflicts costs one read an answer, not
// one an instance; a zero answer time never reads it again.
func TestStoredRecordReadsAgainOnlyForLaterAnswers(t *testing.T) {
	clock := newFakeClock()
	reads := 0
	r := &storedRecord{read: func(bool) (func(string) bool, bool) {
		reads++
		return func(id string) bool { return id == "recorded" }, true
	}, now: clock.now, pause: clock.pause}
	before := clock.now()
	for _, step := range []struct {
		id        string
		answered  time.Duration // after before; 0: zero time
		want      bool
		wantReads int
	}{
		{"recorded", 0, true, 1},
		{"other", 0, false, 1},
		{"other", time.Nanosecond, false, 1},
		{"other", time.Second, false, 2},
		{"another", -time.Hour, false, 2},
		{"recorded", time.Hour, true, 2},
	} {
		var answered time.Time
		if step.answered != 0 {
			answered = before.Add(step.answered)
		}
		if step.answered == time.Nanosecond {
			answered = before // the read began as it was received
		}
		if got := r.holds(step.id, answered); got != step.want || reads != step.wantReads {
			t.Errorf("holds(%s) = %v after %d reads, want %v after %d", step.id, got, reads, step.want, step.wantReads)
		}
	}
}

// TestStoredRecordReadsBounded: a study whose instances all miss the
// record (its files replaced in Orthanc) asks at every answer. The record
// is read at most every rereadEvery, and only its last read is kept and
// looked in: each read was kept for the whole attempt (100,000 instances,
// a read a request: about 1,000 maps of up to 120,000 IDs), and every
// question looked in each of them.
func TestStoredRecordReadsBounded(t *testing.T) {
	const answers = 1000
	clock := newFakeClock()
	var reads, lookups int
	r := &storedRecord{read: func(bool) (func(string) bool, bool) {
		reads++
		return func(string) bool { lookups++; return false }, true
	}, now: clock.now, pause: clock.pause}
	start := clock.now()
	for i := range answers {
		clock.pause(10 * time.Millisecond) // an answer every 10 ms
		if r.holds(fmt.Sprintf("id-%d", i), clock.now()) {
			t.Fatalf("holds(id-%d): the record holds none", i)
		}
	}
	if most := int(clock.now().Sub(start)/rereadEvery) + 1; reads > most {
		t.Errorf("%d reads in %v, want at most %d (one every %v)", reads, clock.now().Sub(start), most, rereadEvery)
	}
	if lookups > 3*answers {
		t.Errorf("%d look-ups for %d questions, want at most 3 each (the last read, before and after a pause, and one made for it)", lookups, answers)
	}
}

// TestWaitingDeliveryKeptInProgress: a delivery waiting for another of
// its study is kept in progress past the ack wait (JetStream does not
// hand it out again, and no delivery is spent), and at shutdown goes back
// to the queue, as does the one it waited for.
func TestWaitingDeliveryKeptInProgress(t *testing.T) {
	const waiting = "waiting: another delivery of the study is being sent"
	src := newMemSource(2)
	src.block = make(chan struct{}) // the first attempt stays in hand
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	obs := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) {
		o.Observer = obs
		o.Concurrency = 2
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	newer := testEvent()
	newer.LastUpdate = "20261126T101600"
	for _, ev := range []*events.StudyStable{testEvent(), newer} {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitHold(t, obs, done, waiting)
	// Nothing to wait for but the ack wait passing twice without a
	// redelivery.
	quiet := time.After(2 * f.opts.AckWait)
	for waitingOut := false; !waitingOut; {
		select {
		case <-quiet:
			waitingOut = true
		case <-time.After(100 * time.Millisecond):
		}
		info, err := cons.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumRedelivered > 0 || info.NumAckPending != 2 {
			t.Fatalf("while one delivery waits for the other: %d redelivered, %d pending ack; want 0 and 2", info.NumRedelivered, info.NumAckPending)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := obs.results()[ResultInterrupted]; got != 2 {
		t.Errorf("results %v: want both deliveries given back (interrupted)", obs.results())
	}
	// Given back, both are another forwarder's to send.
	close(src.block)
	f2 := newForwarder(t, src, srv.URL, cons)
	ctx2, cancel2 := context.WithCancel(context.Background())
	t.Cleanup(cancel2)
	go func() { _ = f2.Run(ctx2) }()
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 && i.NumAckPending == 0 })
}

// TestStoredRecordPatience: only a conflict answer's first read waits
// through a leader election (patient); a read for a count only
// (heldBefore: a redelivery's first confirmed answer) is tried once, and
// its failure neither makes the conflict answer's read impatient nor
// stops it. A failed read pauses reading for rememberTimeout, and the
// read after that pause, or after a first one, is not patient.
func TestStoredRecordPatience(t *testing.T) {
	type step struct {
		after     time.Duration // the clock moves on by this first
		count     bool          // heldBefore, else holds for an answer now
		fails     bool          // the read, if one, fails
		wantReads []bool        // the reads made so far, patient or not
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"count first, then a conflict answer", []step{
			{count: true, wantReads: []bool{false}},
			{after: time.Second, wantReads: []bool{false, false}},
		}},
		{"a failed count read leaves the answer's patient", []step{
			{count: true, fails: true, wantReads: []bool{false}},
			{count: true, wantReads: []bool{false}},
			{after: time.Second, wantReads: []bool{false, true}},
		}},
		{"a failed answer's read pauses both", []step{
			{fails: true, wantReads: []bool{true}},
			{after: time.Second, wantReads: []bool{true}},
			{count: true, wantReads: []bool{true}},
			{after: rememberTimeout, wantReads: []bool{true, false}},
		}},
		{"a read after the first is not patient", []step{
			{wantReads: []bool{true}},
			{after: time.Second, wantReads: []bool{true, false}},
			{count: true, wantReads: []bool{true, false}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			var reads []bool
			fails := false
			r := &storedRecord{read: func(patient bool) (func(string) bool, bool) {
				reads = append(reads, patient)
				return func(string) bool { return false }, !fails
			}, now: clock.now, pause: clock.pause}
			for i, s := range tc.steps {
				clock.pause(s.after)
				fails = s.fails
				if s.count {
					r.heldBefore("id")
				} else {
					r.holds("id", clock.now())
				}
				if fmt.Sprint(reads) != fmt.Sprint(s.wantReads) {
					t.Fatalf("step %d: reads (patient or not) %v, want %v", i+1, reads, s.wantReads)
				}
			}
		})
	}
}

// TestTrialWaitsForTheStudysOtherDelivery: an event pulled as the
// breaker's trial, its study's other delivery in hand here, waits until
// that one is held (the breaker's hold may be waiting for this very
// trial) and only then goes beside it; pulled once the breaker closed, it
// is an ordinary study and waits for the other to end. It went beside
// one still sending, at once.
func TestTrialWaitsForTheStudysOtherDelivery(t *testing.T) {
	for _, tc := range []struct {
		name       string
		shut       bool
		heldBefore bool // the other delivery is held already
		outlasts   bool // the other sends on past a probe interval
		// pulledClosed: the breaker closed after it pulled the trial,
		// which finds it closed (pulling still set).
		pulledClosed bool
		wantTurn     bool // the trial takes the study's turn (ordinary)
	}{
		{name: "breaker shut, the other sending", shut: true},
		{name: "breaker shut, the other held", shut: true, heldBefore: true},
		{name: "breaker shut, the other sending past a probe interval", shut: true, outlasts: true, wantTurn: true},
		{name: "breaker closed", wantTurn: true},
		{name: "breaker closed after it pulled the trial", pulledClosed: true, wantTurn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &recordingObserver{}
			probe := time.Hour
			if tc.outlasts {
				probe = 10 * time.Millisecond
			}
			f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
				o.Observer = obs
				o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: probe}
			})
			if tc.shut {
				f.breaker.mu.Lock()
				// As startPulledTrial leaves it for the pulled trial.
				f.breaker.state, f.breaker.pulling, f.breaker.pulledTrials = BreakerOpen, true, 1
				f.breaker.mu.Unlock()
			}
			if tc.pulledClosed {
				f.breaker.mu.Lock()
				// A study stored as the trial was pulled closed it.
				f.breaker.pulling, f.breaker.pulledTrials = true, 1
				f.breaker.mu.Unlock()
			}
			log := slog.New(slog.DiscardHandler)
			holder, releaseHolder := takeHolder(t, f, log)
			if tc.heldBefore {
				f.turnHeld(holder, true)
			}
			trial := &Attempt{Event: testEvent(), Seq: 2}
			ctx := context.WithValue(t.Context(), pulledTrialKey{}, &pulledTrial{})
			done := make(chan error, 1)
			go func() {
				release, err := f.takeStudy(ctx, trial, log)
				t.Cleanup(release)
				done <- err
			}()
			if !tc.heldBefore {
				waitHold(t, obs, done, "waiting: another delivery of the study is being sent")
				if tc.outlasts || tc.pulledClosed {
					// The trial gives its place back: another may be
					// pulled while this one waits for the other's end
					// (kept, a held study could never be the next
					// trial should the breaker open again).
					waitTrialGivenUp(t, f)
					releaseHolder()
				} else if tc.shut {
					f.turnHeld(holder, true)
				} else {
					releaseHolder()
				}
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			f.inHandMu.Lock()
			owner := f.sendingStudy[studyKey(trial.Event)].owner
			f.inHandMu.Unlock()
			if got := owner == trial; got != tc.wantTurn {
				t.Errorf("the trial has the study's turn: %v, want %v", got, tc.wantTurn)
			}
		})
	}
}

// waitTrialGivenUp waits until no pulled trial is out or on its way.
func waitTrialGivenUp(t *testing.T, f *Forwarder) {
	t.Helper()
	deadline := time.Now().Add(heldWait)
	for {
		f.breaker.mu.Lock()
		free := !f.breaker.pulling && f.breaker.pulledTrials == 0
		f.breaker.mu.Unlock()
		if free {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the trial waiting for its study's other delivery still holds the breaker's trial")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBesideTrialTakesTheTurnAfterItsHold: a pulled trial sent beside
// its study's held delivery, then held itself, takes the study's turn
// once it leaves its hold no longer the trial: the other, leaving its
// hold at the same close, sends first. It was sent at once, beside it.
func TestBesideTrialTakesTheTurnAfterItsHold(t *testing.T) {
	srv, posts := postCountingSink(t)
	obs := &recordingObserver{}
	f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
		o.Observer = obs
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Hour, Prober: newProber(t, srv.URL)}
	})
	f.breaker.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.8", 8)
	log := slog.New(slog.DiscardHandler)
	holder, releaseHolder := takeHolder(t, f, log)
	f.turnHeld(holder, true)
	trial := &Attempt{Event: testEvent(), Seq: 2}
	ctx := context.WithValue(t.Context(), pulledTrialKey{}, &pulledTrial{})
	release, err := f.takeStudy(ctx, trial, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	done := make(chan error, 1)
	go func() {
		_, err := f.transferGuarded(ctx, trial, log)
		done <- err
	}()
	// The breaker opened again before the trial's first attempt: held.
	waitHold(t, obs, done, "held: destination down (circuit breaker open)")
	f.turnHeld(holder, false)
	f.breaker.record(nil, 0, "1.2.9", 9) // a study in flight stored: closed
	waitHold(t, obs, done, "waiting: another delivery of the study is being sent")
	if n := posts.Load(); n != 0 {
		t.Errorf("%d STOW-RS requests beside the study's other delivery, want none", n)
	}
	releaseHolder()
	waitStored(t, done, posts)
}

// postCountingSink is a STOW-RS destination storing what it is sent (sink)
// and counting its POSTs.
func postCountingSink(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var posts atomic.Int32
	var k sink
	stores := k.handler(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
		}
		stores.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &posts
}

// takeHolder takes the test event's study turn for a first delivery;
// release gives it back, once, and so does the test's end if it did not.
func takeHolder(t *testing.T, f *Forwarder, log *slog.Logger) (holder *Attempt, release func()) {
	t.Helper()
	holder = &Attempt{Event: testEvent(), Seq: 1}
	r, err := f.takeStudy(t.Context(), holder, log)
	if err != nil {
		t.Fatal(err)
	}
	release = sync.OnceFunc(r)
	t.Cleanup(release)
	return holder, release
}
