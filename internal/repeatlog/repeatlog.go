// Package repeatlog spaces the log lines of a failure that repeats every
// few seconds (a NATS or collector outage): the first is logged, then one
// per interval with the count, so the outage's own lines stay readable.
package repeatlog

import (
	"sync"
	"time"
)

// Failures counts a run of failures of one kind. Its zero value logs the
// first failure only; set Every to log one per interval after it. Safe
// for concurrent use.
type Failures struct {
	// Every is the least time between two logged failures of a run.
	Every time.Duration

	mu     sync.Mutex
	n      int
	logged time.Time
}

// Failed counts a failure. n is the run's count so far; log says whether
// to log this one: the first of a run, or the first Every after the last
// logged.
func (f *Failures) Failed() (n int, log bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n == 1 || (f.Every > 0 && time.Since(f.logged) >= f.Every) {
		f.logged = time.Now()
		return f.n, true
	}
	return f.n, false
}

// Succeeded ends a run; n is the count of its failures, 0 if there was no
// run (then there is nothing to log).
func (f *Failures) Succeeded() (n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, f.n = f.n, 0
	return n
}
