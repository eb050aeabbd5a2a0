package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

func TestHelpListsVariables(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, nil, &stdout, &stderr); err != nil {
		t.Fatalf("run -h: %v", err)
	}
	for _, v := range []string{"INGEST_TOKEN", "DICOMWEB_URL", "NATS_URL", "ORTHANC_URL", "OAUTH_CLIENT_SECRET_FILE"} {
		if !strings.Contains(stderr.String(), v) {
			t.Errorf("-h does not list %s", v)
		}
	}
}

// TestOperatorCommandNamesTheForwarder: a single host installs stowline
// alone, and `stowline check` (or replay, as operations.md once wrote)
// answered "unexpected arguments": it now names `forwarder check` and
// how to build it, before reading any configuration.
func TestOperatorCommandNamesTheForwarder(t *testing.T) {
	for _, command := range []string{"check", "replay", "audit", "backfill", "destinations", "pseudonym"} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), []string{command, "list"}, func(string) string { return "" }, nil, &stdout, &stderr)
		if err == nil || !errors.Is(err, app.ErrUsage) || !strings.Contains(err.Error(), "`forwarder "+command+"`") || !strings.Contains(err.Error(), "./cmd/forwarder") {
			t.Errorf("stowline %s: err %v, want a usage error naming `forwarder %[1]s` and how to build it", command, err)
		}
	}
	err := run(context.Background(), []string{"frobnicate"}, func(string) string { return "" }, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("stowline frobnicate: err %v, want unexpected arguments", err)
	}
}

func TestBadConfigFailsAtStartup(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"nothing set", nil, nil, []string{"INGEST_TOKEN", "DICOMWEB_URL"}},
		{"bad url", map[string]string{"INGEST_TOKEN": "0123456789abcdef", "DICOMWEB_URL": "not a url"}, nil, []string{"DICOMWEB_URL"}},
		{"stray argument", nil, []string{"serve"}, []string{"unexpected arguments"}},
		{"unknown flag", nil, []string{"-x"}, []string{"-x"}},
		// A routing rule that does not compile names its variable and
		// where the problem is (line:column).
		{"bad study rule", destinations(map[string]string{"DESTINATION_AI_MATCH": `'MR' in study.modality`}), nil,
			[]string{"DESTINATION_AI_MATCH", "undefined field 'modality'", "1:14"}},
		{"bad instance rule", destinations(map[string]string{"DESTINATION_AI_INSTANCE_MATCH": `instance.modality == `}), nil,
			[]string{"DESTINATION_AI_INSTANCE_MATCH", "1:22"}},
		{"rule not true or false", destinations(map[string]string{"DESTINATION_AI_MATCH": `study.instances`}), nil,
			[]string{"DESTINATION_AI_MATCH", "true or false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, func(k string) string { return tt.env[k] }, nil, &stdout, &stderr)
			if !errors.Is(err, app.ErrUsage) {
				t.Fatalf("run = %v, want a usage error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error()+stderr.String(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

// destinations is a configuration of two destinations, archive and ai,
// with the extra variables.
func destinations(extra map[string]string) map[string]string {
	env := map[string]string{
		"INGEST_TOKEN":            "0123456789abcdef",
		"DESTINATIONS":            "archive,ai",
		"DESTINATION_ARCHIVE_URL": "http://archive.invalid/dicom-web",
		"DESTINATION_AI_URL":      "http://ai.invalid/dicom-web",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// A second single-host process on the same store directory is refused at
// start (it would overwrite the first one's acknowledged events).
func TestSecondProcessOnTheStoreRefused(t *testing.T) {
	dir := t.TempDir()
	env := storeEnv(t, dir, "error")
	getenv := func(k string) string { return env[k] }
	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() { first <- run(ctx, nil, getenv, nil, io.Discard, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-first; err != nil {
			t.Errorf("first process: %v", err)
		}
	})
	// Started: its webhook listens once every role has started.
	testharness.WaitHTTP(t, "http://"+env["INGEST_ADDR"]+"/healthz", 20*time.Second)
	if _, err := os.Stat(filepath.Join(dir, "stowline.lock")); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), nil, getenv, nil, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), "NATS_STORE_DIR") {
		t.Fatalf("second process: %v; want it refused with the store directory in use", err)
	}
}

// A single host moved to a NATS server (NATS_URL set, the systemd unit's
// NATS_STORE_DIR still set) warns at start that its old store holds what
// nothing moves to the NATS server.
func TestNATSServerWarnsOfTheSingleHostStore(t *testing.T) {
	dir := t.TempDir()
	env := storeEnv(t, dir, "warn")
	getenv := func(k string) string { return env[k] }
	runUntilHealthy := func(t *testing.T) string {
		t.Helper()
		var logs testharness.LogBuffer
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, getenv, nil, &logs, &logs) }()
		testharness.WaitHTTP(t, "http://"+env["INGEST_ADDR"]+"/healthz", 20*time.Second)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("stowline: %v\n%s", err, logs.String())
		}
		return logs.String()
	}
	// The single host, with its embedded server's store in dir.
	if logs := runUntilHealthy(t); strings.Contains(logs, "single host's embedded JetStream server") {
		t.Errorf("single-host mode warns of its own store:\n%s", logs)
	}

	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "external", Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	env["NATS_URL"] = srv.ClientURL()
	logs := runUntilHealthy(t)
	if !strings.Contains(logs, "NATS_STORE_DIR holds the store of a single host's embedded JetStream server") || !strings.Contains(logs, dir) {
		t.Errorf("with NATS_URL set and the old store in NATS_STORE_DIR, no warning naming it:\n%s", logs)
	}
}

// storeEnv runs a single host on the store in dir, with no Orthanc to
// reach and nothing but its listeners, logging at level.
func storeEnv(t *testing.T, dir, level string) map[string]string {
	return map[string]string{
		"INGEST_TOKEN":      "0123456789abcdef",
		"DICOMWEB_URL":      "http://archive.invalid/dicom-web",
		"ORTHANC_URL":       "http://127.0.0.1:1",
		"NATS_STORE_DIR":    dir,
		"INGEST_ADDR":       testharness.FreeAddr(t),
		"FORWARDER_ADDR":    testharness.FreeAddr(t),
		"RECONCILE_ENABLED": "false",
		"LOG_LEVEL":         level,
	}
}

// Without ADMIN_TOKEN (the README's first command sets none) the status
// page and the admin API are off; asked for, they say so and name the
// variable that turns them on, not a bare "404 page not found".
func TestDisabledStatusPageSaysWhy(t *testing.T) {
	env := storeEnv(t, t.TempDir(), "error")
	getenv := func(k string) string { return env[k] }
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, getenv, nil, io.Discard, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stowline: %v", err)
		}
	})
	testharness.WaitHTTP(t, "http://"+env["INGEST_ADDR"]+"/healthz", 20*time.Second)
	for _, u := range []string{
		"http://" + env["INGEST_ADDR"] + "/ui",
		"http://" + env["INGEST_ADDR"] + "/ui/style.css",
		"http://" + env["FORWARDER_ADDR"] + "/admin/deadletters",
	} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "ADMIN_TOKEN") || !strings.Contains(string(body), "disabled") {
			t.Errorf("GET %s = %d %q; want 404 saying it is disabled until ADMIN_TOKEN is set", u, resp.StatusCode, body)
		}
	}
}

// TestBusyListenAddressNamesTheVariable: a listen address another process
// holds stops the start with an error naming the variable to change; it
// said "ingest: listen on ADDR: listen tcp ADDR: ... address already in
// use", naming neither INGEST_ADDR nor FORWARDER_ADDR.
func TestBusyListenAddressNamesTheVariable(t *testing.T) {
	for _, variable := range []string{"INGEST_ADDR", "FORWARDER_ADDR"} {
		t.Run(variable, func(t *testing.T) {
			busy, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { busy.Close() })
			env := storeEnv(t, t.TempDir(), "error")
			env[variable] = busy.Addr().String()
			err = run(t.Context(), nil, func(k string) string { return env[k] }, nil, io.Discard, io.Discard)
			if want := variable + "=" + busy.Addr().String() + ": listen tcp"; err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("run = %v; want an error with %q", err, want)
			}
		})
	}
}

// TestUnusableStoreDirNamesTheVariable: a NATS_STORE_DIR the embedded
// server cannot create or lock stops the start with an error naming the
// variable, as a store in use does; it named only the path.
func TestUnusableStoreDirNamesTheVariable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lockIsDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(lockIsDir, "stowline.lock"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, dir := range map[string]string{
		"a file":                 file,
		"under a file":           filepath.Join(file, "nats"),
		"lock file not lockable": lockIsDir,
	} {
		t.Run(name, func(t *testing.T) {
			env := storeEnv(t, dir, "error")
			err := run(t.Context(), nil, func(k string) string { return env[k] }, nil, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "(NATS_STORE_DIR)") {
				t.Fatalf("run = %v; want an error naming NATS_STORE_DIR", err)
			}
		})
	}
}
