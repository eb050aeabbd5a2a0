package bench

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ingestProc is one running ingest process (cmd/ingest or ingest-profiled).
type ingestProc struct {
	cmd     *exec.Cmd
	url     string
	logPath string
	logFile *os.File
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// startIngest starts the ingest binary against natsURL with env on top of
// the benchmark's defaults (and nothing inherited but PATH and HOME), and
// waits until it is ready.
func startIngest(ctx context.Context, bin, dir, natsURL string, env map[string]string) (*ingestProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	full := ingestSettingsEnv()
	full["PATH"], full["HOME"] = os.Getenv("PATH"), os.Getenv("HOME")
	full["NATS_URL"], full["INGEST_ADDR"], full["INGEST_TOKEN"] = natsURL, addr, ingestToken
	maps.Copy(full, env)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "ingest.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	for k, v := range full {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// A file, not a pipe: the ingest writes its log lines straight to it,
	// as it would to a container runtime's log file, and this process
	// spends no CPU copying them.
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &ingestProc{cmd: cmd, url: "http://" + addr, logPath: logPath, logFile: logf, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.kill()
		return nil, fmt.Errorf("%w\ningest log tail:\n%s", err, p.logTail(30))
	}
	return p, nil
}

// ingestSettingsEnv is the ingest configuration every case runs with
// (besides the addresses and the token).
func ingestSettingsEnv() map[string]string {
	return map[string]string{
		// The per-client rate limit (default 50/s, burst 100, per IP)
		// would answer 429 to this benchmark within a few milliseconds:
		// every client is 127.0.0.1. 0 switches it off.
		"INGEST_RATE_LIMIT": "0",
		// The reconciler polls Orthanc sources; there are none here.
		"RECONCILE_ENABLED": "false",
		// The defaults, stated: the ingest logs one line per accepted
		// event, and that is part of what is measured.
		"LOG_FORMAT": "json",
		"LOG_LEVEL":  "info",
	}
}

func (p *ingestProc) pid() int { return p.cmd.Process.Pid }

func (p *ingestProc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("ingest exited during startup: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("ingest %s not ready: %w (last: %v)", p.url, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for a clean exit (the profiled build writes
// its profiles then).
func (p *ingestProc) stop() error {
	defer p.logFile.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.kill()
		return fmt.Errorf("ingest did not stop within %v of SIGTERM and was killed", stopTimeout)
	}
	if p.waitErr != nil {
		return fmt.Errorf("ingest exited after SIGTERM: %w\nlog tail:\n%s", p.waitErr, p.logTail(20))
	}
	return nil
}

// kill ends the process (this benchmark's own child) after a failure.
func (p *ingestProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *ingestProc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// resetPeakRSS makes VmHWM start again from the current RSS (Linux 4.0+,
// "echo 5 > /proc/PID/clear_refs"), so each run's peak is its own; it
// reports whether that worked (if not, VmHWM is the peak since start).
func resetPeakRSS(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}
