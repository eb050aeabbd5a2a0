package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

func testBucket(t *testing.T) (*testnats.Server, jetstream.KeyValue) {
	t.Helper()
	ns := testnats.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := natsjs.DefaultTopology().EnsureReconcile(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	return ns, kv
}

// fakeClock is the replicas' monotonic clock, moved by the test: a lease
// is taken over after a TTL on the contender's clock, so the tests step
// through TTLs without waiting for them.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func mustAcquire(t *testing.T, l *lease, want bool) {
	t.Helper()
	held, err := l.tryAcquire(context.Background())
	if err != nil {
		t.Fatalf("%s: tryAcquire: %v", l.holder, err)
	}
	if held != want {
		t.Fatalf("%s: tryAcquire = %v, want %v", l.holder, held, want)
	}
}

func TestLeaseIsExclusiveAndRenewed(t *testing.T) {
	_, kv := testBucket(t)
	const ttl = 600 * time.Millisecond
	clock := &fakeClock{t: time.Now()}
	a := newLease(kv, leaseKey("s"), "a", ttl, clock.now)
	b := newLease(kv, leaseKey("s"), "b", ttl, clock.now)

	mustAcquire(t, a, true)
	mustAcquire(t, b, false)
	// A renews faster than the TTL: B never gets it, though two TTLs pass.
	for range 6 {
		clock.advance(ttl / 3)
		if err := a.renew(context.Background()); err != nil {
			t.Fatalf("renew: %v", err)
		}
		mustAcquire(t, b, false)
	}
	// A holder that acquires again keeps its lease.
	mustAcquire(t, a, true)

	// Released: B takes it at once.
	if err := a.release(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, b, true)
	if err := a.renew(context.Background()); !errors.Is(err, errLeaseLost) {
		t.Fatalf("renew of a released lease: %v, want errLeaseLost", err)
	}
}

// A holder that dies (stops renewing without releasing) is replaced after
// one TTL, measured on the contender's clock.
func TestLeaseTakenOverWhenHolderStopsRenewing(t *testing.T) {
	_, kv := testBucket(t)
	const ttl = time.Second
	clock := &fakeClock{t: time.Now()}
	a := newLease(kv, leaseKey("s"), "a", ttl, clock.now)
	b := newLease(kv, leaseKey("s"), "b", ttl, clock.now)
	mustAcquire(t, a, true)
	died := clock.now()

	var took time.Duration
	for {
		held, err := b.tryAcquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if held {
			took = clock.now().Sub(died)
			break
		}
		if clock.now().Sub(died) > 3*ttl {
			t.Fatal("the lease of a dead holder was not taken over")
		}
		clock.advance(ttl / 10)
	}
	if took < ttl || took > ttl+ttl/2 {
		t.Errorf("taken over after %v, want between the TTL (%v) and 1.5 TTL", took, ttl)
	}
	if b.previous != "a" {
		t.Errorf("previous holder = %q", b.previous)
	}
	if err := a.renew(context.Background()); !errors.Is(err, errLeaseLost) {
		t.Fatalf("the old holder's renew: %v, want errLeaseLost", err)
	}
	// A's release after losing must not delete B's lease.
	if err := a.release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.renew(context.Background()); err != nil {
		t.Fatalf("B lost its lease to A's late release: %v", err)
	}
}

// lostAnswers writes its next Update, then reports it failed, as a
// JetStream whose answer is lost (a time-out during a leader election).
type lostAnswers struct {
	jetstream.KeyValue
	lose atomic.Bool
}

func (k *lostAnswers) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	rev, err := k.KeyValue.Update(ctx, key, value, last)
	if err == nil && k.lose.CompareAndSwap(true, false) {
		return 0, context.DeadlineExceeded
	}
	return rev, err
}

// A renewal that was written though its answer was lost does not make
// the holder believe another replica took the lease (and step down, with
// a warning naming a takeover that never happened): the key names it
// still. A lease another holder took is still lost.
func TestLeaseRenewalWithLostAnswerKeepsTheLease(t *testing.T) {
	_, kv := testBucket(t)
	lossy := &lostAnswers{KeyValue: kv}
	clock := &fakeClock{t: time.Now()}
	a := newLease(lossy, leaseKey("s"), "a", time.Second, clock.now)
	mustAcquire(t, a, true)
	lossy.lose.Store(true)
	if err := a.renew(context.Background()); err == nil {
		t.Fatal("the renewal whose answer was lost succeeded")
	}
	if err := a.renew(context.Background()); err != nil {
		t.Fatalf("renew after a renewal whose answer was lost: %v, want the lease kept", err)
	}

	b := newLease(kv, leaseKey("s"), "b", time.Second, clock.now)
	mustAcquire(t, b, false)
	clock.advance(2 * time.Second)
	mustAcquire(t, b, true)
	if err := a.renew(context.Background()); !errors.Is(err, errLeaseLost) {
		t.Fatalf("renew of a lease B took: %v, want errLeaseLost", err)
	}
}

// cutOffKV passes a holder's writes through until cut, then refuses them
// at once, as a holder cut off from the JetStream cluster meets them
// ("no responders") while the other replicas still write. It notes when
// the last write that went through was sent.
type cutOffKV struct {
	jetstream.KeyValue
	cut      atomic.Bool
	written  atomic.Int32
	lastSent atomic.Int64 // Unix nanoseconds
}

func (k *cutOffKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	if k.cut.Load() {
		return 0, nats.ErrNoResponders
	}
	sent := time.Now()
	rev, err := k.KeyValue.Update(ctx, key, value, last)
	if err == nil {
		k.lastSent.Store(sent.UnixNano())
		k.written.Add(1)
	}
	return rev, err
}

// A holder that can no longer renew its lease stops polling before a
// contender may take the source over: a contender takes it one TTL after
// it last saw the lease written, which is after the holder sent its last
// renewal. The holder steps down two thirds of the TTL after that; it
// did a whole TTL after it (less the time the renewal took to answer),
// checking only after each failed renewal, every third of the TTL, so
// that both could poll at once.
func TestLeaseHolderStepsDownBeforeATakeover(t *testing.T) {
	_, kv := testBucket(t)
	cut := &cutOffKV{KeyValue: kv}
	// Long enough that a loaded host's late timers (the 19/20 bound
	// below leaves 1.7 s) do not pass for a step-down after a takeover.
	const ttl = 6 * time.Second
	s := leaseHolder(cut, ttl)
	mustAcquire(t, s.lease, true)
	stepDown := keepLeaseInBackground(t, s, ttl)
	for deadline := time.Now().Add(10 * time.Second); cut.written.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the lease was not renewed")
		}
	}
	cut.cut.Store(true)
	took := stepDown().Sub(time.Unix(0, cut.lastSent.Load()))
	// Two thirds of the TTL; up to 19/20 of it for a loaded host, whose
	// timers can fire late. Without the step-down timer it took a whole
	// TTL or more.
	if took >= ttl*19/20 {
		t.Errorf("stepped down %s after its last renewal was sent; a contender may take over %s after it", took.Round(time.Millisecond), ttl)
	}
	t.Logf("stepped down %s after the last renewal was sent (TTL %s)", took.Round(time.Millisecond), ttl)
}

// failOnceKV refuses one write at once, when armed, as JetStream does
// for a moment ("no response from stream").
type failOnceKV struct {
	*cutOffKV
	armed atomic.Bool
}

func (k *failOnceKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	if k.armed.CompareAndSwap(true, false) {
		return 0, nats.ErrNoResponders
	}
	return k.cutOffKV.Update(ctx, key, value, last)
}

// One renewal refused is tried again soon and the lease kept: the next
// try came a third of the TTL later, at the step-down deadline, so the
// holder stepped down and took the lease back, reloading its cursor.
func TestLeaseKeptThroughOneRefusedRenewal(t *testing.T) {
	_, kv := testBucket(t)
	once := &failOnceKV{cutOffKV: &cutOffKV{KeyValue: kv}}
	const ttl = 3 * time.Second
	s := leaseHolder(once, ttl)
	mustAcquire(t, s.lease, true)
	ctx, stop := context.WithCancelCause(t.Context())
	defer stop(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.keepLease(ctx, stop)
	}()
	waitWritten := func(n int32) {
		t.Helper()
		for deadline := time.Now().Add(3 * ttl); once.written.Load() < n; time.Sleep(10 * time.Millisecond) {
			select {
			case <-done:
				t.Fatalf("the holder stepped down (%v) after %d renewals, want it to keep the lease", context.Cause(ctx), once.written.Load())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d renewals, want %d", once.written.Load(), n)
			}
		}
	}
	waitWritten(1)
	once.armed.Store(true)
	waitWritten(3)
}

// slowCreateKV writes a Create at once and answers it late, as JetStream
// can during a leader election.
type slowCreateKV struct {
	*cutOffKV
	delay time.Duration
}

func (k *slowCreateKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := k.cutOffKV.Create(ctx, key, value, opts...)
	time.Sleep(k.delay)
	return rev, err
}

// The step-down deadline of a lease that could never be renewed counts
// from when the write that took it was sent: counted from when its late
// answer came, a leader stepped down after a contender could take over.
func TestLeaseTakenSlowlyStepsDownBeforeATakeover(t *testing.T) {
	_, kv := testBucket(t)
	cut := &cutOffKV{KeyValue: kv}
	// Long enough that a loaded host's late timers (the 19/20 bound
	// below leaves 1.7 s) do not pass for a step-down after a takeover.
	const ttl = 6 * time.Second
	slow := &slowCreateKV{cutOffKV: cut, delay: ttl / 3}
	s := leaseHolder(slow, ttl)
	sent := time.Now()
	mustAcquire(t, s.lease, true)
	cut.cut.Store(true) // no renewal goes through
	took := keepLeaseInBackground(t, s, ttl)().Sub(sent)
	// Two thirds of the TTL; up to 19/20 of it for a loaded host, whose
	// timers can fire late. Counted from the late answer it took the
	// answer's delay (a third of the TTL) more.
	if took >= ttl*19/20 {
		t.Errorf("stepped down %s after the lease's write was sent; a contender may take over %s after it", took.Round(time.Millisecond), ttl)
	}
}

// leaseHolder is a source runner whose lease of kv, held by "a", lasts ttl.
func leaseHolder(kv jetstream.KeyValue, ttl time.Duration) *sourceRunner {
	return &sourceRunner{
		r:     &Reconciler{opts: Options{LeaseTTL: ttl}},
		log:   slog.New(slog.DiscardHandler),
		lease: newLease(kv, leaseKey("s"), "a", ttl, time.Now),
	}
}

// keepLeaseInBackground runs s.keepLease; the function it returns waits
// (up to three TTLs) for keepLease to step down because the lease was
// lost, fails the test otherwise, and returns when keepLease returned
// (not when the test woke up: a loaded host may take a while).
func keepLeaseInBackground(t *testing.T, s *sourceRunner, ttl time.Duration) func() time.Time {
	t.Helper()
	ctx, stop := context.WithCancelCause(t.Context())
	t.Cleanup(func() { stop(nil) })
	done := make(chan time.Time, 1)
	go func() {
		s.keepLease(ctx, stop)
		done <- time.Now()
	}()
	return func() time.Time {
		t.Helper()
		var returned time.Time
		select {
		case returned = <-done:
		case <-time.After(3 * ttl):
			t.Fatal("the holder never stepped down")
		}
		if !errors.Is(context.Cause(ctx), errLeaseLost) {
			t.Errorf("keepLease ended with %v, want errLeaseLost", context.Cause(ctx))
		}
		return returned
	}
}

// A lease whose taking was answered late, after a third of its TTL, is
// renewed at once and kept: the first renewal counted from the answer
// came after the step-down deadline (counted from the write), and the
// leader stepped down unprompted, every time, with no renewal tried.
// The TTL is long enough that the renewal sent at once has 1.6 s before
// that deadline on a loaded host.
func TestLeaseTakenSlowlyIsRenewed(t *testing.T) {
	_, kv := testBucket(t)
	const ttl = 6 * time.Second
	s := leaseHolder(&slowCreateKV{cutOffKV: &cutOffKV{KeyValue: kv}, delay: 2400 * time.Millisecond}, ttl)
	mustAcquire(t, s.lease, true)
	ctx, stop := context.WithCancelCause(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.keepLease(ctx, stop)
	}()
	// Without the fix it ended at the step-down deadline, 1.6 s into
	// this wait; a TTL covers that deadline and the next renewals.
	select {
	case <-done:
		t.Fatalf("keepLease ended with %v within a TTL of a lease it could renew", context.Cause(ctx))
	case <-time.After(ttl):
	}
	stop(nil)
	<-done
}

// TestStopReleasesTheLease: a reconciler that stops (a rolling update,
// a scale-down) gives its leases up, so that another replica polls the
// source at once, not a whole LeaseTTL later.
func TestStopReleasesTheLease(t *testing.T) {
	_, kv := testBucket(t)
	o := &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}
	r, err := New(Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: 10 * time.Millisecond, LeaseTTL: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := startReconciler(t, r)
	waitFirstCursor(ctx, t, kv, "s")
	if _, err := kv.Get(t.Context(), leaseKey("s")); err != nil {
		t.Fatalf("the lease of the polling replica: %v", err)
	}
	stop()
	if e, err := kv.Get(t.Context(), leaseKey("s")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lease after the stop: %v (err %v), want it released", e, err)
	}
}
