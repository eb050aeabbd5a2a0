package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/config"
)

// A binary says what it is: -version prints it and exits before any
// configuration is read, the start log line and stowline_build_info carry
// it; a version and commit linked in (the image's build arguments) take
// the place of Go's own record.
func TestBuildIsReported(t *testing.T) {
	version, revision = "1.4.0", "0123abcd"
	t.Cleanup(func() { version, revision = "", "" })
	start := func(context.Context, *config.SingleHost, *slog.Logger) error { return nil }
	none := func(string) string { return "" }

	var out bytes.Buffer
	if err := Main[config.SingleHost](t.Context(), "stowline", []string{"-version"}, none, nil, &out, io.Discard, start); err != nil {
		t.Fatalf("-version with no configuration: %v", err)
	}
	if got, want := out.String(), "stowline 1.4.0, commit 0123abcd ("+runtime.Version()+")\n"; got != want {
		t.Errorf("-version printed %q, want %q", got, want)
	}

	var help bytes.Buffer
	if err := Main[config.SingleHost](t.Context(), "stowline", []string{"-h"}, none, nil, io.Discard, &help, start); err != nil || !strings.Contains(help.String(), "stowline -version prints the version") {
		t.Errorf("-h does not name -version (%v)", err)
	}

	out.Reset()
	env := map[string]string{"INGEST_TOKEN": "0123456789abcdef", "DICOMWEB_URL": "http://archive.invalid/dicom-web"}
	if err := Main[config.SingleHost](t.Context(), "stowline", nil, func(k string) string { return env[k] }, nil, &out, io.Discard, start); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(out.String(), "\n", 2)[0]), &line); err != nil {
		t.Fatalf("start log line %q: %v", out.String(), err)
	}
	if line["msg"] != "starting stowline" || line["version"] != "1.4.0" || line["revision"] != "0123abcd" || line["go"] != runtime.Version() {
		t.Errorf("start log line %v", line)
	}

	const want = `
# HELP stowline_build_info The running binary: 1, labelled with its version, git commit and that commit's time (empty when unknown) and Go version.
# TYPE stowline_build_info gauge
stowline_build_info{commit_time="",go_version="GO",modified="false",revision="0123abcd",version="1.4.0"} 1
`
	if err := testutil.GatherAndCompare(newRegistry(), strings.NewReader(strings.Replace(want, "GO", runtime.Version(), 1)), "stowline_build_info"); err != nil {
		t.Error(err)
	}
}

// Each forwarder command answers -version too, before reading any
// configuration: an operator asked which build ran a scheduled audit or a
// replay need not know it shares the forwarder's binary.
func TestCommandsReportTheBuild(t *testing.T) {
	version, revision = "1.4.0", "0123abcd"
	t.Cleanup(func() { version, revision = "", "" })
	none := func(string) string { return "" }
	commands := []struct {
		name string
		run  func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error
	}{
		{"audit", RunAudit},
		{"backfill", RunBackfill},
		{"check", func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
			return RunCheck(ctx, args, getenv, nil, stdout, stderr)
		}},
		{"destinations", RunDestinations},
		{"replay", RunReplay},
		{"pseudonym", func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
			return RunPseudonym(ctx, args, getenv, strings.NewReader(""), stdout, stderr)
		}},
	}
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := c.run(t.Context(), []string{"-version"}, none, &out, &errOut); err != nil {
				t.Fatalf("forwarder %s -version: %v (stderr %q)", c.name, err, errOut.String())
			}
			want := "forwarder " + c.name + " 1.4.0, commit 0123abcd (" + runtime.Version() + ")\n"
			if out.String() != want {
				t.Errorf("printed %q, want %q", out.String(), want)
			}
		})
	}
}
