package forward

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/stowline/stowline/events"
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
// one; and what a failed write held is written again as the attempt ends
// (it was dropped, and a later delivery took those copies for conflicts).
func TestSentWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &blockingFailureLog{release: make(chan struct{}), fail: 2}
		f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) { o.Failures = log })
		ev := testEvent()
		w := f.newSentWriter(t.Context(), ev)
		w.add([]string{"a"})
		synctest.Wait() // the writer waits in its first write
		w.add([]string{"b"})
		w.add([]string{"c"}) // neither waited for the write under way
		close(log.release)   // the second write, of both, fails
		synctest.Wait()
		w.add([]string{"d"}) // after a failure: kept for the end
		synctest.Wait()
		w.close()
		want := [][]string{{"a"}, {"b", "c"}, {"b", "c", "d"}}
		if !slices.EqualFunc(log.calls, want, slices.Equal) {
			t.Errorf("writes %v, want %v", log.calls, want)
		}
		sent, _ := log.Sent(t.Context(), ev)
		for _, id := range []string{"a", "b", "c", "d"} {
			if !sent(id) {
				t.Errorf("%s not recorded", id)
			}
		}
	})
}
