package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

const adminToken = "admin-token-for-tests-0123"

// rig is a real deployment for forwarder tests: source Orthanc A, a real
// destination Orthanc B (DICOMweb plugin) behind a fault proxy, and a
// nats-server listening on TCP, as a separate forwarder needs.
type rig struct {
	src, dest *testharness.Orthanc
	proxy     *faultproxy.Proxy

	storeDir string
	natsPort int
	natsMu   sync.Mutex
	nats     *natsjs.EmbeddedServer
	nc       *nats.Conn
	js       jetstream.JetStream

	forwarderAddr string
	// fwdLogs is what the last forwarder started logs.
	fwdLogs *testharness.LogBuffer
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigOn(t, testharness.Release{})
}

// newRigOn is newRig with the source Orthanc on the given release (the
// zero Release: the default one). The destination stands in for a cloud
// archive, so its release does not matter: it stays on the default.
func newRigOn(t *testing.T, rel testharness.Release) *rig {
	t.Helper()
	testharness.RequireBinary(t, "storescu")
	r := &rig{storeDir: t.TempDir()}
	r.dest = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest", DicomWeb: true})
	r.proxy = faultproxy.Start(t, r.dest.URL)
	r.src = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "src", Release: rel})
	// Picked after the servers above bind theirs: a port freeAddr released
	// could otherwise be handed to the proxy.
	r.forwarderAddr = testharness.FreeAddr(t)
	r.startNATS(t)
	t.Cleanup(r.stopNATS)
	nc, err := nats.Connect(r.natsURL(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r.nc = nc
	if r.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := natsjs.DefaultTopology().EnsureEvents(ctx, r.js); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) startNATS(t *testing.T) {
	t.Helper()
	r.natsMu.Lock()
	defer r.natsMu.Unlock()
	if r.natsPort == 0 {
		// The same port on every start. Not one from the ephemeral range
		// (:0): while NATS is down, any outgoing connection may get it as
		// its local port, and the restart would fail "address already in
		// use".
		r.natsPort = testharness.FreePort(t)
	}
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: r.storeDir, ServerName: "test", Port: r.natsPort}, nil)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	r.nats = srv
}

func (r *rig) stopNATS() {
	r.natsMu.Lock()
	defer r.natsMu.Unlock()
	if r.nats != nil {
		r.nats.Shutdown()
		r.nats = nil
	}
}

func (r *rig) natsURL() string { return "nats://127.0.0.1:" + strconv.Itoa(r.natsPort) }

func (r *rig) env(extra map[string]string) map[string]string {
	env := map[string]string{
		"NATS_URL":                  r.natsURL(),
		"FORWARDER_ADDR":            r.forwarderAddr,
		"ORTHANC_URL":               r.src.URL,
		"DICOMWEB_URL":              r.proxy.URL + "/dicom-web",
		"FORWARDER_RETRY_DELAY":     "1s",
		"FORWARDER_RETRY_MAX_DELAY": "8s",
		"FORWARDER_ACK_WAIT":        "3s",
		"ADMIN_TOKEN":               adminToken,
		"LOG_LEVEL":                 "debug",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startForwarder runs the real forwarder (run) in this process until the
// returned stop is called or the test ends.
func (r *rig) startForwarder(t *testing.T, extra map[string]string) (stop func()) {
	t.Helper()
	p := testharness.StartProgram(t, "forwarder", run, r.env(extra))
	r.fwdLogs = p.Logs
	testharness.WaitHTTP(t, "http://"+r.forwarderAddr+"/healthz", 30*time.Second)
	return func() {
		if err := p.Stop(); err != nil {
			t.Errorf("forwarder: %v", err)
		}
	}
}

// addStudy generates a study of n instances, stores it in the source with
// storescu and returns its Orthanc ID.
func (r *rig) addStudy(t *testing.T, n, rows int) string {
	t.Helper()
	id, _ := r.addStudyFiles(t, n, rows)
	return id
}

// addStudyFiles is addStudy, returning the files stored too.
func (r *rig) addStudyFiles(t *testing.T, n, rows int) (id string, files []string) {
	t.Helper()
	uid := dicomgen.NewUID()
	var err error
	files, err = dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "FWD-TEST", PatientName: "Synthetic^Forwarder",
		Series: 1, InstancesPerSeries: n, Rows: rows, Columns: rows,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.storeStudy(t, uid, files), files
}

// storeStudy stores a generated study's files in the source with
// storescu and returns its Orthanc ID.
func (r *rig) storeStudy(t *testing.T, uid string, files []string) string {
	t.Helper()
	if res := r.src.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu refused %d generated files", len(res.Failed))
	}
	var found []struct{ ID, Type string }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.src.Do(ctx, http.MethodPost, "/tools/lookup", strings.NewReader(uid), &found); err != nil {
		t.Fatalf("lookup study: %v", err)
	}
	for _, f := range found {
		if f.Type == "Study" {
			return f.ID
		}
	}
	t.Fatalf("generated study %s not found in the source", uid)
	return ""
}

// publish queues the stable-study event for an Orthanc study, as the
// ingest would.
func (r *rig) publish(t *testing.T, studyID string) *events.StudyStable {
	t.Helper()
	var s struct {
		MainDicomTags map[string]string
		LastUpdate    string
	}
	r.src.GetJSON(t, "/studies/"+studyID, &s)
	ev := &events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: "src",
		OrthancStudyID: studyID, StudyInstanceUID: s.MainDicomTags["StudyInstanceUID"],
		LastUpdate: s.LastUpdate, ReceivedAt: time.Now().UTC(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := (natsjs.Publisher{JS: r.js}).Publish(ctx, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return ev
}

// waitDest waits until the destination holds n instances.
func (r *rig) waitDest(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var stats struct{ CountInstances int }
		r.dest.GetJSON(t, "/statistics", &stats)
		if stats.CountInstances >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination has %d instances after %s, want %d", stats.CountInstances, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sentIDs names ev's instances in the source as forward's sentID names
// what it stored, in the failure bucket's record (deadletter.FailureLog).
func (r *rig) sentIDs(t *testing.T, ev *events.StudyStable) []string {
	t.Helper()
	var instances []struct {
		FileUuid      string
		MainDicomTags struct{ SOPInstanceUID string }
	}
	r.src.GetJSON(t, "/studies/"+ev.OrthancStudyID+"/instances", &instances)
	ids := make([]string, len(instances))
	for i, in := range instances {
		ids[i] = in.MainDicomTags.SOPInstanceUID + "/" + in.FileUuid
		if in.FileUuid == "" {
			ids[i] = in.MainDicomTags.SOPInstanceUID + "@" + ev.LastUpdate
		}
	}
	return ids
}

// waitSentRecorded waits (up to 30 s) until the failure bucket records at
// least n of ev's instances as stored at the default destination. The
// forwarder writes that record in the background after each answer
// (forward's sentWriter): a test that kills it right after an answer
// waits for the record, else the restarted forwarder may take those
// instances for another's copies.
func (r *rig) waitSentRecorded(t *testing.T, ev *events.StudyStable, n int) {
	t.Helper()
	ids := r.sentIDs(t, ev)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, natsjs.FailureBucket)
	if err != nil {
		t.Fatal(err)
	}
	failures := deadletter.NewFailureLog(kv, natsjs.DefaultDestination)
	for {
		recorded := 0
		sent, err := failures.Sent(ctx, ev)
		if err == nil {
			for _, id := range ids {
				if sent(id) {
					recorded++
				}
			}
		}
		if recorded >= n {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of the study's instances recorded as stored after 30 s (err %v), want %d", recorded, err, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitQueueEmpty waits until the forwarder consumer has nothing pending or
// unacknowledged.
func (r *rig) waitQueueEmpty(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info := r.consumerInfo(t)
		if info != nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue not empty after %s: %+v", timeout, info)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *rig) consumerInfo(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.js.Consumer(ctx, natsjs.EventStream, natsjs.ForwarderConsumer)
	if err != nil {
		return nil
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil
	}
	return info
}

// assertIdentical checks every source instance is in the destination with
// the same bytes.
func (r *rig) assertIdentical(t *testing.T) {
	t.Helper()
	want, got := r.src.InstanceMD5s(t), r.dest.InstanceMD5s(t)
	for uid, sum := range want {
		if got[uid] != sum {
			t.Errorf("instance %s: md5 %q at the source, %q at the destination", uid, sum, got[uid])
		}
	}
}
