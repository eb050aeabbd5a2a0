// Package inorder runs tasks several at a time and ends them in the order
// they were started: what the ends count and report is what a run of one
// task at a time would.
package inorder

import "errors"

// ErrStopped is what Pipeline.Run returns once a task's end failed: the
// caller starts no more, and Pipeline.Wait returns that failure.
var ErrStopped = errors.New("stopped at a failure")

// Pipeline runs tasks, up to its limit at once, each on its own
// goroutine, and ends them with their results on the caller's goroutine
// in the order they were started. A failure stops the run, and the error
// is the first failed task's. Tasks started with it are still ended
// (what they did is reported), their own failures not. Wait may be called
// part-way, to end every task started so far, and Run called again after
// it; a failure seen then stops the run as well.
type Pipeline struct {
	limit   int
	started []task // not ended yet, oldest first
	err     error  // the first error an end returned
}

type task struct {
	result chan error
	end    func(error) error
}

// New returns a Pipeline that runs up to limit tasks at once (at least
// one).
func New(limit int) *Pipeline {
	return &Pipeline{limit: max(limit, 1)}
}

// Run starts work, once fewer than the limit of tasks are not ended; end
// is given work's result. It ends the tasks already done first, so that
// a caller's progress report keeps up. Once an end returned an error, it
// starts nothing and returns ErrStopped.
func (p *Pipeline) Run(work func() error, end func(error) error) error {
	for p.err == nil && len(p.started) > 0 && (len(p.started) >= p.limit || p.oldestDone()) {
		p.endOldest()
	}
	if p.err != nil {
		return ErrStopped
	}
	t := task{result: make(chan error, 1), end: end}
	go func() { t.result <- work() }()
	p.started = append(p.started, t)
	return nil
}

// Wait ends every task started, oldest first, and returns the first
// error an end returned.
func (p *Pipeline) Wait() error {
	for len(p.started) > 0 {
		p.endOldest()
	}
	return p.err
}

func (p *Pipeline) oldestDone() bool {
	return len(p.started[0].result) > 0
}

func (p *Pipeline) endOldest() {
	t := p.started[0]
	p.started[0] = task{} // its end may hold much (a replay's letter)
	p.started = p.started[1:]
	if err := t.end(<-t.result); err != nil && p.err == nil {
		p.err = err
	}
}
