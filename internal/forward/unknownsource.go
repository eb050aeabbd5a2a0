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

// share is this replica's part of the limit.
func (g *givenBack) share() int {
	return max(1, g.limit/max(g.replicas, 1))
}

// take counts one more event given back now, offered again after delay,
// and reports false, counting nothing, when this replica's share is
// taken. A nil givenBack takes any.
func (g *givenBack) take(now time.Time, delay time.Duration) bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.due = slices.DeleteFunc(g.due, func(t time.Time) bool { return !t.After(now) })
	if len(g.due) >= g.share() {
		return false
	}
	g.due = append(g.due, now.Add(delay))
	return true
}
