package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopTimeout bounds a child's shutdown after SIGTERM (the forwarder
// gives in-flight studies 30 s; none is in flight when a benchmark stops
// it).
const stopTimeout = time.Minute

// childProc is one running program a benchmark started (stowline, an
// ingest, a forwarder replica) and its log file.
type childProc struct {
	// name stands for the process in error messages.
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// startChild starts bin with env (and nothing inherited but PATH and
// HOME, which env may override) and its stderr going to a new log file at
// logPath. Its stdout goes to the same file: straight, when onLine is nil
// (the child writes its lines itself and this process spends no CPU
// copying them), or through a lineWriter that hands every complete line to
// onLine.
func startChild(name, bin, logPath string, env map[string]string, onLine func(line []byte, at time.Time)) (*childProc, error) {
	full := map[string]string{"PATH": os.Getenv("PATH"), "HOME": os.Getenv("HOME")}
	maps.Copy(full, env)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	for k, v := range full {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout io.Writer = logf
	if onLine != nil {
		stdout = &lineWriter{dst: logf, onLine: onLine}
	}
	cmd.Stdout, cmd.Stderr = stdout, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &childProc{name: name, cmd: cmd, logPath: logPath, logFile: logf, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *childProc) pid() int { return c.cmd.Process.Pid }

// waitReady polls url every interval, for up to timeout, until it answers
// 200; it fails at once if the process exits.
func (c *childProc) waitReady(ctx context.Context, url string, timeout, interval time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited during startup: %v", c.name, c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%s %s not ready: %w (last: %v)", c.name, url, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// stop sends SIGTERM and waits for a clean exit (a profiled build writes
// its profiles then).
func (c *childProc) stop() error {
	defer c.logFile.Close()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-c.exited:
	case <-time.After(stopTimeout):
		c.kill()
		return fmt.Errorf("%s did not stop within %v of SIGTERM and was killed", c.name, stopTimeout)
	}
	if c.waitErr != nil {
		return fmt.Errorf("%s exited after SIGTERM: %w\nlog tail:\n%s", c.name, c.waitErr, c.logTail(20))
	}
	return nil
}

// kill ends the process (this benchmark's own child) after a failure.
func (c *childProc) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// abort kills the process after err and adds the last n lines of its log
// to err.
func (c *childProc) abort(err error, n int) error {
	c.kill()
	return fmt.Errorf("%w\n%s log tail:\n%s", err, c.name, c.logTail(n))
}

// logTail is the last n lines of the process's log.
func (c *childProc) logTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// lineWriter copies a child's output to dst and hands every complete line
// (without its newline) to onLine, stamped with the time the write that
// completed it arrived. onLine runs with the writer locked and must not
// keep the slice.
type lineWriter struct {
	mu     sync.Mutex
	dst    io.Writer
	part   []byte
	onLine func(line []byte, at time.Time)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.dst.Write(b); err != nil {
		return 0, err
	}
	w.part = append(w.part, b...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		w.onLine(w.part[:i], now)
		w.part = w.part[i+1:]
	}
	return len(b), nil
}
