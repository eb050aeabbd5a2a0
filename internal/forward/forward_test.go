package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// memSource is an in-memory Orthanc for unit tests (the integration tests
// in cmd/ use real Orthanc servers).
type memSource struct {
	instances []orthancapi.Instance
	data      map[string][]byte
	// block, if set, is waited on before each file is served.
	block chan struct{}
}

func newMemSource(n int) *memSource {
	s := &memSource{data: map[string][]byte{}}
	for i := range n {
		id := fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i)
		uid := fmt.Sprintf("1.2.3.%d", i+1)
		s.instances = append(s.instances, orthancapi.Instance{ID: id, SOPInstanceUID: uid, SeriesInstanceUID: "1.2.3.0", FileSize: 1024})
		s.data[id] = bytes.Repeat([]byte{byte(i)}, 1024)
	}
	return s
}

func (s *memSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return s.instances, nil
}

func (s *memSource) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	return io.NopCloser(bytes.NewReader(s.data[id])), int64(len(s.data[id])), nil
}

// sink is a STOW-RS server that answers with a status, or 200 and every
// instance as stored (it reads the SOP Instance UID from a fake part
// layout: the test source serves 1024 bytes per instance, in order);
// an instance in warnings is stored with that Warning Reason, in a 202.
type sink struct {
	warnings map[string]int
	// failures are answered failed with their Failure Reason.
	failures map[string]int
	status   atomic.Int32
	requests atomic.Int32
	uids     []string
}

// partUIDs reads a STOW-RS request's parts, as memSource made them: the
// first byte of instance i is i-1, its SOP Instance UID 1.2.3.i.
func partUIDs(r *http.Request) []string {
	return partsNamed(r, func(b []byte) string {
		if len(b) == 0 {
			return ""
		}
		return fmt.Sprintf("1.2.3.%d", int(b[0])+1)
	})
}

// partsNamed reads a STOW-RS request's parts and returns the SOP
// Instance UID uid names each by its content ("": none).
func partsNamed(r *http.Request, uid func(content []byte) string) []string {
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	mr := multipart.NewReader(r.Body, params["boundary"])
	var uids []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			return uids
		}
		b, _ := io.ReadAll(p)
		if u := uid(b); u != "" {
			uids = append(uids, u)
		}
	}
}

func (k *sink) handler(uids []string) http.Handler {
	k.uids = uids
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.requests.Add(1)
		seen := partUIDs(r)
		if st := k.status.Load(); st != 0 {
			if st == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", "7")
			}
			w.WriteHeader(int(st))
			return
		}
		var items, failed []string
		status := http.StatusOK
		for _, uid := range seen {
			if code := k.failures[uid]; code != 0 {
				failed = append(failed, fmt.Sprintf(`{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["%s"]},"00081197":{"vr":"US","Value":[%d]}}`, uid, code))
				status = http.StatusAccepted
				continue
			}
			warning := ""
			if code := k.warnings[uid]; code != 0 {
				warning, status = fmt.Sprintf(`,"00081196":{"vr":"US","Value":[%d]}`, code), http.StatusAccepted
			}
			items = append(items, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["`+uid+`"]}`+warning+`}`)
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(status)
		if len(failed) > 0 {
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]},"00081198":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","), strings.Join(failed, ","))
			return
		}
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
	})
}

func newForwarder(t *testing.T, src *memSource, dest string, cons jetstream.Consumer, opts ...func(*Options)) *Forwarder {
	t.Helper()
	client, err := dicomweb.New(dest, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		DestinationName: "default",
		Lanes:           []Lane{{Priority: events.PriorityRoutine, Consumer: cons}},
		SourceFor:       func(string) (Source, error) { return src, nil },
		Destination:     client,
		Concurrency:     2,
		MaxInstances:    4,
		MaxBytes:        1 << 20,
		AckWait:         3 * time.Second,
		RetryDelay:      time.Second,
		RetryMaxDelay:   8 * time.Second,
		ShutdownGrace:   200 * time.Millisecond,
	}
	for _, f := range opts {
		f(&o)
	}
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// recordedOK is a ledger that records every completed forward.
func recordedOK(context.Context, *events.StudyStable, Completion) error { return nil }

func testEvent() *events.StudyStable {
	return &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500"}
}

func consumer(t *testing.T, ns *testnats.Server) jetstream.Consumer {
	t.Helper()
	topo := natsjs.DefaultTopology()
	topo.AckWait = 3 * time.Second
	c, err := topo.EnsureConsumer(context.Background(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitConsumer(t *testing.T, c jetstream.Consumer, cond func(*jetstream.ConsumerInfo) bool) *jetstream.ConsumerInfo {
	t.Helper()
	return waitConsumerWithin(t, c, 15*time.Second, cond)
}

// heldWait bounds the wait for a study held or parked for its source:
// the source is probed 5, 15 and 35 s into the hold (sourceHoldWait
// doubled), so a source back a moment after a probe is seen up to 20 s
// later.
const heldWait = time.Minute

// waitConsumerWithin is waitConsumer giving up after within.
func waitConsumerWithin(t *testing.T, c jetstream.Consumer, within time.Duration, cond func(*jetstream.ConsumerInfo) bool) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		info, err := c.Info(context.Background())
		if err == nil && cond(info) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer never reached the expected state: %+v (err %v)", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// forwardOne runs f until it has settled ev, the only event of the
// stream (acked, terminated or dead-lettered), then stops it.
func forwardOne(t *testing.T, f *Forwarder, ns *testnats.Server, cons jetstream.Consumer, ev *events.StudyStable) {
	t.Helper()
	forwardOneWithin(t, f, ns, cons, ev, 15*time.Second)
}

// deliverOne publishes ev and pulls its first delivery from cons, for a
// test that hands it to Forwarder.handle itself.
func deliverOne(t *testing.T, ns *testnats.Server, cons jetstream.Consumer, ev *events.StudyStable) jetstream.Msg {
	t.Helper()
	if _, err := natsjs.PublishTo(t.Context(), ns.JS, natsjs.EventSubjectPrefix+ev.Source, ev, ev.MsgID()); err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// forwardOneWithin is forwardOne giving up after within.
func forwardOneWithin(t *testing.T, f *Forwarder, ns *testnats.Server, cons jetstream.Consumer, ev *events.StudyStable, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitConsumerWithin(t, cons, within, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestForwardAcksWhenAllStored(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(10)
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	rec := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) { o.Observer = rec })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	if got := k.requests.Load(); got != 3 {
		t.Errorf("%d STOW requests for 10 instances at 4 per request, want 3", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Run has returned, so the attempt is settled. The observer was
	// told the facts: one attempt, its progress, its end.
	rec.mu.Lock()
	if rec.started != 1 || rec.finished[ResultForwarded] != 1 || len(rec.reports) != 1 ||
		rec.reports[0].Listed != 10 || rec.reports[0].Instances != 10 || rec.reports[0].Requests != 3 {
		t.Errorf("observer: %d started, finished %v, reports %+v", rec.started, rec.finished, rec.reports)
	}
	for _, rep := range rec.last {
		if rep.Instances != 10 || rep.Bytes == 0 {
			t.Errorf("last progress %+v, want 10 instances and their bytes", rep)
		}
	}
	rec.mu.Unlock()
}

// A study that failed and goes back to the queue tells the observer why
// and when it is due again, before its attempt is Finished: the status
// page lists it between deliveries, which only the log said.
func TestRetryTellsTheObserverWhyAndWhen(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(2)
	var k sink
	k.status.Store(http.StatusInternalServerError)
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	rec := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) {
		o.Observer = rec
		o.RetryDelay, o.RetryMaxDelay = time.Hour, time.Hour
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	rec.waitFinished(t, ResultRetry, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.retries) != 1 {
		t.Fatalf("Retrying told %d times, want once: %+v", len(rec.retries), rec.retries)
	}
	r := rec.retries[0]
	// The delay is jittered below the hour, never above it.
	if r.class != Transient || !strings.Contains(r.reason, "500") || r.in <= 30*time.Minute || r.in > time.Hour {
		t.Errorf("Retrying(%s, %q, due in %s); want transient, the 500, due within the hour", r.class, r.reason, r.in)
	}
}

// On shutdown, a study still uploading after the grace period goes back
// to the queue at once (NAK): another forwarder gets it without waiting
// for the ack wait.
func TestShutdownReturnsInFlightStudy(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(4)
	src.block = make(chan struct{}) // the source hangs: the upload never ends
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	topo := natsjs.DefaultTopology()
	topo.AckWait = time.Minute // a redelivery before this proves the NAK
	cons, err := topo.EnsureConsumer(context.Background(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) { o.Observer = rec })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	// Stop once a worker holds the study, not merely once JetStream has
	// handed it out: a message still on its way to a pull that shutdown
	// cancels waits for the ack wait, as the pull loop's comment says.
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return i.NumAckPending == 1 && rec.started == 1
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the shutdown grace")
	}
	// Given back, not acked: an ack here would lose the study. (An ack
	// may not be applied yet when Run returns; the checks below see it
	// every time.)
	if info, err := cons.Info(t.Context()); err != nil {
		t.Fatal(err)
	} else if info.AckFloor.Stream != 0 {
		t.Fatalf("ack floor %d after shutdown, want 0: the unsent study was acked", info.AckFloor.Stream)
	}
	// Interrupted, not failed: handed back at once (NAK, no retry
	// delay), no failure counted, and never dead-lettered, even on its
	// last delivery. Run has returned, so the attempt is settled.
	rec.mu.Lock()
	finished := maps.Clone(rec.finished)
	rec.mu.Unlock()
	if finished[ResultInterrupted] != 1 || len(finished) != 1 {
		t.Errorf("first forwarder: finished %v, want the study interrupted", finished)
	}
	if n := testutil.ToFloat64(f.m.failures.WithLabelValues(string(Transient))); n != 0 {
		t.Errorf("failures_total{class=transient} = %v after a shutdown, want 0", n)
	}

	// A second forwarder, with a source that answers, finishes the study.
	close(src.block)
	rec2 := &recordingObserver{}
	f2 := newForwarder(t, src, srv.URL, cons, func(o *Options) { o.Observer = rec2 })
	ctx2, cancel2 := context.WithCancel(context.Background())
	t.Cleanup(cancel2)
	done2 := make(chan error)
	go func() { done2 <- f2.Run(ctx2) }()
	// waitConsumer gives up after 15 s, well inside the 1 min ack wait.
	info := waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 })
	if info.Delivered.Consumer != 2 {
		t.Errorf("%d deliveries, want 2: the study delivered again to the second forwarder", info.Delivered.Consumer)
	}
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	// Run has returned, so the second attempt is settled.
	rec2.mu.Lock()
	defer rec2.mu.Unlock()
	if rec2.finished[ResultForwarded] != 1 || len(rec2.reports) != 1 || rec2.reports[0].Instances != 4 {
		t.Errorf("second forwarder: finished %v, reports %+v; want the study's 4 instances forwarded", rec2.finished, rec2.reports)
	}
}

// An event this build cannot read is dead-lettered with its bytes, then
// terminated: not retried forever, and not lost (it was terminated with
// no dead letter).
func TestUndecodableEventDeadLettered(t *testing.T) {
	data := []byte(`{"type":"something.else"}`)
	dls := &memDeadLetters{}
	cons, k, f := deliverRaw(t, data, func(o *Options) { o.DeadLetters = dls })
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	if k.requests.Load() != 0 {
		t.Error("an undecodable event reached the destination")
	}
	letters := dls.all()
	if len(letters) != 1 || letters[0].Raw == nil || !bytes.Equal(letters[0].Raw.Data, data) || !strings.HasPrefix(letters[0].Reason, "undecodable: ") {
		t.Fatalf("dead letters %+v; want one keeping the event's bytes", letters)
	}
	// The event is terminated before it is counted (undecodable): the
	// ack floor moves first.
	undecodable := f.m.studies.WithLabelValues(string(ResultUndecodable))
	testharness.WaitFor(t, "the undecodable event counted", 15*time.Second, func() bool { return testutil.ToFloat64(undecodable) >= 1 })
	if n := testutil.ToFloat64(undecodable); n != 1 {
		t.Errorf("studies_total{result=undecodable} = %v, want 1", n)
	}
}

// Without a dead-letter store to keep it, an event this build cannot
// read is given back, as any failure then is retried: terminated, it
// would be lost.
func TestUndecodableEventGivenBackWithoutDeadLetterStore(t *testing.T) {
	cons, k, f := deliverRaw(t, []byte(`{"type":"something.else"}`))
	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(f.m.studies.WithLabelValues(string(ResultRetry))) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the undecodable event was not given back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 0 || info.NumAckPending != 1 || k.requests.Load() != 0 {
		t.Errorf("ack floor %d, %d pending, %d requests: want the event given back, unsent", info.AckFloor.Stream, info.NumAckPending, k.requests.Load())
	}
}

// An event of a newer version (a rolling upgrade: a newer ingest wrote
// it) is given back for a newer forwarder, after a delay: not terminated
// nor acked (the ack floor stays), not offered again at once (a plain Nak
// would be), and nothing is sent.
func TestNewerVersionGivenBack(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	f := newForwarder(t, newMemSource(1), srv.URL, cons)
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version + 1, Source: "a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261203T150000"}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.JS.PublishMsg(t.Context(), &nats.Msg{Subject: natsjs.EventSubjectPrefix + "a", Data: data}); err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	f.handle(t.Context(), msg, "")
	if again, err := cons.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
		t.Errorf("offered again at once: %s", again.Subject())
	}
	info := waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.NumAckPending == 1 })
	if info.AckFloor.Stream != 0 || info.Delivered.Consumer != 1 || k.requests.Load() != 0 {
		t.Errorf("ack floor %d, %d deliveries, %d requests: want the event given back, unsent", info.AckFloor.Stream, info.Delivered.Consumer, k.requests.Load())
	}
	if n := testutil.ToFloat64(f.m.studies.WithLabelValues(string(ResultNewerVersion))); n != 1 {
		t.Errorf("studies_total{result=newer_version} = %v, want 1", n)
	}
}

// deliverRaw runs a forwarder into a sink and stores data as an event for
// it to take.
func deliverRaw(t *testing.T, data []byte, opts ...func(*Options)) (jetstream.Consumer, *sink, *Forwarder) {
	t.Helper()
	ns := testnats.Start(t)
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	f := newForwarder(t, newMemSource(1), srv.URL, cons, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = f.Run(ctx) }()
	if _, err := ns.JS.PublishMsg(ctx, &nats.Msg{Subject: natsjs.EventSubjectPrefix + "a", Data: data}); err != nil {
		t.Fatal(err)
	}
	return cons, k, f
}

func TestNewRejectsBadOptions(t *testing.T) {
	// Buffer mode without a ledger would never delete anything.
	_, err := New(Options{CleanerFor: func(string) (SourceCleaner, error) { return nil, nil }})
	if err == nil {
		t.Fatal("New accepted empty options")
	}
	for _, want := range []string{"source", "destination", "concurrency", "limits", "ack wait", "retry", "buffer mode needs the ledger"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if errors.Is(err, context.Canceled) {
		t.Error("unexpected error kind")
	}
}

func TestRequestSize(t *testing.T) {
	tests := []struct{ n, max, parallel, want int }{
		{300, 100, 1, 100},
		{300, 100, 2, 75},
		{300, 100, 4, 75},
		{20, 100, 2, 10},
		{1, 100, 2, 1},
		{1000, 50, 3, 48},
		{7, 100, 0, 7},
	}
	for _, tt := range tests {
		f := &Forwarder{opts: Options{MaxInstances: tt.max, RequestConcurrency: tt.parallel}}
		if got := f.requestSize(tt.n); got != tt.want {
			t.Errorf("requestSize(%d) with max %d, %d at once = %d, want %d", tt.n, tt.max, tt.parallel, got, tt.want)
		}
		if got := f.requestSize(tt.n); got > tt.max {
			t.Errorf("requestSize(%d) = %d exceeds the maximum %d", tt.n, got, tt.max)
		}
	}
}

// memCleaner is a source for buffer mode: it records deletes.
type memCleaner struct {
	lastUpdate string
	studyErr   error
	failIDs    map[string]bool
	goneIDs    map[string]bool
	deleted    []string
	// changeAfter: the study changes once that many were deleted.
	changeAfter int
	// study is what Orthanc holds of it, whose instances Instance and
	// InstanceMetadata read and the deletes shrink. Nil: a LastUpdate
	// that moved came with new content, every instance read with another
	// file, received later than any event.
	study []orthancapi.Instance
	// received is an instance's ReceptionDate by ID; one not there was
	// received before the events of the tests.
	received map[string]string
	// deletesMove: each delete moves LastUpdate, as Orthanc 1.12.1 and
	// later do.
	deletesMove bool
	// afterDelete, if set, runs after each delete: what arrives meanwhile.
	afterDelete func(c *memCleaner)
	readErr     error // Instance's and InstanceMetadata's
	// reads counts the instances Instance and InstanceMetadata read.
	reads int
}

func (c *memCleaner) Study(context.Context, string) (orthancapi.Study, error) {
	if c.changeAfter > 0 && len(c.deleted) >= c.changeAfter {
		return orthancapi.Study{LastUpdate: "20991231T235959"}, nil
	}
	return orthancapi.Study{LastUpdate: c.lastUpdate}, c.studyErr
}

func (c *memCleaner) Instance(_ context.Context, id string) (orthancapi.Instance, error) {
	if c.readErr != nil {
		return orthancapi.Instance{}, c.readErr
	}
	c.reads++
	if c.study == nil {
		return orthancapi.Instance{ID: id, FileUUID: "new"}, nil
	}
	i := slices.IndexFunc(c.study, func(in orthancapi.Instance) bool { return in.ID == id })
	if i < 0 {
		return orthancapi.Instance{}, fmt.Errorf("GET: %w", orthancapi.ErrNotFound)
	}
	return c.study[i], nil
}

func (c *memCleaner) InstanceMetadata(ctx context.Context, id string) (orthancapi.InstanceMetadata, error) {
	if _, err := c.Instance(ctx, id); err != nil {
		return orthancapi.InstanceMetadata{}, err
	}
	if c.study == nil {
		return orthancapi.InstanceMetadata{ReceptionDate: "20991231T235959"}, nil
	}
	if r, ok := c.received[id]; ok {
		return orthancapi.InstanceMetadata{ReceptionDate: r}, nil
	}
	return orthancapi.InstanceMetadata{ReceptionDate: "20261126T090000"}, nil
}

func (c *memCleaner) DeleteInstance(_ context.Context, id string) error {
	if c.failIDs[id] {
		return errors.New("Orthanc refused")
	}
	if c.goneIDs[id] {
		return fmt.Errorf("DELETE: %w", orthancapi.ErrNotFound)
	}
	c.deleted = append(c.deleted, id)
	c.study = slices.DeleteFunc(c.study, func(in orthancapi.Instance) bool { return in.ID == id })
	if c.deletesMove {
		c.lastUpdate = fmt.Sprintf("20261126T2%05d", len(c.deleted))
	}
	if c.afterDelete != nil {
		c.afterDelete(c)
	}
	return nil
}

// Buffer mode deletes exactly the forwarded instances, and nothing when
// the study changed since its event, even while the destinations' queues
// were asked, or its state cannot be read.
func TestDeleteForwarded(t *testing.T) {
	ids := []string{"a", "b", "c"}
	instances := []orthancapi.Instance{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	unchanged := func() *memCleaner { return &memCleaner{lastUpdate: "20261126T100000"} }
	// Changed or deleted while the destinations' queues were asked (a
	// wait through leader elections): an overwrite (OverwriteInstances)
	// takes the ID of the instance it replaces.
	overwritten, deleted := unchanged(), unchanged()
	tests := []struct {
		name        string
		cleaner     *memCleaner
		wantDeleted []string
		// want counts of the metric by result: deleted, failed, skipped,
		// gone, waiting.
		want [5]float64
		// unconfigured: what Options.Unconfigured answers (nil: not set).
		unconfigured func(context.Context) ([]string, error)
	}{
		{name: "unchanged", cleaner: unchanged(), wantDeleted: ids, want: [5]float64{3, 0, 0, 0, 0}},
		{name: "changed since the event", cleaner: &memCleaner{lastUpdate: "20261126T100500"}, want: [5]float64{0, 0, 3, 0, 0}},
		{name: "state unreadable", cleaner: &memCleaner{studyErr: errors.New("timeout")}, want: [5]float64{0, 3, 0, 0, 0}},
		{name: "already gone", cleaner: &memCleaner{studyErr: fmt.Errorf("GET: %w", orthancapi.ErrNotFound)}, want: [5]float64{0, 0, 0, 3, 0}},
		{name: "one delete fails", cleaner: &memCleaner{lastUpdate: "20261126T100000", failIDs: map[string]bool{"b": true}}, wantDeleted: []string{"a", "c"}, want: [5]float64{2, 1, 0, 0, 0}},
		// Another destination deleted it between the study read and
		// this delete.
		{name: "one already deleted", cleaner: &memCleaner{lastUpdate: "20261126T100000", goneIDs: map[string]bool{"b": true}}, wantDeleted: []string{"a", "c"}, want: [5]float64{2, 0, 0, 1, 0}},
		{name: "every destination with a queue configured", cleaner: unchanged(), wantDeleted: ids, want: [5]float64{3, 0, 0, 0, 0},
			unconfigured: func(context.Context) ([]string, error) { return nil, nil }},
		// A rollout adding destination ai: it may need the study.
		{name: "a queue of an unconfigured destination", cleaner: unchanged(), want: [5]float64{0, 0, 0, 0, 3},
			unconfigured: func(context.Context) ([]string, error) { return []string{"ai"}, nil }},
		// Nothing deletes it later: failed, which alerts.
		{name: "queues unreadable", cleaner: unchanged(), want: [5]float64{0, 3, 0, 0, 0},
			unconfigured: func(context.Context) ([]string, error) { return nil, errors.New("JetStream refused") }},
		// A JetStream leader election: asked again.
		{name: "queues unanswered once", cleaner: unchanged(), wantDeleted: ids, want: [5]float64{3, 0, 0, 0, 0},
			unconfigured: failingOnce(nats.ErrTimeout)},
		{name: "changed while the queues were asked", cleaner: overwritten, want: [5]float64{0, 0, 3, 0, 0},
			unconfigured: func(context.Context) ([]string, error) { overwritten.lastUpdate = "20261126T100500"; return nil, nil }},
		{name: "deleted while the queues were asked", cleaner: deleted, want: [5]float64{0, 0, 0, 3, 0},
			unconfigured: func(context.Context) ([]string, error) {
				deleted.studyErr = fmt.Errorf("GET: %w", orthancapi.ErrNotFound)
				deleted.goneIDs = map[string]bool{"a": true, "b": true, "c": true}
				return nil, nil
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
				o.Registerer = reg
				o.Completed = recordedOK
				o.CleanerFor = func(string) (SourceCleaner, error) { return tt.cleaner, nil }
				o.Unconfigured = tt.unconfigured
			})
			ev := &events.StudyStable{Source: "src", OrthancStudyID: "00000000-00000000-00000000-00000000-00000000", LastUpdate: "20261126T100000"}
			f.deleteForwarded(context.Background(), ev, instances, instances, nil, f.log)
			if fmt.Sprint(tt.cleaner.deleted) != fmt.Sprint(tt.wantDeleted) {
				t.Errorf("deleted %v, want %v", tt.cleaner.deleted, tt.wantDeleted)
			}
			for i, r := range []string{"deleted", "failed", "skipped", "gone", "waiting"} {
				if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(r)); got != tt.want[i] {
					t.Errorf("%s = %v, want %v", r, got, tt.want[i])
				}
			}
		})
	}
}

// Orthanc 1.12.1 and later move a study's LastUpdate when an instance of
// it is deleted: buffer mode's own deletes, another destination's, or
// one's by hand before the forward listed it, must not read as a change,
// or a study kept all but the first recheckEvery instances, or all, for
// good (no next event comes). A stale event (an instance listed received
// after it) still keeps the study for its next event, and an instance
// not deleted yet overwritten (the same ID, another file) still stops the
// deletes. A new instance, or one deleted and sent anew, is not deleted:
// its own event comes.
func TestDeleteForwardedWhileDeletesMoveLastUpdate(t *testing.T) {
	const n = recheckEvery + 8
	var listed []orthancapi.Instance
	for i := range n {
		listed = append(listed, orthancapi.Instance{ID: fmt.Sprintf("i%02d", i), FileUUID: fmt.Sprintf("f%02d", i)})
	}
	// arriving runs once, after the tenth delete.
	arriving := func(arrive func(c *memCleaner)) func(*memCleaner) {
		return func(c *memCleaner) {
			if len(c.deleted) == 10 {
				arrive(c)
			}
		}
	}
	tests := []struct {
		name    string
		setup   func(c *memCleaner)
		unnamed bool // no FileUUID listed
		// listedLacks: the listing lacks the last ones, as the study.
		listedLacks int
		want        [4]float64 // deleted, skipped, gone, failed
		// left: the IDs the source holds after, if any.
		left []string
	}{
		{name: "its own deletes", want: [4]float64{n, 0, 0, 0}},
		{name: "another destination deleted one before", setup: func(c *memCleaner) {
			c.study = c.study[:n-1]
			c.lastUpdate = "20261126T100001"
			c.goneIDs = map[string]bool{listed[n-1].ID: true}
		}, want: [4]float64{n - 1, 0, 1, 0}},
		// A stale event: an instance the forward listed came after it.
		{name: "one listed received after the event", setup: func(c *memCleaner) {
			c.lastUpdate = "20261126T100007"
			c.received = map[string]string{listed[n/2].ID: "20261126T100007"}
		}, want: [4]float64{0, n, 0, 0}},
		// Deleted by hand after the event, before the forward listed
		// it: listed lacks it, and nothing else comes to delete the rest.
		{name: "one deleted by hand before the listing", listedLacks: 1, setup: func(c *memCleaner) {
			c.lastUpdate = "20261126T100007"
		}, want: [4]float64{n - 1, 0, 0, 0}},
		// Its own event forwards and deletes the new one: these deletes
		// go on, and leave it.
		{name: "a new instance arrives", setup: func(c *memCleaner) {
			c.afterDelete = arriving(func(c *memCleaner) { c.study = append(c.study, orthancapi.Instance{ID: "new", FileUUID: "fnew"}) })
		}, want: [4]float64{n, 0, 0, 0}, left: []string{"new"}},
		// Its ID is deleted already, never again: the copy sent anew
		// stays for its own event.
		{name: "one deleted is sent again", setup: func(c *memCleaner) {
			c.afterDelete = arriving(func(c *memCleaner) {
				c.study = append(c.study, orthancapi.Instance{ID: listed[0].ID, FileUUID: "f00-again"})
			})
		}, want: [4]float64{n, 0, 0, 0}, left: []string{listed[0].ID}},
		{name: "one not deleted yet is overwritten", setup: func(c *memCleaner) {
			c.afterDelete = arriving(func(c *memCleaner) { c.study[len(c.study)-1].FileUUID = "f-overwritten" })
		}, want: [4]float64{recheckEvery, n - recheckEvery, 0, 0}},
		// A source that names no files cannot tell a file sent anew.
		{name: "files unnamed", unnamed: true, want: [4]float64{recheckEvery, n - recheckEvery, 0, 0}},
		{name: "an instance unreadable", setup: func(c *memCleaner) {
			c.afterDelete = arriving(func(c *memCleaner) { c.readErr = errors.New("timeout") })
		}, want: [4]float64{recheckEvery, 0, 0, n - recheckEvery}},
		{name: "receptions unreadable", setup: func(c *memCleaner) {
			c.lastUpdate = "20261126T100007"
			c.readErr = errors.New("timeout")
		}, want: [4]float64{0, 0, 0, n}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listed := slices.Clone(listed[:n-tt.listedLacks])
			if tt.unnamed {
				for i := range listed {
					listed[i].FileUUID = ""
				}
			}
			cleaner := &memCleaner{lastUpdate: "20261126T100000", study: slices.Clone(listed), deletesMove: true}
			if tt.setup != nil {
				tt.setup(cleaner)
			}
			f, ev := cleaningForwarder(t, cleaner, nil)
			f.deleteForwarded(t.Context(), ev, listed, listed, nil, f.log)
			for i, r := range []string{"deleted", "skipped", "gone", "failed"} {
				if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(r)); got != tt.want[i] {
					t.Errorf("%s = %v, want %v", r, got, tt.want[i])
				}
			}
			if tt.left != nil {
				var left []string
				for _, in := range cleaner.study {
					left = append(left, in.ID)
				}
				if !slices.Equal(left, tt.left) {
					t.Errorf("the source holds %v, want %v", left, tt.left)
				}
			}
		})
	}
}

// The looks at a big study while its deletes move LastUpdate (Orthanc
// 1.12.1 and later) read each instance about to be deleted, not the whole
// study left: listing it at each look read about n*n/64 instances, 160,000
// for 3,200, seconds of Orthanc's work for 1,500 and GBs of JSON for
// 20,000.
func TestDeleteForwardedReadsLinearly(t *testing.T) {
	const n = 3200
	var listed []orthancapi.Instance
	for i := range n {
		listed = append(listed, orthancapi.Instance{ID: fmt.Sprintf("i%04d", i), FileUUID: fmt.Sprintf("f%04d", i)})
	}
	cleaner := &memCleaner{lastUpdate: "20261126T100000", study: slices.Clone(listed), deletesMove: true}
	f, ev := cleaningForwarder(t, cleaner, nil)
	f.deleteForwarded(t.Context(), ev, listed, listed, nil, f.log)
	if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("deleted")); got != n {
		t.Fatalf("deleted = %v, want %d", got, n)
	}
	if cleaner.reads >= 4*n {
		t.Errorf("read %d instances to delete %d, want fewer than %d", cleaner.reads, n, 4*n)
	}
}

// The last destination to store a study, with nothing of its own to
// delete (it kept all it was sent: conflicts skipped, instances coerced),
// deletes what the others sent; with one destination there is nothing to
// do.
func TestDeleteForwardedNothingOfItsOwn(t *testing.T) {
	listed := []orthancapi.Instance{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	releasing := func(ids ...string) func(*events.StudyStable, []orthancapi.Instance) Selection {
		return releasingBy(func([]orthancapi.Instance) ([]orthancapi.Instance, error) {
			var out []orthancapi.Instance
			for _, id := range ids {
				out = append(out, orthancapi.Instance{ID: id})
			}
			return out, nil
		})
	}
	tests := []struct {
		name        string
		release     func(*events.StudyStable, []orthancapi.Instance) Selection
		changed     bool // the study changed since its event
		wantDeleted []string
		want        [5]float64 // deleted, failed, skipped, gone, waiting
		wantWarning string
	}{
		{name: "the others' released", release: releasing("a", "b"), wantDeleted: []string{"a", "b"}, want: [5]float64{2, 0, 0, 0, 0}},
		// What it would have released counts, not the whole listing.
		{name: "the others' released, the study changed", release: releasing("a", "b"), changed: true, want: [5]float64{0, 0, 2, 0, 0}},
		{name: "another one not done", release: releasing()},
		// What the rules select, the most it could have released: not the
		// whole listing (c, which no destination selects, stays anyway).
		{name: "ledgers unreadable", release: func(*events.StudyStable, []orthancapi.Instance) Selection {
			return fakeSelection{unselected: unselecting(listed[2:], nil), release: func(context.Context) ([]orthancapi.Instance, error) {
				return nil, errors.New("destination ai: JetStream refused")
			}}
		}, want: [5]float64{0, 2, 0, 0, 0}, wantWarning: "ledgers could not be read"},
		// Nothing tells what it would have released: the rules fail
		// again for Unselected.
		{name: "rules not applied", release: func(*events.StudyStable, []orthancapi.Instance) Selection {
			err := fmt.Errorf("destination ai: %w: GET /studies/...: 500", ErrRules)
			return fakeSelection{unselected: unselecting(nil, err), release: func(context.Context) ([]orthancapi.Instance, error) { return nil, err }}
		}, wantWarning: "rules could not be applied"},
		{name: "study gone", release: func(*events.StudyStable, []orthancapi.Instance) Selection {
			err := fmt.Errorf("destination ai: %w: GET /studies/...: %w", ErrRules, orthancapi.ErrNotFound)
			return fakeSelection{unselected: unselecting(nil, err), release: func(context.Context) ([]orthancapi.Instance, error) { return nil, err }}
		}},
		// The study is not even read: its state is unreadable here.
		{name: "one destination"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleaner := &memCleaner{lastUpdate: "20261126T100000"}
			if tt.release == nil {
				cleaner.studyErr = errors.New("timeout")
			}
			if tt.changed {
				cleaner.lastUpdate = "20261126T110000"
			}
			f, ev := cleaningForwarder(t, cleaner, func(o *Options) { o.Select = tt.release })
			var logged bytes.Buffer
			f.deleteForwarded(t.Context(), ev, nil, listed, nil, slog.New(slog.NewTextHandler(&logged, nil)))
			if fmt.Sprint(cleaner.deleted) != fmt.Sprint(tt.wantDeleted) {
				t.Errorf("deleted %v, want %v", cleaner.deleted, tt.wantDeleted)
			}
			for i, r := range []string{"deleted", "failed", "skipped", "gone", "waiting"} {
				if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(r)); got != tt.want[i] {
					t.Errorf("%s = %v, want %v", r, got, tt.want[i])
				}
			}
			if warned := strings.Contains(logged.String(), "level=WARN"); warned != (tt.wantWarning != "") || !strings.Contains(logged.String(), tt.wantWarning) {
				t.Errorf("logged %q, want a warning saying %q", logged.String(), tt.wantWarning)
			}
		})
	}
}

// cleaningForwarder is a forwarder whose source cleaner is cleaner, its
// forwards recorded, with set's options (nil: none), and an event of the
// study its deletes are asked for (bufferForwarder forwards testEvent).
func cleaningForwarder(t *testing.T, cleaner *memCleaner, set func(*Options)) (*Forwarder, *events.StudyStable) {
	t.Helper()
	f := newForwarder(t, newMemSource(3), "http://127.0.0.1:1", nil, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Completed = recordedOK
		o.CleanerFor = func(string) (SourceCleaner, error) { return cleaner, nil }
		if set != nil {
			set(o)
		}
	})
	return f, &events.StudyStable{Source: "src", OrthancStudyID: "00000000-00000000-00000000-00000000-00000000", LastUpdate: "20261126T100000"}
}

// failingOnce answers err, then no unconfigured destination.
func failingOnce(err error) func(context.Context) ([]string, error) {
	var calls atomic.Int32
	return func(context.Context) ([]string, error) {
		if calls.Add(1) == 1 {
			return nil, err
		}
		return nil, nil
	}
}

// Every result of the source deletes is exported at 0 from the start,
// so that an increase() over it sees the first count after a restart.
func TestSourceDeleteSeriesFromTheStart(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) { o.Registerer = prometheus.NewRegistry() })
	if n := testutil.CollectAndCount(f.m.sourceDeletes); n != 7 {
		t.Errorf("%d series of stowline_forwarder_source_deletes_total before any delete, want 7 (deleted, failed, skipped, waiting, gone, kept, kept_unselected)", n)
	}
}

// A study that changes while its deletes run (an instance sent anew takes
// the ID of the one deleted) stops them at the next look.
func TestDeleteForwardedStopsWhenTheStudyChanges(t *testing.T) {
	var instances []orthancapi.Instance
	for i := range 40 {
		instances = append(instances, orthancapi.Instance{ID: fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i)})
	}
	cleaner := &memCleaner{lastUpdate: "20261126T100000", changeAfter: 5}
	f, ev := cleaningForwarder(t, cleaner, nil)
	f.deleteForwarded(context.Background(), ev, instances, instances, nil, f.log)
	if len(cleaner.deleted) != recheckEvery {
		t.Errorf("deleted %d, want the %d before the first look", len(cleaner.deleted), recheckEvery)
	}
	if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("skipped")); got != float64(40-recheckEvery) {
		t.Errorf("skipped = %v, want %d", got, 40-recheckEvery)
	}
}

func TestProgressInterval(t *testing.T) {
	for _, tt := range []struct{ ackWait, want time.Duration }{
		{3 * time.Second, time.Second},
		{30 * time.Second, time.Second},
		{1500 * time.Millisecond, 500 * time.Millisecond},
	} {
		if got := progressInterval(tt.ackWait); got != tt.want {
			t.Errorf("progressInterval(%s) = %s, want %s", tt.ackWait, got, tt.want)
		}
	}
}

// TestRedeliveryWhileInHandLeftToFirst: an event JetStream hands out
// again while a worker of this process still works on it (its in-progress
// signals lapsed in a NATS gap) is not sent a second time: the second
// delivery is left unsettled, and the first one's ack settles the event.
func TestRedeliveryWhileInHandLeftToFirst(t *testing.T) {
	ns := testnats.Start(t)
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	topo := natsjs.DefaultTopology()
	topo.AckWait = time.Second
	cons, err := topo.EnsureConsumer(t.Context(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	f := newForwarder(t, newMemSource(1), srv.URL, cons)
	first := deliverOne(t, ns, cons, testEvent())
	meta, err := first.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	// A worker has it in hand, and sends no signal for longer than the
	// ack wait.
	if !f.take(meta.Sequence.Stream) {
		t.Fatal("a new event counted as in hand")
	}
	again, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("not delivered again after the ack wait: %v", err)
	}
	f.handle(t.Context(), again, "")
	if n := k.requests.Load(); n != 0 {
		t.Fatalf("%d STOW-RS requests for an event in hand, want none", n)
	}
	if err := first.DoubleAck(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.drop(meta.Sequence.Stream)
	info := waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.NumAckPending == 0 })
	if info.AckFloor.Stream != 1 || info.NumPending != 0 {
		t.Errorf("ack floor %d, %d pending: want the event settled by the first delivery's ack", info.AckFloor.Stream, info.NumPending)
	}
}

// flakyProgress fails its in-progress signals while down is set.
type flakyProgress struct {
	jetstream.Msg
	down  atomic.Bool
	calls atomic.Int32
	naks  atomic.Int32
}

func (m *flakyProgress) Nak() error {
	m.naks.Add(1)
	return nil
}

func (m *flakyProgress) InProgress() error {
	m.calls.Add(1)
	if m.down.Load() {
		return nats.ErrConnectionClosed
	}
	return nil
}

// TestKeepAliveWarnsOnceAMinute: during a NATS outage every study in hand
// fails its in-progress signal every second; that was a warning a second
// a study. Now the first failure warns, then one a minute, and the return
// is logged once.
func TestKeepAliveWarnsOnceAMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs testharness.LogBuffer
		log := slog.New(slog.NewJSONHandler(&logs, nil))
		msg := &flakyProgress{}
		msg.down.Store(true)
		stop := keepAlive(msg, time.Second, nil, log)
		time.Sleep(150*time.Second + time.Millisecond)
		synctest.Wait()
		msg.down.Store(false)
		time.Sleep(time.Second)
		synctest.Wait()
		stop()
		if n := msg.calls.Load(); n != 151 {
			t.Errorf("%d in-progress signals, want 151", n)
		}
		out := logs.String()
		if n := strings.Count(out, "in-progress signal failed"); n != 3 {
			t.Errorf("%d warnings over 150 s of failures, want 3 (at 1 s, 61 s, 121 s):\n%s", n, out)
		}
		if n := strings.Count(out, "in-progress signals resumed"); n != 1 {
			t.Errorf("%d 'resumed' lines, want 1:\n%s", n, out)
		}
	})
}

// TestKeepAliveWarnsWhileSignalsAreOnlyBuffered: while the client
// reconnects, nats.go buffers an in-progress signal and reports it sent;
// the outage was silent in the log while the ack wait ran out. Now a
// signal sent while disconnected counts as failed.
func TestKeepAliveWarnsWhileSignalsAreOnlyBuffered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs testharness.LogBuffer
		log := slog.New(slog.NewJSONHandler(&logs, nil))
		msg := &flakyProgress{} // every signal "succeeds"
		var up atomic.Bool
		stop := keepAlive(msg, time.Second, up.Load, log)
		time.Sleep(90*time.Second + time.Millisecond)
		synctest.Wait()
		up.Store(true)
		time.Sleep(time.Second)
		synctest.Wait()
		stop()
		out := logs.String()
		if n := strings.Count(out, "NATS unreachable"); n != 2 {
			t.Errorf("%d warnings naming NATS unreachable over 90 s disconnected, want 2 (at 1 s, 61 s):\n%s", n, out)
		}
		if n := strings.Count(out, "in-progress signals resumed"); n != 1 {
			t.Errorf("%d 'resumed' lines, want 1:\n%s", n, out)
		}
	})
}

// TestHandBackSaysWhenNATSIsUnreachable: a study handed back at shutdown
// while NATS is unreachable is not returned to the queue (the NAK stays
// in the client's buffer): the log says it comes back after the ack wait.
func TestHandBackSaysWhenNATSIsUnreachable(t *testing.T) {
	for _, tt := range []struct {
		connected func() bool
		want      string
	}{
		{nil, "shutdown: study returned to the queue"},
		{func() bool { return true }, "shutdown: study returned to the queue"},
		{func() bool { return false }, "NATS unreachable, the study cannot be handed back"},
	} {
		var logs testharness.LogBuffer
		msg := &flakyProgress{}
		handBack(msg, tt.connected, Report{}, slog.New(slog.NewJSONHandler(&logs, nil)))
		if !strings.Contains(logs.String(), tt.want) || msg.naks.Load() != 1 {
			t.Errorf("log %s, %d NAKs; want %q and one NAK", logs.String(), msg.naks.Load(), tt.want)
		}
	}
}

// STOW_MAX_BYTES bounds a request as a destination (or the proxy in front
// of it) counts it, multipart framing included: a destination refusing
// anything longer (413) gets only requests within it. Batched on the
// instances' content alone, four 1024-byte instances under a 4096-byte
// limit made one request of 4096 bytes plus framing, and the study was
// dead-lettered.
func TestMaxBytesCountsTheFraming(t *testing.T) {
	const limit = 4096
	ns := testnats.Start(t)
	var k sink
	stow := k.handler(nil)
	var largest atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if n := int64(len(body)); n > largest.Load() {
			largest.Store(n)
		}
		if len(body) > limit {
			http.Error(w, "413 Request Entity Too Large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		stow.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, newMemSource(8), srv.URL, cons, func(o *Options) {
		o.MaxBytes = limit
		o.DeadLetters = dls
		o.MaxDeliveries = 2
	})
	forwardOne(t, f, ns, cons, testEvent())
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered: %s", letters[0].Reason)
	}
	if got := largest.Load(); got > limit {
		t.Errorf("largest request %d bytes, over the %d-byte limit", got, limit)
	}
}
