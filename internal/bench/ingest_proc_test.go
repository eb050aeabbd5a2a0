package bench

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"
)

// ingestProc is one running ingest process (cmd/ingest or ingest-profiled).
type ingestProc struct {
	*childProc
	url string
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
	full["NATS_URL"], full["INGEST_ADDR"], full["INGEST_TOKEN"] = natsURL, addr, ingestToken
	maps.Copy(full, env)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// No line handler: the ingest writes its log lines straight to the
	// file, as it would to a container runtime's log file, and this
	// process spends no CPU copying them.
	c, err := startChild("ingest", bin, filepath.Join(dir, "ingest.log"), full, nil)
	if err != nil {
		return nil, err
	}
	p := &ingestProc{childProc: c, url: "http://" + addr}
	if err := p.waitReady(ctx, p.url+"/readyz", 30*time.Second, 50*time.Millisecond); err != nil {
		return nil, p.abort(err, 30)
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

// resetPeakRSS makes VmHWM start again from the current RSS (Linux 4.0+,
// "echo 5 > /proc/PID/clear_refs"), so each run's peak is its own; it
// reports whether that worked (if not, VmHWM is the peak since start).
func resetPeakRSS(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}
