package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// TestDemo runs the demo as CI does (-exit) on the shared samples and
// checks what it reports: every study Orthanc accepts goes through each
// stage, in order, and is verified identical on the archive; the
// addresses it prints answer; nothing is left behind.
func TestDemo(t *testing.T) {
	if err := checkInstalled(); err != nil {
		// Integration tests never skip in CI.
		if os.Getenv("CI") != "" {
			t.Fatalf("%v; CI is set, so this fails instead of skipping", err)
		}
		t.Skipf("%v; skipping (set CI=1 to make this a failure)", err)
	}
	samplesDir := testharness.SamplesDir(t)

	var studies []string // StudyInstanceUIDs the demo must report
	seen := map[string]bool{}
	for _, s := range testharness.Samples(t) {
		if s.OrthancAccepts && !seen[s.StudyInstanceUID] {
			seen[s.StudyInstanceUID] = true
			studies = append(studies, s.StudyInstanceUID)
		}
	}

	var out bytes.Buffer
	var endpoints Endpoints
	start := time.Now()
	err := Run(t.Context(), Options{
		Samples: samplesDir,
		Exit:    true,
		Timeout: 90 * time.Second,
		Out:     &out,
		OnReady: func(ctx context.Context, e Endpoints) error {
			endpoints = e
			return probeEndpoints(ctx, e)
		},
	})
	t.Logf("demo ran %v", time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("demo: %v\noutput:\n%s", err, out.String())
	}
	report := out.String()

	for _, uid := range studies {
		last := -1
		for _, st := range []string{"stable", "queued", "forwarded", "verified"} {
			i := lineIndex(report, st, uid)
			if i < 0 {
				t.Errorf("study %s: no %q line", uid, st)
				continue
			}
			if i < last {
				t.Errorf("study %s: %q reported before an earlier stage", uid, st)
			}
			last = i
		}
	}
	if !strings.Contains(report, "forwarded and verified identical on the archive") {
		t.Error("no summary line")
	}
	for _, want := range []string{endpoints.StatusPage, endpoints.AdminToken, endpoints.HospitalExplorer, endpoints.ArchiveExplorer, endpoints.IngestMetrics, endpoints.ForwarderMetrics} {
		if want == "" || !strings.Contains(report, want) {
			t.Errorf("the report does not print %q", want)
		}
	}
	// Everything listens on loopback: the report says how to reach it.
	if u, err := url.Parse(endpoints.StatusPage); err != nil || !strings.Contains(report, "ssh -L "+u.Port()+":127.0.0.1:"+u.Port()+" ") {
		t.Errorf("the report does not say how to reach the status page from another machine (%v)", err)
	}
	// The demo prints the ADMIN_TOKEN on purpose; an access token never.
	if strings.Contains(report, "eyJ") {
		t.Error("the report holds what looks like a JWT")
	}
	for _, bad := range []string{"FAILED", "retrying", "stowline warn", "stowline error"} {
		if strings.Contains(report, bad) {
			t.Errorf("the report holds %q", bad)
		}
	}
	if _, err := os.Stat(endpoints.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data directory %s still there after the demo (stat: %v)", endpoints.Dir, err)
	}
	if !strings.Contains(report, "stopped the Orthanc servers") || !strings.Contains(report, "stopped stowline") || !strings.Contains(report, "removed "+endpoints.Dir) {
		t.Error("the report does not say everything stopped")
	}
	if t.Failed() {
		t.Logf("report:\n%s", report)
	}
}

// TestDemoNothingStored: when the hospital stores none of the files sent
// (here none is DICOM), the demo fails instead of reporting "all 0
// studies forwarded and verified", stops what it started, and keeps its
// directory with the logs.
func TestDemoNothingStored(t *testing.T) {
	if err := checkInstalled(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v; CI is set, so this fails instead of skipping", err)
		}
		t.Skipf("%v; skipping (set CI=1 to make this a failure)", err)
	}
	samples := t.TempDir()
	for _, f := range []string{"a.dcm", "b.dcm"} {
		if err := os.WriteFile(filepath.Join(samples, f), []byte("not DICOM"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// In the test's own directory, which the demo keeps since it fails.
	dir := filepath.Join(t.TempDir(), "demo")
	var out bytes.Buffer
	err := Run(t.Context(), Options{Dir: dir, Samples: samples, Exit: true, Timeout: 30 * time.Second, Out: &out})
	if err == nil || !strings.Contains(err.Error(), "no study was stored") || !strings.Contains(err.Error(), "2 files of 2") {
		t.Errorf("err = %v, want no study stored, 2 files of 2 refused\noutput:\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "verified identical") {
		t.Errorf("the report claims a verification:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stopped the Orthanc servers") {
		t.Errorf("the report does not say the Orthanc servers stopped:\n%s", out.String())
	}
	for _, log := range []string{"stowline.log", "hospital/orthanc.log", "archive/orthanc.log"} {
		if _, err := os.Stat(filepath.Join(dir, log)); err != nil {
			t.Errorf("the failed run's log is gone: %v", err)
		}
	}
	if !strings.Contains(out.String(), "kept "+dir+": stowline.log, */orthanc.log") {
		t.Errorf("the report does not say where the logs are:\n%s", out.String())
	}
}

// lineIndex is the position in report of the first line reporting stage
// for study uid.
func lineIndex(report, stage, uid string) int {
	for i, line := range strings.Split(report, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == stage && f[2] == uid {
			return i
		}
	}
	return -1
}

// probeEndpoints checks that what the demo prints works: the status page
// wants the ADMIN_TOKEN, the Explorers and metrics answer.
func probeEndpoints(ctx context.Context, e Endpoints) error {
	get := func(url, password string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, "", err
		}
		if password != "" {
			req.SetBasicAuth("operator", password)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	var errs []error
	check := func(url, password string, status int, contains string) {
		code, body, err := get(url, password)
		switch {
		case err != nil:
			errs = append(errs, err)
		case code != status:
			errs = append(errs, errors.New(url+": status "+http.StatusText(code)+", want "+http.StatusText(status)))
		case !strings.Contains(body, contains):
			errs = append(errs, errors.New(url+": body lacks "+contains))
		}
	}
	check(e.StatusPage, "", http.StatusUnauthorized, "")
	check(e.StatusPage, e.AdminToken, http.StatusOK, "Recent forwards")
	check(e.HospitalExplorer, "", http.StatusOK, "Orthanc")
	check(e.ArchiveExplorer, "", http.StatusOK, "Orthanc")
	check(e.IngestMetrics, "", http.StatusOK, "stowline_ingest_events_received_total")
	check(e.ForwarderMetrics, "", http.StatusOK, "stowline_forwarder_instances_total")
	if _, err := os.Stat(filepath.Join(e.Dir, "stowline.log")); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// TestMainFlags: bad flags are usage errors and -h is not an error; both
// return before anything starts.
func TestMainFlags(t *testing.T) {
	var stderr bytes.Buffer
	if err := Main(t.Context(), []string{"-h"}, io.Discard, &stderr); err != nil {
		t.Errorf("-h: %v", err)
	}
	if !strings.Contains(stderr.String(), "-exit") {
		t.Errorf("-h does not list -exit:\n%s", stderr.String())
	}
	for _, args := range [][]string{{"-nope"}, {"extra"}} {
		if err := Main(t.Context(), args, io.Discard, io.Discard); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: err = %v, want a usage error", args, err)
		}
	}
}

// TestPlanSend: a directory without a manifest is sent whole; one with a
// manifest only for the files Orthanc accepts; without samples, generated
// studies.
func TestPlanSend(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a.dcm", "sub/b.dcm"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	plan, err := planSend(dir, t.TempDir())
	if err != nil || len(plan.files) != 2 {
		t.Errorf("plain directory: %d files, err %v; want 2", len(plan.files), err)
	}

	samples := testharness.Samples(t)
	plan, err = planSend(testharness.SamplesDir(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	accepted := 0
	for _, s := range samples {
		if s.OrthancAccepts {
			accepted++
		}
	}
	if len(plan.files) != accepted || accepted == len(samples) {
		t.Errorf("samples: %d files planned, %d of %d accepted", len(plan.files), accepted, len(samples))
	}

	// A fresh clone has no shared samples: the demo generates studies.
	t.Setenv(testharness.SamplesEnv, "")
	t.Chdir(t.TempDir())
	plan, err = planSend("", t.TempDir())
	if err != nil || len(plan.files) != 5+2*10+3*20 || !strings.Contains(plan.what, "generated") {
		t.Errorf("no samples: %d files (%s), err %v; want the 85 generated ones", len(plan.files), plan.what, err)
	}
}

// TestWorkDir: the demo removes only what it created (its temporary
// directory, a -dir that did not exist, the contents of an empty one),
// refuses a non-empty -dir without -keep, and keeps everything when the
// run failed, for its logs. No Orthanc is started.
func TestWorkDir(t *testing.T) {
	// A temporary directory of the demo's own goes to TMPDIR.
	t.Setenv("TMPDIR", t.TempDir())
	userFile := "user.dcm"
	tests := []struct {
		name     string
		dir      string // "" stays empty; else relative to a fresh TempDir
		existing bool   // dir exists before, holding userFile if full
		full     bool
		keep     bool
		runErr   error
		wantErr  bool
		wantGone bool // dir itself removed at the end
		wantLeft bool // dir there, with userFile (a full one) or empty
	}{
		{name: "temporary", wantGone: true},
		{name: "temporary, run failed", runErr: errors.New("boom"), wantLeft: true},
		// Ctrl-C before every study was verified: a stop, not a failure.
		{name: "temporary, interrupted", runErr: fmt.Errorf("interrupted before every study was verified: %w", context.Canceled), wantGone: true},
		{name: "new -dir", dir: "a/demo", wantGone: true},
		{name: "new -dir, keep", dir: "demo", keep: true, wantLeft: true},
		{name: "new -dir, run failed", dir: "demo", runErr: errors.New("boom"), wantLeft: true},
		{name: "empty -dir is emptied, not removed", dir: "demo", existing: true, wantLeft: true},
		{name: "full -dir refused", dir: "demo", existing: true, full: true, wantErr: true, wantLeft: true},
		{name: "full -dir, keep", dir: "demo", existing: true, full: true, keep: true, wantLeft: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := ""
			if tt.dir != "" {
				dir = filepath.Join(t.TempDir(), tt.dir)
			}
			if tt.existing {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if tt.full {
					if err := os.WriteFile(filepath.Join(dir, userFile), nil, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			var out bytes.Buffer
			p := newPrinter(&out)
			d, err := workDir(Options{Dir: dir, Keep: tt.keep}, p)
			if tt.wantErr {
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "-keep") {
					t.Errorf("err = %v, want a usage error naming -keep", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if dir == "" {
					t.Cleanup(func() { os.RemoveAll(d.path) })
					dir = d.path
				}
				// What the demo writes while it runs.
				if err := os.WriteFile(filepath.Join(d.path, "stowline.log"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
				if got := d.finish(tt.runErr, p); got != tt.runErr {
					t.Errorf("finish = %v, want %v", got, tt.runErr)
				}
			}
			entries, err := os.ReadDir(dir)
			switch {
			case tt.wantGone:
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still there (%v)", dir, err)
				}
			case err != nil:
				t.Errorf("%s: %v", dir, err)
			case tt.full && (len(entries) == 0 || !slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() == userFile })):
				t.Errorf("%s lost the user's file: %v", dir, entries)
			case tt.existing && !tt.full && !tt.keep && len(entries) != 0:
				t.Errorf("%s not emptied: %v", dir, entries)
			}
			if tt.runErr != nil && !tt.wantGone && !strings.Contains(out.String(), "kept "+dir+": stowline.log, */orthanc.log") {
				t.Errorf("a failed run does not say where its logs are:\n%s", out.String())
			}
		})
	}
}
