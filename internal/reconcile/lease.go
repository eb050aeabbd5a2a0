package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// errLeaseLost: another replica holds the lease now.
var errLeaseLost = errors.New("reconcile: lease lost to another replica")

// leaseValue is what a lease key holds. Holder and RenewedAt are for
// operators (nats kv get); nothing compares RenewedAt, the writer's clock:
// a contender waits until it has seen the same revision for a whole TTL
// on its own monotonic clock, and leaseLive reads the server's stamp.
type leaseValue struct {
	Holder    string    `json:"holder"`
	RenewedAt time.Time `json:"renewedAt"`
	TTL       string    `json:"ttl"`
}

// lease is one replica's claim to poll one source, kept in a key-value key
// with compare-and-set: Create when free, Update with the last revision
// to renew or to take over. It is not safe for concurrent use: the source
// goroutine acquires and releases it, and while it is held only the
// renewing goroutine touches it.
type lease struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	now    func() time.Time

	rev uint64 // revision written by this holder, 0 when not held
	// acquireSent is when the write that took the lease was sent: the
	// lease runs from then, however long the answer took.
	acquireSent time.Time

	// The revision of another holder's lease last seen, and when it was
	// first seen (monotonic).
	seenRev uint64
	seenAt  time.Time
	// previous is the holder whose lease was taken over, for the log.
	previous string
}

func newLease(kv jetstream.KeyValue, key, holder string, ttl time.Duration, now func() time.Time) *lease {
	return &lease{kv: kv, key: key, holder: holder, ttl: ttl, now: now}
}

func (l *lease) value() []byte {
	b, _ := json.Marshal(leaseValue{Holder: l.holder, RenewedAt: time.Now().UTC(), TTL: l.ttl.String()})
	return b
}

// tryAcquire takes the lease if it is free, already this holder's, or its
// holder has not renewed it for a whole TTL. It reports whether the lease
// is held now.
func (l *lease) tryAcquire(ctx context.Context) (bool, error) {
	l.previous = ""
	entry, err := l.kv.Get(ctx, l.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		sent := time.Now()
		rev, err := l.kv.Create(ctx, l.key, l.value())
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // another replica was faster
		}
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", l.key, natsjs.StorageFull(err))
		}
		l.rev, l.acquireSent = rev, sent
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", l.key, err)
	}
	var v leaseValue
	_ = json.Unmarshal(entry.Value(), &v) // a garbled value counts as a foreign holder
	if v.Holder != l.holder {
		if entry.Revision() != l.seenRev {
			l.seenRev, l.seenAt = entry.Revision(), l.now()
			return false, nil
		}
		if l.now().Sub(l.seenAt) < l.ttl {
			return false, nil
		}
		l.previous = v.Holder
	}
	sent := time.Now()
	rev, err := l.kv.Update(ctx, l.key, l.value(), entry.Revision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		l.previous = ""
		return false, nil // renewed, or taken by another contender
	}
	if err != nil {
		return false, fmt.Errorf("take over lease %s: %w", l.key, natsjs.StorageFull(err))
	}
	l.rev, l.acquireSent = rev, sent
	return true, nil
}

// renew extends the held lease; errLeaseLost if another replica took it.
func (l *lease) renew(ctx context.Context) error {
	rev, err := l.kv.Update(ctx, l.key, l.value(), l.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		// An earlier renewal may have been written though its answer was
		// lost (a time-out): the key then still names this holder, which
		// no other replica writes.
		entry, gerr := l.kv.Get(ctx, l.key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
		case gerr != nil:
			return fmt.Errorf("renew lease %s: read it after a conflict: %w", l.key, gerr)
		case l.holds(entry):
			rev, err = l.kv.Update(ctx, l.key, l.value(), entry.Revision())
		}
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		l.rev = 0
		return errLeaseLost
	}
	if err != nil {
		return fmt.Errorf("renew lease %s: %w", l.key, natsjs.StorageFull(err))
	}
	l.rev = rev
	return nil
}

// holds reports whether entry names this holder.
func (l *lease) holds(entry jetstream.KeyValueEntry) bool {
	var v leaseValue
	return json.Unmarshal(entry.Value(), &v) == nil && v.Holder == l.holder
}

// release gives the lease up, so another replica takes it at once instead
// of after the TTL. It does nothing if the lease changed hands meanwhile.
func (l *lease) release(ctx context.Context) error {
	if l.rev == 0 {
		return nil
	}
	err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
	l.rev = 0
	if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("release lease %s: %w", l.key, err)
	}
	return nil
}
