// Command stowline-profiled is cmd/stowline with profiling hooks, for the
// pipeline benchmark only (internal/bench, STOWLINE_BENCH_PROFILE_DIR). It runs the
// very same code (app.Main, app.RunSingleHost); the measured figures in
// BENCHMARKS.md come from the real cmd/stowline binary, never from this one.
//
// Environment (besides stowline's own):
//
//	STOWLINE_PROFILE_CPU    write a CPU profile (pprof) to this file
//	STOWLINE_PROFILE_TRACE  write an execution trace to this file; `go tool
//	                        trace -pprof=net|sync|syscall` turns it into
//	                        profiles of where goroutines waited
//	STOWLINE_PROFILE_HEAP   write a heap profile (pprof) to this file at exit
//	STOWLINE_PROFILE_HEAP_PEAK  write a heap profile (pprof) to this file
//	                        each time the live heap reaches a new high, so
//	                        the last one shows what the peak held; the
//	                        runtime's memory classes go to the same name
//	                        with .txt added
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
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"syscall"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
)

func main() {
	stop, err := startProfiles()
	if err != nil {
		fmt.Fprintln(os.Stderr, "stowline-profiled:", err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = app.Main[config.SingleHost](ctx, "stowline", os.Args[1:], os.Getenv, os.Environ(), os.Stdout, os.Stderr, app.RunSingleHost)
	cancel()
	if perr := stop(); perr != nil {
		fmt.Fprintln(os.Stderr, "stowline-profiled: profiles:", perr)
	}
	if err != nil {
		if !errors.Is(err, app.ErrUsage) {
			err = fmt.Errorf("stowline: %w", err)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
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
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stops = append(stops, func() error { pprof.StopCPUProfile(); return f.Close() })
	}
	if path := os.Getenv("STOWLINE_PROFILE_TRACE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			_ = stop()
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			_ = stop()
			return nil, err
		}
		stops = append(stops, func() error { trace.Stop(); return f.Close() })
	}
	if path := os.Getenv("STOWLINE_PROFILE_HEAP"); path != "" {
		stops = append(stops, func() error {
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			runtime.GC()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		})
	}
	if path := os.Getenv("STOWLINE_PROFILE_HEAP_PEAK"); path != "" {
		done := make(chan struct{})
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			watchHeapPeak(path, done)
		}()
		stops = append(stops, func() error { close(done); <-finished; return nil })
	}
	return stop, nil
}

// watchHeapPeak writes a heap profile to path whenever the heap's live
// objects (as of the last collection) exceed the last high by 1 MiB.
func watchHeapPeak(path string, done <-chan struct{}) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var high uint64
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		live := sample[0].Value.Uint64()
		if live < high+1<<20 {
			continue
		}
		high = live
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "stowline-profiled: heap peak:", err)
			return
		}
		_ = pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
		writeMemoryClasses(path + ".txt")
	}
}

// writeMemoryClasses writes the runtime's memory classes (heap live,
// free, released; stacks; metadata) to path, beside the heap profile:
// what the process's own memory holds besides live objects.
func writeMemoryClasses(path string) {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") || d.Name == "/gc/heap/live:bytes" || d.Name == "/gc/heap/goal:bytes" || d.Name == "/sched/goroutines:goroutines" {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	var b strings.Builder
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			fmt.Fprintf(&b, "%-50s %12d\n", s.Name, s.Value.Uint64())
		}
	}
	_ = os.WriteFile(path, []byte(b.String()), 0o644)
}
