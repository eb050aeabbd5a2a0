package bench

import (
	"fmt"
	"strconv"
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
	var s ingestSettings
	var errs []string
	intVar := func(name string, def, lo, hi int) int {
		v := getenv(ingestPrefix + name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			errs = append(errs, fmt.Sprintf("%s%s=%q: want an integer in %d..%d", ingestPrefix, name, v, lo, hi))
			return def
		}
		return n
	}
	s.Publishers = intVar("PUBLISHERS", 16, 1, 1024)
	s.Messages = intVar("MESSAGES", 20000, 100, 10_000_000)
	s.Rounds = intVar("ROUNDS", 5, 1, 50)
	s.RawPerConn = intVar("RAW_PER_CONN", 1, 0, 1) == 1
	s.Source = getenv(ingestPrefix + "SOURCE")
	s.ProfileDir = getenv(ingestPrefix + "PROFILE_DIR")
	s.MaxOtherLoad = 0.25
	if v := getenv(ingestPrefix + "MAX_OTHER_LOAD"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			errs = append(errs, fmt.Sprintf("%sMAX_OTHER_LOAD=%q: want a number of cores, 0 to disable", ingestPrefix, v))
		} else {
			s.MaxOtherLoad = f
		}
	}
	s.Timeout = 2 * time.Minute
	if v := getenv(ingestPrefix + "TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Sprintf("%sTIMEOUT=%q: want a positive duration", ingestPrefix, v))
		} else {
			s.Timeout = d
		}
	}
	if v := getenv(ingestPrefix + "ENV"); v != "" {
		s.Env = map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				errs = append(errs, fmt.Sprintf("%sENV: %q is not KEY=VALUE", ingestPrefix, kv))
				continue
			}
			s.Env[k] = val
		}
	}
	reps := getenv(ingestPrefix + "REPLICAS")
	if reps == "" {
		reps = "1,2"
	}
	if reps != "-" {
		for _, item := range strings.Split(reps, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(item))
			if err != nil || n < 1 || n > 16 {
				errs = append(errs, fmt.Sprintf("%sREPLICAS: %q is not an integer in 1..16", ingestPrefix, item))
				continue
			}
			s.Replicas = append(s.Replicas, n)
		}
	}
	if len(errs) > 0 {
		return s, fmt.Errorf("%s\n(variables: %s)", strings.Join(errs, "\n"), ingestSettingsDoc)
	}
	return s, nil
}
