package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	*childProc
	url string // its health and metrics listener
	out *replicaLog
}

// startReplica starts the forwarder binary with env (and nothing inherited
// but PATH and HOME); it does not wait for it to be ready.
func startReplica(bin, logPath string, env map[string]string, tally *replicaTally) (*replicaProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	full := map[string]string{
		"LOG_FORMAT":     "json",
		"LOG_LEVEL":      "info",
		"FORWARDER_ADDR": addr,
	}
	maps.Copy(full, env)
	out := &replicaLog{tally: tally}
	c, err := startChild("forwarder", bin, logPath, full, out.line)
	if err != nil {
		return nil, err
	}
	// Many replicas log at once: their messages name the process.
	c.name = fmt.Sprintf("forwarder (pid %d)", c.pid())
	return &replicaProc{childProc: c, url: "http://" + addr, out: out}, nil
}

// waitReady waits until /readyz answers 200: NATS, the stream and the
// shared consumer are set up and Orthanc A answers.
func (p *replicaProc) waitReady(ctx context.Context) error {
	if err := p.childProc.waitReady(ctx, p.url+"/readyz", 60*time.Second, 25*time.Millisecond); err != nil {
		return fmt.Errorf("%w\nlog tail:\n%s", err, p.logTail(20))
	}
	return nil
}

// replicaLog counts the lines of a forwarder's stdout the benchmark waits
// for into the shared tally.
type replicaLog struct {
	tally     *replicaTally
	forwarded atomic.Int64 // by this replica (read while it runs)
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
		w.forwarded.Add(1)
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

func (w *replicaLog) count() int { return int(w.forwarded.Load()) }

// replicaSet is the K forwarder processes of one measurement.
type replicaSet struct {
	procs []*replicaProc
	tally *replicaTally
}

// startReplicas starts k forwarders at once (so they race to create the
// stream and the consumer, as replicas of a deployment that starts
// together do) and waits until all are ready.
func (r *replicaRig) startReplicas(ctx context.Context, dir string, k, concurrency int, dest *replicaDest) (*replicaSet, error) {
	// STOW_PARALLEL_REQUESTS is the destination's ceiling, shared by the
	// replicas serving it: k replicas of Parallel each get Parallel×k
	// to share, and one process of k×Concurrency the same. The floor,
	// STOW_PARALLEL_MIN, is each process's share, so the limit is fixed
	// and only the number of processes changes.
	share := r.set.Parallel * concurrency / r.set.Concurrency
	env := map[string]string{
		"NATS_URL":               r.natsURL,
		"ORTHANC_URL":            r.a.URL,
		"DICOMWEB_URL":           dest.url,
		"FORWARDER_CONCURRENCY":  strconv.Itoa(concurrency),
		"STOW_PARALLEL_REQUESTS": strconv.Itoa(share * k),
		"STOW_PARALLEL_MIN":      strconv.Itoa(share),
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
	// Until a replica has counted the others in the status bucket (every
	// few seconds) it takes the whole ceiling: wait for every count.
	for i, p := range s.procs {
		wg.Go(func() { errs[i] = p.waitReplicas(ctx, k) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// waitReplicas waits until the forwarder counts k processes serving the
// destination (stowline_forwarder_replicas), so that it takes its share
// of STOW_PARALLEL_REQUESTS.
func (p *replicaProc) waitReplicas(ctx context.Context, k int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	want := fmt.Sprintf(`stowline_forwarder_replicas{destination="default"} %d`, k)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/metrics", nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if slices.Contains(strings.Split(string(body), "\n"), want) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("forwarder %s: no %q on /metrics: %w", p.url, want, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
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
