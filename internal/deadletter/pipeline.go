package deadletter

import "errors"

// publishWindow bounds the events a replay or a re-forward has waiting
// for their JetStream acks at once. One at a time, each waited its 1 to
// 5 ms: 10,000 studies took up to a minute, long enough for a proxy in
// front of the admin API to give up and stop the run part-way.
const publishWindow = 256

// errStopped is what pipeline.run returns once a task's end failed: the
// caller starts no more, and pipeline.wait returns that failure.
var errStopped = errors.New("stopped at a failure")

// pipeline runs tasks, up to limit at once, each on its own goroutine,
// and ends them with their results on the caller's goroutine in the
// order they were started. What the ends count and report is therefore
// what a run of one task at a time would: a failure stops the run, and
// the error is the first failed task's. Tasks started with it are still
// ended (a letter whose event was stored after it is counted and gone),
// their own failures not reported.
//
// Goroutines calling the synchronous publish, rather than JetStream's
// PublishMsgAsync: a replay deletes each letter once its event is
// acknowledged, a second round trip that this overlaps too; and
// natsjs.PublishMsgTo keeps its context, retries and errors.
type pipeline struct {
	limit   int
	started []task // not ended yet, oldest first
	err     error  // the first error an end returned
}

type task struct {
	result chan error
	end    func(error) error
}

// run starts work, once fewer than limit tasks are not ended; end is
// given work's result. It ends the tasks already done first, so that a
// caller's progress report keeps up. Once an end returned an error, it
// starts nothing and returns errStopped.
func (p *pipeline) run(work func() error, end func(error) error) error {
	for p.err == nil && len(p.started) > 0 && (len(p.started) >= p.limit || p.oldestDone()) {
		p.endOldest()
	}
	if p.err != nil {
		return errStopped
	}
	t := task{result: make(chan error, 1), end: end}
	go func() { t.result <- work() }()
	p.started = append(p.started, t)
	return nil
}

// wait ends every task started, oldest first, and returns the first
// error an end returned.
func (p *pipeline) wait() error {
	for len(p.started) > 0 {
		p.endOldest()
	}
	return p.err
}

func (p *pipeline) oldestDone() bool {
	return len(p.started[0].result) > 0
}

func (p *pipeline) endOldest() {
	t := p.started[0]
	p.started[0] = task{} // its end may hold a page of letters
	p.started = p.started[1:]
	if err := t.end(<-t.result); err != nil && p.err == nil {
		p.err = err
	}
}
