// Package repeatlog spaces the log lines of a failure that repeats every
// few seconds (a NATS or collector outage): the first is logged, then one
// per interval with the count, so the outage's own lines stay readable.
// A failure that comes and goes (NATS reconnecting every few seconds) is
// spaced the same: a run that starts within the interval of the last
// line logged is logged once the interval has passed, and its end only
// if it was logged.
package repeatlog

import (
	"sync"
	"time"
)

// Failures counts a run of failures of one kind. Its zero value logs the
// first failure of each run only; set Every to log one per interval
// after it. Safe for concurrent use.
type Failures struct {
	// Every is the least time between two logged failures, of one run or
	// of runs that follow one another.
	Every time.Duration

	mu        sync.Mutex
	n         int
	logged    time.Time // the last failure logged, of any run
	runLogged bool      // one of this run's failures was logged
}

// Failed counts a failure. n is the run's count so far; log says whether
// to log this one: the first of a run, or a later one, once Every has
// passed since the last logged (of this run or an earlier one).
func (f *Failures) Failed() (n int, log bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	due := f.logged.IsZero() || time.Since(f.logged) >= f.Every
	if due && (f.n == 1 || f.Every > 0) {
		f.logged = time.Now()
		f.runLogged = true
		return f.n, true
	}
	return f.n, false
}

// Succeeded ends a run; n is the count of its failures, 0 if there was no
// run or none of its failures was logged (then there is nothing to log:
// an end told without its start would be as many lines as the flaps).
func (f *Failures) Succeeded() (n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, logged := f.n, f.runLogged
	f.n, f.runLogged = 0, false
	if !logged {
		return 0
	}
	return n
}
