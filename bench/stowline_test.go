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

// ingestToken is the bearer token the benchmark's stowline accepts.
const ingestToken = "bench-ingest-token-0123456789abcdef"

// stopTimeout bounds a stowline shutdown after SIGTERM (the forwarder
// gives in-flight studies 30 s; none is in flight when the benchmark stops
// it).
const stopTimeout = time.Minute

// stowlineProc is one running stowline process (single-host mode,
// embedded JetStream) and what it logged.
type stowlineProc struct {
	cmd               *exec.Cmd
	ingestURL, fwdURL string
	logPath           string
	logFile           *os.File
	lines             *lineWatcher
	exited            chan struct{}
	waitErr           error // set before exited is closed
}

// startStowline starts the binary with env (and nothing inherited but
// PATH and HOME) and waits until ingest and forwarder are ready.
func startStowline(ctx context.Context, bin, dir string, env map[string]string) (*stowlineProc, error) {
	ingestAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	fwdAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	storeDir := filepath.Join(dir, "nats")
	full := map[string]string{
		"PATH":           os.Getenv("PATH"),
		"HOME":           os.Getenv("HOME"),
		"LOG_FORMAT":     "json",
		"LOG_LEVEL":      "info",
		"INGEST_ADDR":    ingestAddr,
		"INGEST_TOKEN":   ingestToken,
		"FORWARDER_ADDR": fwdAddr,
		"NATS_STORE_DIR": storeDir,
	}
	for k, v := range env {
		full[k] = v
	}
	logPath := filepath.Join(dir, "stowline.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	for k, v := range full {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	lw := newLineWatcher(logf)
	cmd.Stdout, cmd.Stderr = lw, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &stowlineProc{
		cmd: cmd, ingestURL: "http://" + ingestAddr, fwdURL: "http://" + fwdAddr,
		logPath: logPath, logFile: logf, lines: lw, exited: make(chan struct{}),
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	for _, u := range []string{p.ingestURL + "/readyz", p.fwdURL + "/readyz"} {
		if err := p.waitReady(ctx, u); err != nil {
			p.kill()
			return nil, fmt.Errorf("%w\nstowline log tail:\n%s", err, p.logTail(30))
		}
	}
	return p, nil
}

func (p *stowlineProc) pid() int { return p.cmd.Process.Pid }

func (p *stowlineProc) waitReady(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("stowline exited during startup: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("stowline %s not ready: %w (last: %v)", url, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// publish posts the study's event to the webhook, as Orthanc's Lua script
// would, and checks that JetStream stored it.
func (p *stowlineProc) publish(ctx context.Context, studyID, studyUID, lastUpdate string) error {
	body, _ := json.Marshal(map[string]any{
		"type": "orthanc.study.stable", "version": 1, "source": "bench-a",
		"orthancStudyId": studyID, "studyInstanceUid": studyUID, "lastUpdate": lastUpdate,
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.ingestURL+"/webhooks/orthanc", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+ingestToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	var ans struct{ Duplicate bool }
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("webhook answered %d, want 202", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return fmt.Errorf("webhook answer: %w", err)
	}
	if ans.Duplicate {
		return errors.New("webhook: event reported as duplicate on a fresh JetStream store")
	}
	return nil
}

// forwarded waits for the "study forwarded" log line and returns it, with
// the time it was read. A failure line or an exit fails at once.
func (p *stowlineProc) forwarded(ctx context.Context) (logLine, error) {
	select {
	case l := <-p.lines.done:
		return l, nil
	case l := <-p.lines.failed:
		return l, fmt.Errorf("stowline logged %q: %s", l.Msg, l.Err)
	case <-p.exited:
		return logLine{}, fmt.Errorf("stowline exited: %v", p.waitErr)
	case <-ctx.Done():
		return logLine{}, fmt.Errorf("no \"study forwarded\" log line: %w", ctx.Err())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *stowlineProc) stop() error {
	defer p.logFile.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.kill()
		return fmt.Errorf("stowline did not stop within %v of SIGTERM and was killed", stopTimeout)
	}
	if p.waitErr != nil {
		return fmt.Errorf("stowline exited after SIGTERM: %w\nlog tail:\n%s", p.waitErr, p.logTail(20))
	}
	return nil
}

// kill ends the process (this benchmark's own child) after a failure.
func (p *stowlineProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *stowlineProc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// logLine is the part of a stowline JSON log line the benchmark reads.
type logLine struct {
	Level      string `json:"level"`
	Msg        string `json:"msg"`
	Err        string `json:"err"`
	Instances  int    `json:"instances"`
	Bytes      int64  `json:"bytes"`
	Requests   int    `json:"requests"`
	DurationMS int64  `json:"duration_ms"`
	at         time.Time
}

// lineWatcher copies the process's stdout to the log file and hands the
// lines the benchmark waits for to done (a study forwarded) and failed (a
// study to retry, or any error), stamped with the time they arrived.
type lineWatcher struct {
	mu     sync.Mutex
	dst    *os.File
	part   []byte
	done   chan logLine
	failed chan logLine
}

func newLineWatcher(dst *os.File) *lineWatcher {
	return &lineWatcher{dst: dst, done: make(chan logLine, 16), failed: make(chan logLine, 16)}
}

func (w *lineWatcher) Write(b []byte) (int, error) {
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

func (w *lineWatcher) line(b []byte, now time.Time) {
	var l logLine
	if json.Unmarshal(b, &l) != nil {
		return
	}
	l.at = now
	var ch chan logLine
	switch {
	case l.Msg == "study forwarded":
		ch = w.done
	case l.Level == "ERROR" || l.Msg == "study not forwarded; will retry":
		ch = w.failed
	default:
		return
	}
	select {
	case ch <- l:
	default: // nobody waits for that many
	}
}

// stowlineEnv is the configuration of one stowline case sending to the
// DICOMweb base URL dest.
func (p *pipeline) stowlineEnv(fs fwdSetting, dest string) map[string]string {
	return forwarderEnv(p.a.URL, dest, fs, p.set.StowlineEnv)
}

// forwarderEnv is the configuration of a stowline reading from the Orthanc
// at source and sending to the DICOMweb base URL dest with setting fs,
// plus extra variables.
func forwarderEnv(source, dest string, fs fwdSetting, extra map[string]string) map[string]string {
	env := map[string]string{
		"ORTHANC_URL":           source,
		"DICOMWEB_URL":          dest,
		"FORWARDER_CONCURRENCY": strconv.Itoa(fs.Concurrency),
		"STOW_MAX_INSTANCES":    strconv.Itoa(fs.MaxInstances),
		// STOW_MAX_BYTES keeps its default (256MiB): it does not bind for
		// the default study (157 MB).
	}
	if fs.Parallel > 0 {
		env["STOW_PARALLEL_REQUESTS"] = strconv.Itoa(fs.Parallel)
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}
