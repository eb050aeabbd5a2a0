package bench

import (
	"fmt"
	"strings"
	"time"
)

// ingestSettings are BenchmarkIngest's knobs, all from
// STOWLINE_BENCH_INGEST_* variables (the pipeline benchmark's settings
// are separate: the two benchmarks share nothing but the machine).
type ingestSettings struct {
	// Publishers is the number of concurrent senders in every case: raw
	// JetStream publishers and webhook clients alike, so the cases differ
	// only in the path an event takes.
	Publishers int
	// Messages is how many events one measured run sends.
	Messages int
	// Rounds each case runs; the median is reported.
	Rounds int
	// Replicas lists the ingest cases: how many ingest processes the
	// clients spread their requests over, round-robin.
	Replicas []int
	// RawPerConn adds the raw reference with one NATS connection per
	// publisher (the headline reference shares one, as the ingest does).
	RawPerConn bool
	// Env is added to the ingest processes' environment (KEY=VALUE,...),
	// to measure a setting: LOG_LEVEL=warn (no line per event), GOGC=400.
	Env map[string]string
	// Source is the module root the ingest is built from: this repository
	// by default, or another checkout (e.g. a `git archive` of a commit)
	// to compare versions.
	Source string
	// ProfileDir, if set, runs ingest-profiled (a CPU and heap profile per
	// ingest process, written there at the end of the run) instead of
	// cmd/ingest.
	ProfileDir string
	// MaxOtherLoad is the competing load (cores used by programs other
	// than this benchmark and the ingest) above which a run is measured
	// again, up to maxAttempts times; 0 keeps every first attempt.
	MaxOtherLoad float64
	// Timeout bounds one run.
	Timeout time.Duration
}

const ingestPrefix = envPrefix + "INGEST_"

const ingestSettingsDoc = `STOWLINE_BENCH_INGEST_PUBLISHERS (16), _MESSAGES (20000), _ROUNDS (5),
_REPLICAS ("1,2": ingest processes behind client-side round-robin, one case each), _RAW_PER_CONN (1),
_ENV ("": KEY=VALUE,... for the ingest processes), _SOURCE (this module), _PROFILE_DIR (""), _MAX_OTHER_LOAD (0.25), _TIMEOUT (2m)`

func loadIngestSettings(getenv func(string) string) (ingestSettings, error) {
	e := &envVars{prefix: ingestPrefix, getenv: getenv}
	var s ingestSettings
	s.Publishers = e.integer("PUBLISHERS", 16, 1, 1024)
	s.Messages = e.integer("MESSAGES", 20000, 100, 10_000_000)
	s.Rounds = e.integer("ROUNDS", 5, 1, 50)
	s.RawPerConn = e.integer("RAW_PER_CONN", 1, 0, 1) == 1
	s.Source = e.get("SOURCE")
	s.ProfileDir = e.get("PROFILE_DIR")
	s.MaxOtherLoad = e.cores("MAX_OTHER_LOAD", 0.25)
	s.Timeout = e.duration("TIMEOUT", 2*time.Minute, 1, "a positive duration")
	if v := e.get("ENV"); v != "" {
		s.Env = map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				e.errs = append(e.errs, fmt.Sprintf("%sENV: %q is not KEY=VALUE", ingestPrefix, kv))
				continue
			}
			s.Env[k] = val
		}
	}
	s.Replicas = e.ints("REPLICAS", "1,2", 1, 16)
	return s, e.err(ingestSettingsDoc)
}
