// Command ingest-profiled is cmd/ingest with profiling hooks, for
// BenchmarkIngest only (internal/bench, STOWLINE_BENCH_INGEST_PROFILE_DIR).
// It runs the very same code (app.Main, app.RunIngest); the measured
// figures in BENCHMARKS.md come from the real cmd/ingest binary, never
// from this one.
//
// Environment (besides the ingest's own):
//
//	STOWLINE_PROFILE_CPU    write a CPU profile (pprof) to this file
//	STOWLINE_PROFILE_HEAP   write an allocation profile (pprof) to this
//	                        file at exit
//
// Profiles are flushed when the process stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
)

func main() {
	stop, err := startProfiles()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest-profiled:", err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = app.Main[config.IngestService](ctx, "ingest", os.Args[1:], os.Getenv, os.Environ(), os.Stdout, os.Stderr, app.RunIngest)
	cancel()
	if perr := stop(); perr != nil {
		fmt.Fprintln(os.Stderr, "ingest-profiled: profiles:", perr)
	}
	os.Exit(app.ExitCode("ingest", err, os.Stderr))
}

// startProfiles starts the profiles the environment asks for and returns
// the function that stops and writes them.
func startProfiles() (stop func() error, err error) {
	var stops []func() error
	stop = func() error {
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			errs = append(errs, stops[i]())
		}
		return errors.Join(errs...)
	}
	if path := os.Getenv("STOWLINE_PROFILE_CPU"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		stops = append(stops, func() error { pprof.StopCPUProfile(); return f.Close() })
	}
	if path := os.Getenv("STOWLINE_PROFILE_HEAP"); path != "" {
		stops = append(stops, func() error {
			f, err := os.Create(path)
			if err != nil {
				return fmt.Errorf("heap profile: %w", err)
			}
			runtime.GC()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				f.Close()
				return fmt.Errorf("heap profile: %w", err)
			}
			return f.Close()
		})
	}
	return stop, nil
}
