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
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

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

// Options configures a demo run. Zero fields get defaults.
type Options struct {
	// Dir holds everything the demo writes; empty: a new temporary
	// directory. What the demo created is removed at the end unless Keep
	// is set or the run failed (its logs are there); without Keep an
	// existing Dir must be empty.
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

	data, err := workDir(opts, out)
	if err != nil {
		return err
	}
	dir := data.path
	var stack cleanups
	defer func() {
		if cerr := stack.run(out); cerr != nil && err == nil {
			err = cerr
		}
		// After everything stopped, so that the logs are complete.
		err = data.finish(err, out)
	}()
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
	if len(ids) == 0 {
		// Nothing to forward: "all 0 studies verified" would pass for a
		// success.
		return fmt.Errorf("no study was stored on the hospital Orthanc (%s of %d refused or unreadable)", count(len(res.Failed), "file"), len(plan.files))
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
	// Everything listens on loopback only: the Orthancs have no
	// authentication (RemoteAccessAllowed false).
	if u, err := url.Parse(e.StatusPage); err == nil {
		port := u.Port()
		out.line("  from elsewhere     ssh -L " + port + ":127.0.0.1:" + port + " THIS-HOST   (all of the above listen on 127.0.0.1 only; forward each port you want)")
	}
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
