package forward

import (
	"context"
	"encoding/json"
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

// confirmedAck is a delivery whose ack JetStream confirms.
type confirmedAck struct{ jetstream.Msg }

func (confirmedAck) DoubleAck(context.Context) error { return nil }

// ack's result is the attempt's, whatever the study needed: what settle
// counts and tells the observer, with nothing renamed after it.
func TestAckResult(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil)
	for _, tt := range []struct {
		name string
		rep  Report
		want Result
	}{
		{"forwarded", Report{}, ResultForwarded},
		{"rules select none of it", Report{NotSelected: true}, ResultNotSelected},
		{"deleted by buffer mode, not selected", Report{NotSelected: true, deletedNotSelected: true}, ResultNotSelected},
		{"deleted by buffer mode once forwarded", Report{forwardedBefore: true}, ResultAlreadyForwarded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &Attempt{Event: testEvent(), Number: 1, Seq: 1}
			if got, _, _ := f.ack(t.Context(), confirmedAck{}, a, tt.rep, 0, f.log); got != tt.want {
				t.Errorf("confirmed ack: result %s, want %s", got, tt.want)
			}
			if got, _, _ := f.ack(t.Context(), unconfirmedAck{}, a, tt.rep, 0, f.log); got != ResultAckFailed {
				t.Errorf("unconfirmed ack: result %s, want %s", got, ResultAckFailed)
			}
		})
	}
}

// deletedSource is a source whose study is gone (404) once buffer mode
// deleted any of it.
type deletedSource struct {
	*memSource
	cleaner *memCleaner
}

func (s deletedSource) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	if len(s.cleaner.deleted) > 0 {
		return nil, &orthancapi.Error{Method: http.MethodGet, Path: "/studies/" + id + "/instances", StatusCode: http.StatusNotFound}
	}
	return s.memSource.StudyInstances(ctx, id)
}

// What studies_total shows for a study stored whose ack JetStream did not
// confirm (docs/metrics.md, ack_failed): ack_failed, and then nothing
// more if the ack arrived; forwarded if it did not and the study is
// still in the source (sent again, found stored); already_forwarded if
// buffer mode deleted it. Never forwarded once buffer mode deleted it.
func TestUnconfirmedAckCounts(t *testing.T) {
	for _, tt := range []struct {
		name    string
		arrived bool // the ack arrived, its confirmation lost
		buffer  bool // buffer mode
		want    map[Result]float64
	}{
		{"ack arrived", true, true, map[Result]float64{ResultAckFailed: 1}},
		{"ack lost, study kept", false, false, map[Result]float64{ResultAckFailed: 1, ResultForwarded: 1}},
		{"ack lost, study deleted by buffer mode", false, true, map[Result]float64{ResultAckFailed: 1, ResultAlreadyForwarded: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			srv := httptest.NewServer(dest)
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns) // a lost ack comes back after its 3 s ack wait
			ev := testEvent()
			cleaner := &memCleaner{lastUpdate: ev.LastUpdate}
			src := deletedSource{memSource: newMemSource(2), cleaner: cleaner}
			var recorded atomic.Bool // the destination's ledger
			f := newForwarder(t, nil, srv.URL, cons, func(o *Options) {
				o.SourceFor = func(string) (Source, error) { return src, nil }
				o.Completed = func(context.Context, *events.StudyStable, Completion) error { recorded.Store(true); return nil }
				o.Forwarded = func(context.Context, *events.StudyStable) (bool, error) { return recorded.Load(), nil }
				if tt.buffer {
					o.CleanerFor = func(string) (SourceCleaner, error) { return cleaner, nil }
				}
			})
			msg := deliverOne(t, ns, cons, ev)
			if tt.arrived {
				f.handle(t.Context(), arrivedAck{msg}, "")
			} else {
				f.handle(t.Context(), unconfirmedAck{msg}, "")
				again, err := cons.Next(jetstream.FetchMaxWait(15 * time.Second))
				if err != nil {
					t.Fatalf("the event whose ack was lost was not delivered again: %v", err)
				}
				f.handle(t.Context(), again, "")
			}
			waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
			for _, r := range []Result{ResultForwarded, ResultAckFailed, ResultAlreadyForwarded, ResultRetry} {
				if got := testutil.ToFloat64(f.m.studies.WithLabelValues(string(r))); got != tt.want[r] {
					t.Errorf("studies_total{result=%q} = %v, want %v", r, got, tt.want[r])
				}
			}
		})
	}
}

// stalledLedger is a failure log and ledger whose writes never answer:
// each waits for its context to end, as a KV write to a bucket whose
// servers are gone waits for its request timeout.
type stalledLedger struct {
	memFailureLog
	remembers atomic.Int32
}

func (s *stalledLedger) RememberSent(ctx context.Context, _ *events.StudyStable, _ []string) error {
	s.remembers.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

func (s *stalledLedger) completed(ctx context.Context, _ *events.StudyStable, _ Completion) error {
	<-ctx.Done()
	return ctx.Err()
}

// A study whose STOW answer comes within the grace while the ledger's
// buckets do not answer (a node drain takes a NATS server with the pod)
// is acked, and Run returns settleAfterGrace after the grace. Before, the
// write of what was stored took 15 s twice (the writer's, then close's)
// before the ack, then the ledger's record 30 s and that write 15 s
// again: past the stop timeout, and a process killed before its ack had
// the study sent again.
func TestShutdownSettlesWithinBound(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	stow := k.handler(nil)
	asked, answer := make(chan struct{}), make(chan struct{})
	var askedOnce, answerOnce sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		askedOnce.Do(func() { close(asked) })
		<-answer
		stow.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { answerOnce.Do(func() { close(answer) }) }) // before srv.Close
	cons := consumer(t, ns)
	ledger := &stalledLedger{}
	rec := &recordingObserver{}
	const grace = 2 * time.Second
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.Failures, o.Completed, o.Observer, o.ShutdownGrace = ledger, ledger.completed, rec, grace
	})
	cancel, done := runWithAnEvent(t, f, ns)
	select {
	case <-asked:
	case <-time.After(15 * time.Second):
		t.Fatal("the study was never sent")
	}
	cancel()                                            // shutdown starts
	answerOnce.Do(func() { close(answer) })             // the answer comes within the grace
	within := grace + settleAfterGrace + 10*time.Second // a margin for a busy machine
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(within):
		t.Fatalf("Run did not return within %s of the shutdown", within)
	}
	if ledger.remembers.Load() == 0 {
		t.Error("the write of what was stored was never tried: the test stalled nothing")
	}
	rec.mu.Lock()
	finished := rec.finished[ResultForwarded]
	rec.mu.Unlock()
	if finished != 1 {
		t.Errorf("results %v, want the study forwarded", rec.finished)
	}
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 1 || info.NumAckPending != 0 {
		t.Errorf("ack floor %d, %d pending: the ack was not sent", info.AckFloor.Stream, info.NumAckPending)
	}
}

// orderLedger is a failure log whose first write of what was stored
// stalls until its context ends (the writer's, during the attempt), and
// whose later writes note whether the event was still in this
// forwarder's hands (not yet given back) when they were made.
type orderLedger struct {
	memFailureLog
	inHand  func() bool
	calls   atomic.Int32
	mu      sync.Mutex
	written []bool // inHand at each later write
}

func (l *orderLedger) RememberSent(ctx context.Context, ev *events.StudyStable, ids []string) error {
	if l.calls.Add(1) == 1 {
		<-ctx.Done()
		return ctx.Err()
	}
	l.mu.Lock()
	l.written = append(l.written, l.inHand())
	l.mu.Unlock()
	return l.memFailureLog.RememberSent(ctx, ev, ids)
}

// A study given back at the grace's end has what it stored recorded
// before it goes back to the queue: another replica may take it at once
// and read the record at its first "already exists". The write was made
// after the NAK once sentWriter.close left it to settle (the grace over).
func TestGivenBackStudyRecordedBeforeItGoesBack(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	stow := k.handler(nil)
	var requests atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) > 1 { // the study's other request: unanswered within the grace
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		stow.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // before srv.Close
	cons := consumer(t, ns)
	// In hand: not delivered again within a second. Run pulls no more
	// once shut down, and a consumer's info may not show a NAK yet.
	ledger := &orderLedger{inHand: func() bool {
		_, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		return err != nil
	}}
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.Failures, o.Completed, o.MaxInstances, o.ShutdownGrace = ledger, recordedOK, 1, time.Second
	})
	cancel, done := runWithAnEvent(t, f, ns)
	testharness.WaitFor(t, "both requests sent, one answered", 15*time.Second, func() bool { return requests.Load() == 2 && ledger.calls.Load() >= 1 })
	cancel() // shutdown: the unanswered request goes back at the grace's end
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	if len(ledger.written) == 0 {
		t.Fatal("what the answered request stored was never written")
	}
	if !ledger.written[0] {
		t.Error("what was stored was written after the study went back to the queue")
	}
}

// runWithAnEvent runs f until cancel, done receiving what Run returned,
// and publishes testEvent for it.
func runWithAnEvent(t *testing.T, f *Forwarder, ns *testnats.Server) (cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ran := make(chan error, 1)
	go func() { ran <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	return cancel, ran
}

// timesFailureLog keeps failure times per event as deadletter.FailureLog
// does: the first one stays, the last is replaced. It tells which events
// it was told to forget.
type timesFailureLog struct {
	memFailureLog
	mu        sync.Mutex
	times     map[uint64]FailureTimes
	forgotten map[uint64]bool
}

func (l *timesFailureLog) Record(_ context.Context, seq uint64, now time.Time) (FailureTimes, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := FailureTimes{First: now, Last: now}
	if prev, ok := l.times[seq]; ok {
		t.First = prev.First
	}
	l.times[seq] = t
	return t, nil
}

func (l *timesFailureLog) Forget(_ context.Context, seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.times, seq)
	l.forgotten[seq] = true
	return nil
}

// A study retried and then dead-lettered tells when it first failed
// ('replay show' prints it: how long the destination has refused it),
// not only when its last delivery did; once settled for good, forwarded
// or dead-lettered, its failure times are forgotten.
func TestFailureTimesAcrossDeliveries(t *testing.T) {
	for _, tt := range []struct {
		name     string
		statuses []int32 // the destination's answer to each delivery (0: stored)
		want     []string
	}{
		{"dead-lettered at the limit", []int32{http.StatusBadGateway, http.StatusBadGateway, http.StatusBadGateway}, []string{"nak", "nak", "term"}},
		{"forwarded on its second delivery", []int32{http.StatusBadGateway, 0}, []string{"nak", "ack"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var k sink
			srv := httptest.NewServer(k.handler(nil))
			t.Cleanup(srv.Close)
			letters := &memDeadLetters{}
			failures := &timesFailureLog{times: map[uint64]FailureTimes{}, forgotten: map[uint64]bool{}}
			f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
				o.DeadLetters = letters
				o.Failures = failures
				o.MaxDeliveries = 3
			})
			data, err := json.Marshal(testEvent())
			if err != nil {
				t.Fatal(err)
			}
			const seq = 7
			var afterFirst time.Time
			for i, st := range tt.statuses {
				k.status.Store(st)
				m := &laneMsg{data: data, meta: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq}, NumDelivered: uint64(i + 1), Timestamp: time.Now()}}
				f.handle(t.Context(), m, "")
				if got := m.settled(); got != tt.want[i] {
					t.Fatalf("delivery %d settled %q, want %q", i+1, got, tt.want[i])
				}
				if i == 0 {
					afterFirst = time.Now().UTC()
				}
			}
			if !failures.forgotten[seq] {
				t.Errorf("failure times of the event not forgotten once it was %s", tt.want[len(tt.want)-1])
			}
			all := letters.all()
			if tt.want[len(tt.want)-1] != "term" {
				if len(all) != 0 {
					t.Errorf("%d dead letters, want none", len(all))
				}
				return
			}
			if len(all) != 1 {
				t.Fatalf("%d dead letters, want 1", len(all))
			}
			l := all[0]
			if !l.FirstFailure.Before(afterFirst) || !l.LastFailure.After(afterFirst) {
				t.Errorf("letter's failures first %s, last %s: want the first delivery's (before %s) and the last's (after it)",
					l.FirstFailure.Format(time.RFC3339Nano), l.LastFailure.Format(time.RFC3339Nano), afterFirst.Format(time.RFC3339Nano))
			}
			if l.Attempts != uint64(len(tt.statuses)) {
				t.Errorf("letter's attempts %d, want %d", l.Attempts, len(tt.statuses))
			}
		})
	}
}

// A dead letter of an event that does not decode keeps of its fields
// only short printable text: they go in the letter's headers (its
// summary, its message ID), where a line break or a field of any length
// from a foreign publisher would have the letter refused, and the event
// stay queued. Its source is read from its subject, "unknown" if that
// names none.
func TestReadableKeepsShortPrintableFields(t *testing.T) {
	long := strings.Repeat("1", maxReadableField+1)
	within := strings.Repeat("1", maxReadableField)
	for _, tt := range []struct {
		name       string
		subject    string
		data       string
		wantSource string
		wantUID    string
		wantID     string
	}{
		{"an event of a newer shape", "stowline.study.stable.main", `{"studyInstanceUid":"1.2.3","orthancStudyId":"abc","version":"x"}`, "main", "1.2.3", "abc"},
		{"a destination's subject", "stowline.dest.ai.main", `{"studyInstanceUid":"1.2.3"}`, "main", "1.2.3", ""},
		{"a foreign subject", "elsewhere.things", `{"studyInstanceUid":"1.2.3"}`, "unknown", "1.2.3", ""},
		{"not JSON", "stowline.study.stable.main", `not json`, "main", "", ""},
		{"a field as long as the bound", "stowline.study.stable.main", `{"studyInstanceUid":"` + within + `"}`, "main", within, ""},
		{"a field past the bound", "stowline.study.stable.main", `{"studyInstanceUid":"` + long + `"}`, "main", "", ""},
		{"a line break", "stowline.study.stable.main", `{"studyInstanceUid":"1.2.3\r\nX-Injected: 1","orthancStudyId":"abc"}`, "main", "", "abc"},
		{"a space", "stowline.study.stable.main", `{"studyInstanceUid":"1.2.3 4"}`, "main", "", ""},
		{"not ASCII", "stowline.study.stable.main", `{"studyInstanceUid":"1.2.3é"}`, "main", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := readable(tt.subject, []byte(tt.data))
			if ev.Source != tt.wantSource || ev.StudyInstanceUID != tt.wantUID || ev.OrthancStudyID != tt.wantID {
				t.Errorf("source %q, study UID %.30q, study ID %q; want %q, %.30q, %q",
					ev.Source, ev.StudyInstanceUID, ev.OrthancStudyID, tt.wantSource, tt.wantUID, tt.wantID)
			}
		})
	}
}

// An event whose dead letter cannot be stored is NAKed with a delay,
// and stays queued: neither terminated (it would be lost) nor left
// unsettled until its ack wait.
func TestLetterNotStoredIsNaked(t *testing.T) {
	study, err := json.Marshal(testEvent())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		data   []byte
		status int32 // the destination's answer
	}{
		{"refused for good", study, http.StatusBadRequest},
		{"failing on its last delivery", study, http.StatusBadGateway},
		{"undecodable", []byte(`{"type":"something.else"}`), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var k sink
			k.status.Store(tt.status)
			srv := httptest.NewServer(k.handler(nil))
			t.Cleanup(srv.Close)
			f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
				o.DeadLetters = refusingDeadLetters{}
				o.MaxDeliveries = 1
			})
			m := &laneMsg{data: tt.data, meta: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 3}, NumDelivered: 1, Timestamp: time.Now()}}
			f.handle(t.Context(), m, "")
			if got := m.settled(); got != "nak" {
				t.Errorf("settled %q, want nak", got)
			}
		})
	}
}
