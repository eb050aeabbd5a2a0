package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/testharness"
)

// runAudit runs `forwarder audit args...` (the real command) and returns
// its findings (--json is added) and stderr.
func (r *rig) runAudit(t *testing.T, args ...string) ([]ledger.Finding, string) {
	t.Helper()
	env := r.env(nil)
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"audit", "--json"}, args...), func(k string) string { return env[k] }, nil, &out, &errOut)
	if err != nil && !errors.Is(err, app.ErrMissing) {
		t.Fatalf("forwarder audit %v: %v\n%s", args, err, errOut.String())
	}
	var findings []ledger.Finding
	dec := json.NewDecoder(&out)
	for dec.More() {
		var f ledger.Finding
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("audit output: %v", err)
		}
		findings = append(findings, f)
	}
	// Exit status 3 (ErrMissing) exactly when studies are missing and
	// not queued: what a scheduled audit alerts on.
	if missing := len(findings) > 0 && !slices.Contains(args, "--enqueue"); missing != errors.Is(err, app.ErrMissing) {
		t.Errorf("forwarder audit %v with %d findings: err = %v", args, len(findings), err)
	}
	return findings, errOut.String()
}

// A study reaches Orthanc with no event (no Lua script) and its change-log
// entries are purged, so the reconciler could not find it either: the
// audit lists it, --enqueue queues it, the forwarder sends it and records
// the completed forward, and the audit is then clean.
func TestAuditFindsAndEnqueuesAStudyWithoutEvent(t *testing.T) {
	testharness.ForEachRelease(t, testAuditFindsAStudyWithoutEvent)
}

func testAuditFindsAStudyWithoutEvent(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	id := r.addStudy(t, 2, 16)
	r.src.WaitStable(t, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.src.Do(ctx, http.MethodDelete, "/changes", nil, nil); err != nil {
		t.Fatalf("purge the change log: %v", err)
	}

	findings, summary := r.runAudit(t)
	if len(findings) != 1 || findings[0].OrthancStudyID != id || findings[0].Reason != ledger.ReasonNeverForwarded ||
		findings[0].Source != "src" || findings[0].Destination != "default" || findings[0].Enqueued {
		t.Fatalf("findings = %+v, want study %s never forwarded (source named after Orthanc)", findings, id)
	}
	if !strings.Contains(summary, "1 missing at a destination") {
		t.Errorf("summary: %q", summary)
	}

	findings, _ = r.runAudit(t, "--enqueue")
	if len(findings) != 1 || !findings[0].Enqueued || findings[0].Duplicate {
		t.Fatalf("--enqueue findings = %+v", findings)
	}

	r.startForwarder(t, nil)
	r.waitDest(t, 2, 30*time.Second)
	r.assertIdentical(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		findings, summary = r.runAudit(t)
		if len(findings) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the forward, the audit still finds %+v", findings)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(summary, "1 studies, 1 forwarded to every destination") {
		t.Errorf("summary: %q", summary)
	}
}

func TestAuditUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"audit", "-h"}, func(string) string { return "" }, nil, &out, &errOut); err != nil {
		t.Fatalf("audit -h: %v", err)
	}
	for _, want := range []string{"--enqueue", "-json", "NATS_URL", "ORTHANC_SOURCES"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("audit -h does not mention %s", want)
		}
	}
	err := run(context.Background(), []string{"audit"}, func(string) string { return "" }, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "NATS_URL") {
		t.Errorf("audit without NATS_URL: %v", err)
	}
	err = run(context.Background(), []string{"audit", "extra"}, func(string) string { return "" }, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("audit with an argument: %v", err)
	}
}
