package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// Buffer mode (FORWARDER_DELETE_FROM_SOURCE) against real Orthanc servers:
// a forwarded study is deleted from the source once the destination holds
// it byte for byte; a study that changed since its event is forwarded but
// kept, and its next event forwards the rest and deletes it all.
func TestBufferModeDeletesForwardedInstances(t *testing.T) {
	testharness.ForEachRelease(t, testBufferMode)
}

func testBufferMode(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	r.startForwarder(t, map[string]string{"FORWARDER_DELETE_FROM_SOURCE": "true"})

	// Unchanged since its event: forwarded, then deleted from the source.
	first := r.addStudy(t, 4, 32)
	want := r.src.InstanceMD5s(t)
	r.publish(t, first)
	r.waitDest(t, 4, 60*time.Second)
	r.waitSourceInstances(t, 0, 30*time.Second)
	got := r.dest.InstanceMD5s(t)
	for uid, sum := range want {
		if got[uid] != sum {
			t.Errorf("instance %s: md5 %q at the source before, %q at the destination", uid, sum, got[uid])
		}
	}
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="deleted"}`, 4, 10*time.Second)

	// Changed since its event: an event with an older LastUpdate, as when
	// an instance arrives after the study went stable.
	second := r.addStudy(t, 3, 32)
	ev := r.publishAs(t, second, "20000101T000000")
	r.waitDest(t, 7, 60*time.Second)
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="skipped"}`, 3, 30*time.Second)
	if n := r.sourceInstances(t); n != 3 {
		t.Fatalf("source holds %d instances after a skipped delete, want 3", n)
	}
	// Its next event (the real LastUpdate) deletes it.
	if ev2 := r.publish(t, second); ev2.LastUpdate == ev.LastUpdate {
		t.Fatal("the second event did not change LastUpdate")
	}
	r.waitSourceInstances(t, 0, 60*time.Second)
	r.waitDest(t, 7, 10*time.Second)
	r.waitQueueEmpty(t, 30*time.Second)

	// A rollout adds destination ai: its forwarders made its consumer,
	// this one still runs without it. It forwards the study and keeps it
	// in the source, which ai may need.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.js.CreateOrUpdateConsumer(ctx, natsjs.EventStream, natsjs.DefaultTopology().ConsumerConfig("ai", true)); err != nil {
		t.Fatal(err)
	}
	rollout := time.Now().UTC().Add(-time.Second)
	third := r.addStudy(t, 2, 32)
	r.publish(t, third)
	r.waitDest(t, 9, 60*time.Second)
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="waiting"}`, 2, 30*time.Second)
	if n := r.sourceInstances(t); n != 2 {
		t.Fatalf("source holds %d instances with an unconfigured destination's queue, want 2", n)
	}
	// Once it is gone ('forwarder destinations remove ai'), deletes resume.
	if err := r.js.DeleteConsumer(ctx, natsjs.EventStream, natsjs.ConsumerName("ai")); err != nil {
		t.Fatal(err)
	}
	r.publish(t, r.addStudy(t, 1, 32))
	r.waitDest(t, 10, 60*time.Second)
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="deleted"}`, 4+3+1, 30*time.Second)
	if n := r.sourceInstances(t); n != 2 {
		t.Fatalf("source holds %d instances, want the 2 kept for ai", n)
	}
	// Nothing announces the kept study again: docs/operations.md has the
	// operator backfill a remaining destination from the source over the
	// rollout's window (a re-forward would also queue every study already
	// deleted, each then acked as forwarded before); its forward
	// (already stored) deletes the study.
	testharness.WaitFor(t, "the kept study stable in the source", 30*time.Second, func() bool {
		var st struct{ IsStable bool }
		r.src.GetJSON(t, "/studies/"+third, &st)
		return st.IsStable
	})
	var out, errOut bytes.Buffer
	env := r.env(nil)
	args := []string{"backfill", "--destination", "default", "--from", "source", "--since", rollout.Add(-time.Hour).Format(time.RFC3339)}
	if err := run(t.Context(), args, func(k string) string { return env[k] }, nil, &out, &errOut); err != nil {
		t.Fatalf("forwarder %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	t.Logf("forwarder %s:\n%s%s", strings.Join(args, " "), out.String(), errOut.String())
	r.waitSourceInstances(t, 0, 60*time.Second)
	r.waitDest(t, 10, 10*time.Second)
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="deleted"}`, 4+3+1+2, 30*time.Second)
}

// Orthanc 1.12.1 and later move a study's LastUpdate when one of its
// instances is deleted, logging no change. Buffer mode, which looks at the
// study again every 32 deletes, took its own deletes for a change: a study
// of more than 32 instances (any CT) kept all but 32 in the source, and no
// next event came to delete them.
func TestBufferModeDeletesAStudyOfMoreThan32Instances(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		const n = 40
		r := newRigOn(t, rel)
		r.startForwarder(t, map[string]string{"FORWARDER_DELETE_FROM_SOURCE": "true"})
		study := r.addStudy(t, n, 8)
		// Its event comes at StableStudy, as the ingest's does: the
		// deletes fall in a later second than LastUpdate's, and move it.
		testharness.WaitFor(t, "the study stable in the source", 30*time.Second, func() bool {
			var st struct{ IsStable bool }
			r.src.GetJSON(t, "/studies/"+study, &st)
			return st.IsStable
		})
		r.publish(t, study)
		r.waitDest(t, n, 120*time.Second)
		// Every instance accounted for: deleted, or not.
		r.waitMetric(t, `stowline_forwarder_source_deletes_total`, n, 60*time.Second)
		r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="deleted"}`, n, time.Second)
		if left := r.sourceInstances(t); left != 0 {
			t.Fatalf("source holds %d instances of the forwarded study, want 0", left)
		}
	})
}

// A corrected study sent again under the same SOP Instance UIDs after
// buffer mode deleted the first copy: the destination Orthanc keeps the
// copy it holds (OverwriteInstances false, its default) and answers the
// correction stored, as any server ignoring duplicates does. Buffer mode
// deleted the correction: it existed nowhere. It now stays in the source,
// counted kept.
func TestBufferModeKeepsACorrectionSentUnderForwardedUIDs(t *testing.T) {
	r := newRig(t)
	r.startForwarder(t, map[string]string{"FORWARDER_DELETE_FROM_SOURCE": "true"})
	study, files := r.addStudyFiles(t, 3, 32)
	stored := time.Now()
	first := r.publish(t, study)
	r.waitDest(t, 3, 60*time.Second)
	r.waitSourceInstances(t, 0, 30*time.Second)
	held := r.dest.InstanceMD5s(t)

	// The correction: each file's last pixel byte changed (PixelData is
	// the last element), its UIDs kept.
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 1
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Orthanc's LastUpdate counts seconds: stored within the first
	// copy's, the correction's event would be a duplicate of its event.
	next := stored.Truncate(time.Second).Add(time.Second)
	testharness.WaitFor(t, "the second after the first copy's", 2*time.Second, func() bool { return !time.Now().Before(next) })
	if res := r.src.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu refused %d corrected files", len(res.Failed))
	}
	corrected := r.src.InstanceMD5s(t)
	// The same Orthanc ID: the same patient and study UIDs.
	if ev := r.publish(t, study); ev.LastUpdate == first.LastUpdate {
		t.Fatal("the correction did not change the study's LastUpdate")
	}
	// Every instance accounted for: deleted, or kept.
	r.waitMetric(t, `stowline_forwarder_source_deletes_total`, 6, 60*time.Second)
	r.waitMetric(t, `stowline_forwarder_source_deletes_total{result="kept"}`, 3, time.Second)
	if n := r.sourceInstances(t); n != 3 {
		t.Fatalf("source holds %d instances of the correction, want its 3", n)
	}
	for uid, sum := range r.dest.InstanceMD5s(t) {
		if sum != held[uid] || sum == corrected[uid] {
			t.Errorf("instance %s: md5 %q at the destination, want the first copy's %q (it keeps it: the case this guards)", uid, sum, held[uid])
		}
	}
	if !strings.Contains(r.fwdLogs.String(), "sent before from another file") {
		t.Error("the forwarder's log does not say why the correction stays")
	}
}

// publishAs queues the study's event with the given LastUpdate.
func (r *rig) publishAs(t *testing.T, studyID, lastUpdate string) *events.StudyStable {
	t.Helper()
	var s struct{ MainDicomTags map[string]string }
	r.src.GetJSON(t, "/studies/"+studyID, &s)
	ev := &events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: "src",
		OrthancStudyID: studyID, StudyInstanceUID: s.MainDicomTags["StudyInstanceUID"],
		LastUpdate: lastUpdate, ReceivedAt: time.Now().UTC(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := (natsjs.Publisher{JS: r.js}).Publish(ctx, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return ev
}

func (r *rig) sourceInstances(t *testing.T) int {
	t.Helper()
	var stats struct{ CountInstances int }
	r.src.GetJSON(t, "/statistics", &stats)
	return stats.CountInstances
}

func (r *rig) waitSourceInstances(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := r.sourceInstances(t)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("source holds %d instances after %s, want %d", got, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitMetric waits until the forwarder's /metrics has sample (a metric
// and some of its labels, summed over the rest) at value want.
func (r *rig) waitMetric(t *testing.T, sample string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, ok := testharness.Metric(t, "http://"+r.forwarderAddr+"/metrics", sample)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has %s = %v after %s, want %v", sample, got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An event of a study's earlier state that comes after buffer mode
// deleted the study (both waited while the destination was down, and the
// newer came first, or the two ran at once) finds the study gone. The
// destination's ledger holds a newer state of it: every instance of the
// older one was delivered, so the event is done, not a source-missing
// dead letter (which alerts, and whose replay fails the same way).
func TestBufferModeOlderEventOfDeletedStudy(t *testing.T) {
	r := newRig(t)
	r.startForwarder(t, map[string]string{"FORWARDER_DELETE_FROM_SOURCE": "true"})
	study := r.addStudy(t, 2, 32)
	ev := r.publish(t, study)
	r.waitDest(t, 2, 60*time.Second)
	r.waitSourceInstances(t, 0, 30*time.Second)

	older := *ev
	older.LastUpdate, older.ReceivedAt = "20000101T000000", time.Now().UTC()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := (natsjs.Publisher{JS: r.js}).Publish(ctx, &older); err != nil {
		t.Fatalf("publish: %v", err)
	}
	r.waitMetric(t, `stowline_forwarder_studies_total`, 2, 30*time.Second)
	if n := r.metric(t, "stowline_forwarder_studies_total", `result="dead_lettered"`); n != 0 {
		t.Errorf("%v studies dead-lettered, want none", n)
	}
	// Counted once as forwarded: the older event's ack is not a forward.
	if n := r.metric(t, "stowline_forwarder_studies_total", `result="forwarded"`); n != 1 {
		t.Errorf("%v studies counted forwarded, want 1", n)
	}
	if n := r.metric(t, "stowline_forwarder_studies_total", `result="already_forwarded"`); n != 1 {
		t.Errorf("%v studies counted already_forwarded, want 1", n)
	}
	r.noDeadLetters(t)
	if !strings.Contains(r.fwdLogs.String(), "the destination's ledger holds this state of it or a newer one") {
		t.Errorf("no log line says why the older event is done")
	}
}

// Buffer mode with two destinations, ai selecting MR studies only: the
// archive forwards a CT study and deletes it (ai selects none of it)
// while ai's forwarders are down, so its event waits in ai's queue. When
// they are back, ai finds the study gone: the archive's forwarder
// recorded it as not selected in ai's ledger before deleting it, so the
// event is done for ai (not_selected), not a source-missing dead letter,
// one for every study ai does not select during its outage.
func TestBufferModeStudyDeletedBeforeUnselectingDestination(t *testing.T) {
	for _, tt := range []struct {
		name string
		// aiMatch is ai's rule in ai's own group; the archive group,
		// which deletes the study, holds 'MR' in study.modalities.
		aiMatch    string
		deadLetter bool
	}{
		{"the same rules", "'MR' in study.modalities", false},
		// Groups configured apart (a rule changed in one group only, a
		// rollout): the record proves nothing, and the study, which ai's
		// own rule selects, is a source-missing dead letter, which alerts.
		{"ai's rules changed in its group only", "'MR' in study.modalities || 'CT' in study.modalities", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			env := map[string]string{
				"FORWARDER_DELETE_FROM_SOURCE": "true",
				"DICOMWEB_URL":                 "",
				"DESTINATIONS":                 "archive,ai",
				"DESTINATION_ARCHIVE_URL":      r.proxy.URL + "/dicom-web",
				"DESTINATION_AI_URL":           r.proxy.URL + "/dicom-web",
				"DESTINATION_AI_MATCH":         "'MR' in study.modalities",
				"FORWARDER_DESTINATIONS":       "archive",
			}
			stop := r.startForwarder(t, env)
			r.publish(t, r.addStudy(t, 2, 32)) // CT
			r.waitDest(t, 2, 60*time.Second)
			r.waitSourceInstances(t, 0, 30*time.Second)
			stop()

			env["FORWARDER_DESTINATIONS"], env["DESTINATION_AI_MATCH"] = "ai", tt.aiMatch
			r.startForwarder(t, env)
			r.waitMetric(t, `stowline_forwarder_studies_total{destination="ai"}`, 1, 30*time.Second)
			notSelected := r.metric(t, "stowline_forwarder_studies_total", `destination="ai",result="not_selected"`)
			if !tt.deadLetter {
				if notSelected != 1 {
					t.Errorf("ai: %v studies not selected, want the CT study", notSelected)
				}
				r.noDeadLetters(t)
				return
			}
			letters := waitDeadLetters(t, r.deadLetters(t), 1, 30*time.Second)
			if notSelected != 0 || letters[0].Class != forward.SourceMissing {
				t.Errorf("ai: %v not selected, dead letter %q; want none and a source-missing dead letter", notSelected, letters[0].Class)
			}
		})
	}
}
