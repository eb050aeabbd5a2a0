package testharness

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

// RunFunc is a command's run function: main only calls it, so tests start
// the real program in-process.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error

// Program is a command running in-process, with everything it logs.
type Program struct {
	Name string
	Logs *LogBuffer

	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// StartProgram runs run with env as its whole environment until Stop or
// the end of the test; at cleanup a failed test gets the program's log.
func StartProgram(t testing.TB, name string, run RunFunc, env map[string]string) *Program {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Program{Name: name, Logs: &LogBuffer{}, cancel: cancel, done: make(chan error, 1)}
	environ := make([]string, 0, len(env))
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	go func() { p.done <- run(ctx, nil, func(k string) string { return env[k] }, environ, p.Logs, p.Logs) }()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.Logs.String())
		}
	})
	return p
}

// Stop cancels the program's context, as SIGTERM does, and returns what
// run returned; an error if it did not stop within a minute. Calling it
// again returns the same.
func (p *Program) Stop() error {
	p.once.Do(func() {
		p.cancel()
		select {
		case p.err = <-p.done:
		case <-time.After(time.Minute):
			p.err = errTimeout{p.Name}
		}
	})
	return p.err
}

type errTimeout struct{ name string }

func (e errTimeout) Error() string { return e.name + " did not stop within a minute" }
