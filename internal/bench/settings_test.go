package bench

import (
	"fmt"
	"strings"
	"time"
)

// settings are the benchmark's knobs, all from STOWLINE_BENCH_* variables
// so that one documented command reproduces the figures and a variant is
// one variable away.
type settings struct {
	// Series x PerSeries instances of Rows x Cols 16-bit pixels.
	Series, PerSeries, Rows, Cols int
	// Rounds each case runs; the median is reported.
	Rounds int
	// Stowline lists the forwarder settings to measure.
	Stowline []fwdSetting
	// ReadWorkers lists the parallelism of the raw-read reference.
	ReadWorkers []int
	// BStow lists the STOW-RS-from-local-files references.
	BStow []bstowSetting
	// Sink lists the stowline settings measured into the discard STOW-RS
	// sink (internal/stowsink) served by this process, instead of B.
	Sink []fwdSetting
	// TwoDestinations lists the stowline settings measured with B and C
	// as two destinations at once; the stowline case of the same setting
	// is their one-destination baseline.
	TwoDestinations []fwdSetting
	// TwoSinks lists the stowline settings measured with two sinks as two
	// destinations; the sink case of the same setting is their baseline.
	TwoSinks []fwdSetting
	// Verify lists the stowline settings measured into B with
	// STOW_VERIFY=qido; the stowline case of the same setting is their
	// baseline.
	Verify []fwdSetting
	// Deidentify lists the stowline settings measured with
	// STOW_DEIDENTIFY=basic, each into B and into the sink; the stowline
	// and sink cases of the same setting are their baselines.
	Deidentify []fwdSetting
	// SinkLatency and SinkRate shape the sinks' answers (0: none): the
	// wait before each answer and the per-request read rate in bytes/s,
	// for a far destination (issue 15: 40ms and 25 MiB/s a stream).
	SinkLatency time.Duration
	SinkRate    int
	// StowlineEnv are extra variables for every stowline process (e.g.
	// GODEBUG=gctrace=1, GOGC=50).
	StowlineEnv map[string]string
	// Native measures Orthanc's own STOW-RS client.
	Native bool
	// ProfileDir, if set, runs stowline-profiled (CPU profile and execution
	// trace per stowline run, written there) instead of cmd/stowline.
	ProfileDir string
	// Source is the module root stowline is built from: this repository
	// by default, or another checkout (e.g. a `git archive` of a commit)
	// to compare versions.
	Source string
	// PerfDir, if set, records every native and stowline transfer with
	// Linux perf (A, B and stowline, call graphs) into files there.
	PerfDir string
	// Timeout bounds one transfer.
	Timeout time.Duration
	// MaxOtherLoad is the competing load (cores used by other programs)
	// above which a transfer is measured again, up to maxAttempts times
	// (the least disturbed attempt is kept); 0 keeps every first attempt.
	MaxOtherLoad float64
}

// maxAttempts bounds how often one transfer is measured because other
// programs were busy.
const maxAttempts = 4

// fwdSetting is one stowline configuration: FORWARDER_CONCURRENCY,
// STOW_MAX_INSTANCES and, when above 0, STOW_PARALLEL_REQUESTS (a
// proposed setting: builds that do not know it ignore it).
type fwdSetting struct {
	Concurrency, MaxInstances, Parallel int
}

func (f fwdSetting) String() string {
	s := fmt.Sprintf("conc=%d,max=%d", f.Concurrency, f.MaxInstances)
	if f.Parallel > 0 {
		s += fmt.Sprintf(",par=%d", f.Parallel)
	}
	return s
}

// bstowSetting is one reference STOW-RS upload of the study's files from
// local disk straight to B: requests of MaxInstances, Parallel at once.
type bstowSetting struct {
	MaxInstances, Parallel int
}

func (s bstowSetting) String() string {
	return fmt.Sprintf("max=%d,par=%d", s.MaxInstances, s.Parallel)
}

const envPrefix = "STOWLINE_BENCH_"

// settingsDoc lists the variables, for the failure message of a bad one.
const settingsDoc = `STOWLINE_BENCH_SERIES (3), _PER_SERIES (100), _ROWS (512), _COLS (512),
_ROUNDS (7), _STOWLINE ("4/100,1/100,4/25,4/50,4/300": concurrency/max instances[/parallel requests]),
_READ_WORKERS ("1,4"), _BSTOW ("100/1,50/2": max instances/parallel requests; "-" for none),
_SINK ("4/100/2,4/100/4": stowline settings into the discard sink; "-" for none),
_TWO_DESTINATIONS ("4/100": stowline settings sending to B and C at once; "-" for none),
_TWO_SINKS ("4/100/4": stowline settings sending to two sinks at once; "-" for none),
_VERIFY ("-": stowline settings sending to B with STOW_VERIFY=qido; "-" for none),
_DEIDENTIFY ("-": stowline settings sending to B and to the sink with STOW_DEIDENTIFY=basic; "-" for none),
_SINK_LATENCY (0: the sinks' wait before each answer, e.g. 40ms), _SINK_RATE (0: none; each request body's
read rate in bytes/s, e.g. 26214400), _STOWLINE_ENV ("": KEY=VALUE ...),
_NATIVE (1), _SOURCE (this module), _MAX_OTHER_LOAD (0.25), _PROFILE_DIR (""), _PERF_DIR (""), _TIMEOUT (5m)`

func loadSettings(getenv func(string) string) (settings, error) {
	e := &envVars{prefix: envPrefix, getenv: getenv}
	var s settings
	s.Series = e.integer("SERIES", 3, 1, 100)
	s.PerSeries = e.integer("PER_SERIES", 100, 1, 10000)
	s.Rows = e.integer("ROWS", 512, 1, 4096)
	s.Cols = e.integer("COLS", 512, 1, 4096)
	s.Rounds = e.integer("ROUNDS", 7, 1, 50)
	s.Native = e.integer("NATIVE", 1, 0, 1) == 1
	s.ProfileDir = e.get("PROFILE_DIR")
	s.PerfDir = e.get("PERF_DIR")
	s.Source = e.get("SOURCE")
	s.MaxOtherLoad = e.cores("MAX_OTHER_LOAD", 0.25)
	s.Timeout = e.duration("TIMEOUT", 5*time.Minute, 1, "a positive duration")
	s.Stowline = e.fwdSettings("STOWLINE", "4/100,1/100,4/25,4/50,4/300")
	s.Sink = e.fwdSettings("SINK", "4/100/2,4/100/4")
	s.TwoDestinations = e.fwdSettings("TWO_DESTINATIONS", "4/100")
	s.TwoSinks = e.fwdSettings("TWO_SINKS", "4/100/4")
	s.Verify = e.fwdSettings("VERIFY", "-")
	s.Deidentify = e.fwdSettings("DEIDENTIFY", "-")
	s.SinkLatency = e.duration("SINK_LATENCY", 0, 0, "a duration of 0 or more")
	s.SinkRate = e.integer("SINK_RATE", 0, 0, 1<<40)
	if v := e.get("STOWLINE_ENV"); v != "" {
		s.StowlineEnv = map[string]string{}
		for _, kv := range strings.Fields(v) {
			k, val, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				e.errs = append(e.errs, fmt.Sprintf("%sSTOWLINE_ENV: %q is not KEY=VALUE", envPrefix, kv))
				continue
			}
			s.StowlineEnv[k] = val
		}
	}
	for _, t := range e.tuples("BSTOW", "100/1,50/2", 2, 2) {
		s.BStow = append(s.BStow, bstowSetting{MaxInstances: t[0], Parallel: t[1]})
	}
	s.ReadWorkers = e.ints("READ_WORKERS", "1,4", 1, 64)
	return s, e.err(settingsDoc)
}
