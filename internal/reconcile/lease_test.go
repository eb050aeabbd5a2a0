package reconcile

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
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
