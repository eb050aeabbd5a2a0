// Package demo runs stowline end to end on one machine, for a newcomer to
// watch it work: a "hospital" Orthanc running the project's Lua script, an
// "archive" Orthanc whose DICOMweb plugin is the STOW-RS destination,
// behind a gate that admits only OAuth2 access tokens of a real
// authorization server (internal/testidp), and stowline itself in
// single-host mode (embedded JetStream), the same code cmd/stowline runs.
// It sends sample studies to the hospital with dcmtk's storescu, prints
// each study becoming stable, queued, forwarded and verified identical on
// the archive, then leaves everything running for the operator to explore
// until Ctrl-C, which stops it all and removes its directory.
//
// cmd/demo wires it; scripts/demo.sh installs the Debian packages it needs
// first.
package demo

import (
	"bytes"
	"context"
	"crypto/rand"
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
	"github.com/stowline/stowline/internal/testidp"
)

// Defaults of zero Options fields.
const (
	// DefaultTimeout bounds the wait for every sent study to be verified
	// on the archive.
	DefaultTimeout = 2 * time.Minute
	// DefaultStableAge is the hospital's StableAge in seconds: short, so
	// that the demo moves (Orthanc's own default is 60).
	DefaultStableAge = 2
)

// readyTimeout bounds the wait for stowline's /readyz after it starts.
const readyTimeout = time.Minute

// stopTimeout bounds stowline's shutdown: the forwarder's in-flight grace
// (30 s) and some margin.
const stopTimeout = 45 * time.Second

// Names the demo gives its parts. The source name is the Lua script's
// Stowline.Source and stowline's ORTHANC_SOURCE_NAME.
const (
	hospitalName = "hospital"
	hospitalAET  = "HOSPITAL"
	archiveName  = "archive"
	archiveAET   = "ARCHIVE"
	sourceName   = "hospital"
	oauthClient  = "stowline-demo"
	// tokenLifetime of the demo's access tokens: long enough that a
	// newcomer's session sees no refresh noise, short enough to be real.
	tokenLifetime = 10 * time.Minute
)

// ErrMissing matches (errors.Is) the error returned when Orthanc, its
// DICOMweb plugin or storescu is not installed.
var ErrMissing = testharness.ErrMissing

// Options configures a demo run. Zero fields get defaults.
type Options struct {
	// Dir holds everything the demo writes; empty: a new temporary
	// directory. It is removed at the end unless Keep is set.
	Dir  string
	Keep bool
	// LuaScript is the path of lua/stowline.lua; empty: found from the
	// working directory upwards.
	LuaScript string
	// Samples is a directory of DICOM files to send: with a MANIFEST.tsv
	// (the shared samples' format) only the files Orthanc accepts are
	// sent, without one every file. Empty: the shared samples if they can
	// be found, else generated studies.
	Samples string
	// Exit stops the demo once every study sent is verified, instead of
	// waiting for ctx to end (Ctrl-C).
	Exit bool
	// Timeout bounds the wait for the sent studies to be verified.
	Timeout time.Duration
	// StableAge is the hospital's StableAge in seconds.
	StableAge int
	// Out receives the demo's report; nil: os.Stdout.
	Out io.Writer
	// OnReady, if set, is called once every sent study is verified, with
	// the addresses the demo printed, before it waits or exits. An error
	// stops the demo with that error (tests probe the addresses with it).
	OnReady func(ctx context.Context, e Endpoints) error
}

// Endpoints are the addresses the demo prints once it is ready.
type Endpoints struct {
	// Dir holds the demo's data: Orthanc storages, JetStream, logs.
	Dir string
	// StatusPage is stowline's status page; log in with any user name and
	// AdminToken as the password.
	StatusPage, AdminToken string
	// IngestMetrics and ForwarderMetrics are stowline's /metrics.
	IngestMetrics, ForwarderMetrics string
	// HospitalExplorer and ArchiveExplorer are the Orthanc Explorers.
	HospitalExplorer, ArchiveExplorer string
	// HospitalDICOM is where a modality (storescu) sends: host port, with
	// HospitalAET as the called AE title.
	HospitalDICOM, HospitalAET string
	// StowlineLog is stowline's JSON log.
	StowlineLog string
}

// Run runs the demo until every study sent is verified and, unless
// opts.Exit, until ctx ends; then it stops everything it started. ctx
// ending (Ctrl-C) after the verification is a normal stop.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.StableAge <= 0 {
		opts.StableAge = DefaultStableAge
	}
	out := newPrinter(opts.Out)

	// Everything that can be wrong with the machine is checked before
	// anything starts.
	lua, err := findLuaScript(opts.LuaScript)
	if err != nil {
		return err
	}
	if err := checkInstalled(); err != nil {
		return err
	}

	var stack cleanups
	defer func() {
		if cerr := stack.run(out); cerr != nil && err == nil {
			err = cerr
		}
	}()

	dir, err := workDir(opts, &stack, out)
	if err != nil {
		return err
	}
	plan, err := planSend(opts.Samples, filepath.Join(dir, "generated"))
	if err != nil {
		return err
	}

	secrets := struct{ ingest, admin, client string }{rand.Text(), rand.Text(), rand.Text()}
	ingestAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	forwarderAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}

	hospital, archive, err := startOrthancs(ctx, dir, lua, ingestAddr, secrets.ingest, opts.StableAge, &stack)
	if err != nil {
		return err
	}
	out.printf("hospital Orthanc  %s  (DICOM %s on 127.0.0.1:%d, Lua script %s, StableAge %d s)", hospital.URL, hospitalAET, hospital.DicomPort, lua, opts.StableAge)
	out.printf("archive Orthanc   %s  (DICOMweb plugin: the STOW-RS destination)", archive.URL)

	idp, err := testidp.New(testidp.WithClient(oauthClient, secrets.client), testidp.WithTokenLifetime(tokenLifetime))
	if err != nil {
		return err
	}
	stack.push("stopped the OAuth2 server", func() error { idp.Close(); return nil })
	gate, err := idp.NewGate(ctx, archive.URL)
	if err != nil {
		return err
	}
	stack.push("stopped the token gate", func() error { gate.Close(); return nil })
	out.printf("OAuth2 server     %s  (client credentials, client %q)", idp.Issuer, oauthClient)
	out.printf("token gate        %s  (admits only that server's tokens, then proxies to the archive)", gate.URL)

	logPath := filepath.Join(dir, "stowline.log")
	env := map[string]string{
		"LOG_FORMAT":          "json",
		"LOG_LEVEL":           "info",
		"NATS_STORE_DIR":      filepath.Join(dir, "nats"),
		"INGEST_ADDR":         ingestAddr,
		"INGEST_TOKEN":        secrets.ingest,
		"FORWARDER_ADDR":      forwarderAddr,
		"ORTHANC_URL":         hospital.URL,
		"ORTHANC_SOURCE_NAME": sourceName,
		"DICOMWEB_URL":        gate.URL + "/dicom-web",
		"OAUTH_TOKEN_URL":     idp.TokenURL,
		"OAUTH_CLIENT_ID":     oauthClient,
		"OAUTH_CLIENT_SECRET": secrets.client,
		"ADMIN_TOKEN":         secrets.admin,
		// A failed attempt is retried soon, so a newcomer sees it recover.
		"FORWARDER_RETRY_DELAY": "2s",
	}
	tr := newTracker(out, hospital, archive)
	stow, err := startStowline(ctx, env, logPath, tr.logLine, &stack)
	if err != nil {
		return err
	}
	go tr.run(ctx)

	if err := waitReady(ctx, stow, "http://"+ingestAddr+"/readyz", "http://"+forwarderAddr+"/readyz"); err != nil {
		return fmt.Errorf("%w (stowline's log: %s)", err, logPath)
	}
	out.printf("stowline          ingest http://%s, forwarder http://%s  (single host, embedded JetStream; log: %s)", ingestAddr, forwarderAddr, logPath)

	out.printf("sending %s to the hospital with storescu", plan.what)
	res, err := hospital.StoreFiles(ctx, plan.files...)
	if err != nil {
		return fmt.Errorf("storescu: %w", err)
	}
	for _, f := range res.FailedFiles() {
		out.printf("  not stored: %s: %s", filepath.Base(f), res.Failed[f])
	}
	ids, err := studyIDs(ctx, hospital)
	if err != nil {
		return err
	}
	out.printf("sent %d files: the hospital holds %d studies; each is forwarded once Orthanc finds it stable", len(res.Stored), len(ids))

	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	err = tr.wait(wctx, stow, ids)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted before every study was verified: %w", ctx.Err())
		}
		return err
	}
	out.printf("all %d studies forwarded and verified identical on the archive", len(ids))

	e := Endpoints{
		Dir:              dir,
		StatusPage:       "http://" + ingestAddr + "/ui",
		AdminToken:       secrets.admin,
		IngestMetrics:    "http://" + ingestAddr + "/metrics",
		ForwarderMetrics: "http://" + forwarderAddr + "/metrics",
		HospitalExplorer: hospital.URL + "/app/explorer.html",
		ArchiveExplorer:  archive.URL + "/app/explorer.html",
		HospitalDICOM:    fmt.Sprintf("127.0.0.1 %d", hospital.DicomPort),
		HospitalAET:      hospitalAET,
		StowlineLog:      logPath,
	}
	printEndpoints(out, e, opts)
	if opts.OnReady != nil {
		if err := opts.OnReady(ctx, e); err != nil {
			return err
		}
	}
	if opts.Exit {
		return nil
	}
	select {
	case <-ctx.Done():
		out.printf("interrupted: stopping")
		return nil
	case err := <-stow.done:
		return fmt.Errorf("stowline stopped on its own: %w (log: %s)", err, logPath)
	}
}

func printEndpoints(out *printer, e Endpoints, opts Options) {
	out.line("")
	out.line("Everything keeps running. Look around:")
	out.line("  status page        " + e.StatusPage + "   (any user name; password: the ADMIN_TOKEN below)")
	out.line("  ADMIN_TOKEN        " + e.AdminToken)
	out.line("  hospital Orthanc   " + e.HospitalExplorer)
	out.line("  archive Orthanc    " + e.ArchiveExplorer)
	out.line("  metrics            " + e.IngestMetrics + "   " + e.ForwarderMetrics)
	out.line("  stowline's log     " + e.StowlineLog)
	out.line("  send more studies  storescu -aec " + e.HospitalAET + " " + e.HospitalDICOM + " FILE.dcm   (this demo reports them too)")
	out.line("  data               " + e.Dir)
	switch {
	case opts.Exit:
		out.line("Stopping now (exit after verification).")
	case opts.Keep:
		out.line("Press Ctrl-C to stop everything (the data directory is kept).")
	default:
		out.line("Press Ctrl-C to stop everything and remove the data directory.")
	}
	out.line("")
}

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
		return fmt.Errorf("%w: %s; ./scripts/demo.sh installs them", ErrMissing, strings.Join(missing, ", "))
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

// workDir creates (or takes) the demo's directory and registers its
// removal.
func workDir(opts Options, stack *cleanups, out *printer) (string, error) {
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "stowline-demo-"); err != nil {
			return "", fmt.Errorf("create the demo directory: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create the demo directory: %w", err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if opts.Keep {
		out.printf("data directory    %s  (kept at the end)", dir)
	} else {
		out.printf("data directory    %s  (removed at the end)", dir)
		stack.push("removed "+dir, func() error { return os.RemoveAll(dir) })
	}
	return dir, nil
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
		err := app.Main[config.SingleHost](sctx, "stowline", nil, func(k string) string { return env[k] }, w, w, app.RunSingleHost)
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

// cleanups stops what the demo started, last started first, and reports
// each step.
type cleanups struct {
	done []string // what each step reports once done: "stopped stowline"
	fns  []func() error
}

func (c *cleanups) push(done string, fn func() error) {
	c.done = append(c.done, done)
	c.fns = append(c.fns, fn)
}

func (c *cleanups) run(out *printer) error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			errs = append(errs, fmt.Errorf("not %s: %w", c.done[i], err))
			continue
		}
		out.printf("%s", c.done[i])
	}
	return errors.Join(errs...)
}

// printer writes the demo's report, one line at a time, each stamped with
// the time since the demo started.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newPrinter(w io.Writer) *printer { return &printer{w: w, start: time.Now()} }

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%6.1fs  %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// line writes s without a time stamp.
func (p *printer) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, s)
}

// lineWriter hands each complete line written to it to onLine.
type lineWriter struct {
	mu     sync.Mutex
	buf    []byte
	onLine func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := make([]byte, i)
		copy(line, w.buf[:i])
		w.buf = w.buf[i+1:]
		w.onLine(line)
	}
}
