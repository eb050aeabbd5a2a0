// What the demo prints, and undoing what it started.

package demo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// cleanups stops what the demo started, last started first, and reports
// each step.
type cleanups struct {
	done []string // what each step reports once done: "stopped stowline"
	fns  []func() error
}

func (c *cleanups) push(done string, fn func() error) {
	c.done = append(c.done, done)
	c.fns = append(c.fns, fn)
}

func (c *cleanups) run(out *printer) error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			errs = append(errs, fmt.Errorf("not %s: %w", c.done[i], err))
			continue
		}
		out.printf("%s", c.done[i])
	}
	return errors.Join(errs...)
}

// printer writes the demo's report, one line at a time, each stamped with
// the time since the demo started.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newPrinter(w io.Writer) *printer { return &printer{w: w, start: time.Now()} }

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%6.1fs  %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// line writes s without a time stamp.
func (p *printer) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, s)
}

// lineWriter hands each complete line written to it to onLine.
type lineWriter struct {
	mu     sync.Mutex
	buf    []byte
	onLine func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := make([]byte, i)
		copy(line, w.buf[:i])
		w.buf = w.buf[i+1:]
		w.onLine(line)
	}
}
