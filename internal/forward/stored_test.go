package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// azureLike is a destination that answers 45070 for any SOP Instance it
// already holds, whatever the content (as Azure's DICOM service does),
// refuses the first request for refuseOnce transiently (0xA700), every
// one for a UID of refuse with its reason, and stores a UID of warn with
// that Warning Reason.
type azureLike struct {
	refuseOnce string
	refuse     map[string]int
	warn       map[string]int
	// failOnce: the first request holding it is answered 500, after a
	// pause, so that the study's other requests are out by then. (Not a
	// 503: answered while the others are, that is load, sent again.)
	failOnce string

	failed atomic.Bool

	mu      sync.Mutex
	held    map[string]bool
	refused bool
	answers []string // uid:answer, in order
}

func (d *azureLike) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uids := partUIDs(r)
	if slices.Contains(uids, d.failOnce) && d.failed.CompareAndSwap(false, true) {
		time.Sleep(100 * time.Millisecond)
		http.Error(w, "failed", http.StatusInternalServerError)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var stored, failed []string
	for _, uid := range uids {
		switch reason, refused := d.refuse[uid]; {
		case refused:
			failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}`, uid, reason))
			d.answers = append(d.answers, fmt.Sprintf("%s:%X", uid, reason))
		case d.held[uid]:
			failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[45070]}}`, uid))
			d.answers = append(d.answers, uid+":45070")
		case uid == d.refuseOnce && !d.refused:
			d.refused = true
			failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[42752]}}`, uid))
			d.answers = append(d.answers, uid+":A700")
		case d.warn[uid] != 0:
			d.held[uid] = true
			stored = append(stored, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081196":{"vr":"US","Value":[%d]}}`, uid, d.warn[uid]))
			d.answers = append(d.answers, uid+":stored with a warning")
		default:
			d.held[uid] = true
			stored = append(stored, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]}}`, uid))
			d.answers = append(d.answers, uid+":stored")
		}
	}
	stowsink.WriteAnswer(w, stored, failed)
}

// serve starts d for the test, holding nothing at first unless told,
// and returns its URL.
func (d *azureLike) serve(t *testing.T) string {
	t.Helper()
	if d.held == nil {
		d.held = map[string]bool{}
	}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return srv.URL
}

// answered is what the destination answered so far, "uid:answer" in
// order, space-separated.
func (d *azureLike) answered() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.answers, " ")
}

// azureConflicts takes Azure's "already exists" (45070) for a conflict,
// settled by action.
func azureConflicts(action string) ConflictPolicy {
	return ConflictPolicy{Action: action, Rules: []dicomweb.ConflictRule{{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF}}}
}

// outcome records how a forwarder's deliveries ended: the studies
// dead-lettered and the completions handed on.
type outcome struct {
	dls   memDeadLetters
	mu    sync.Mutex
	comps []Completion
}

// options sends a forwarder's dead letters and completions to r.
func (r *outcome) options(o *Options) {
	o.DeadLetters = &r.dls
	o.Completed = func(_ context.Context, _ *events.StudyStable, c Completion) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.comps = append(r.comps, c)
		return nil
	}
}

// completions is a copy of the completions handed on so far.
func (r *outcome) completions() []Completion {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.comps)
}

// noDeadLetters fails t for every study dead-lettered.
func (r *outcome) noDeadLetters(t *testing.T) {
	t.Helper()
	for _, l := range r.dls.all() {
		t.Errorf("dead-lettered (class %s): %s", l.Class, l.Reason)
	}
}

// settled fails t for every study dead-lettered, and stops it unless n
// completions were handed on; it returns them.
func (r *outcome) settled(t *testing.T, n int) []Completion {
	t.Helper()
	r.noDeadLetters(t)
	comps := r.completions()
	if len(comps) != n {
		t.Fatalf("%d completions, want %d", len(comps), n)
	}
	return comps
}

// noneSkipped fails t if f counted a conflict as skipped.
func noneSkipped(t *testing.T, f *Forwarder) {
	t.Helper()
	if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues("skipped")); got != 0 {
		t.Errorf("%v conflicts counted as skipped, want 0", got)
	}
}

// publishAs publishes ev once under each of msgIDs (a live event and
// its backfill are two messages for one study).
func publishAs(t *testing.T, ns *testnats.Server, ev *events.StudyStable, msgIDs ...string) {
	t.Helper()
	for _, msgID := range msgIDs {
		if _, err := natsjs.PublishTo(t.Context(), ns.JS, natsjs.EventSubjectPrefix+ev.Source, ev, msgID); err != nil {
			t.Fatal(err)
		}
	}
}

// handleNext pulls n deliveries from cons and hands each to f in turn,
// through each (when not nil) first: it may change the test's fakes or
// wrap the delivery.
func handleNext(t *testing.T, f *Forwarder, cons jetstream.Consumer, n int, each func(i int, msg jetstream.Msg) jetstream.Msg) {
	t.Helper()
	for i := range n {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
		if each != nil {
			msg = each(i, msg)
		}
		f.handle(t.Context(), msg, "")
	}
}

// memFailureLog is a FailureLog in memory.
type memFailureLog struct {
	mu     sync.Mutex
	stored map[string]map[string]bool // source/study -> sentIDs
}

func (m *memFailureLog) Record(_ context.Context, _ uint64, now time.Time) (FailureTimes, error) {
	return FailureTimes{First: now, Last: now}, nil
}

func (m *memFailureLog) Forget(context.Context, uint64) error { return nil }

func (m *memFailureLog) RememberSent(_ context.Context, ev *events.StudyStable, uids []string) error {
	key := ev.Source + "/" + ev.StudyInstanceUID
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stored == nil {
		m.stored = map[string]map[string]bool{}
	}
	set := m.stored[key]
	if set == nil {
		set = map[string]bool{}
		m.stored[key] = set
	}
	for _, u := range uids {
		set[u] = true
	}
	return nil
}

func (m *memFailureLog) Sent(_ context.Context, ev *events.StudyStable) (func(string) bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := map[string]bool{}
	for u := range m.stored[ev.Source+"/"+ev.StudyInstanceUID] {
		set[u] = true
	}
	return func(u string) bool { return set[u] }, nil
}

// TestRedeliveryAfterATransientRefusal: a study's next delivery, after an
// instance was refused transiently, finds the instances the first stored
// answered "already exists" (45070): they are stowline's own copies, not
// conflicts, whatever STOW_ON_CONFLICT says (deadletter dead-lettered the
// study, skip kept them in the source in buffer mode).
func TestRedeliveryAfterATransientRefusal(t *testing.T) {
	for _, action := range []string{ConflictDeadLetter, ConflictSkip, ConflictReplace} {
		t.Run(action, func(t *testing.T) {
			dest := &azureLike{refuseOnce: "1.2.3.2"}
			url := dest.serve(t)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			f := newForwarder(t, newMemSource(2), url, cons, out.options, func(o *Options) {
				o.Failures = &memFailureLog{}
				o.MaxDeliveries = 5
				o.MaxInstances = 1
				o.InstanceRetries = 0 // the transient refusal fails the delivery
				o.RetryDelay = 20 * time.Millisecond
				o.RetryMaxDelay = 40 * time.Millisecond
				o.Conflicts = azureConflicts(action)
				o.Conflicts.Method = ReplacePut
			})
			forwardOne(t, f, ns, cons, testEvent())
			answers := dest.answered()
			if !strings.Contains(answers, "45070") {
				t.Fatalf("the destination never answered 45070 (%s): the test tests nothing", answers)
			}
			comps := out.settled(t, 1)
			if len(comps[0].Kept) > 0 {
				t.Errorf("the completion keeps %v in the source, though the destination holds them as sent", comps[0].Kept)
			}
			if strings.Count(answers, ":stored") != 2 {
				t.Errorf("answers %s: want each instance stored once (replace must not send it again)", answers)
			}
		})
	}
}

// TestTransientLeftoverKeepsRefusals: a delivery that ends transient (an
// instance still refused for load) keeps naming the instances refused for
// good in it, so the dead letter of the last delivery lists them.
func TestTransientLeftoverKeepsRefusals(t *testing.T) {
	dest := &azureLike{held: map[string]bool{}, refuse: map[string]int{"1.2.3.1": 0xC000, "1.2.3.2": 0xA700}}
	srv := httptest.NewServer(dest)
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	f := newForwarder(t, newMemSource(3), srv.URL, consumer(t, ns), func(o *Options) {
		o.InstanceRetries = 0
	})
	_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	var fe *Error
	if !errors.As(err, &fe) || fe.Class != Transient {
		t.Fatalf("err = %v, want a transient *Error", err)
	}
	if len(fe.Instances) != 1 || fe.Instances[0].SOPInstanceUID != "1.2.3.1" || fe.Instances[0].FailureReason != 0xC000 {
		t.Errorf("instances named: %+v, want 1.2.3.1 refused with 0xC000", fe.Instances)
	}
}

// TestChangedCopyIsNoOwnCopy: an instance the destination stored changed
// (Warning B000) by a delivery that then failed is not taken for
// stowline's own copy by the next: its "already exists" is a conflict,
// and buffer mode keeps it in the source. The delivery fails on the
// instance after it (refused transiently), or on a request of the same
// round failing at the same time (a 500).
func TestChangedCopyIsNoOwnCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		dest *azureLike
		opts func(*Options)
	}{
		{
			name: "refused after it",
			dest: &azureLike{refuseOnce: "1.2.3.2"},
			opts: func(o *Options) { o.InstanceRetries = 0 },
		},
		{
			name: "same round failed",
			dest: &azureLike{failOnce: "1.2.3.2"},
			opts: func(o *Options) { o.RequestConcurrency, o.MinRequestConcurrency = 2, 2 },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := tc.dest
			dest.warn, dest.held = map[string]int{"1.2.3.1": dicomweb.WarningCoercion}, map[string]bool{}
			srv := httptest.NewServer(dest)
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			f := newForwarder(t, newMemSource(2), srv.URL, consumer(t, ns), func(o *Options) {
				o.Failures = &memFailureLog{}
				o.MaxInstances = 1
				o.Conflicts = azureConflicts(ConflictSkip)
				tc.opts(o)
			})
			if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err == nil {
				t.Fatal("the first delivery succeeded; want it to fail")
			}
			first := dest.answered()
			if !strings.Contains(first, "1.2.3.1:stored with a warning") {
				t.Fatalf("answers %s: 1.2.3.1 was not stored with a warning in the first delivery: the test tests nothing", first)
			}
			rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent(), Number: 2})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(rep.kept, "1.2.3.1") {
				t.Errorf("kept %v: 1.2.3.1, stored changed by the first delivery, would be deleted from the source", rep.kept)
			}
		})
	}
}

// TestFailedRequestLetsOthersFinish: a request of the study failing does
// not cut off the others already sent: what they stored is confirmed, and
// so remembered as stowline's own copies for the next delivery.
func TestFailedRequestLetsOthersFinish(t *testing.T) {
	slowStored := make(chan struct{})
	otherArrived := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uids := partUIDs(r)
		if len(uids) != 1 {
			http.Error(w, "want one instance a request", http.StatusBadRequest)
			return
		}
		uid := uids[0]
		if uid == "1.2.3.1" {
			// Fails only once the other request is on its way.
			select {
			case <-otherArrived:
			case <-time.After(30 * time.Second):
				t.Error("the other request never reached the destination")
			}
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
			return
		}
		close(otherArrived)
		time.Sleep(300 * time.Millisecond)
		close(slowStored)
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]}}]}}`, uid)
	}))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	fl := &memFailureLog{}
	f := newForwarder(t, newMemSource(2), srv.URL, consumer(t, ns), func(o *Options) {
		o.Failures = fl
		o.MaxInstances = 1
		o.RequestConcurrency, o.MinRequestConcurrency = 2, 2
	})
	if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err == nil {
		t.Fatal("transfer succeeded; want the 503 to fail it")
	}
	select {
	case <-slowStored:
	default:
		t.Fatal("the other request was cut off before the destination answered it")
	}
	ours, _ := fl.Sent(t.Context(), testEvent())
	if !ours(sentID(testEvent(), orthancapi.Instance{SOPInstanceUID: "1.2.3.2"})) {
		t.Error("the instance the other request stored is not remembered")
	}
}

// unconfirmedAck is a delivery whose ack JetStream does not confirm (a
// consumer leader lost at that moment): the event stays pending.
type unconfirmedAck struct{ jetstream.Msg }

func (unconfirmedAck) DoubleAck(context.Context) error { return nats.ErrTimeout }

// arrivedAck is a delivery whose ack JetStream takes but whose
// confirmation is lost: the event is not delivered again.
type arrivedAck struct{ jetstream.Msg }

func (m arrivedAck) DoubleAck(ctx context.Context) error {
	if err := m.Msg.DoubleAck(ctx); err != nil {
		return err
	}
	return nats.ErrTimeout
}

// TestUnconfirmedAckIsRecorded: a study stored whole whose ack's
// confirmation is lost is recorded as completed all the same. The ack
// may have arrived, and then no delivery comes to record it: the audit
// reported a forwarded study missing, and buffer mode kept it.
func TestUnconfirmedAckIsRecorded(t *testing.T) {
	dest := &azureLike{}
	url := dest.serve(t)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	var comps []Completion
	f := newForwarder(t, newMemSource(2), url, cons, func(o *Options) {
		o.Completed = func(_ context.Context, _ *events.StudyStable, c Completion) error {
			comps = append(comps, c)
			return nil
		}
	})
	ev := testEvent()
	msg := deliverOne(t, ns, cons, ev)
	f.handle(t.Context(), arrivedAck{msg}, "")
	if len(comps) != 1 || len(comps[0].Kept) > 0 {
		t.Fatalf("completions %+v, want one keeping nothing", comps)
	}
}

// In buffer mode, a study is deleted from the source only once the
// ledger holds its forward, whether its ack was confirmed or JetStream
// took it without confirming (no delivery comes to delete it then, and it
// stayed in Orthanc for good). Not recorded, it stays, counted as a
// failed delete: a later event of the study would find it gone, with no
// record to say it was forwarded, and dead-letter it as source-missing;
// the audit could not tell it was forwarded. Neither its ack nor its
// record confirmed, it counts as failed too: nats.go holds publishes
// while it reconnects, the ack included, so after an outage the ack may
// land and no delivery come, and the study stayed in Orthanc unseen
// (counted waiting, off the alert on failed deletes).
func TestBufferModeDeletesOnlyRecordedForwards(t *testing.T) {
	for _, tt := range []struct {
		name            string
		ack             func(jetstream.Msg) jetstream.Msg
		result          Result
		record          error
		deleted         int
		failed, waiting float64
	}{
		{"confirmed, recorded", func(m jetstream.Msg) jetstream.Msg { return m }, ResultForwarded, nil, 2, 0, 0},
		{"confirmed, not recorded", func(m jetstream.Msg) jetstream.Msg { return m }, ResultForwarded, natsjs.ErrStorageFull, 0, 2, 0},
		{"unconfirmed, recorded", func(m jetstream.Msg) jetstream.Msg { return arrivedAck{m} }, ResultAckFailed, nil, 2, 0, 0},
		{"unconfirmed, not recorded", func(m jetstream.Msg) jetstream.Msg { return arrivedAck{m} }, ResultAckFailed, errors.New("nats: permissions violation"), 0, 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := &azureLike{}
			url := dest.serve(t)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			ev := testEvent()
			cleaner := &memCleaner{lastUpdate: ev.LastUpdate}
			f := newForwarder(t, newMemSource(2), url, cons, func(o *Options) {
				o.Completed = func(context.Context, *events.StudyStable, Completion) error { return tt.record }
				o.CleanerFor = func(string) (SourceCleaner, error) { return cleaner, nil }
			})
			f.handle(t.Context(), tt.ack(deliverOne(t, ns, cons, ev)), "")
			if n := testutil.ToFloat64(f.m.studies.WithLabelValues(string(tt.result))); n != 1 {
				t.Fatalf("studies_total{result=%s} = %v, want 1", tt.result, n)
			}
			if len(cleaner.deleted) != tt.deleted {
				t.Errorf("deleted %v from the source, want %d instances", cleaner.deleted, tt.deleted)
			}
			for result, want := range map[string]float64{"failed": tt.failed, "waiting": tt.waiting} {
				if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(result)); got != want {
					t.Errorf("source_deletes_total{result=%s} = %v, want %v", result, got, want)
				}
			}
		})
	}
}

// lostConfirmation is a delivery whose ack's confirmation never comes:
// DoubleAck waits out its context, as nats.go does.
type lostConfirmation struct{ jetstream.Msg }

func (lostConfirmation) DoubleAck(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// An ack whose confirmation is lost waits out its own deadline, not the
// settle's: the completion is then written in the time left, not on an
// expired context (it failed at once, and the audit reported the study
// missing).
func TestCompletionRecordedAfterTheAckTimedOut(t *testing.T) {
	var live []bool
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.Completed = func(ctx context.Context, _ *events.StudyStable, _ Completion) error {
			live = append(live, ctx.Err() == nil)
			return ctx.Err()
		}
	})
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), settleTimeout) // as settle's
		defer cancel()
		a := &Attempt{Event: testEvent(), Number: 1, Seq: 1}
		if got, _, _ := f.ack(ctx, lostConfirmation{}, a, Report{}, 0, f.log); got != ResultAckFailed {
			t.Fatalf("result %s, want %s", got, ResultAckFailed)
		}
	})
	if !slices.Equal(live, []bool{true}) {
		t.Errorf("completion writes with a live context: %v, want one", live)
	}
}

// failingFailureLog is a memFailureLog whose writes fail while failing is
// set (a refusal, returned at once).
type failingFailureLog struct {
	memFailureLog
	failing atomic.Bool
}

func (l *failingFailureLog) RememberSent(ctx context.Context, ev *events.StudyStable, ids []string) error {
	if l.failing.Load() {
		return errors.New("nats: insufficient resources")
	}
	return l.memFailureLog.RememberSent(ctx, ev, ids)
}

// recoversAtSettle is a delivery at whose ack or NAK the failure log
// answers again.
type recoversAtSettle struct {
	jetstream.Msg
	log *failingFailureLog
}

func (m recoversAtSettle) DoubleAck(ctx context.Context) error {
	m.log.failing.Store(false)
	return m.Msg.DoubleAck(ctx)
}

func (m recoversAtSettle) NakWithDelay(delay time.Duration) error {
	m.log.failing.Store(false)
	return m.Msg.NakWithDelay(delay)
}

// What the attempt's writes to the failure log could not record (NATS
// unreachable) is written again as the study is settled, acked or sent
// back to the queue after part of it was stored: only the ack wrote it
// again, with a first mend, and before that nothing did; the next
// delivery took those copies for conflicts.
func TestUnrecordedInstancesWrittenAtSettle(t *testing.T) {
	for _, tt := range []struct {
		name   string
		failAt int32 // the destination answers 503 from this request on; 0: never
		want   int
	}{
		{"acked", 0, 8},
		{"retried", 2, 4}, // the 4 the first request stored
	} {
		t.Run(tt.name, func(t *testing.T) {
			var k sink
			stores := k.handler(nil)
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n := posts.Add(1); tt.failAt == 0 || n < tt.failAt {
					stores.ServeHTTP(w, r)
					return
				}
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusServiceUnavailable)
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			fl := &failingFailureLog{}
			fl.failing.Store(true)
			f := newForwarder(t, newMemSource(8), srv.URL, cons, func(o *Options) { o.Failures = fl })
			ev := testEvent()
			f.handle(t.Context(), recoversAtSettle{Msg: deliverOne(t, ns, cons, ev), log: fl}, "")
			sent, _ := fl.Sent(t.Context(), ev)
			recorded := 0
			for i := 1; i <= 8; i++ {
				if sent(sentID(ev, orthancapi.Instance{SOPInstanceUID: fmt.Sprint("1.2.3.", i)})) {
					recorded++
				}
			}
			if recorded != tt.want {
				t.Errorf("%d instances recorded, want %d", recorded, tt.want)
			}
		})
	}
}

// TestStudyForwardedAgain: a study stored whole that comes again meets
// "already exists" (45070) for every instance: they are stowline's own
// copies, not conflicts (deadletter dead-lettered the stored study, skip
// counted false conflicts and kept it in the source in buffer mode). It
// comes again when its ack was not confirmed (docs/nats-cluster.md
// promises repeated work only), or when the study version is queued
// again (a repeat past EVENTS_DEDUPE_WINDOW, a backfill or re-forward of
// the stream's events: "harmless, only wasteful", docs/guarantees.md).
func TestStudyForwardedAgain(t *testing.T) {
	ev := testEvent()
	for _, again := range []struct {
		name        string
		msgIDs      []string // published
		unconfirmed bool     // the first ack is not confirmed
		completions int
	}{
		{name: "unconfirmed ack", msgIDs: []string{ev.MsgID()}, unconfirmed: true, completions: 2},
		{name: "queued again", msgIDs: []string{ev.MsgID(), ev.MsgID() + "/backfill/default"}, completions: 2},
	} {
		for _, action := range []string{ConflictDeadLetter, ConflictSkip} {
			t.Run(again.name+"/"+action, func(t *testing.T) {
				dest := &azureLike{}
				url := dest.serve(t)
				ns := testnats.Start(t)
				cons := consumer(t, ns)
				var out outcome
				f := newForwarder(t, newMemSource(2), url, cons, out.options, func(o *Options) {
					o.Failures = &memFailureLog{}
					o.MaxDeliveries = 5
					o.Conflicts = azureConflicts(action)
				})
				publishAs(t, ns, ev, again.msgIDs...)
				handleNext(t, f, cons, 2, func(i int, msg jetstream.Msg) jetstream.Msg {
					if i == 0 && again.unconfirmed {
						return unconfirmedAck{msg}
					}
					return msg
				})
				if answers := dest.answered(); strings.Count(answers, ":45070") != 2 {
					t.Fatalf("answers %s: want both instances answered 45070 the second time", answers)
				}
				comps := out.settled(t, again.completions)
				if last := comps[len(comps)-1]; len(last.Kept) > 0 {
					t.Errorf("the completion keeps %v in the source, though the destination holds them as sent", last.Kept)
				}
			})
		}
	}
}

// TestNewStudyVersionKeepsOwnCopies: a study that gained an instance
// since it was forwarded (a new LastUpdate, forwarded whole) meets
// "already exists" (45070) for the instances forwarded before: Orthanc
// still holds the same files (FileUUID), so they are stowline's own
// copies, not conflicts (deadletter dead-lettered every study that grew,
// skip counted false conflicts). An instance Orthanc stored again (a
// corrected copy: a new file) is still a conflict.
func TestNewStudyVersionKeepsOwnCopies(t *testing.T) {
	for _, tt := range []struct {
		name      string
		corrected bool // 1.2.3.1 is stored again in Orthanc with the new version
		wantDead  []string
	}{
		{name: "grown"},
		{name: "corrected", corrected: true, wantDead: []string{"1.2.3.1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := &azureLike{}
			url := dest.serve(t)
			ns := testnats.Start(t)
			src := newMemSource(3)
			for i := range src.instances {
				src.instances[i].FileUUID = fmt.Sprintf("file-%d", i)
			}
			all := src.instances
			src.instances = all[:2]
			f := newForwarder(t, src, url, consumer(t, ns), func(o *Options) {
				o.Failures = &memFailureLog{}
				o.Conflicts = azureConflicts(ConflictDeadLetter)
			})
			// The first version forwarded: transfer records what it sent.
			if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err != nil {
				t.Fatal(err)
			}
			src.instances = slices.Clone(all)
			if tt.corrected {
				src.instances[0].FileUUID = "file-0-corrected"
			}
			ev := testEvent()
			ev.LastUpdate = "20261126T111500"
			_, err := f.transfer(t.Context(), &Attempt{Event: ev})
			var dead []string
			var fe *Error
			if errors.As(err, &fe) && fe.Class == Conflict {
				for _, in := range fe.Instances {
					dead = append(dead, in.SOPInstanceUID)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(dead, tt.wantDead) {
				t.Errorf("conflicts %v, want %v (err %v)", dead, tt.wantDead, err)
			}
		})
	}
}

// A refusal's error comments that name attributes (Azure's validation
// failures) put those tags in the instance's text, so the dead letter
// says which attribute to fix; never the comments' text, which may quote
// a value.
func TestRefusalNamesTheAttributes(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil)
	res := &dicomweb.Result{StatusCode: http.StatusConflict, Failed: []dicomweb.FailedInstance{{
		SOPInstanceUID: "1.2.3", FailureReason: 0xA900,
		Comments: []string{`DICOM100: (0010,0030) - Content "[value removed]" does not validate VR DA`, `DICOM100: (0008,002a) - Content "x"; (0010,0030) again`},
	}}}
	out := f.sortAnswer(nil, []dicomweb.Part{{SOPInstanceUID: "1.2.3"}}, res, &Report{}, ownership{ours: func(string) bool { return false }, storedBefore: func(string) bool { return false }, unanswered: func(string) bool { return false }})
	if len(out.rejected) != 1 {
		t.Fatalf("rejected %+v, want the one instance", out.rejected)
	}
	if text := out.rejected[0].Text; !strings.HasSuffix(text, "(attributes (0010,0030), (0008,002A))") || strings.Contains(text, "value removed") {
		t.Errorf("text %q: want the attributes' tags, once each, and no comment text", text)
	}
}

// A completed forward whose record cannot be written at once (a JetStream
// leader election) is written on a later try: lost, it read as a missing
// study in the audit, and kept buffer mode's instances in Orthanc.
func TestCompletedRecordRetried(t *testing.T) {
	dest := &azureLike{}
	url := dest.serve(t)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	var calls atomic.Int32
	recorded := make(chan struct{})
	f := newForwarder(t, newMemSource(2), url, cons, func(o *Options) {
		o.Completed = func(context.Context, *events.StudyStable, Completion) error {
			if calls.Add(1) < 3 {
				return fmt.Errorf("ledger: %w", nats.ErrTimeout)
			}
			close(recorded)
			return nil
		}
	})
	forwardOne(t, f, ns, cons, testEvent())
	select {
	case <-recorded:
	case <-time.After(10 * time.Second):
		t.Fatalf("not recorded after %d tries", calls.Load())
	}
}

// TestOutOfResourcesIsTheBreakers: instances the destination keeps
// refusing with 0xA7xx (out of resources: dcm4chee's storage full or
// failing), in a 409 or beside instances it stored, say the destination
// is down, for the circuit breaker to count: retried study by study,
// every study spent its deliveries and was dead-lettered. A study whose
// instances are also refused for another transient reason is not; and a
// trial that meets it after a passed probe spends its delivery, since
// one instance may be too large for what the server has left.
func TestOutOfResourcesIsTheBreakers(t *testing.T) {
	for _, tt := range []struct {
		name   string
		refuse map[string]int
		rules  []dicomweb.ConflictRule
		down   bool
	}{
		{"409, all refused", map[string]int{"1.2.3.1": 0xA700, "1.2.3.2": 0xA701}, nil, true},
		{"409, the profiles' 0xA7xx@409 rule", map[string]int{"1.2.3.1": 0xA700, "1.2.3.2": 0xA700},
			[]dicomweb.ConflictRule{{Code: 0xA700, Mask: 0xFF00, Only409: true}}, true},
		{"202, one refused", map[string]int{"1.2.3.2": 0xA700}, nil, true},
		{"another transient reason too", map[string]int{"1.2.3.1": 0xA700, "1.2.3.2": 0x0110}, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(&azureLike{held: map[string]bool{}, refuse: tt.refuse})
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			f := newForwarder(t, newMemSource(2), srv.URL, consumer(t, ns), func(o *Options) {
				o.InstanceRetries = 1
				o.InstanceRetryDelay = time.Millisecond
				o.Conflicts = ConflictPolicy{Rules: tt.rules}
			})
			_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			if Classify(err) != Transient {
				t.Fatalf("err = %v (class %s), want transient", err, Classify(err))
			}
			if got := DestinationDown(err); got != tt.down {
				t.Errorf("DestinationDown(%v) = %v, want %v", err, got, tt.down)
			}
			if tt.down && !studyMayFail(err) {
				t.Errorf("studyMayFail(%v) = false: a trial meeting it after a passed probe would be held for good", err)
			}
		})
	}
}

// TestTransientLeftoverNamesItsReason: an attempt that ends with
// instances still refused transiently says, for the first, the Failure
// Reason the destination gave, so the dead letter of the last delivery
// tells a processing failure from a code only a 409 made a conflict (a
// rule such as 0x0111@409, for an instance the destination does not
// list): it said "refused transiently, or left out of the destination's
// answers" whatever the answer.
func TestTransientLeftoverNamesItsReason(t *testing.T) {
	for _, tt := range []struct {
		name   string
		refuse map[string]int
		rules  []dicomweb.ConflictRule
		want   string
	}{
		{"processing failure", map[string]int{"1.2.3.2": 0x0110}, nil, "1.2.3.2: Failure Reason 272 (0x0110): processing failure"},
		{"duplicate in a 409, not listed", map[string]int{"1.2.3.1": 0x0111, "1.2.3.2": 0x0111},
			[]dicomweb.ConflictRule{{Code: 0x0111, Mask: 0xFFFF, Only409: true}}, "1.2.3.1: Failure Reason 273 (0x0111): duplicate SOP instance"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(&azureLike{held: map[string]bool{}, refuse: tt.refuse})
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			f := newForwarder(t, newMemSource(2), srv.URL, consumer(t, ns), func(o *Options) {
				o.InstanceRetries = 1
				o.InstanceRetryDelay = time.Millisecond
				o.Conflicts = ConflictPolicy{Rules: tt.rules}
			})
			_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			if Classify(err) != Transient || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v (class %s), want transient naming %q", err, Classify(err), tt.want)
			}
		})
	}
}

// electionFailureLog is a memFailureLog whose reads fail with no
// responders (a NATS leader election) unreadable times, then answer.
type electionFailureLog struct {
	memFailureLog
	unreadable atomic.Int32
	reads      atomic.Int32
}

func (l *electionFailureLog) Sent(ctx context.Context, ev *events.StudyStable) (func(string) bool, error) {
	l.reads.Add(1)
	if l.unreadable.Add(-1) >= 0 {
		return nil, fmt.Errorf("read stored instances: %w", nats.ErrNoResponders)
	}
	return l.memFailureLog.Sent(ctx, ev)
}

// TestStoredRecordReadThroughElection: the record of stored instances,
// read at the first "already exists" answer while the bucket's leader is
// being elected, is read again until it answers: one failed read was
// kept for the whole attempt, and every copy stowline had stored was a
// conflict (deadletter dead-lettered the study, skip counted them).
func TestStoredRecordReadThroughElection(t *testing.T) {
	for _, action := range []string{ConflictDeadLetter, ConflictSkip} {
		t.Run(action, func(t *testing.T) {
			ev := testEvent()
			dest := &azureLike{}
			url := dest.serve(t)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			fl := &electionFailureLog{}
			var out outcome
			f := newForwarder(t, newMemSource(2), url, cons, out.options, func(o *Options) {
				o.Failures = fl
				o.MaxDeliveries = 1 // a conflict taken for one is dead-lettered at once
				o.Conflicts = azureConflicts(action)
			})
			publishAs(t, ns, ev, ev.MsgID(), ev.MsgID()+"/backfill/default")
			handleNext(t, f, cons, 2, func(i int, msg jetstream.Msg) jetstream.Msg {
				if i == 1 {
					fl.unreadable.Store(2)
				}
				return msg
			})
			if answers := dest.answered(); strings.Count(answers, ":45070") != 2 {
				t.Fatalf("answers %s: want both instances answered 45070 the second time", answers)
			}
			if n := fl.reads.Load(); n < 3 {
				t.Errorf("the record was read %d times, want the 2 failed reads and one that answered", n)
			}
			noneSkipped(t, f)
			comps := out.settled(t, 2)
			if last := comps[1]; len(last.Kept) > 0 {
				t.Errorf("the completion keeps %v in the source, though the destination holds them as sent", last.Kept)
			}
		})
	}
}

// TestHeldRunKnowsWhatEarlierRunsCouldNotRecord: a run held for its
// source after it stored part of the study, while the failure log's
// writes failed, runs again knowing those copies as its own: they were
// carried only to the settle, and the next run's "already exists"
// (45070) answers for them were conflicts (deadletter dead-lettered the
// study).
func TestHeldRunKnowsWhatEarlierRunsCouldNotRecord(t *testing.T) {
	dest := &azureLike{}
	url := dest.serve(t)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	src := newHalfDownSource(8)
	fl := &failingFailureLog{}
	fl.failing.Store(true) // for the whole delivery
	var out outcome
	f := newForwarder(t, nil, url, cons, out.options, src.options, func(o *Options) {
		o.Failures = fl
		o.MaxDeliveries = 1
		o.Conflicts = azureConflicts(ConflictDeadLetter)
	})
	// The source answers again once the study is held.
	back := make(chan struct{})
	go func() {
		defer close(back)
		for deadline := time.Now().Add(heldWait); testutil.ToFloat64(f.m.sourceHeld) == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("the study was not held for its source")
				return
			}
		}
		src.down.Store(false)
	}()
	t.Cleanup(func() { <-back })
	f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")
	<-back
	if answers := dest.answered(); !strings.Contains(answers, ":45070") {
		t.Fatalf("answers %s: want the run after the hold answered 45070 for what the first stored", answers)
	}
	out.noDeadLetters(t)
}

// unreadableFailureLog is a memFailureLog whose reads are refused.
type unreadableFailureLog struct {
	memFailureLog
	reads atomic.Int32
}

func (l *unreadableFailureLog) Sent(context.Context, *events.StudyStable) (func(string) bool, error) {
	l.reads.Add(1)
	return nil, errors.New("nats: permissions violation")
}

// A record that cannot be read is not read again at each answer of the
// attempt: every instance answered "already exists" asks, and a read
// that times out takes seconds each.
func TestUnreadableStoredRecordReadOnce(t *testing.T) {
	ev := testEvent()
	dest := &azureLike{}
	url := dest.serve(t)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	fl := &unreadableFailureLog{}
	f := newForwarder(t, newMemSource(8), url, cons, func(o *Options) {
		o.DeadLetters = &memDeadLetters{}
		o.Failures = fl
		o.MaxInstances = 1
		o.Conflicts = azureConflicts(ConflictSkip)
	})
	publishAs(t, ns, ev, ev.MsgID(), ev.MsgID()+"/backfill/default")
	handleNext(t, f, cons, 2, nil)
	if answers := dest.answered(); strings.Count(answers, ":45070") != 8 {
		t.Fatalf("answers %s: want every instance answered 45070 the second time", answers)
	}
	if n := fl.reads.Load(); n != 1 {
		t.Errorf("the unreadable record was read %d times in one attempt, want once", n)
	}
}

// slowReadFailureLog is a memFailureLog whose reads wait until release
// is closed (a leader election), entered closed as the first begins.
type slowReadFailureLog struct {
	memFailureLog
	once             sync.Once
	entered, release chan struct{}
}

func (l *slowReadFailureLog) Sent(ctx context.Context, ev *events.StudyStable) (func(string) bool, error) {
	l.once.Do(func() { close(l.entered) })
	select {
	case <-l.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l.memFailureLog.Sent(ctx, ev)
}

// alreadyExists answers every instance "already exists" (45070).
type alreadyExists struct{}

func (alreadyExists) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var failed []string
	for _, uid := range partUIDs(r) {
		failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[45070]}}`, uid))
	}
	stowsink.WriteAnswer(w, nil, failed)
}

// TestAnswerGivesItsPlaceBackBeforeSorting: a request's place in the
// request limiter is given back as its answer comes, not once it is
// sorted: sorting a conflict answer reads the record of stored
// instances, through a leader election up to rememberTimeout, while
// other studies waited for the place and the limiter took the wait for
// the destination's latency.
func TestAnswerGivesItsPlaceBackBeforeSorting(t *testing.T) {
	srv := httptest.NewServer(alreadyExists{})
	t.Cleanup(srv.Close)
	fl := &slowReadFailureLog{entered: make(chan struct{}), release: make(chan struct{})}
	f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
		o.Failures = fl
		o.RequestConcurrency, o.MinRequestConcurrency = 1, 1
		o.Conflicts = azureConflicts(ConflictSkip)
	})
	done := make(chan error, 1)
	go func() {
		rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
		if err == nil && rep.Conflicts+rep.AlreadyStored == 0 {
			err = fmt.Errorf("report %+v: want the instances answered 45070", rep)
		}
		done <- err
	}()
	var once sync.Once
	release := func() { once.Do(func() { close(fl.release) }) }
	ended := false
	t.Cleanup(func() {
		release()
		if !ended {
			<-done
		}
	})
	select {
	case <-fl.entered:
	case err := <-done:
		ended = true
		t.Fatalf("the attempt ended (%v) without reading the record", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	permit, err := f.limit.Acquire(ctx, flow.High)
	if err != nil {
		t.Fatalf("a stat request waits for the only place while another study's answer waits for the record: %v", err)
	}
	permit.Release()
	release()
	ended = true
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestConflictWhileRecordUnreadable: an "already exists" answer for an
// instance while the record of stored instances cannot be read (NATS
// out) may be for stowline's own copy: under deadletter or replace the
// attempt fails transiently, retried later, instead of dead-lettering
// the study or replacing the copy at once.
func TestConflictWhileRecordUnreadable(t *testing.T) {
	for _, action := range []string{ConflictDeadLetter, ConflictReplace} {
		t.Run(action, func(t *testing.T) {
			srv := httptest.NewServer(alreadyExists{})
			t.Cleanup(srv.Close)
			f := newForwarder(t, newMemSource(3), srv.URL, nil, func(o *Options) {
				o.Failures = &unreadableFailureLog{}
				o.InstanceRetries = 1
				o.InstanceRetryDelay = time.Millisecond
				o.Conflicts = azureConflicts(action)
				o.Conflicts.Method = ReplacePut
			})
			rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			var fe *Error
			if !errors.As(err, &fe) || fe.Class != Transient {
				t.Fatalf("transfer: %v; want a transient failure", err)
			}
			if rep.Replaced != 0 || rep.Conflicts != 0 {
				t.Errorf("%d replaced, %d conflicts; want none while the record is unread", rep.Replaced, rep.Conflicts)
			}
		})
	}
}
