package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/web"
)

const token = "ingest-test-token-0123456789"

// rig is one Orthanc source (without the Lua script: every event comes
// from the reconciler) and a nats-server on TCP shared by ingest replicas.
type rig struct {
	orthanc *testharness.Orthanc
	natsURL string
	js      jetstream.JetStream
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigOn(t, testharness.Release{})
}

// newRigOn is newRig with Orthanc on the given release.
func newRigOn(t *testing.T, rel testharness.Release) *rig {
	t.Helper()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "ingest-src", StableAge: 1, Release: rel})
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "test", Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{orthanc: o, natsURL: srv.ClientURL(), js: js}
}

// replica is one running ingest (run, the real command).
type replica struct {
	addr string
	logs *testharness.LogBuffer
	stop func()
}

func (r *rig) startIngest(t *testing.T) *replica {
	t.Helper()
	rep := &replica{addr: testharness.FreeAddr(t), logs: &testharness.LogBuffer{}}
	env := map[string]string{
		"NATS_URL":                r.natsURL,
		"INGEST_ADDR":             rep.addr,
		"INGEST_TOKEN":            token,
		"ORTHANC_URL":             r.orthanc.URL,
		"ORTHANC_SOURCE_NAME":     "src",
		"ORTHANC_MAX_CONNECTIONS": "8",
		"RECONCILE_POLL_INTERVAL": "200ms",
		"RECONCILE_LEASE_TTL":     "2s",
		"LOG_LEVEL":               "debug",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, nil, rep.logs, rep.logs) }()
	var once sync.Once
	rep.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("ingest returned %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("ingest did not stop within 30 s")
			}
			if t.Failed() {
				t.Logf("ingest %s log:\n%s", rep.addr, rep.logs.String())
			}
		})
	}
	t.Cleanup(rep.stop)
	testharness.WaitFor(t, "ingest healthy", 30*time.Second, func() bool {
		resp, err := http.Get("http://" + rep.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return rep
}

// metric reads one sample (name with its exact labels) from /metrics; -1
// if absent.
func (rep *replica) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + rep.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func (rep *replica) holdsLease(t *testing.T) bool {
	return rep.metric(t, `stowline_reconcile_lease_held{source="src"}`) == 1
}

func (rep *replica) published(t *testing.T) float64 {
	return max(rep.metric(t, `stowline_reconcile_events_published_total{result="stored",source="src"}`), 0) +
		max(rep.metric(t, `stowline_reconcile_events_published_total{result="duplicate",source="src"}`), 0)
}

// waitLeaseWrites waits until the reconciler lease of source "src" has
// been written n more times (taken or renewed; renewals come every third
// of the TTL).
func (r *rig) waitLeaseWrites(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, natsjs.ReconcileBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(ctx, "lease.src", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for seen := 0; seen < n; {
		select {
		case e := <-w.Updates():
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				seen++
			}
		case <-ctx.Done():
			t.Fatalf("the lease was written %d times in 10s, want %d", seen, n)
		}
	}
}

// waitFirstCursor waits until the reconciler of source "src" stored its
// first start's cursor, at the end of the change log. The lease is held,
// and /healthz answers, before: a study stored in between is behind that
// cursor and never published.
func (r *rig) waitFirstCursor(t *testing.T) {
	t.Helper()
	testharness.WaitFor(t, "the first start's cursor", 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		kv, err := r.js.KeyValue(ctx, natsjs.ReconcileBucket)
		if err != nil {
			return false
		}
		_, err = kv.Get(ctx, "cursor.src")
		return err == nil
	})
}

// studyEvents returns the events in the stream by Orthanc study ID.
func (r *rig) studyEvents(t *testing.T) map[string][]events.StudyStable {
	t.Helper()
	ctx := context.Background()
	out := map[string][]events.StudyStable{}
	s, err := r.js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		return out
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var ev events.StudyStable
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out[ev.OrthancStudyID] = append(out[ev.OrthancStudyID], ev)
	}
	return out
}

func (r *rig) addStudies(t *testing.T, studies, instances int) {
	t.Helper()
	for range studies {
		files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{Series: 1, InstancesPerSeries: instances, Rows: 16, Columns: 16})
		if err != nil {
			t.Fatal(err)
		}
		if res := r.orthanc.Upload(t, files...); len(res.Failed) > 0 {
			t.Fatalf("upload: %v", res.Failed)
		}
	}
}

// waitAllPublished waits until every study in Orthanc has exactly one
// event in the stream for its current state.
func (r *rig) waitAllPublished(t *testing.T, timeout time.Duration) {
	t.Helper()
	testharness.WaitFor(t, "an event for every study in Orthanc", timeout, func() bool {
		var studies []struct{ ID, LastUpdate string }
		r.orthanc.GetJSON(t, "/studies?expand", &studies)
		evs := r.studyEvents(t)
		for _, s := range studies {
			found := false
			for _, ev := range evs[s.ID] {
				found = found || ev.LastUpdate == s.LastUpdate
			}
			if !found {
				return false
			}
		}
		return len(studies) > 0
	})
}

// Two ingest replicas share one Orthanc: one polls its change log, every
// study is published once, and when the polling one stops the other takes
// over within the lease TTL (waited for twice as long: the standby checks
// every third of it, and a loaded machine delays both).
func TestTwoReplicasOnePolls(t *testing.T) {
	r := newRig(t)
	a, b := r.startIngest(t), r.startIngest(t)
	testharness.WaitFor(t, "one replica to hold the lease", 10*time.Second, func() bool { return a.holdsLease(t) || b.holdsLease(t) })
	holder, other := a, b
	if b.holdsLease(t) {
		holder, other = b, a
	}
	// Two renewals by the holder are a whole renewal period, in which the
	// standby, which checks as often, looked at the lease at least once.
	r.waitLeaseWrites(t, 2)
	if !holder.holdsLease(t) || other.holdsLease(t) {
		t.Fatal("the lease changed hands or both replicas hold it")
	}
	r.waitFirstCursor(t)

	r.addStudies(t, 3, 2)
	r.waitAllPublished(t, 20*time.Second)
	// A replica counts an event once JetStream acknowledged it: after the
	// stream holds it.
	testharness.WaitFor(t, "the 3 events counted", 20*time.Second, func() bool { return holder.published(t)+other.published(t) >= 3 })
	time.Sleep(time.Second) // more polls: nothing published again
	if got := holder.published(t); got != 3 {
		t.Errorf("the polling replica published %v events, want 3", got)
	}
	if got := other.published(t); got != 0 {
		t.Errorf("the standby replica published %v events, want 0", got)
	}
	// The reconciler's client reports its ORTHANC_MAX_CONNECTIONS cap.
	if got := holder.metric(t, `stowline_orthanc_request_slots{source="src"}`); got != 8 {
		t.Errorf("stowline_orthanc_request_slots = %v, want 8", got)
	}

	stopped := time.Now()
	holder.stop()
	testharness.WaitFor(t, "the other replica to take the lease", 4*time.Second, func() bool { return other.holdsLease(t) })
	t.Logf("lease taken over %v after the holder stopped (TTL 2s)", time.Since(stopped).Round(time.Millisecond))

	r.addStudies(t, 1, 1)
	r.waitAllPublished(t, 20*time.Second)
	testharness.WaitFor(t, "the new holder's event counted", 20*time.Second, func() bool { return other.published(t) >= 1 })
	time.Sleep(time.Second) // more polls: nothing published again
	if got := other.published(t); got != 1 {
		t.Errorf("the new holder published %v events, want 1 (the study that came after the takeover)", got)
	}
	for id, evs := range r.studyEvents(t) {
		if len(evs) != 1 {
			t.Errorf("study %s has %d events, want 1", id, len(evs))
		}
	}
}

// recreate stops Orthanc, deletes its database and storage, and starts it
// again on the same ports: its change log starts again at 1.
func recreate(t *testing.T, o *testharness.Orthanc) {
	t.Helper()
	o.Stop(t)
	for _, sub := range []string{"index", "storage"} {
		dir := filepath.Join(o.Dir, sub)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	o.Start(t)
}

// Orthanc's database is recreated, so its change log restarts below the
// stored cursor: the reconciler notices, rescans from the start and misses
// nothing. First with the ingest running (the new log is shorter than the
// cursor), then with the ingest stopped until the new log is longer than
// the cursor (the change at the cursor's number is another one).
func TestOrthancDatabaseRecreated(t *testing.T) {
	testharness.ForEachRelease(t, testOrthancDatabaseRecreated)
}

func testOrthancDatabaseRecreated(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	ing := r.startIngest(t)
	r.waitFirstCursor(t)
	r.addStudies(t, 3, 3)
	r.waitAllPublished(t, 20*time.Second)

	recreate(t, r.orthanc)
	r.addStudies(t, 2, 1)
	r.waitAllPublished(t, 30*time.Second)
	if got := ing.metric(t, `stowline_reconcile_change_log_resets_total{source="src"}`); got != 1 {
		t.Errorf("resets = %v, want 1", got)
	}
	ing.stop()

	var before struct{ Last int64 }
	r.orthanc.GetJSON(t, "/changes?last", &before)
	recreate(t, r.orthanc)
	r.addStudies(t, 4, 3)
	r.orthanc.WaitStable(t, 20*time.Second)
	var after struct{ Last int64 }
	r.orthanc.GetJSON(t, "/changes?last", &after)
	if after.Last <= before.Last {
		t.Fatalf("the new change log (%d) must be longer than the old one (%d) for this test", after.Last, before.Last)
	}
	ing = r.startIngest(t)
	r.waitAllPublished(t, 30*time.Second)
	if got := ing.metric(t, `stowline_reconcile_change_log_resets_total{source="src"}`); got != 1 {
		t.Errorf("resets after the restart = %v, want 1", got)
	}
	if !strings.Contains(ing.logs.String(), "change log was reset") {
		t.Error("the reset is not logged")
	}
}

// Orthanc's database is restored from a backup: its change log goes back
// below the cursor, holding only changes the reconciler handled before
// the backup's copy was replaced. Those are not published again (each
// event older than EVENTS_DEDUPE_WINDOW would forward its study again:
// after a restore, the whole archive); the studies stored since the
// restore are.
func TestOrthancDatabaseRestoredFromBackup(t *testing.T) {
	testharness.ForEachRelease(t, testOrthancDatabaseRestoredFromBackup)
}

func testOrthancDatabaseRestoredFromBackup(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	ing := r.startIngest(t)
	r.waitFirstCursor(t)
	r.addStudies(t, 2, 1)
	r.waitAllPublished(t, 20*time.Second)

	r.orthanc.Stop(t)
	index := filepath.Join(r.orthanc.Dir, "index")
	backup := filepath.Join(t.TempDir(), "index")
	if err := os.CopyFS(backup, os.DirFS(index)); err != nil {
		t.Fatal(err)
	}
	r.orthanc.Start(t)
	r.addStudies(t, 2, 1)
	r.waitAllPublished(t, 20*time.Second)
	// A new term: the replica does not remember what it published.
	ing.stop()

	r.orthanc.Stop(t)
	if err := os.RemoveAll(index); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(index, os.DirFS(backup)); err != nil {
		t.Fatal(err)
	}
	r.orthanc.Start(t)
	r.addStudies(t, 1, 1)
	r.orthanc.WaitStable(t, 20*time.Second)

	ing = r.startIngest(t)
	r.waitAllPublished(t, 30*time.Second)
	// The new study's changes come after the backup's: once it is
	// published, the rescan is past them.
	testharness.WaitFor(t, "the study stored since the restore published", 30*time.Second, func() bool {
		return ing.metric(t, `stowline_reconcile_events_published_total{result="stored",source="src"}`) == 1
	})
	if got := ing.metric(t, `stowline_reconcile_change_log_resets_total{source="src"}`); got != 1 {
		t.Errorf("resets = %v, want 1", got)
	}
	if got := ing.metric(t, `stowline_reconcile_events_published_total{result="duplicate",source="src"}`); got != 0 {
		t.Errorf("the backup's %v studies were published again, want none", got)
	}
}

// postEvent posts body to the webhook of the ingest at addr, as the Lua
// script does, and returns the answer's status. It calls no t method, so
// a goroutine may use it.
func postEvent(addr, body string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+web.WebhookPath, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
