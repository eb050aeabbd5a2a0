// The demo's parts: the two Orthancs, stowline, and what they need.

package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/testharness"
)

// checkInstalled reports the programs the demo needs that are missing,
// with what installs them.
func checkInstalled() error {
	var missing []string
	if _, err := testharness.FindBinary("Orthanc"); err != nil {
		missing = append(missing, "Orthanc (Debian package orthanc)")
	}
	if _, err := os.Stat(testharness.DicomWebPlugin); err != nil {
		missing = append(missing, testharness.DicomWebPlugin+" (orthanc-dicomweb)")
	}
	if _, err := testharness.FindBinary("storescu"); err != nil {
		missing = append(missing, "storescu (dcmtk)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s; ./scripts/demo.sh installs them", testharness.ErrMissing, strings.Join(missing, ", "))
	}
	return nil
}

// findLuaScript returns the absolute path of the Lua script: path, or
// lua/stowline.lua in the working directory or one of its parents.
func findLuaScript(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("the Lua script: %w", err)
		}
		return filepath.Abs(path)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, "lua", "stowline.lua")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("lua/stowline.lua not found in %s or above: run the demo from the repository (./scripts/demo.sh) or pass -lua", wd)
		}
	}
}

// dataDir is the demo's directory and how much of it the demo may remove
// at the end: only what it created, never a directory the user had.
type dataDir struct {
	path string
	// remove deletes what the demo created in or as path; nil with Keep.
	remove func() error
	// removed is what the report says once remove succeeded.
	removed string
}

// workDir creates (or takes) the demo's directory. Without Keep, an
// existing directory must be empty: its contents are the demo's and are
// removed at the end, the directory itself stays. Nothing is removed yet.
func workDir(opts Options, out *printer) (dataDir, error) {
	var created bool
	dir := opts.Dir
	switch fi, err := os.Stat(dir); {
	case dir == "":
		if dir, err = os.MkdirTemp("", "stowline-demo-"); err != nil {
			return dataDir{}, fmt.Errorf("create the demo directory: %w", err)
		}
		created = true
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return dataDir{}, fmt.Errorf("create the demo directory: %w", err)
		}
		created = true
	case err != nil:
		return dataDir{}, fmt.Errorf("the demo directory: %w", err)
	case !fi.IsDir():
		return dataDir{}, fmt.Errorf("the demo directory %s is not a directory", dir)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return dataDir{}, err
	}
	d := dataDir{path: dir}
	switch {
	case opts.Keep:
		out.printf("data directory    %s  (kept at the end)", dir)
	case created:
		out.printf("data directory    %s  (removed at the end)", dir)
		d.remove = func() error { return os.RemoveAll(dir) }
		d.removed = "removed " + dir
	default:
		// The demo would remove what it finds there at the end: refuse
		// rather than delete the user's files (-dir ~/dicom, -dir .).
		entries, err := os.ReadDir(dir)
		if err != nil {
			return dataDir{}, fmt.Errorf("the demo directory: %w", err)
		}
		if len(entries) > 0 {
			return dataDir{}, fmt.Errorf("%w: -dir %s is not empty and the demo removes its data at the end: give a new or empty directory, or add -keep", ErrUsage, dir)
		}
		out.printf("data directory    %s  (emptied at the end)", dir)
		d.remove = func() error { return removeContents(dir) }
		d.removed = "emptied " + dir
	}
	return d, nil
}

// removeContents removes everything in dir but dir itself.
func removeContents(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// finish runs once everything stopped, with the run's error: a failed run
// keeps the directory for its logs; a good one removes what the demo
// created unless Keep. It returns err, or the removal's error.
func (d dataDir) finish(err error, out *printer) error {
	switch {
	case d.path == "":
	case err != nil && !errors.Is(err, context.Canceled):
		// A failure: its logs are there. An interrupt (Ctrl-C before
		// every study was verified) is a stop, cleaned up as one.
		out.printf("kept %s: stowline.log, */orthanc.log", d.path)
	case d.remove != nil:
		if rerr := d.remove(); rerr != nil {
			return fmt.Errorf("not %s: %w", d.removed, rerr)
		}
		out.printf("%s", d.removed)
	}
	return err
}

// startOrthancs starts the archive (DICOMweb) and the hospital (Lua
// script posting to the ingest at ingestAddr) side by side.
func startOrthancs(ctx context.Context, dir, lua, ingestAddr, ingestToken string, stableAge int, stack *cleanups) (hospital, archive *testharness.Orthanc, err error) {
	// The demo's Orthancs have no HTTP authentication: they answer only
	// on this machine (RemoteAccessAllowed false).
	localOnly := map[string]any{"RemoteAccessAllowed": false}
	hospitalOpts := testharness.OrthancOptions{
		Name: hospitalName, AET: hospitalAET,
		LuaScripts: []string{lua},
		StableAge:  stableAge,
		Extra: map[string]any{
			"RemoteAccessAllowed": false,
			// The Stowline section of the README; Orthanc expands the
			// token from its environment, so it is not in the file.
			"Stowline": map[string]any{
				"IngestUrl":   "http://" + ingestAddr + "/webhooks/orthanc",
				"IngestToken": "${STOWLINE_INGEST_TOKEN}",
				"Source":      sourceName,
			},
		},
		Env: []string{"STOWLINE_INGEST_TOKEN=" + ingestToken},
	}
	archiveOpts := testharness.OrthancOptions{Name: archiveName, AET: archiveAET, DicomWeb: true, Extra: localOnly}

	type started struct {
		o   *testharness.Orthanc
		err error
	}
	launch := func(sub string, o testharness.OrthancOptions) <-chan started {
		ch := make(chan started, 1)
		go func() {
			orth, err := testharness.LaunchOrthanc(ctx, filepath.Join(dir, sub), o)
			ch <- started{orth, err}
		}()
		return ch
	}
	hc, ac := launch(hospitalName, hospitalOpts), launch(archiveName, archiveOpts)
	h, a := <-hc, <-ac
	// Register what started even if the other failed, so it is stopped;
	// both stop side by side (each takes a few seconds).
	var running []*testharness.Orthanc
	for _, s := range []started{h, a} {
		if s.o != nil {
			running = append(running, s.o)
		}
	}
	stack.push("stopped the Orthanc servers", func() error { return closeAll(running) })
	if err := errors.Join(h.err, a.err); err != nil {
		return nil, nil, fmt.Errorf("start Orthanc: %w", err)
	}
	return h.o, a.o, nil
}

// closeAll stops the Orthancs at once and waits for all of them.
func closeAll(servers []*testharness.Orthanc) error {
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, o := range servers {
		wg.Go(func() { errs[i] = o.Close() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stowline is the program running in this process.
type stowline struct {
	done chan error // receives run's result once
}

// startStowline runs stowline's single-host program (what cmd/stowline
// runs) with env as its whole environment, its JSON log written to
// logPath and handed line by line to onLine.
func startStowline(ctx context.Context, env map[string]string, logPath string, onLine func([]byte), stack *cleanups) (*stowline, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("stowline log: %w", err)
	}
	w := io.MultiWriter(logFile, &lineWriter{onLine: onLine})
	// Its own context: stowline stops when the demo's cleanup says so,
	// after the demo's last report, not at the first Ctrl-C.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &stowline{done: make(chan error, 1)}
	finished := make(chan error, 1)
	go func() {
		err := app.Main[config.SingleHost](sctx, "stowline", nil, func(k string) string { return env[k] }, nil, w, w, app.RunSingleHost)
		finished <- err
		s.done <- err
	}()
	stack.push("stopped stowline", func() error {
		defer logFile.Close()
		cancel()
		select {
		case err := <-finished:
			return err
		case <-time.After(stopTimeout):
			return fmt.Errorf("stowline did not stop within %v", stopTimeout)
		}
	})
	return s, nil
}

// waitReady waits until every URL answers 200, or stowline exits.
func waitReady(ctx context.Context, s *stowline, urls ...string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for _, u := range urls {
		for !answersOK(ctx, client, u) {
			select {
			case err := <-s.done:
				return fmt.Errorf("stowline stopped during startup: %w", err)
			case <-ctx.Done():
				return fmt.Errorf("stowline: %s not ready: %w", u, ctx.Err())
			case <-tick.C:
			}
		}
	}
	return nil
}

func answersOK(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeLoopbackAddr returns a loopback address whose port was free a
// moment ago, for stowline to listen on.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
