package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/forward"
)

// FailureLog records one destination's failure times per event (by
// stream sequence: each destination's consumer delivers the same events).
type FailureLog struct {
	kv          jetstream.KeyValue
	destination string
}

// NewFailureLog returns the destination's log kept in kv
// (natsjs.Topology.EnsureFailureLog).
func NewFailureLog(kv jetstream.KeyValue, destination string) *FailureLog {
	return &FailureLog{kv: kv, destination: destination}
}

func (l *FailureLog) key(seq uint64) string {
	return l.destination + ".seq" + strconv.FormatUint(seq, 10)
}

// Record notes a failure of the event at seq at time now and returns the
// times so far.
func (l *FailureLog) Record(ctx context.Context, seq uint64, now time.Time) (forward.FailureTimes, error) {
	t := forward.FailureTimes{First: now, Last: now}
	if e, err := l.kv.Get(ctx, l.key(seq)); err == nil {
		var prev forward.FailureTimes
		if json.Unmarshal(e.Value(), &prev) == nil && !prev.First.IsZero() {
			t.First = prev.First
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return t, fmt.Errorf("read failure times of event %d: %w", seq, err)
	}
	data, _ := json.Marshal(t)
	if _, err := l.kv.Put(ctx, l.key(seq), data); err != nil {
		return t, fmt.Errorf("record failure of event %d: %w", seq, err)
	}
	return t, nil
}

// Forget drops the record of the event at seq (forwarded or dead-lettered).
func (l *FailureLog) Forget(ctx context.Context, seq uint64) error {
	if err := l.kv.Purge(ctx, l.key(seq)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget failures of event %d: %w", seq, err)
	}
	return nil
}
