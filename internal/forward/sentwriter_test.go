package forward

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// blockingFailureLog is a memFailureLog whose RememberSent waits for
// release and fails its call number fail; calls records each call's IDs.
type blockingFailureLog struct {
	memFailureLog
	release chan struct{}
	fail    int
	mu      sync.Mutex
	calls   [][]string
}

func (b *blockingFailureLog) RememberSent(ctx context.Context, ev *events.StudyStable, ids []string) error {
	<-b.release
	b.mu.Lock()
	b.calls = append(b.calls, slices.Clone(ids))
	n := len(b.calls)
	b.mu.Unlock()
	if n == b.fail {
		return errors.New("nats: no response from stream")
	}
	return b.memFailureLog.RememberSent(ctx, ev, ids)
}

// The instances each request got stored are recorded while the attempt
// goes on, without the request waiting for the write (it held its place
// in the request limit through the write, which the limiter took for the
// destination's latency); what came in during a write goes in the next
// one; and what a failed write held is written again (it was dropped,
// and a later delivery took those copies for conflicts), after a backoff
// and while the attempt goes on, not only as it ends: a process that died
// later in a study of hours left all it stored since unrecorded.
func TestSentWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &blockingFailureLog{release: make(chan struct{}), fail: 2}
		f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) { o.Failures = log })
		ev := testEvent()
		w := f.newSentWriter(t.Context(), ev, f.log)
		w.add([]string{"a"})
		synctest.Wait() // the writer waits in its first write
		w.add([]string{"b"})
		w.add([]string{"c"}) // neither waited for the write under way
		close(log.release)   // the second write, of both, fails
		synctest.Wait()
		w.add([]string{"d"}) // within the backoff: kept for the next
		synctest.Wait()
		if n := len(log.calls); n != 2 {
			t.Errorf("%d writes, want none more within the backoff after a failure", n)
		}
		time.Sleep(sentWriterFirstBackoff)
		w.add([]string{"e"}) // past it: written with what failed
		synctest.Wait()
		sent, _ := log.Sent(t.Context(), ev)
		for _, id := range []string{"a", "b", "c", "d", "e"} {
			if !sent(id) {
				t.Errorf("%s not recorded while the attempt goes on", id)
			}
		}
		w.close()
		want := [][]string{{"a"}, {"b", "c"}, {"b", "c", "d", "e"}}
		if !slices.EqualFunc(log.calls, want, slices.Equal) {
			t.Errorf("writes %v, want %v", log.calls, want)
		}
	})
}

// countingFailureLog is a memFailureLog that counts the IDs written.
type countingFailureLog struct {
	memFailureLog
	mu      sync.Mutex
	written int
}

func (c *countingFailureLog) RememberSent(ctx context.Context, ev *events.StudyStable, ids []string) error {
	c.mu.Lock()
	c.written += len(ids)
	c.mu.Unlock()
	return c.memFailureLog.RememberSent(ctx, ev, ids)
}

// What the requests' answers recorded is not written again at the ack:
// each stored instance is written once (a second KV write a study, and a
// second warning when the bucket does not answer).
func TestStoredInstancesWrittenOnce(t *testing.T) {
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	fl := &countingFailureLog{}
	rec := &recordingObserver{}
	f := newForwarder(t, newMemSource(8), srv.URL, cons, func(o *Options) { o.Failures, o.Observer = fl, rec })
	ev := testEvent()
	msg := deliverOne(t, ns, cons, ev)
	f.handle(t.Context(), msg, "")
	if got := rec.results(); got[ResultForwarded] != 1 {
		t.Fatalf("results %v, want the study forwarded", got)
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.written != 8 {
		t.Errorf("%d instance IDs written for 8 stored, want each once", fl.written)
	}
	sent, _ := fl.Sent(t.Context(), ev)
	if !sent(sentID(ev, orthancapi.Instance{SOPInstanceUID: "1.2.3.8"})) {
		t.Error("the last instance is not recorded")
	}
}

// slowRecordLog is a memFailureLog whose Record takes a bucket's
// election (a leader lost) to answer.
type slowRecordLog struct {
	memFailureLog
	wait time.Duration
}

func (s *slowRecordLog) Record(ctx context.Context, seq uint64, now time.Time) (FailureTimes, error) {
	time.Sleep(s.wait)
	return s.memFailureLog.Record(ctx, seq, now)
}

// signalOrderMsg counts in-progress signals, and those after the event
// was NAKed or terminated.
type signalOrderMsg struct {
	jetstream.Msg
	mu                     sync.Mutex
	signals, afterSettling int
	settled                bool
}

func (m *signalOrderMsg) InProgress() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.signals++
	if m.settled {
		m.afterSettling++
	}
	return nil
}

func (m *signalOrderMsg) NakWithDelay(time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = true
	return nil
}

// settle's writes before a NAK (the failure times, what the attempt
// stored) are covered by the event's in-progress signals, stopped just
// before the NAK: they were stopped before the writes, which may take
// settleTimeout through a bucket's election, and under a short
// FORWARDER_ACK_WAIT the event went to another replica meanwhile, which
// retried it at once, its backoff skipped.
func TestSettleSignalsThroughItsWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fl := &slowRecordLog{wait: 10 * time.Second}
		f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) { o.Failures = fl })
		msg := &signalOrderMsg{}
		stop := keepAlive(msg, time.Second, nil, f.log)
		a := &Attempt{Destination: "default", Number: 1, Seq: 7, Event: testEvent()}
		d := decision{action: retry, class: Transient, delay: time.Minute}
		f.settle(t.Context(), msg, a, d, Report{}, errors.New("destination refused"), 0, f.log, stop)
		synctest.Wait()
		msg.mu.Lock()
		defer msg.mu.Unlock()
		if !msg.settled || msg.signals < 9 || msg.afterSettling != 0 {
			t.Errorf("NAKed %v; %d signals during a 10 s write, %d after the NAK; want 9 or more, none after", msg.settled, msg.signals, msg.afterSettling)
		}
	})
}
