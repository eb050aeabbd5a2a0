package forward

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/stowline/stowline/events"
)

// sentWriter records, for one attempt, the instances the destination
// confirmed (FailureLog.RememberSent) while the attempt goes on: requests
// hand it their confirmed instances and go on, their place in the
// request limit not held for the write (the limiter would take the write
// for the destination's latency), and it writes what came in since its
// last write, one write at a time. While NATS is unreachable (a write
// would wait out rememberTimeout), and for a backoff after a failed write
// (1 s, doubling to 30 s), what comes in waits for the next request's
// answer, or for close, which writes what is left once: giving up at the
// first failure left hours of a large study's stored instances
// unrecorded if the process then died, and a later delivery took them
// for conflicts.
type sentWriter struct {
	f    *Forwarder
	ctx  context.Context
	ev   *events.StudyStable
	log  *slog.Logger  // the attempt's
	kick chan struct{} // buffered: a write is due
	done chan struct{} // closed when run ends

	mu      sync.Mutex
	pending []string
	// After a failed write, the next waits until retryAt; backoff is the
	// wait after the next failure.
	retryAt time.Time
	backoff time.Duration
}

// sentWriterFirstBackoff and sentWriterMaxBackoff bound the wait between
// a failed write of the record and the next try: a bucket without a
// leader is not asked at every request's answer, and one back is written
// again soon.
const (
	sentWriterFirstBackoff = time.Second
	sentWriterMaxBackoff   = 30 * time.Second
)

func (f *Forwarder) newSentWriter(ctx context.Context, ev *events.StudyStable, log *slog.Logger) *sentWriter {
	w := &sentWriter{f: f, ctx: ctx, ev: ev, log: log, kick: make(chan struct{}, 1), done: make(chan struct{}), backoff: sentWriterFirstBackoff}
	go w.run()
	return w
}

// add queues ids for the next write. It must not be called after close.
func (w *sentWriter) add(ids []string) {
	if len(ids) == 0 || w.f.opts.Failures == nil {
		return
	}
	w.mu.Lock()
	w.pending = append(w.pending, ids...)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a write is due already: it takes these too
	}
}

func (w *sentWriter) run() {
	defer close(w.done)
	for range w.kick {
		w.mu.Lock()
		ids := w.pending
		if len(ids) == 0 || time.Now().Before(w.retryAt) || (w.f.opts.Connected != nil && !w.f.opts.Connected()) {
			w.mu.Unlock()
			continue
		}
		w.pending = nil
		w.mu.Unlock()
		err := w.f.rememberStored(w.ctx, w.ev, ids)
		w.mu.Lock()
		if err != nil {
			w.retryAt = time.Now().Add(w.backoff)
			w.backoff = min(2*w.backoff, sentWriterMaxBackoff)
			w.pending = append(ids, w.pending...)
		} else {
			w.retryAt, w.backoff = time.Time{}, sentWriterFirstBackoff
		}
		w.mu.Unlock()
	}
}

// close waits for the write under way and writes what is left, once:
// the attempt's last write, logged if it fails. It returns what was not
// written, for the ack to try again. Once the work context has ended
// (the grace is over), it writes nothing: the ack goes first, and settle
// writes what is left after it; both wait for the write under way only
// until then (rememberStored ends with w.ctx).
func (w *sentWriter) close() (unwritten []string) {
	close(w.kick)
	<-w.done
	if len(w.pending) == 0 || w.ctx.Err() != nil {
		return w.pending
	}
	if err := w.f.rememberStored(w.ctx, w.ev, w.pending); err != nil {
		w.log.Warn("remember what the attempt stored: a later delivery of the study may take those instances for conflicts",
			"instances", len(w.pending), "err", err)
		return w.pending
	}
	return nil
}
