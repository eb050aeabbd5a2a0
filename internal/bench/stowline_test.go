package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// ingestToken is the bearer token the benchmark's stowline accepts.
const ingestToken = "bench-ingest-token-0123456789abcdef"

// stowlineProc is one running stowline process (single-host mode,
// embedded JetStream) and what it logged.
type stowlineProc struct {
	*childProc
	ingestURL, fwdURL string
	lines             *lineWatcher
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
	full := map[string]string{
		"LOG_FORMAT":     "json",
		"LOG_LEVEL":      "info",
		"INGEST_ADDR":    ingestAddr,
		"INGEST_TOKEN":   ingestToken,
		"FORWARDER_ADDR": fwdAddr,
		"NATS_STORE_DIR": filepath.Join(dir, "nats"),
	}
	maps.Copy(full, env)
	lw := newLineWatcher()
	c, err := startChild("stowline", bin, filepath.Join(dir, "stowline.log"), full, lw.line)
	if err != nil {
		return nil, err
	}
	p := &stowlineProc{childProc: c, ingestURL: "http://" + ingestAddr, fwdURL: "http://" + fwdAddr, lines: lw}
	for _, u := range []string{p.ingestURL + "/readyz", p.fwdURL + "/readyz"} {
		if err := p.waitReady(ctx, u, 30*time.Second, 50*time.Millisecond); err != nil {
			return nil, p.abort(err, 30)
		}
	}
	return p, nil
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

// logLine is the part of a stowline JSON log line the benchmark reads.
type logLine struct {
	Level      string `json:"level"`
	Msg        string `json:"msg"`
	Err        string `json:"err"`
	Instances  int    `json:"instances"`
	Bytes      int64  `json:"bytes"`
	Requests   int    `json:"requests"`
	DurationMS int64  `json:"duration_ms"`
	// VerifyMS is the QIDO-RS verification's time (STOW_VERIFY=qido).
	VerifyMS float64 `json:"verify_ms"`
	at       time.Time
}

// lineWatcher hands the lines of stowline's stdout the benchmark waits
// for to done (a study forwarded) and failed (a study to retry, or any
// error), stamped with the time they arrived.
type lineWatcher struct {
	done   chan logLine
	failed chan logLine
}

func newLineWatcher() *lineWatcher {
	return &lineWatcher{done: make(chan logLine, 16), failed: make(chan logLine, 16)}
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
// DICOMweb base URL dest: with a client of p's IdP unless dest is the sink
// (which checks no token). prefix is the variables' destination prefix
// (config.DestinationVarPrefix), empty for the only destination.
func (p *pipeline) stowlineEnv(fs fwdSetting, dest, prefix string) map[string]string {
	env := forwarderEnv(p.a.URL, dest, fs, nil)
	// B, C and the sinks all sit behind gates of the IdP.
	env["OAUTH_TOKEN_URL"] = p.idp.TokenURL
	env["OAUTH_CLIENT_ID"] = p.idp.ClientID
	env["OAUTH_CLIENT_SECRET"] = p.idp.ClientSecret
	if prefix != "" {
		for _, k := range slices.Collect(maps.Keys(env)) {
			if k == "DICOMWEB_URL" {
				env[prefix+"URL"] = env[k]
			} else if k != "ORTHANC_URL" && k != "FORWARDER_CONCURRENCY" {
				env[prefix+k] = env[k]
			} else {
				continue
			}
			delete(env, k)
		}
	}
	return env
}

// twoDestinationEnv configures one stowline with the DICOMweb base URLs
// b and c as its two destinations (DESTINATIONS=b,c), each with setting fs
// and every study.
func (p *pipeline) twoDestinationEnv(fs fwdSetting, b, c string) map[string]string {
	env := p.stowlineEnv(fs, b, "DESTINATION_B_")
	maps.Copy(env, p.stowlineEnv(fs, c, "DESTINATION_C_"))
	env["DESTINATIONS"] = "b,c"
	return env
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
