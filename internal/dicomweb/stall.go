package dicomweb

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/internal/flow"
)

// progress tells a count of bytes that stood still for longer than a
// time-out: a request's body (watch) or a part being counted
// (CountBytes).
type progress struct {
	last      int64
	lastMoved time.Time
}

func newProgress(n int64, now time.Time) progress {
	return progress{last: n, lastMoved: now}
}

// stalled records the count n seen at now, and reports whether it has
// not moved for more than limit.
func (p *progress) stalled(n int64, now time.Time, limit time.Duration) bool {
	if n != p.last {
		p.last, p.lastMoved = n, now
		return false
	}
	return now.Sub(p.lastMoved) > limit
}

// boundedWaits counts the waits, told by flow.BoundedWait, of the work
// a watch watches: a wait that something else bounds (Orthanc's answer,
// by ORTHANC_RESPONSE_TIMEOUT; the de-identifier's large slot, by its
// holder's progress) is no stall, else a conversion Orthanc may take 15
// minutes over would be given up after StallTimeout.
type boundedWaits struct{ active, ended atomic.Int64 }

// start is a flow.WithBoundedWait hook.
func (w *boundedWaits) start() (end func()) {
	w.active.Add(1)
	return sync.OnceFunc(func() {
		w.ended.Add(1)
		w.active.Add(-1)
	})
}

// context returns ctx telling its bounded waits to w.
func (w *boundedWaits) context(ctx context.Context) context.Context {
	return flow.WithBoundedWait(ctx, w.start)
}

// stalledWaiting is stalled with w's waits: the clock stands still
// while one is under way, and restarts when one ends.
func (p *progress) stalledWaiting(w *boundedWaits, n int64, now time.Time, limit time.Duration) bool {
	// active first: a wait ending after it is read counts in ended.
	if w.active.Load() > 0 {
		p.last, p.lastMoved = n+w.ended.Load(), now
		return false
	}
	return p.stalled(n+w.ended.Load(), now, limit)
}

// errCountStalled is a count given up by CountBytes; it wraps
// context.DeadlineExceeded, so callers see a time-out.
var errCountStalled = fmt.Errorf("given up: %w", context.DeadlineExceeded)

// CountBytes opens a part's content and reads it to its end to count its
// bytes: a destination that signs the request's length needs every size
// before the request. Outside any request, no request's watch bounds the
// read, so CountBytes gives it up, as watch does a request's body, once
// no byte came for stall (StallTimeout): a source that stops serving
// mid-body must not hold a study for good. Waits bounded elsewhere
// (flow.BoundedWait) are not counted. The errors of open and of the
// reading are returned as they are.
func CountBytes(ctx context.Context, open func(context.Context) (io.ReadCloser, error), stall time.Duration) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var counted atomic.Int64
	var waits boundedWaits
	done := make(chan struct{})
	var wg sync.WaitGroup
	// The watch starts before open: an open that waits on anything but
	// a bounded wait (Orthanc's answer) stalls the count as well.
	wg.Go(func() {
		t := time.NewTicker(stall / 4)
		defer t.Stop()
		moving := newProgress(0, time.Now())
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				if moving.stalledWaiting(&waits, counted.Load(), now, stall) {
					cancel(errCountStalled)
					return
				}
			}
		}
	})
	n, err := countAll(waits.context(ctx), open, &counted)
	close(done)
	wg.Wait()
	if err != nil && context.Cause(ctx) == errCountStalled {
		return 0, fmt.Errorf("no byte came for %s: %w", stall, errCountStalled)
	}
	return n, err
}

func countAll(ctx context.Context, open func(context.Context) (io.ReadCloser, error), counted *atomic.Int64) (int64, error) {
	rc, err := open(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(countingWriter{counted}, rc)
}

// countingWriter counts what is written to it and drops it.
type countingWriter struct{ n *atomic.Int64 }

func (w countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}
