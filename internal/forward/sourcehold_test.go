package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// A source Orthanc that stops answering while its study is queued holds
// the study, its delivery unspent, until it answers again: with
// FORWARDER_MAX_DELIVERIES=1 the first failed attempt used to
// dead-letter it ("gave up after 1 deliveries"), as a long Orthanc outage
// did to every study queued meanwhile after 48. Real Orthanc, stopped and
// started again.
func TestSourceOutageHoldsTheStudy(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "outage-src"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "outage-dest", DicomWeb: true})
	ev, client := uploadStudy(t, srcOrthanc, 3)
	srcOrthanc.Stop(t)
	// Orthanc comes back after more than an ack wait (3 s): the
	// in-progress signals keep the delivery.
	logs := forwardHeld(t, client, dest, ev, "source Orthanc unreachable: the study is held", func() error {
		time.Sleep(4 * time.Second)
		return srcOrthanc.Restart(context.Background())
	})
	if !strings.Contains(logs.String(), "source Orthanc answers again") {
		t.Errorf("no log of the source's return:\n%s", logs.String())
	}
	// A key twice in one JSON object: pipelines that refuse those
	// (OpenSearch) would drop the lines an outage's runbook looks for.
	for line := range strings.Lines(logs.String()) {
		if k := repeatedKey(line); k != "" {
			t.Errorf("key %q twice in %s", k, line)
		}
	}
}

// repeatedKey returns a key a JSON log line's object holds twice, ""
// if none (or the line is not JSON).
func repeatedKey(line string) string {
	dec := json.NewDecoder(strings.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		k, _ := t.(string)
		if seen[k] {
			return k
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// A source Orthanc that refuses the forwarder's credentials (a password
// changed in Orthanc and not yet in the forwarder's file) holds the
// study until it accepts them, instead of dead-lettering it and every
// study after it for an operator to replay. Real Orthanc, its password
// changed back.
func TestSourceRefusingCredentialsHoldsTheStudy(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "refusing-src", Username: "forwarder", Password: "pw-new-0123"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "refusing-dest", DicomWeb: true})
	ev, _ := uploadStudy(t, srcOrthanc, 3)
	client, err := orthancapi.New(srcOrthanc.URL, orthancapi.WithBasicAuth("forwarder", "pw-old-4567"))
	if err != nil {
		t.Fatal(err)
	}
	// An operator mends the password.
	forwardHeld(t, client, dest, ev, "source Orthanc refuses the forwarder's credentials: the study is held", func() error {
		return srcOrthanc.RestartWithPassword(context.Background(), "pw-old-4567")
	})
}

// Where several sources feed the forwarder, a study whose source stops
// answering is parked, and its worker forwards the other sources'
// studies meanwhile: before, the study was retried as any transient
// failure and dead-lettered once its deliveries ran out (a weekend
// outage of one Orthanc dead-lettered every study queued from it). A
// second study of the parked source is parked before any attempt. Once
// the source answers, both go back to the queue and arrive, the outage
// having spent one delivery each. Real Orthancs, one stopped and
// started again; one worker.
func TestSourceOutageParksWithSeveralSources(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	a := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "park-a"})
	b := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "park-b"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "park-dest", DicomWeb: true})
	evA1, clientA := uploadStudy(t, a, 3)
	evA2, _ := uploadStudy(t, a, 2)
	evB, clientB := uploadStudy(t, b, 1)
	evB.Source = "b"
	a.Stop(t)
	clients := map[string]*orthancapi.Client{"a": clientA, "b": clientB}
	var logs testharness.LogBuffer
	parked := &parkRecorder{}
	f, ns, cons, dls := orthancForwarder(t, nil, dest, func(o *Options) {
		o.Observer = parked
		o.SourceFor = func(source string) (Source, error) { return clients[source], nil }
		o.SourceProbe = func(ctx context.Context, source string) error {
			_, err := clients[source].System(ctx)
			return err
		}
		// One delivery left after the one the study is parked in.
		o.MaxParked, o.MaxInstances, o.MaxDeliveries = 10, 10, 2
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for _, ev := range []*events.StudyStable{evA1, evA2, evB} {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// b's study arrives while a is down, a's two are parked.
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool {
		return i.AckFloor.Consumer == 0 && i.NumAckPending == 2 && i.NumPending == 0
	})
	for deadline := time.Now().Add(15 * time.Second); len(dest.InstanceMD5s(t)) != 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("b's study not forwarded while a's are parked:\n%s", logs.String())
		}
	}
	if n := strings.Count(logs.String(), "the study is parked until it answers"); n != 2 {
		t.Errorf("%d studies parked, want 2:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "unavailable (its other studies are parked)") {
		t.Errorf("a's second study was not parked before its attempt:\n%s", logs.String())
	}
	// The status page is told, so as not to show them as being sent.
	if got := parked.reasons(); len(got) != 2 || got[0] != "a: parked: source Orthanc unreachable" ||
		!strings.HasPrefix(got[1], "a: parked: source Orthanc unavailable") {
		t.Errorf("the observer was told of parked studies %q, want a's two", got)
	}
	if err := a.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// The watcher probes a at waits doubling to a minute, and gives its
	// studies back after two good probes in a row.
	waitConsumerWithin(t, cons, 2*heldWait, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 3 && i.NumAckPending == 0 })
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered as %q: %s; want a's studies parked until it answered", letters[0].Class, letters[0].Reason)
	}
	if n := len(dest.InstanceMD5s(t)); n != 6 {
		t.Errorf("the destination holds %d instances, want 6", n)
	}
	if !strings.Contains(logs.String(), "its parked studies go back to the queue") {
		t.Errorf("no log of the source's return:\n%s", logs.String())
	}
}

// forwardHeld forwards ev from client's Orthanc to dest, with the source
// probed through client and one delivery a study, and runs mend once the
// log says held (the study is held for its source). The study must then
// arrive whole (the 3 instances of uploadStudy(t, o, 3)), with no dead
// letter. It returns the forwarder's log.
func forwardHeld(t *testing.T, client *orthancapi.Client, dest *testharness.Orthanc, ev *events.StudyStable, held string, mend func() error) *testharness.LogBuffer {
	t.Helper()
	var logs testharness.LogBuffer
	holds := &holdRecorder{}
	f, ns, cons, dls := orthancForwarder(t, client, dest, func(o *Options) {
		o.Observer = holds
		o.SourceProbe = func(ctx context.Context, _ string) error {
			_, err := client.System(ctx)
			return err
		}
		o.MaxInstances, o.MaxDeliveries = 10, 1
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	// From another goroutine, so failures are reported with t.Error, not
	// t.Fatal.
	mended := make(chan struct{})
	go func() {
		defer close(mended)
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), held); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("no %q in the log within 30 s", held)
				return
			}
		}
		if err := mend(); err != nil {
			t.Errorf("mend the source Orthanc: %v", err)
		}
	}()
	t.Cleanup(func() { <-mended })
	// Mended after the first probe (a slow Orthanc stop or start), the
	// study is sent at the second, 15 s into the hold.
	forwardOneWithin(t, f, ns, cons, ev, heldWait)
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered as %q: %s; want the study held until the source was mended", letters[0].Class, letters[0].Reason)
	}
	if n := len(dest.InstanceMD5s(t)); n != 3 {
		t.Errorf("the destination holds %d instances, want 3", n)
	}
	// The status page is told the study is held, and then that it goes on.
	if got := holds.notes(); len(got) != 2 || !strings.HasPrefix(got[0], "held: source Orthanc ") || got[1] != "" {
		t.Errorf("the observer was told %q, want the hold and its end", got)
	}
	return &logs
}

// holdForSource holds only while the source does not answer; a stop
// while held, of the forwarder or of the work, ends the hold with an
// error that gives the study back.
func TestHoldForSource(t *testing.T) {
	down := &orthancapi.Error{StatusCode: 503, NotFromOrthanc: "proxy"}
	refused := &orthancapi.Error{StatusCode: 401, OrthancMessage: "Unauthorized"}
	for _, tt := range []struct {
		name  string
		probe error
		end   string // how a hold ends: "work" cancels ctx, "stop" starts shutdown
		held  bool
		want  error
	}{
		{"the source answers: the study's own failure", nil, "", false, nil},
		// An answer, if an error: the source is up (the work is
		// cancelled so that a wrong hold ends).
		{"the source answers the probe 404", &orthancapi.Error{StatusCode: 404, OrthancMessage: "Unknown resource"}, "work", false, nil},
		{"the source answers the probe 400", &orthancapi.Error{StatusCode: 400, OrthancMessage: "Bad request"}, "work", false, nil},
		{"the source refuses credentials, the work is cancelled", refused, "work", true, context.Canceled},
		{"the source is down, the work is cancelled", down, "work", true, context.Canceled},
		{"the source is down, shutdown starts", down, "stop", true, errShutdown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, merr := newMetrics(prometheus.NewRegistry(), "default")
			if merr != nil {
				t.Fatal(merr)
			}
			f := &Forwarder{opts: Options{SourceProbe: func(context.Context, string) error { return tt.probe }},
				m: m, stopping: make(chan struct{})}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			switch tt.end {
			case "work":
				cancel()
			case "stop":
				close(f.stopping)
			}
			a := &Attempt{Event: &events.StudyStable{Source: "a"}}
			held, err := f.holdForSource(ctx, a, errors.New("GET /studies/x/instances: connection refused"), slog.New(slog.DiscardHandler), nil)
			if held != tt.held || !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Errorf("held %v, err %v; want held %v, err %v", held, err, tt.held, tt.want)
			}
		})
	}
}

// downSource answers as an Orthanc behind a proxy that lost it.
type downSource struct{ *memSource }

// downSourceForwarder is a forwarder of 2 workers, parking at most one
// study, whose source (of instances instances a study) is down behind a
// proxy, its probe answered 502; more sets the rest.
func downSourceForwarder(t *testing.T, cons jetstream.Consumer, instances int, more func(*Options)) *Forwarder {
	t.Helper()
	src := downSource{newMemSource(instances)}
	return newForwarder(t, src.memSource, "http://127.0.0.1:1", cons, func(o *Options) {
		o.Concurrency, o.MaxParked = 2, 1
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.SourceProbe = func(context.Context, string) error {
			return &orthancapi.Error{StatusCode: http.StatusBadGateway, NotFromOrthanc: "proxy"}
		}
		more(o)
	})
}

func (downSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return nil, &orthancapi.Error{StatusCode: http.StatusServiceUnavailable, NotFromOrthanc: "proxy"}
}

// Past MaxParked a study of an unavailable source holds its worker, as
// with one source, rather than spend its deliveries; at shutdown parked
// and held studies go back to the queue, none retried or dead-lettered,
// and Run returns once the parked ones are given back.
func TestParkingFullHoldsAndShutdownGivesBack(t *testing.T) {
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := downSourceForwarder(t, cons, 2, func(o *Options) {
		o.MaxDeliveries, o.DeadLetters = 5, dls
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	for i := range 2 {
		ev := testEvent()
		ev.LastUpdate = fmt.Sprintf("20261205T05000%d", i)
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(15 * time.Second); testutil.ToFloat64(f.m.sourceHeld) != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v studies held or parked, want 2", testutil.ToFloat64(f.m.sourceHeld))
		}
	}
	f.parking.mu.Lock()
	parked := f.parking.n
	f.parking.mu.Unlock()
	if parked != 1 {
		t.Errorf("%d studies parked, want 1 (MaxParked), the other holding its worker", parked)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A study given back may reach a worker again before it sees the
	// shutdown: it is handed back once more.
	if got := testutil.ToFloat64(f.m.studies.WithLabelValues(string(ResultInterrupted))); got < 2 {
		t.Errorf("%v studies handed back, want both", got)
	}
	for _, result := range []Result{ResultRetry, ResultDeadLettered} {
		if got := testutil.ToFloat64(f.m.studies.WithLabelValues(string(result))); got != 0 {
			t.Errorf("%s: %v studies, want none", result, got)
		}
	}
	if got := testutil.ToFloat64(f.m.sourceHeld); got != 0 {
		t.Errorf("%v studies still held after shutdown", got)
	}
}

// parkedMsg is a parked event's message: it counts the give-backs and the
// in-progress signals, and fails the signals while failSignals is set.
type parkedMsg struct {
	jetstream.Msg
	mu              sync.Mutex
	naks, signals   int
	lastSignal      time.Time     // of the last signal, or the first call to gap
	maxGap          time.Duration // the longest time between two signals
	failSignals     bool
	takenAtGiveBack bool // the event was out of hand when given back
	f               *Forwarder
	seq             uint64
}

func (m *parkedMsg) Nak() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.naks++
	// JetStream may deliver it again at once, to a worker here.
	m.takenAtGiveBack = m.f.take(m.seq)
	return nil
}

func (m *parkedMsg) InProgress() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failSignals {
		return errors.New("nats: connection closed")
	}
	m.signals++
	if !m.lastSignal.IsZero() {
		m.maxGap = max(m.maxGap, time.Since(m.lastSignal))
	}
	m.lastSignal = time.Now()
	return nil
}

func (m *parkedMsg) counts() (naks, signals int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.naks, m.signals
}

// parkOne parks a study of source "a" in a forwarder whose probe of it
// answers with probe's results in turn (the last one again once they run
// out), the event in hand as a worker's.
func parkOne(t *testing.T, probe []error, opts ...func(*Options)) (*Forwarder, *parkedMsg, *atomic.Int32) {
	t.Helper()
	var probes atomic.Int32
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, append([]func(*Options){func(o *Options) {
		o.SourceProbe = func(context.Context, string) error {
			n := int(probes.Add(1))
			return probe[min(n, len(probe))-1]
		}
		o.MaxParked = 10
	}}, opts...)...)
	const seq = 7
	msg := &parkedMsg{f: f, seq: seq}
	if !f.take(seq) || !f.reservePark(1) {
		t.Fatal("take or reserve")
	}
	a := &Attempt{Seq: seq, Number: 1, Event: &events.StudyStable{Source: "a"}}
	if !f.park(&parkedStudy{msg: msg, a: a, log: slog.New(slog.DiscardHandler)}, "unreachable", false) {
		t.Fatal("not parked")
	}
	t.Cleanup(func() {
		f.stoppingOnce.Do(func() { close(f.stopping) })
		f.parking.watchers.Wait()
	})
	return f, msg, &probes
}

var errSourceDown = &orthancapi.Error{StatusCode: http.StatusBadGateway, NotFromOrthanc: "proxy"}

// A flapping source gives its parked studies back only once it answers
// two probes in a row: each give-back spends a delivery, and one good
// probe between failures spent one a flap. The study is then out of hand
// before its Nak, for a worker here that JetStream gives it to at once
// (it used to leave it unsettled, "delivered again while this process
// still works on it", for the ack wait).
func TestParkedStudiesGoBackAfterTwoGoodProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, msg, probes := parkOne(t, []error{nil, errSourceDown, nil, nil})
		time.Sleep(sourceHoldWait)
		synctest.Wait()
		if naks, _ := msg.counts(); probes.Load() != 1 || naks != 0 {
			t.Fatalf("after one good probe: %d probes, %d give-backs; want 1, none", probes.Load(), naks)
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		naks, signals := msg.counts()
		if probes.Load() != 4 || naks != 1 || !msg.takenAtGiveBack {
			t.Errorf("%d probes, %d give-backs, out of hand %v; want 4, one, true", probes.Load(), naks, msg.takenAtGiveBack)
		}
		if signals == 0 {
			t.Error("no in-progress signal while parked")
		}
	})
}

// A parked study is signalled while its source's probe waits out its
// time-out (an Orthanc blackholed): with FORWARDER_ACK_WAIT at 3 to 11 s
// each probe let it lapse, JetStream delivered it again, and after
// FORWARDER_MAX_DELIVERIES of them an outage dead-lettered it as a crash.
func TestParkedStudySignalledWhileProbing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ackWait = 3 * time.Second
		_, msg, _ := parkOne(t, nil, func(o *Options) {
			o.AckWait = ackWait
			o.SourceProbe = func(ctx context.Context, _ string) error {
				<-ctx.Done() // no answer: the probe's time-out
				return errSourceDown
			}
		})
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		msg.mu.Lock()
		defer msg.mu.Unlock()
		if msg.signals == 0 || msg.maxGap >= ackWait {
			t.Errorf("%d signals, at most %v apart; want them within the ack wait %v", msg.signals, msg.maxGap, ackWait)
		}
	})
}

// A parked study whose in-progress signals lapsed for longer than the
// ack wait (NATS unreachable) is JetStream's again, sent to another
// worker meanwhile: it is not given back a second time, which would have
// had it sent twice at once.
func TestLapsedParkedStudyIsNotGivenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, msg, _ := parkOne(t, []error{nil})
		msg.mu.Lock()
		msg.failSignals = true
		msg.mu.Unlock()
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if naks, _ := msg.counts(); naks != 0 {
			t.Errorf("%d give-backs of a study whose signals lapsed for %s, want none", naks, 2*sourceHoldWait)
		}
		if got := testutil.ToFloat64(f.m.sourceHeld); got != 0 {
			t.Errorf("%v studies still parked", got)
		}
	})
}

// MaxParked bounds the parked studies over the replicas serving the
// destination: each parks its share, so that K replicas do not take K
// times the consumer's room for unacknowledged events (MaxAckPending),
// which would stop JetStream delivering to any of them.
func TestParkingIsSharedByTheReplicas(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.SourceProbe = func(context.Context, string) error { return errSourceDown }
		o.MaxParked = 8
	})
	f.SetReplicas(4)
	n := 0
	for f.reservePark(1) {
		n++
	}
	if n != 2 {
		t.Errorf("%d places with 4 replicas sharing 8, want 2", n)
	}
}

// A study on its last delivery is held, not parked: a parked study is
// given back to JetStream when its source answers, and with no delivery
// left it would come back only to be dead-lettered as a crash. The
// places reserved are the earlier deliveries'.
func TestLastDeliveryIsNotParked(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.SourceProbe = func(context.Context, string) error { return errSourceDown }
		o.MaxParked, o.MaxDeliveries = 10, 3
	})
	for _, tc := range []struct {
		delivery uint64
		parked   bool
	}{{1, true}, {2, true}, {3, false}, {4, false}} {
		if got := f.reservePark(tc.delivery); got != tc.parked {
			t.Errorf("delivery %d of 3: parked %v, want %v", tc.delivery, got, tc.parked)
		}
	}
	if f.parking.n != 2 {
		t.Errorf("%d places reserved, want the 2 of the earlier deliveries", f.parking.n)
	}
}

// parkRecorder is an Observer (a ParkObserver) that records each parked
// study's source and why it was parked.
type parkRecorder struct {
	noObserver
	mu     sync.Mutex
	parked []string
}

func (r *parkRecorder) Parked(a *Attempt, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.parked = append(r.parked, a.Event.Source+": "+why)
}

func (r *parkRecorder) reasons() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.parked)
}

// holdRecorder is an Observer (a HoldObserver) that records what it is
// told of holds.
type holdRecorder struct {
	noObserver
	mu    sync.Mutex
	holds []string
}

func (r *holdRecorder) Held(_ *Attempt, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holds = append(r.holds, why)
}

func (r *holdRecorder) notes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.holds)
}

// halfDownSource is a memSource whose instances from the fifth on cannot
// be read while down is set: its Orthanc stopped answering once the
// study's first request was read.
type halfDownSource struct {
	*memSource
	down atomic.Bool
}

// newHalfDownSource is a halfDownSource of n instances, down.
func newHalfDownSource(n int) *halfDownSource {
	s := &halfDownSource{memSource: newMemSource(n)}
	s.down.Store(true)
	return s
}

// options makes s every study's source, probed down while it is.
func (s *halfDownSource) options(o *Options) {
	o.SourceFor = func(string) (Source, error) { return s, nil }
	o.SourceProbe = func(context.Context, string) error {
		if s.down.Load() {
			return errSourceDown
		}
		return nil
	}
}

func (s *halfDownSource) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	if s.down.Load() && !slices.ContainsFunc(s.instances[:4], func(in orthancapi.Instance) bool { return in.ID == id }) {
		return nil, 0, errSourceDown
	}
	return s.memSource.OpenInstanceFile(ctx, id)
}

// recordedAtGiveBack is a delivery that notes, as it is given back, which
// of the study's first 4 instances the failure log records as stored.
type recordedAtGiveBack struct {
	jetstream.Msg
	log      *failingFailureLog
	ev       *events.StudyStable
	recorded chan int
}

func (m recordedAtGiveBack) Nak() error {
	sent, _ := m.log.Sent(context.Background(), m.ev)
	n := 0
	for i := 1; i <= 4; i++ {
		if sent(sentID(m.ev, orthancapi.Instance{SOPInstanceUID: fmt.Sprint("1.2.3.", i)})) {
			n++
		}
	}
	m.recorded <- n
	return m.Msg.Nak()
}

// A study parked for its source after part of it was stored, while the
// failure log's writes failed (NATS unreachable), writes what it stored
// before it goes back to the queue, as a settled attempt does: the park
// dropped that list, and the next delivery took those copies for
// conflicts.
func TestParkedStudyWritesWhatItCouldNotRecord(t *testing.T) {
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	src := newHalfDownSource(8)
	fl := &failingFailureLog{}
	fl.failing.Store(true)
	f := newForwarder(t, nil, srv.URL, cons, src.options, func(o *Options) {
		o.Failures = fl
		o.MaxParked, o.MaxDeliveries = 10, 5
	})
	t.Cleanup(func() {
		f.stoppingOnce.Do(func() { close(f.stopping) })
		f.parking.watchers.Wait()
	})
	ev := testEvent()
	msg := recordedAtGiveBack{Msg: deliverOne(t, ns, cons, ev), log: fl, ev: ev, recorded: make(chan int, 1)}
	f.handle(t.Context(), msg, "")
	if got := testutil.ToFloat64(f.m.sourceHeld); got != 1 {
		t.Fatalf("%v studies parked, want 1", got)
	}
	if k.requests.Load() == 0 {
		t.Fatal("no request reached the destination, want the first 4 instances stored")
	}
	// NATS answers again, and so does the source: the study goes back.
	fl.failing.Store(false)
	src.down.Store(false)
	select {
	case n := <-msg.recorded:
		if n != 4 {
			t.Errorf("%d of the 4 stored instances recorded as the parked study went back, want 4", n)
		}
	case <-time.After(heldWait):
		t.Fatal("the parked study did not go back to the queue")
	}
}

// A parked study is in hand after its worker is done with it, and
// JetStream's retention runs on: its lane's age counts it until it is
// given back, then no longer (a hold left behind would read as an age
// growing for ever: a false StowlineEventsNearRetention).
func TestParkedStudyCountsInLaneAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const waited = 6 * 24 * time.Hour
		f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
			o.SourceProbe = func(context.Context, string) error { return nil }
			o.MaxParked = 10
		})
		const seq = 7
		msg := &parkedMsg{f: f, seq: seq}
		// As a worker's pull of it (started).
		workerDone := f.m.laneAge.hold(events.PriorityRoutine, seq, time.Now().Add(-waited))
		if !f.take(seq) || !f.reservePark(1) {
			t.Fatal("take or reserve")
		}
		a := &Attempt{Seq: seq, Number: 1, Event: &events.StudyStable{Source: "a"}}
		if !f.park(&parkedStudy{msg: msg, a: a, log: slog.New(slog.DiscardHandler)}, "unreachable", false) {
			t.Fatal("not parked")
		}
		workerDone()
		age := f.m.laneAge.WithLabelValues("routine")
		if got := testutil.ToFloat64(age); got != waited.Seconds() {
			t.Errorf("routine lane's age %v s with its study parked, want %v s", got, waited.Seconds())
		}
		// Two good probes give it back.
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if naks, _ := msg.counts(); naks != 1 {
			t.Fatalf("%d give-backs, want 1", naks)
		}
		if got := testutil.ToFloat64(age); got != 0 {
			t.Errorf("routine lane's age %v s once its parked study was given back, want 0", got)
		}
		f.stoppingOnce.Do(func() { close(f.stopping) })
		f.parking.watchers.Wait()
	})
}

// slowFailureLog takes its time to record what was stored: a cluster
// electing the bucket's leader.
type slowFailureLog struct {
	memFailureLog
	wait time.Duration
}

func (l *slowFailureLog) RememberSent(ctx context.Context, ev *events.StudyStable, ids []string) error {
	time.Sleep(l.wait)
	return l.memFailureLog.RememberSent(ctx, ev, ids)
}

// A parked study whose record of what it stored is written as it goes
// back keeps its in-progress signals while the write waits: they lapsed
// past a short ack wait, and the study went back to JetStream's hands
// (sent again after the ack wait, counted lapsed) instead of the queue.
// While NATS is unreachable a signal is only buffered: the study's
// signals lapse then, and it is not given back.
func TestParkedStudyKeptInProgressWhileItsRecordIsWritten(t *testing.T) {
	for _, tt := range []struct {
		name      string
		connected bool
		naks      int
	}{
		{"NATS answers", true, 1},
		{"NATS unreachable", false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var connected atomic.Bool
				connected.Store(true)
				f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
					o.SourceProbe = func(context.Context, string) error { return nil }
					o.MaxParked = 10
					o.AckWait = 3 * time.Second
					o.Failures = &slowFailureLog{wait: 10 * time.Second}
					o.Connected = connected.Load
				})
				const seq = 7
				msg := &parkedMsg{f: f, seq: seq}
				if !f.take(seq) || !f.reservePark(1) {
					t.Fatal("take or reserve")
				}
				a := &Attempt{Seq: seq, Number: 1, Event: &events.StudyStable{Source: "a"}}
				p := &parkedStudy{msg: msg, a: a, log: slog.New(slog.DiscardHandler), rep: Report{unrecorded: []string{"1.2.3.1/file"}}}
				if !f.park(p, "unreachable", false) {
					t.Fatal("not parked")
				}
				// The source answers its two probes (sourceHoldWait apart);
				// NATS goes as the study goes back.
				time.Sleep(2*sourceHoldWait - time.Second)
				connected.Store(tt.connected)
				time.Sleep(10 * time.Minute)
				synctest.Wait()
				if naks, _ := msg.counts(); naks != tt.naks {
					t.Errorf("%d give-backs once the source answered, want %d", naks, tt.naks)
				}
				f.stoppingOnce.Do(func() { close(f.stopping) })
				f.parking.watchers.Wait()
			})
		})
	}
}

// refusingSource answers as an Orthanc that refuses the forwarder's
// credentials.
type refusingSource struct{ *memSource }

func (refusingSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return nil, &orthancapi.Error{StatusCode: http.StatusUnauthorized}
}

// Source a refuses the forwarders' credentials (its password rotated in
// Orthanc, not in stowline) while its Lua script goes on queuing its
// studies; b is healthy. Once a's parked studies reach MaxParked, a's
// next ones held every worker, and b's study waited for a to be fixed:
// one worker is left to the other sources, and a's study past it is
// retried later, spending a delivery.
func TestParkingFullLeavesAWorkerToOtherSources(t *testing.T) {
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	a, b := refusingSource{newMemSource(1)}, newMemSource(1)
	dls := &memDeadLetters{}
	var logs testharness.LogBuffer
	f := newForwarder(t, b, srv.URL, cons, func(o *Options) {
		o.Concurrency = 2
		o.SourceFor = func(s string) (Source, error) {
			if s == "a" {
				return a, nil
			}
			return b, nil
		}
		o.SourceProbe = func(_ context.Context, s string) error {
			if s == "a" {
				return &orthancapi.Error{StatusCode: http.StatusUnauthorized}
			}
			return nil
		}
		o.MaxParked, o.MaxDeliveries, o.DeadLetters = 3, 48, dls
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	publishStudiesOfA(t, ctx, ns, 5)
	evB := testEvent()
	evB.Source = "b"
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, evB); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for k.requests.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("b's study got no STOW-RS request in 20 s while a refuses:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "so that the other sources' studies keep a worker") {
		t.Errorf("no log of a's study retried past the holds:\n%s", logs.String())
	}
	if n := len(dls.all()); n != 0 {
		t.Errorf("%d dead letters, want none: %+v", n, dls.all())
	}
}

// With several sources, an Orthanc down holds its studies past the
// parking limit on every worker, as with one source: it announces nothing
// new, and retried, its studies would be dead-lettered by a long outage.
// Only a source refusing the forwarders leaves a worker to the others.
func TestParkingFullHoldsADownSourceOnEveryWorker(t *testing.T) {
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := downSourceForwarder(t, cons, 1, func(o *Options) {
		o.MaxDeliveries, o.DeadLetters = 3, dls
		o.RetryDelay, o.RetryMaxDelay = 100*time.Millisecond, 200*time.Millisecond
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	publishStudiesOfA(t, ctx, ns, 3)
	// One parked, two held: every study in hand, none retried.
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(f.m.sourceHeld) < 3 {
		if time.Now().After(deadline) || len(dls.all()) > 0 {
			t.Fatalf("held or parked %v, dead letters %+v; want the three held or parked, none dead-lettered",
				testutil.ToFloat64(f.m.sourceHeld), dls.all())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(f.m.studies.WithLabelValues(string(ResultRetry))); n != 0 {
		t.Errorf("%v retries, want none", n)
	}
}

// publishStudiesOfA queues n studies of source a, each its own.
func publishStudiesOfA(t *testing.T, ctx context.Context, ns *testnats.Server, n int) {
	t.Helper()
	for i := range n {
		ev := testEvent()
		ev.LastUpdate = fmt.Sprintf("20261205T05000%d", i)
		ev.OrthancStudyID = fmt.Sprintf("27f7126f-4f66fb14-03f4081b-f9341db2-5392598%d", i)
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
}
