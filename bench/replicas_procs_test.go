package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// replicaTally counts, over every replica of one measurement, the studies
// the forwarders logged as forwarded and anything that went wrong.
type replicaTally struct {
	mu sync.Mutex
	// forwarded counts "study forwarded" lines; redelivered those with an
	// attempt above 1 (an event delivered twice: to two replicas, or again
	// after a failure).
	forwarded, redelivered int
	instances              int
	// last is when the last "study forwarded" line arrived.
	last time.Time
	// problems are error lines and retries, verbatim.
	problems []string
	changed  chan struct{} // closed and replaced on every counted line
	// bad is closed at the first problem line.
	bad chan struct{}
}

func newReplicaTally() *replicaTally {
	return &replicaTally{changed: make(chan struct{}), bad: make(chan struct{})}
}

// waitForwarded blocks until n studies were logged as forwarded, and fails
// at the first problem line.
func (t *replicaTally) waitForwarded(ctx context.Context, n int) error {
	for {
		t.mu.Lock()
		have, problems, ch := t.forwarded, t.problems, t.changed
		t.mu.Unlock()
		if len(problems) > 0 {
			return fmt.Errorf("a forwarder logged: %s", problems[0])
		}
		if have >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d studies logged as forwarded: %w", have, n, ctx.Err())
		}
	}
}

// replicaProc is one running cmd/forwarder process.
type replicaProc struct {
	cmd     *exec.Cmd
	url     string // its health and metrics listener
	logPath string
	logFile *os.File
	out     *replicaLog
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// startReplica starts the forwarder binary with env (and nothing inherited
// but PATH and HOME); it does not wait for it to be ready.
func startReplica(bin, logPath string, env map[string]string, tally *replicaTally) (*replicaProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	full := map[string]string{
		"PATH":           os.Getenv("PATH"),
		"HOME":           os.Getenv("HOME"),
		"LOG_FORMAT":     "json",
		"LOG_LEVEL":      "info",
		"FORWARDER_ADDR": addr,
	}
	for k, v := range env {
		full[k] = v
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	for k, v := range full {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &replicaLog{dst: logf, tally: tally}
	cmd.Stdout, cmd.Stderr = out, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &replicaProc{cmd: cmd, url: "http://" + addr, logPath: logPath, logFile: logf, out: out, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *replicaProc) pid() int { return p.cmd.Process.Pid }

// waitReady waits until /readyz answers 200: NATS, the stream and the
// shared consumer are set up and Orthanc A answers.
func (p *replicaProc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("forwarder (pid %d) exited during startup: %v\nlog tail:\n%s", p.pid(), p.waitErr, p.logTail(20))
		case <-ctx.Done():
			return fmt.Errorf("forwarder (pid %d) not ready: %w (last: %v)\nlog tail:\n%s", p.pid(), ctx.Err(), err, p.logTail(20))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *replicaProc) stop() error {
	defer p.logFile.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.kill()
		return fmt.Errorf("forwarder (pid %d) did not stop within %v of SIGTERM and was killed", p.pid(), stopTimeout)
	}
	if p.waitErr != nil {
		return fmt.Errorf("forwarder (pid %d) exited after SIGTERM: %w\nlog tail:\n%s", p.pid(), p.waitErr, p.logTail(20))
	}
	return nil
}

// kill ends the process (this benchmark's own child) after a failure.
func (p *replicaProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *replicaProc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// replicaLog copies a forwarder's stdout to its log file and counts the
// lines the benchmark waits for into the shared tally.
type replicaLog struct {
	mu        sync.Mutex
	dst       *os.File
	part      []byte
	tally     *replicaTally
	forwarded int // by this replica
}

func (w *replicaLog) Write(b []byte) (int, error) {
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
		w.line(w.part[:i], now)
		w.part = w.part[i+1:]
	}
	return len(b), nil
}

func (w *replicaLog) line(b []byte, now time.Time) {
	var l struct {
		Level     string `json:"level"`
		Msg       string `json:"msg"`
		Attempt   int    `json:"attempt"`
		Instances int    `json:"instances"`
	}
	if json.Unmarshal(b, &l) != nil {
		return
	}
	t := w.tally
	switch {
	case l.Msg == "study forwarded":
		w.forwarded++
		t.mu.Lock()
		t.forwarded++
		t.instances += l.Instances
		if l.Attempt > 1 {
			t.redelivered++
		}
		t.last = now
	case l.Level == "ERROR" || l.Msg == "study not forwarded; will retry" || l.Msg == "pull from JetStream failed; retrying":
		t.mu.Lock()
		t.problems = append(t.problems, string(b))
		if len(t.problems) == 1 {
			close(t.bad)
		}
	default:
		return
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

func (w *replicaLog) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.forwarded
}

// replicaSet is the K forwarder processes of one measurement.
type replicaSet struct {
	procs []*replicaProc
	tally *replicaTally
}

// startReplicas starts k forwarders at once (so they race to create the
// stream and the consumer, as replicas of a deployment that starts
// together do) and waits until all are ready.
func (r *replicaRig) startReplicas(ctx context.Context, dir string, k, concurrency int, dest *replicaDest) (*replicaSet, error) {
	env := map[string]string{
		"NATS_URL":               r.natsURL,
		"ORTHANC_URL":            r.a.URL,
		"DICOMWEB_URL":           dest.url,
		"FORWARDER_CONCURRENCY":  strconv.Itoa(concurrency),
		"STOW_PARALLEL_REQUESTS": strconv.Itoa(r.set.Parallel),
		"STOW_MAX_INSTANCES":     strconv.Itoa(r.set.MaxInstances),
	}
	s := &replicaSet{tally: newReplicaTally()}
	for i := range k {
		p, err := startReplica(r.bin, filepath.Join(dir, fmt.Sprintf("forwarder-%d.log", i+1)), env, s.tally)
		if err != nil {
			s.kill()
			return nil, err
		}
		s.procs = append(s.procs, p)
	}
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i, p := range s.procs {
		wg.Go(func() { errs[i] = p.waitReady(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// stop stops every replica (at once) and reports any unclean exit.
func (s *replicaSet) stop() error {
	errs := make([]error, len(s.procs))
	var wg sync.WaitGroup
	for i, p := range s.procs {
		wg.Go(func() { errs[i] = p.stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *replicaSet) kill() {
	for _, p := range s.procs {
		p.kill()
		p.logFile.Close()
	}
}

// pids are the replicas' process IDs.
func (s *replicaSet) pids() []int {
	out := make([]int, len(s.procs))
	for i, p := range s.procs {
		out[i] = p.pid()
	}
	return out
}

// logTails is the end of every replica's log, for a failure message.
func (s *replicaSet) logTails(n int) string {
	var b strings.Builder
	for i, p := range s.procs {
		fmt.Fprintf(&b, "--- forwarder %d (pid %d) log tail:\n%s\n", i+1, p.pid(), p.logTail(n))
	}
	return b.String()
}
