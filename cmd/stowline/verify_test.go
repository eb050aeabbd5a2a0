package main

import (
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

// STOW_VERIFY=qido against a destination that answers 200 for a request
// but loses one of its instances (the fault proxy drops the first part of
// the first request and still reports it stored). Without verification
// the instance is lost, and in buffer mode deleted from the source too;
// with it, the archive's QIDO-RS listing shows the gap, the instance is
// sent again and arrives, and buffer mode deletes only once the
// destination lists every instance. On one Orthanc release.
func TestVerifyCatchesALostInstance(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	tests := []struct {
		name   string
		verify string
		buffer bool
		// instanceRetries 0: the gap fails the delivery; the next
		// delivery sends the study again.
		instanceRetries string
		wantLost        bool
	}{
		{name: "off in buffer mode deletes it unstored", verify: "off", buffer: true, wantLost: true},
		{name: "qido sends it again", verify: "qido", instanceRetries: "3"},
		{name: "qido in buffer mode deletes only once all are listed", verify: "qido", buffer: true, instanceRetries: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSiteWith(t, siteOptions{nats: true})
			s.env["STOW_VERIFY"] = tt.verify
			// One request for the study, so that the lost part is one of
			// several.
			s.env["STOW_PARALLEL_REQUESTS"] = "1"
			if tt.instanceRetries != "" {
				s.env["FORWARDER_INSTANCE_RETRIES"] = tt.instanceRetries
			}
			if tt.buffer {
				s.env["FORWARDER_DELETE_FROM_SOURCE"] = "true"
				// Room to look at the source between the failed delivery
				// and the next.
				s.env["FORWARDER_RETRY_DELAY"] = "3s"
			}
			s.proxy.DropNext()
			s.start(t)
			src := s.sources["main"]
			files := generate(t, "", 4)
			uids := sopUIDs(t, files...)
			want := fileDatasetMD5s(t, files...)
			send(t, src, files...)
			fwd := "http://" + s.fwdAddr + "/metrics"

			if tt.buffer && !tt.wantLost {
				// The delivery that found the gap failed; nothing left
				// the source.
				waitLog(t, s.logs, `"msg":"study not forwarded; will retry"`, `STOW_VERIFY=qido`)
				checkSourceHolds(t, src, uids)
			}
			if tt.buffer {
				waitSourceHolds(t, src)
				s.waitIdle(t, 30*time.Second, "default")
			} else {
				s.waitRecorded(t, 1, time.Minute, "default")
			}
			dropped := s.proxy.Dropped()
			if len(dropped) != 1 || !slices.Contains(uids, dropped[0]) {
				t.Fatalf("the proxy dropped %q, want one of the study's instances", dropped)
			}
			if tt.wantLost {
				if s.dests[0].uids(t)[dropped[0]] {
					t.Fatalf("the destination holds the dropped instance %s; the fault did not happen", dropped[0])
				}
				delete(want, dropped[0])
			}
			s.dests[0].checkDatasets(t, want)
			checks := map[string]float64{
				`stowline_forwarder_verifications_total{result="error"}`: 0,
			}
			if tt.verify == "qido" {
				checks[`stowline_forwarder_verifications_total{result="missing"}`] = 1
				checks[`stowline_forwarder_verifications_total{result="verified"}`] = 1
				checks[`stowline_forwarder_verify_missing_instances_total`] = 1
			} else {
				checks[`stowline_forwarder_verifications_total{result="missing"}`] = 0
				checks[`stowline_forwarder_verifications_total{result="verified"}`] = 0
			}
			if tt.buffer {
				checks[`stowline_forwarder_source_deletes_total{result="deleted"}`] = 4
			}
			waitUntil(30*time.Second, func() bool {
				for sample, v := range checks {
					if metricValue(t, fwd, sample) != v {
						return false
					}
				}
				return true
			})
			for sample, v := range checks {
				if got := metricValue(t, fwd, sample); got != v {
					t.Errorf("%s = %v, want %v", sample, got, v)
				}
			}
			if got := metricValue(t, fwd, `stowline_forwarder_verify_duration_seconds_count`); (got > 0) != (tt.verify == "qido") {
				t.Errorf("%v QIDO-RS queries timed with STOW_VERIFY=%s", got, tt.verify)
			}
			if tt.buffer && tt.verify == "off" && !testharness.HasLogLine(s.logText(), `"msg":"buffer mode without verification`, `STOW_VERIFY=qido`) {
				t.Error("no startup warning about buffer mode without verification")
			}
		})
	}
}

// `forwarder audit --verify` finds an instance the destination lost after
// the study was forwarded (deleted from the destination Orthanc), names
// it by its Orthanc ID and UID, and with --enqueue has it forwarded again
// to that destination; then the audit finds nothing.
func TestAuditVerifyFindsAndRepairsALostInstance(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{nats: true})
	s.start(t)
	src := s.sources["main"]
	files := generate(t, "", 3)
	uids := sopUIDs(t, files...)
	send(t, src, files...)
	s.waitRecorded(t, 1, time.Minute, "default")
	s.dests[0].waitHolds(t, uids, 10*time.Second)

	lost := uids[1]
	var lookup []struct{ ID string }
	if err := s.dest.Do(t.Context(), http.MethodPost, "/tools/lookup", strings.NewReader(lost), &lookup); err != nil || len(lookup) != 1 {
		t.Fatalf("look up %s in the destination: %v %v", lost, lookup, err)
	}
	if err := s.dest.Do(t.Context(), http.MethodDelete, "/instances/"+lookup[0].ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	var srcLookup []struct{ ID string }
	if err := src.Do(t.Context(), http.MethodPost, "/tools/lookup", strings.NewReader(lost), &srcLookup); err != nil || len(srcLookup) != 1 {
		t.Fatalf("look up %s in the source: %v %v", lost, srcLookup, err)
	}

	findings := func(args ...string) []ledger.VerifyFinding {
		t.Helper()
		args = append([]string{"--verify", "--destination", "default", "--since", "1h", "--json"}, args...)
		var stdout, stderr strings.Builder
		err := app.RunAudit(t.Context(), args, func(k string) string { return s.env[k] }, &stdout, &stderr)
		if err != nil && !errors.Is(err, app.ErrMissing) {
			t.Fatalf("%q: %v\n%s", args, err, stderr.String())
		}
		out := stdout.String()
		// Exit status 3 exactly when instances are missing, not queued.
		if missing := strings.TrimSpace(out) != "" && !slices.Contains(args, "--enqueue"); missing != errors.Is(err, app.ErrMissing) {
			t.Errorf("%q: err = %v with findings %q", args, err, out)
		}
		var fs []ledger.VerifyFinding
		dec := json.NewDecoder(strings.NewReader(out))
		for dec.More() {
			var f ledger.VerifyFinding
			if err := dec.Decode(&f); err != nil {
				t.Fatalf("audit output %q: %v", out, err)
			}
			fs = append(fs, f)
		}
		return fs
	}
	fs := findings()
	want := []ledger.MissingInstance{{OrthancInstanceID: srcLookup[0].ID, SOPInstanceUID: lost}}
	if len(fs) != 1 || !slices.Equal(fs[0].Missing, want) || fs[0].Instances != 3 || fs[0].Enqueued {
		t.Fatalf("findings %+v, want one study missing %+v, not enqueued", fs, want)
	}
	if fs := findings("--enqueue"); len(fs) != 1 || !fs[0].Enqueued {
		t.Fatalf("findings with --enqueue %+v, want one enqueued", fs)
	}
	s.dests[0].waitHolds(t, uids, 30*time.Second)
	s.waitIdle(t, 30*time.Second, "default")
	if fs := findings(); len(fs) != 0 {
		t.Errorf("after the repair, findings %+v, want none", fs)
	}
}
