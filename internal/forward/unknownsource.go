package forward

import (
	"slices"
	"sync"
	"time"
)

// givenBack bounds the events of unknown sources a forwarder has given
// back and JetStream has not offered again yet. A message given back
// with a delay stays in the consumer's in-flight window (MaxAckPending,
// shared by every replica) until then, and such an event costs nothing
// to give back: a backlog of them filled the window within seconds, and
// no other source's study was delivered until each was dead-lettered,
// 30 minutes a window. Past its share the event is dead-lettered at
// once, as before give-backs, for a replay once the source is known.
type givenBack struct {
	limit int // Options.MaxUnknownSource, over every replica
	mu    sync.Mutex
	// replicas serving the destination, this one included (SetReplicas).
	replicas int
	due      []time.Time // when each event given back is offered again
}

// take counts one more event given back now, offered again after delay,
// and reports false, counting nothing, when this replica's share of the
// limit is taken; share is that share. A nil givenBack takes any.
func (g *givenBack) take(now time.Time, delay time.Duration) (ok bool, share int) {
	if g == nil {
		return true, 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	share = max(1, g.limit/max(g.replicas, 1))
	g.due = slices.DeleteFunc(g.due, func(t time.Time) bool { return !t.After(now) })
	if len(g.due) >= share {
		return false, share
	}
	g.due = append(g.due, now.Add(delay))
	return true, share
}
