package forward

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// memDeadLetters is a DeadLetterStore in memory.
type memDeadLetters struct {
	mu      sync.Mutex
	letters []DeadLetter
}

func (m *memDeadLetters) Add(_ context.Context, l *DeadLetter) (uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.letters = append(m.letters, *l)
	return uint64(len(m.letters)), false, nil
}

func (m *memDeadLetters) all() []DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]DeadLetter(nil), m.letters...)
}

// panickySource panics when asked for one study, and serves the others.
type panickySource struct {
	*memSource
	poison string
	calls  atomic.Int32
}

func (s *panickySource) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	s.calls.Add(1)
	if id == s.poison {
		var none []orthancapi.Instance
		return none[:len(id)], nil // out of range: a real runtime panic, not a prepared one
	}
	return s.memSource.StudyInstances(ctx, id)
}

func otherEvent() *events.StudyStable {
	ev := testEvent()
	ev.OrthancStudyID = "11111111-11111111-11111111-11111111-11111111"
	ev.StudyInstanceUID = "1.2.4"
	return ev
}

// A study whose forwarding panics is dead-lettered as a crash, with the
// panic and where it happened, and the forwarder goes on with the others.
func TestPanicIsDeadLetteredAsCrash(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	src := &panickySource{memSource: newMemSource(4), poison: testEvent().OrthancStudyID}
	dls := &memDeadLetters{}
	rec := &recordingObserver{}
	f := newForwarder(t, nil, srv.URL, cons, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.DeadLetters = dls
		o.MaxDeliveries = 5
		o.Observer = rec
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	pub := natsjs.Publisher{JS: ns.JS}
	for _, ev := range []*events.StudyStable{testEvent(), otherEvent()} {
		if _, err := pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 2 && i.NumAckPending == 0 })
	cancel()
	if err := <-done; err != nil { // every attempt settled and observed
		t.Fatal(err)
	}

	letters := dls.all()
	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want 1: %+v", len(letters), letters)
	}
	l := letters[0]
	if l.Class != Crash || l.Event.OrthancStudyID != testEvent().OrthancStudyID || l.Attempts != 1 {
		t.Errorf("dead letter = class %q, study %s, attempts %d; want crash, the poison study, 1", l.Class, l.Event.OrthancStudyID, l.Attempts)
	}
	for _, want := range []string{"panic: runtime error: slice bounds out of range", "forward.(*panickySource).StudyInstances", "poison_test.go:"} {
		if !strings.Contains(l.Reason, want) {
			t.Errorf("reason %q does not name %q", l.Reason, want)
		}
	}
	if k.requests.Load() == 0 {
		t.Error("the other study was not forwarded after the panic")
	}
	if got := rec.results(); got[ResultDeadLettered] != 1 || got[ResultForwarded] != 1 {
		t.Errorf("observer saw %v, want one dead_lettered and one forwarded", got)
	}
}

// A delivery past FORWARDER_MAX_DELIVERIES means the deliveries before it
// never finished (the process died with the study): it is dead-lettered
// before the source is even asked. Replacing by DELETE, the one that died
// may have left instances deleted at the destination: the reason says so.
func TestDeliveryPastTheLimitIsDeadLetteredUntried(t *testing.T) {
	tests := []struct {
		name      string
		conflicts ConflictPolicy
		// deleted: the reason says instances may be deleted there.
		deleted bool
	}{
		{name: "skip"},
		{name: "replace by put", conflicts: ConflictPolicy{Action: ConflictReplace, Method: ReplacePut}},
		{name: "replace by delete", conflicts: ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete}, deleted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			topo := natsjs.DefaultTopology()
			topo.AckWait = time.Second
			cons, err := topo.EnsureConsumer(context.Background(), ns.JS, natsjs.DefaultDestination)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
				t.Fatal(err)
			}
			// Two deliveries that end without an outcome, as when the
			// forwarder holding them is killed: nothing acks, NAKs or
			// terminates them.
			for range 2 {
				msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
				if err != nil {
					t.Fatal(err)
				}
				_ = msg // abandoned; JetStream redelivers after the ack wait
			}
			src := &panickySource{memSource: newMemSource(1)}
			dls := &memDeadLetters{}
			f := newForwarder(t, nil, "http://127.0.0.1:1", cons, func(o *Options) {
				o.SourceFor = func(string) (Source, error) { return src, nil }
				o.DeadLetters = dls
				o.MaxDeliveries = 2
				o.Conflicts = tt.conflicts
			})
			go func() { _ = f.Run(ctx) }()
			waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
			letters := dls.all()
			if len(letters) != 1 || letters[0].Class != Crash || letters[0].Attempts != 3 || !strings.Contains(letters[0].Reason, "delivered 3 times") {
				t.Fatalf("dead letters = %+v; want one crash letter after 3 deliveries", letters)
			}
			const deleted = "(STOW_ON_CONFLICT=replace, STOW_REPLACE_METHOD=delete): a delivery that stopped between the two left instances deleted there and not stored again: replay it"
			if got := strings.Contains(letters[0].Reason, deleted); got != tt.deleted {
				t.Errorf("reason %q: %q in it: %v, want %v", letters[0].Reason, deleted, got, tt.deleted)
			}
			if n := src.calls.Load(); n != 0 {
				t.Errorf("the source was asked %d times for a study past its delivery limit", n)
			}
		})
	}
}

// recordingObserver counts what the forwarder reports.
type recordingObserver struct {
	mu       sync.Mutex
	started  int
	last     map[*Attempt]Report
	finished map[Result]int
	reports  []Report
	holds    []string // what Held was told
	retries  []retried
}

// retried is what Retrying was told.
type retried struct {
	class  Class
	reason string
	in     time.Duration // from the call to due
}

func (r *recordingObserver) Retrying(_ *Attempt, class Class, reason string, due time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retries = append(r.retries, retried{class, reason, time.Until(due)})
}

func (r *recordingObserver) Held(_ *Attempt, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holds = append(r.holds, why)
}

func (r *recordingObserver) Started(*Attempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started++
}

func (r *recordingObserver) Progress(a *Attempt, rep Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[*Attempt]Report{}
	}
	r.last[a] = rep
}

func (r *recordingObserver) Finished(_ *Attempt, res Result, rep Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished == nil {
		r.finished = map[Result]int{}
	}
	r.finished[res]++
	r.reports = append(r.reports, rep)
}

func (r *recordingObserver) results() map[Result]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[Result]int{}
	for k, v := range r.finished {
		out[k] = v
	}
	return out
}

// waitFinished waits until the observer was told n attempts finished
// with res. An event's ack comes before the observer hears of it
// (settle), so a test that saw the consumer's ack floor reach its events
// waits here before it reads the results.
func (r *recordingObserver) waitFinished(t *testing.T, res Result, n int) {
	t.Helper()
	testharness.WaitFor(t, fmt.Sprintf("%d attempts finished %s", n, res), 10*time.Second, func() bool {
		return r.results()[res] >= n
	})
	if got := r.results(); got[res] != n {
		t.Errorf("finished %v, want %d %s", got, n, res)
	}
}

// refusingDeadLetters cannot store a letter (the dead-letter stream
// full, NATS lost).
type refusingDeadLetters struct{}

func (refusingDeadLetters) Add(context.Context, *DeadLetter) (uint64, bool, error) {
	return 0, false, errors.New("dead-letter stream full")
}

// A study refused for good whose dead letter cannot be stored stays
// queued (NAKed): its failure is counted once its letter is stored, not
// at each delivery that could not store it.
func TestFailureCountedWhenItsLetterIsStored(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	k.status.Store(http.StatusBadRequest)
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	rec := &recordingObserver{}
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.DeadLetters = refusingDeadLetters{}
		o.Observer = rec
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	testharness.WaitFor(t, "the study's letter refused", 30*time.Second, func() bool { return rec.results()[ResultRetry] > 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(f.m.failures.WithLabelValues(string(Permanent))); n != 0 {
		t.Errorf("failures_total{class=permanent} = %v with no letter stored, want 0", n)
	}
}

// panicAt panics with v depth calls down and returns the crash error
// recovered from it, as transferRecovering makes one.
func panicAt(depth int, v any) (ce *crashError) {
	defer func() {
		if r := recover(); r != nil {
			ce = newCrashError(r)
		}
	}()
	var down func(n int)
	down = func(n int) {
		if n == 0 {
			panic(v)
		}
		down(n - 1)
	}
	down(depth)
	return nil
}

// A crash's dead letter keeps a bounded part of the panic: its value cut
// to maxPanicText (a value may print a whole DICOM element or response
// body), and the top maxCrashFrames frames of however deep a stack.
func TestCrashErrorBounded(t *testing.T) {
	for _, tt := range []struct {
		name      string
		depth     int
		value     any
		wantValue string
	}{
		{"short value", 1, "boom", "boom"},
		{"value just within the bound", 1, strings.Repeat("v", maxPanicText), strings.Repeat("v", maxPanicText)},
		{"value past the bound", 1, strings.Repeat("v", maxPanicText+1), strings.Repeat("v", maxPanicText) + "…"},
		{"long error value", 1, errors.New(strings.Repeat("e", 10_000)), strings.Repeat("e", maxPanicText) + "…"},
		{"deep stack", 3 * maxCrashFrames, "deep", "deep"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ce := panicAt(tt.depth, tt.value)
			if ce == nil {
				t.Fatal("no panic recovered")
			}
			if ce.value != tt.wantValue {
				t.Errorf("value %d characters %.20q…, want %d %.20q…", len(ce.value), ce.value, len(tt.wantValue), tt.wantValue)
			}
			if len(ce.frames) == 0 || len(ce.frames) > maxCrashFrames {
				t.Errorf("%d frames, want 1 to %d: %q", len(ce.frames), maxCrashFrames, ce.frames)
			}
			if !strings.Contains(ce.frames[0], "poison_test.go:") {
				t.Errorf("top frame %q, want the panicking function in poison_test.go", ce.frames[0])
			}
		})
	}
}
