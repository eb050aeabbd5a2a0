package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// Sizes of the load TestNATSClusterNodeLoss forwards: small studies, so
// the test is about NATS, not bandwidth.
const (
	clusterInstancesPerStudy = 5
	clusterBeforeKill        = 12 // posted before the kill
	clusterDuringOutage      = 12 // posted while the node is down
	clusterAfterRejoin       = 4  // posted after it is back
)

// TestNATSClusterNodeLoss runs the real ingest and two real forwarders on
// a 3-node JetStream cluster (NATS_URL lists all three, NATS_REPLICAS=3)
// and kills, as a crash would, the node leading the event stream and the
// consumer in the middle of a forwarding load: once the other two have
// elected new leaders the webhook stores events again (202), the
// forwarders keep forwarding, no event is lost, and the node rejoins and
// catches up after its restart. docs/nats-cluster.md describes it.
func TestNATSClusterNodeLoss(t *testing.T) {
	start := time.Now()
	testharness.RequireBinary(t, "Orthanc")
	testharness.RequireBinary(t, "storescu")
	cluster, nc, js, r := clusterRig(t)
	load := newClusterLoad(t, r, clusterBeforeKill+clusterDuringOutage+clusterAfterRejoin)
	t.Logf("setup (cluster, Orthancs, %d studies) took %s", len(load.studies), time.Since(start).Round(time.Millisecond))

	// The services, as a deployment on a cluster configures them.
	common := map[string]string{"NATS_URL": cluster.URLs(), "NATS_REPLICAS": "3", "LOG_LEVEL": "debug"}
	ingestAddr := testharness.FreeAddr(t)
	ingestEnv := map[string]string{
		"INGEST_ADDR":            ingestAddr,
		"INGEST_TOKEN":           "ingest-token-0123456789",
		"INGEST_PUBLISH_TIMEOUT": "5s",
		// Every event goes through the webhook: a lost one would not be
		// made up for by the reconciler, so the test sees it.
		"RECONCILE_ENABLED": "false",
	}
	for k, v := range common {
		ingestEnv[k] = v
	}
	// All three start at once, as in a rollout: they race to create the
	// R3 streams, consumer and buckets.
	testharness.StartProgram(t, "ingest", clusterIngestRun, ingestEnv)
	ready := []string{"http://" + ingestAddr + "/readyz"}
	for i := range 2 {
		addr := testharness.FreeAddr(t)
		env := r.env(common)
		env["FORWARDER_ADDR"] = addr
		env["FORWARDER_CONCURRENCY"] = "2"
		env["FORWARDER_ACK_WAIT"] = "5s"
		testharness.StartProgram(t, "forwarder-"+strconv.Itoa(i+1), run, env)
		ready = append(ready, "http://"+addr+"/readyz")
	}
	for _, u := range ready {
		testharness.WaitHTTP(t, u, 60*time.Second)
	}
	load.webhook, load.token = "http://"+ingestAddr+web.WebhookPath, ingestEnv["INGEST_TOKEN"]
	t.Logf("services ready after %s", time.Since(start).Round(time.Millisecond))
	assertReplicated(t, js, 3)

	// The worst node to lose is the one most services are connected to;
	// make it lead the event stream and the consumer as well.
	worst := cluster.Nodes[0]
	for _, n := range cluster.Nodes {
		if n.ClientsNamed("stowline") > worst.ClientsNamed("stowline") {
			worst = n
		}
	}
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, "", worst.Name)
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, natsjs.ForwarderConsumer, worst.Name)

	// A slow link keeps studies in flight when the node goes: each request
	// is throttled on its own and a study's instances go in parallel, so
	// only a very slow one makes the rest of the load outlast a loaded
	// host's delay before the kill. At 64 KB/s the nine studies after the
	// first three took about 1.5 s (a 1.5 s pause before the kill found all
	// twelve forwarded), at 8 KB/s under 4 s; at 2 KB/s a 4 s pause found 5.
	r.proxy.Throttle(2 << 10)
	load.post(t, 0, clusterBeforeKill)
	load.waitComplete(t, 3, 30*time.Second)

	// Lose the node leading the event stream, in the middle of the load.
	info := eventStreamInfo(t, js)
	victim := cluster.Node(info.Cluster.Leader)
	if victim == nil {
		t.Fatalf("event stream leader %q is not a node of the cluster", info.Cluster.Leader)
	}
	consumerLeader, _ := testnats.Leader(js, natsjs.EventStream, natsjs.ForwarderConsumer)
	clients := victim.ClientsNamed("stowline")
	victim.Kill()
	killedAt := time.Now()
	doneAtKill := load.completed()
	// The studies in flight keep the slow link; the ones after them
	// need not wait that long.
	r.proxy.Throttle(64 << 10)
	t.Logf("killed %s (event stream leader; consumer leader %s; %d of 3 services connected to it) with %d of %d studies forwarded",
		victim.Name, consumerLeader, clients, doneAtKill, clusterBeforeKill)
	// Only a host paused for seconds before the kill gets here: the
	// outage is still tested with the studies posted during it, not
	// with studies in flight, and a failure would block landing for the
	// host's sake. Every run logging it means the link is too fast.
	if doneAtKill >= clusterBeforeKill {
		t.Logf("all %d studies were forwarded before the node went down: no study was in flight at the kill (if every run says so, slow the link)", doneAtKill)
	}

	// Two nodes of three: the webhook keeps storing events and the
	// forwarders keep forwarding, old events and new.
	load.post(t, clusterBeforeKill, clusterBeforeKill+clusterDuringOutage)
	load.waitComplete(t, clusterBeforeKill+clusterDuringOutage, 40*time.Second)
	t.Logf("with %s down for %s: %d studies forwarded, the webhook answered 503 %d times (retried)",
		victim.Name, time.Since(killedAt).Round(time.Millisecond), load.completed()-doneAtKill, load.unavailable)

	// The node comes back on its store and catches up.
	victim.Restart(t)
	restartedAt := time.Now()
	waitReplicasCurrent(t, js, 3, 30*time.Second)
	cluster.WaitHealthy(t, 30*time.Second)
	t.Logf("%s rejoined, all replicas current, after %s", victim.Name, time.Since(restartedAt).Round(time.Millisecond))

	// And the deployment goes on with three nodes.
	r.proxy.Throttle(0)
	load.post(t, clusterBeforeKill+clusterDuringOutage, len(load.studies))
	load.waitComplete(t, len(load.studies), 30*time.Second)
	r.waitQueueEmpty(t, 30*time.Second)

	// No event lost: every instance of every study, byte for byte.
	var stats struct{ CountStudies, CountInstances int }
	r.dest.GetJSON(t, "/statistics", &stats)
	if stats.CountStudies != len(load.studies) || stats.CountInstances != len(load.studies)*clusterInstancesPerStudy {
		t.Errorf("destination holds %d studies, %d instances; want %d, %d",
			stats.CountStudies, stats.CountInstances, len(load.studies), len(load.studies)*clusterInstancesPerStudy)
	}
	r.assertIdentical(t)
	resent := 0
	for _, n := range r.proxy.Sends() {
		if n > 1 {
			resent++
		}
	}
	t.Logf("%d instances reached the destination more than once (a lost ack redelivers the study)", resent)
	if info := eventStreamInfo(t, js); info.State.Msgs != uint64(len(load.studies)) {
		t.Errorf("event stream holds %d events, want %d (one per study)", info.State.Msgs, len(load.studies))
	}
	logStreamSizes(t, js) // the sizes docs/nats-cluster.md quotes
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// clusterIngestRun is what cmd/ingest's run does.
func clusterIngestRun(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	return app.Main[config.IngestService](ctx, "ingest", args, getenv, environ, stdout, stderr, app.RunIngest)
}

// clusterLoad is a set of studies in the source and their webhook events.
type clusterLoad struct {
	r       *rig
	studies []clusterStudy
	webhook string
	token   string
	// unavailable counts webhook answers 503 (JetStream did not ack): the
	// test retries them, as the reconciler would make up for them.
	unavailable int
}

type clusterStudy struct {
	event events.StudyStable
	sops  []string
}

// newClusterLoad stores n generated studies in the source with one
// storescu run and reads their Orthanc IDs.
func newClusterLoad(t *testing.T, r *rig, n int) *clusterLoad {
	t.Helper()
	dir := t.TempDir()
	byUID := map[string]*clusterStudy{}
	var uids []string
	for i := range n {
		uid := dicomgen.NewUID()
		files, err := dicomgen.WriteStudy(filepath.Join(dir, strconv.Itoa(i)), dicomgen.StudySpec{
			StudyInstanceUID: uid, PatientID: "CLUSTER-TEST", PatientName: "Synthetic^Cluster",
			Series: 1, InstancesPerSeries: clusterInstancesPerStudy, Rows: 64, Columns: 64,
		})
		if err != nil {
			t.Fatal(err)
		}
		s := &clusterStudy{}
		for _, f := range files {
			fi, err := testharness.ReadFileInfo(f)
			if err != nil {
				t.Fatal(err)
			}
			s.sops = append(s.sops, fi.SOPInstanceUID)
		}
		byUID[uid] = s
		uids = append(uids, uid)
	}
	if res := r.src.StoreSCU(t, dir); len(res.Failed) > 0 {
		t.Fatalf("storescu refused %d generated files", len(res.Failed))
	}
	var listed []struct {
		ID            string
		LastUpdate    string
		MainDicomTags map[string]string
	}
	r.src.GetJSON(t, "/studies?expand", &listed)
	for _, l := range listed {
		if s := byUID[l.MainDicomTags["StudyInstanceUID"]]; s != nil {
			s.event = events.StudyStable{
				Type: events.TypeStudyStable, Version: events.Version, Source: "src",
				OrthancStudyID: l.ID, StudyInstanceUID: l.MainDicomTags["StudyInstanceUID"], LastUpdate: l.LastUpdate,
			}
		}
	}
	load := &clusterLoad{r: r}
	for _, uid := range uids {
		if byUID[uid].event.OrthancStudyID == "" {
			t.Fatalf("generated study %s is not in the source", uid)
		}
		load.studies = append(load.studies, *byUID[uid])
	}
	return load
}

// post sends the webhook events of studies [from, to), as Orthanc's Lua
// script would, retrying a 503 (counted in unavailable) for up to 30 s.
func (l *clusterLoad) post(t *testing.T, from, to int) {
	t.Helper()
	for _, s := range l.studies[from:to] {
		body, err := json.Marshal(&s.event)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, msg := l.postOnce(t, body)
			if code == http.StatusAccepted {
				break
			}
			if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
				t.Fatalf("webhook for study %s answered %d: %s", s.event.OrthancStudyID, code, msg)
			}
			l.unavailable++
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (l *clusterLoad) postOnce(t *testing.T, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, l.webhook, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("webhook: %v", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(msg)
}

// completed counts the studies whose every instance reached the
// destination (the proxy read it from the destination's STOW answers).
func (l *clusterLoad) completed() int {
	sends := l.r.proxy.Sends()
	n := 0
	for _, s := range l.studies {
		all := true
		for _, sop := range s.sops {
			if sends[sop] == 0 {
				all = false
				break
			}
		}
		if all {
			n++
		}
	}
	return n
}

func (l *clusterLoad) waitComplete(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := l.completed()
		if done >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d studies forwarded after %s, want %d", done, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func eventStreamInfo(t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		var s jetstream.Stream
		if s, err = js.Stream(ctx, natsjs.EventStream); err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
				return info
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("stream info %s: %v (or no leader)", natsjs.EventStream, err)
	return nil
}

// logStreamSizes logs the bytes per message of each stream, for sizing.
func logStreamSizes(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if n := info.State.Msgs; n > 0 {
			t.Logf("stream %s: %d messages, %d bytes (%d a message) on each of %d replicas",
				info.Config.Name, n, info.State.Bytes, info.State.Bytes/n, info.Config.Replicas)
		}
	}
}

// assertReplicated checks that every stream and KV bucket the services
// created, and the forwarders' consumer, has the configured replicas.
func assertReplicated(t *testing.T, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var names []string
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		names = append(names, info.Config.Name)
		if info.Config.Replicas != replicas {
			t.Errorf("stream %s has %d replicas, want %d", info.Config.Name, info.Config.Replicas, replicas)
		}
		if info.Cluster == nil || len(info.Cluster.Replicas) != replicas-1 {
			t.Errorf("stream %s: cluster %+v, want a leader and %d followers", info.Config.Name, info.Cluster, replicas-1)
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	t.Logf("streams: %s", strings.Join(names, ", "))
	for _, want := range []string{natsjs.EventStream, "STOWLINE_DEADLETTER", "KV_stowline_failures", "KV_stowline_forwarded", "KV_stowline_forwarders"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("stream %s was not created", want)
		}
	}
	c, err := js.Consumer(ctx, natsjs.EventStream, natsjs.ForwarderConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.Replicas; got != replicas {
		t.Errorf("consumer %s has %d replicas, want %d", natsjs.ForwarderConsumer, got, replicas)
	}
}

// waitReplicasCurrent waits until the event stream and the forwarders'
// consumer have a leader and every follower is online and current.
func waitReplicasCurrent(t *testing.T, js jetstream.JetStream, replicas int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := replicasCurrent(js, replicas)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas not current after %s: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func replicasCurrent(js jetstream.JetStream, replicas int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		return err
	}
	si, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if err := clusterCurrent("stream "+natsjs.EventStream, si.Cluster, replicas); err != nil {
		return err
	}
	c, err := s.Consumer(ctx, natsjs.ForwarderConsumer)
	if err != nil {
		return err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return err
	}
	return clusterCurrent("consumer "+natsjs.ForwarderConsumer, ci.Cluster, replicas)
}

func clusterCurrent(what string, c *jetstream.ClusterInfo, replicas int) error {
	if c == nil || c.Leader == "" {
		return fmt.Errorf("%s has no leader", what)
	}
	if len(c.Replicas) != replicas-1 {
		return fmt.Errorf("%s: %d followers, want %d", what, len(c.Replicas), replicas-1)
	}
	for _, p := range c.Replicas {
		if !p.Current || p.Offline {
			return fmt.Errorf("%s: replica %s current=%t offline=%t lag=%d", what, p.Name, p.Current, p.Offline, p.Lag)
		}
	}
	return nil
}

// TestForwarderNotReadyWhileItsQueueHasNoLeader: the node leading the
// forwarders' consumer crashes while the event stream's leader, and the
// node the forwarder is connected to, stay up. Until the other two elect
// a new consumer leader the forwarder can pull nothing, and its /readyz
// says so (destination_queue); it is ready again by itself once they
// have. Its readiness read only the stream, and ignored every failure to
// read a consumer but "not found": it stayed ready throughout.
func TestForwarderNotReadyWhileItsQueueHasNoLeader(t *testing.T) {
	testharness.RequireBinary(t, "Orthanc")
	cluster, nc, js, r := clusterRig(t)
	home, lost := cluster.Nodes[0], cluster.Nodes[1]
	addr := testharness.FreeAddr(t)
	testharness.StartProgram(t, "forwarder", run, r.env(map[string]string{
		"NATS_URL": home.ClientURL(), "NATS_REPLICAS": "3", "FORWARDER_ADDR": addr,
	}))
	readyz := "http://" + addr + "/readyz"
	testharness.WaitHTTP(t, readyz, 60*time.Second)
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, "", home.Name)
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, natsjs.ForwarderConsumer, lost.Name)

	lost.Kill()
	killed := time.Now()
	body := waitReadyz(t, readyz, http.StatusServiceUnavailable, 20*time.Second)
	if !strings.Contains(body, `"destination_queue"`) || !strings.Contains(body, natsjs.ForwarderConsumer) {
		t.Errorf("/readyz while the consumer has no leader: %s; want destination_queue naming %s", body, natsjs.ForwarderConsumer)
	}
	t.Logf("not ready %s after the kill: %s", time.Since(killed).Round(time.Millisecond), strings.TrimSpace(body))
	waitReadyz(t, readyz, http.StatusOK, 30*time.Second)
	t.Logf("ready again %s after the kill", time.Since(killed).Round(time.Millisecond))
}

// waitReadyz waits until /readyz answers status and returns its body.
func waitReadyz(t *testing.T, url string, status int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == status {
				return string(body)
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz answered %d %s for %s, want %d", resp.StatusCode, body, timeout, status)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("/readyz: %v for %s, want %d", err, timeout, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCompletedForwardRecordedThroughLedgerElection: the node leading the
// ledger's bucket crashes while a study is at the destination (the event
// stream and the consumer are led elsewhere, so the ack goes through).
// The forwarder records the completed forward once the other two have
// elected a new leader. Its three tries 1.5 s apart all fell within the
// election (4 to 9 s), and the study stayed missing for the audit (and,
// in buffer mode with several destinations, in the source).
func TestCompletedForwardRecordedThroughLedgerElection(t *testing.T) {
	r, lost, p, js, kv := bucketElection(t, natsjs.LedgerBucket)
	l := ledger.New(js, kv)
	ev := r.sendWhileLeaderDies(t, r.addStudy(t, 1, 64), lost)
	r.waitDest(t, 1, 30*time.Second)
	waitWritten(t, p, "study forwarded but not recorded as completed", "the completed forward", func(ctx context.Context) (bool, error) {
		rec, err := l.Lookup(ctx, ev.Source, ev.OrthancStudyID)
		return err == nil && rec.LastUpdate == ev.LastUpdate, err
	})
}

// TestStoredInstancesRememberedThroughElection: the node leading the
// failure log's bucket crashes while a study is at the destination (the
// event stream and the consumer are led elsewhere). The forwarder still
// records what the delivery stored once the others have elected a new
// leader: a later delivery of the study (its ack lost, or the study grown
// by an instance) takes the destination's "already exists" for those
// instances as its own copies. One try, lost to the election, left them
// to be counted as conflicts (skip) or the study dead-lettered
// (STOW_ON_CONFLICT=deadletter).
func TestStoredInstancesRememberedThroughElection(t *testing.T) {
	r, lost, p, _, kv := bucketElection(t, natsjs.FailureBucket)
	failures := deadletter.NewFailureLog(kv, natsjs.DefaultDestination)
	study := r.addStudy(t, 2, 64)
	ev := r.sendWhileLeaderDies(t, study, lost)
	ids := r.sentIDs(t, ev)
	r.waitDest(t, 2, 30*time.Second)
	waitWritten(t, p, "remember what the attempt stored", "what the delivery stored", func(ctx context.Context) (bool, error) {
		sent, err := failures.Sent(ctx, ev)
		return err == nil && len(ids) == 2 && sent(ids[0]) && sent(ids[1]), err
	})
}

// waitWritten polls written (up to 90 s) until the record a forwarder
// writes through a bucket's election is there; it fails the test if the
// forwarder logs gaveUp, having given the write up.
func waitWritten(t *testing.T, p *testharness.Program, gaveUp, what string, written func(context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for {
		ok, err := written(ctx)
		if ok {
			return
		}
		if strings.Contains(p.Logs.String(), gaveUp) {
			t.Fatalf("%s was given up during the bucket's election: %v", what, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s is not in the bucket: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bucketElection runs a forwarder on a 3-node cluster, connected to the
// node leading the event stream and its consumer (so acks go through),
// with bucket's stream led by another node, lost, for the test to kill.
// kv is the bucket, opened while it has a leader, js the test's
// JetStream on the cluster.
func bucketElection(t *testing.T, bucket string) (r *rig, lost *testnats.Node, p *testharness.Program, js jetstream.JetStream, kv jetstream.KeyValue) {
	t.Helper()
	testharness.RequireBinary(t, "Orthanc")
	testharness.RequireBinary(t, "storescu")
	cluster, nc, js, r := clusterRig(t)
	home, lost := cluster.Nodes[0], cluster.Nodes[1]
	addr := testharness.FreeAddr(t)
	p = testharness.StartProgram(t, "forwarder", run, r.env(map[string]string{
		"NATS_URL": home.ClientURL(), "NATS_REPLICAS": "3", "FORWARDER_ADDR": addr,
	}))
	testharness.WaitHTTP(t, "http://"+addr+"/readyz", 60*time.Second)
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, "", home.Name)
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, natsjs.ForwarderConsumer, home.Name)
	cluster.MoveLeader(t, js, nc, "KV_"+bucket, "", lost.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	return r, lost, p, js, kv
}

// sendWhileLeaderDies queues study and kills lost while the destination
// holds its upload, then lets the upload finish.
func (r *rig) sendWhileLeaderDies(t *testing.T, study string, lost *testnats.Node) *events.StudyStable {
	t.Helper()
	r.proxy.Hang()
	ev := r.publish(t, study)
	for deadline := time.Now().Add(30 * time.Second); r.proxy.Held() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the study never reached the destination")
		}
	}
	lost.Kill()
	r.proxy.Release()
	return ev
}

// clusterRig starts a 3-node NATS cluster, connected to, and a rig of a
// source Orthanc and a destination Orthanc behind the fault proxy.
func clusterRig(t *testing.T) (*testnats.Cluster, *nats.Conn, jetstream.JetStream, *rig) {
	t.Helper()
	cluster := testnats.StartCluster(t, 3)
	nc, js := cluster.Connect(t)
	r := &rig{js: js}
	r.dest = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest", DicomWeb: true})
	r.proxy = faultproxy.Start(t, r.dest.URL)
	r.src = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "src"})
	return cluster, nc, js, r
}
