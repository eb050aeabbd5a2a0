package natsjs_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// Replicas of the ingest and the forwarder starting at the same moment on
// a fresh 3-node cluster (a compose or Kubernetes rollout) all create the
// R3 streams, consumer and buckets at once: every one of them comes up.
// Without provisioningJS, nats-server leaves some of the racing requests
// unanswered and those services fail at startup.
func TestClusterConcurrentProvisioning(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	topo := natsjs.DefaultTopology()
	topo.Replicas = 3
	topo.Retention = time.Hour
	topo.DedupeWindow = time.Minute
	topo.AckWait = 5 * time.Second
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const replicas = 4
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			began := time.Now()
			conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: cluster.URLs()}, log)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			defer conn.Close()
			for _, step := range provisionSteps(ctx, topo, conn.JS) {
				if err := step(); err != nil {
					t.Errorf("replica %d: %v", i, err)
					return
				}
			}
			t.Logf("replica %d provisioned in %s", i, time.Since(began).Round(time.Millisecond))
		})
	}
	close(start)
	wg.Wait()
}

// provisionSteps are what the ingest and a forwarder of destination
// default create at startup.
func provisionSteps(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) []func() error {
	return []func() error{
		func() error { _, err := topo.EnsureEvents(ctx, js); return err },
		func() error { _, err := topo.EnsureConsumer(ctx, js, natsjs.DefaultDestination); return err },
		func() error { _, err := topo.EnsureDeadLetters(ctx, js); return err },
		func() error { _, err := topo.EnsureFailureLog(ctx, js); return err },
		func() error { _, err := topo.EnsureLedger(ctx, js, natsjs.DefaultDestination); return err },
		func() error { _, err := topo.EnsureStatus(ctx, js); return err },
		func() error { _, err := topo.EnsureReconcile(ctx, js); return err },
	}
}

// provisionAll makes what the ingest and a forwarder of destination
// default make at startup, and returns the names of the streams,
// key-value buckets' streams and consumers, with their replica counts.
func provisionAll(ctx context.Context, t *testing.T, topo natsjs.Topology, js jetstream.JetStream) map[string]int {
	t.Helper()
	for _, step := range provisionSteps(ctx, topo, js) {
		if err := step(); err != nil {
			t.Fatalf("NATS_REPLICAS=%d: %v", topo.Replicas, err)
		}
	}
	replicas := map[string]int{}
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		replicas[info.Config.Name] = info.Config.Replicas
	}
	if err := streams.Err(); err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	consumers := events.ListConsumers(ctx)
	for info := range consumers.Info() {
		replicas["consumer "+info.Name] = info.Config.Replicas
	}
	if err := consumers.Err(); err != nil {
		t.Fatal(err)
	}
	if len(replicas) < 9 {
		t.Fatalf("provisioned %v, want 2 streams, 4 buckets, 3 consumers", replicas)
	}
	return replicas
}

// NATS_REPLICAS raised on a running cluster scales everything up at the
// next start; a process started without it (a forwarder group added
// later, a copied environment) leaves the replicas as they are, and says
// so, rather than scaling every stream of the cluster down to one copy.
func TestClusterReplicasRaisedNeverLowered(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	_, js := cluster.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	topo := natsjs.DefaultTopology()
	topo.Retention = time.Hour
	topo.DedupeWindow = time.Minute
	for name, n := range provisionAll(ctx, t, topo, js) {
		if n != 1 {
			t.Errorf("%s: %d replicas, want 1", name, n)
		}
	}
	topo.Replicas = 3
	for name, n := range provisionAll(ctx, t, topo, js) {
		if n != 3 {
			t.Errorf("after raising NATS_REPLICAS to 3, %s: %d replicas, want 3", name, n)
		}
	}
	var logs bytes.Buffer
	topo.Replicas = 1
	topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
	got := provisionAll(ctx, t, topo, js)
	for name, n := range got {
		if n != 3 {
			t.Errorf("a process with NATS_REPLICAS=1 scaled %s down to %d replicas", name, n)
		}
		key := strings.TrimPrefix(strings.TrimPrefix(name, "consumer "), "KV_")
		if !strings.Contains(logs.String(), `"name":"`+key+`"`) {
			t.Errorf("no warning names %s:\n%s", key, logs.String())
		}
	}
	// A destination it adds gets consumers with the stream's replicas.
	ai, err := topo.EnsureLanes(ctx, js, []string{natsjs.DefaultDestination, "ai"})
	if err != nil {
		t.Fatal(err)
	}
	for lane, c := range ai["ai"] {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != 3 {
			t.Errorf("lane %s of a destination added by a process with NATS_REPLICAS=1: %d replicas, want the stream's 3", lane, info.Config.Replicas)
		}
		got[info.Name] = 3
	}
	if c := strings.Count(logs.String(), `"level":"WARN"`); c != len(got)+len(ai[natsjs.DefaultDestination]) {
		t.Errorf("%d warnings for %d kept, want one each:\n%s", c, len(got), logs.String())
	}
}

// countingJS counts the create-or-update requests for streams and for
// key-value buckets (a bucket's update is one of its stream, KV_<bucket>).
type countingJS struct {
	jetstream.JetStream
	updates, kvUpdates int
}

func (c *countingJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	c.kvUpdates++
	return c.JetStream.CreateKeyValue(ctx, cfg)
}

func (c *countingJS) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if strings.HasPrefix(cfg.Name, "KV_") {
		c.kvUpdates++
	} else {
		c.updates++
	}
	return c.JetStream.UpdateStream(ctx, cfg)
}

func (c *countingJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	c.updates++
	return c.JetStream.CreateOrUpdateStream(ctx, cfg)
}

// A start that finds the event stream as it wants it leaves it alone (a
// stream update races a consumer being made on it in nats-server); a
// changed setting is applied.
func TestEnsureEventsLeavesAnUnchangedStream(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	c := &countingJS{JetStream: js}
	topo := natsjs.DefaultTopology()
	for range 2 {
		if _, err := topo.EnsureEvents(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if c.updates != 1 {
		t.Errorf("%d create-or-update requests for two starts, want 1", c.updates)
	}
	topo.Retention = 48 * time.Hour
	var logs bytes.Buffer
	topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
	s, err := topo.EnsureEvents(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if c.updates != 2 || s.CachedInfo().Config.MaxAge != 48*time.Hour {
		t.Errorf("after a change: %d requests, MaxAge %s; want 2, 48h", c.updates, s.CachedInfo().Config.MaxAge)
	}
	if !strings.Contains(logs.String(), `"stream":"STOWLINE_EVENTS","max_age":"168h0m0s -> 48h0m0s"`) {
		t.Errorf("the change is not logged with what it was:\n%s", logs.String())
	}
}

// So does a start that finds its key-value buckets as it wants them.
func TestEnsureBucketsLeaveUnchangedOnes(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	c := &countingJS{JetStream: js}
	topo := natsjs.DefaultTopology()
	for range 2 {
		if _, err := topo.EnsureLedger(ctx, c, "archive"); err != nil {
			t.Fatal(err)
		}
		if _, err := topo.EnsureStatus(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if c.kvUpdates != 2 {
		t.Errorf("%d create-or-update requests for two starts with two buckets, want 2", c.kvUpdates)
	}
	topo.StatusTTL = 3 * topo.StatusTTL
	kv, err := topo.EnsureStatus(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.kvUpdates != 3 || st.TTL() != topo.StatusTTL {
		t.Errorf("after a change: %d requests, TTL %s; want 3, %s", c.kvUpdates, st.TTL(), topo.StatusTTL)
	}
}

// TestStatusBucketTTLLoweredBelowItsDuplicateWindow: a status bucket
// found with a TTL longer than the 2-minute duplicate window nats.go
// gives a bucket's stream (made by hand with another TTL) is taken to
// the 30 s TTL with its window cut to it: JetStream refuses a window
// longer than the stream's MaxAge, and the start would fail on it.
func TestStatusBucketTTLLoweredBelowItsDuplicateWindow(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: natsjs.StatusBucket, History: 1, TTL: 5 * time.Minute,
		Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	topo := natsjs.DefaultTopology()
	kv, err := topo.EnsureStatus(ctx, js)
	if err != nil {
		t.Fatalf("a start with the status bucket's TTL at 5m: %v", err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != topo.StatusTTL {
		t.Errorf("status bucket TTL %s after a start, want %s", st.TTL(), topo.StatusTTL)
	}
}

// TestStatusBucketWithoutMemoryStorage: the status bucket is kept in
// memory, and an account whose JetStream memory limit is 0 (disk only,
// legitimate) refused it: every forwarder failed to start. It is made on
// file instead, with a warning, kept there at the next start without
// one, and takes writes.
func TestStatusBucketWithoutMemoryStorage(t *testing.T) {
	for _, tt := range []struct {
		name    string
		limits  string
		storage jetstream.StorageType
		warned  bool
	}{
		{"memory allowed", "max_mem: 1M, max_file: 1G", jetstream.MemoryStorage, false},
		{"no memory (max_mem 0)", "max_mem: 0, max_file: 1G", jetstream.FileStorage, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			js := testnats.StartWith(t, testnats.AccountLimits(t, tt.limits)).JS
			ctx := testCtx(t)
			for start := range 2 {
				var logs bytes.Buffer
				topo := natsjs.DefaultTopology()
				topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
				kv, err := topo.EnsureStatus(ctx, js)
				if err != nil {
					t.Fatalf("start %d: %v", start+1, err)
				}
				st, err := kv.Status(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got := st.(*jetstream.KeyValueBucketStatus).Config().Storage; got != tt.storage {
					t.Errorf("start %d: bucket in %s storage, want %s", start+1, got, tt.storage)
				}
				warned := strings.Contains(logs.String(), `"level":"WARN"`) && strings.Contains(logs.String(), "made it on file storage")
				if want := tt.warned && start == 0; warned != want {
					t.Errorf("start %d: warned %v, want %v:\n%s", start+1, warned, want, logs.String())
				}
				if _, err := kv.Put(ctx, "forwarder", []byte(`{}`)); err != nil {
					t.Errorf("start %d: put: %v", start+1, err)
				}
			}
		})
	}
}

// TestStatusBucketFileOnlyWhenCreateRefusesMemory: the fallback to file
// storage is for a bucket JetStream refuses to create in memory (10028)
// only. It also took an existing memory bucket's refused update (a
// cluster refuses a scale-up to 3 replicas with 10023 for its
// max_ha_assets): a false warning, a retry on file refused as "made by
// hand" with advice to delete the bucket, and JetStream's own error
// lost. A server does not refuse on demand: refusingMemory refuses the
// memory bucket's create or update, over a real server.
func TestStatusBucketFileOnlyWhenCreateRefusesMemory(t *testing.T) {
	const (
		memory       = 10028                     // insufficient memory resources available
		insufficient = 10023                     // insufficient resources (max_ha_assets)
		none         = jetstream.StorageType(-1) // no bucket
	)
	for _, tt := range []struct {
		name    string
		exists  bool                  // in memory, made by an earlier start
		code    uint16                // of the refusal
		err     string                // "": made on file, with a warning
		storage jetstream.StorageType // of the bucket after the start
	}{
		{"create refused memory", false, memory, "", jetstream.FileStorage},
		{"create refused otherwise", false, insufficient, "insufficient resources", none},
		{"scale-up refused", true, insufficient, "insufficient resources", jetstream.MemoryStorage},
		{"update refused memory", true, memory, "insufficient memory resources", jetstream.MemoryStorage},
	} {
		t.Run(tt.name, func(t *testing.T) {
			js := testnats.Start(t).JS
			ctx := testCtx(t)
			topo := natsjs.DefaultTopology()
			if tt.exists {
				if _, err := topo.EnsureStatus(ctx, js); err != nil {
					t.Fatal(err)
				}
				topo.Replicas = 3
			}
			var logs bytes.Buffer
			topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			_, err := topo.EnsureStatus(ctx, refusingMemory{JetStream: js, code: tt.code})
			switch {
			case tt.err == "" && err != nil:
				t.Fatal(err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err) || strings.Contains(err.Error(), "made by hand")):
				t.Fatalf("start: %v; want JetStream's refusal (%q)", err, tt.err)
			}
			if warned := strings.Contains(logs.String(), "made it on file storage"); warned != (tt.err == "") {
				t.Errorf("warned of file storage %v, want %v:\n%s", warned, tt.err == "", logs.String())
			}
			kv, err := js.KeyValue(ctx, natsjs.StatusBucket)
			if tt.storage == none {
				if err == nil {
					t.Errorf("bucket made, want none")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := kv.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.(*jetstream.KeyValueBucketStatus).Config().Storage; got != tt.storage {
				t.Errorf("bucket in %s storage, want %s", got, tt.storage)
			}
		})
	}
}

// refusingMemory is the JetStream of a server that refuses to create or
// update a bucket in memory storage with err_code code.
type refusingMemory struct {
	jetstream.JetStream
	code uint16
}

func (r refusingMemory) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Storage == jetstream.MemoryStorage {
		return nil, r.refusal()
	}
	return r.JetStream.CreateKeyValue(ctx, cfg)
}

func (r refusingMemory) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Storage == jetstream.MemoryStorage && strings.HasPrefix(cfg.Name, "KV_") {
		return nil, r.refusal()
	}
	return r.JetStream.UpdateStream(ctx, cfg)
}

func (r refusingMemory) refusal() error {
	return &jetstream.APIError{Code: 500, ErrorCode: jetstream.ErrorCode(r.code), Description: map[uint16]string{10023: "insufficient resources", 10028: "insufficient memory resources available"}[r.code]}
}

// A process on a cluster that lost two of its three servers is not
// ready, and /readyz says the event stream has no leader: the surviving
// server answers the stream's info itself, without a leader, while every
// write fails, and the check passed. Ready again by itself once a second
// server is back.
func TestNotReadyWithoutQuorum(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	c := replicatedEvents(t, cluster.Nodes[0])
	cluster.Nodes[1].Kill()
	cluster.Nodes[2].Kill()
	// Wait until the survivor answers the stream's info with no leader.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if leader, err := testnats.Leader(c.JS, natsjs.EventStream, ""); err == nil && leader == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream's info never answered without a leader")
		}
	}
	if _, err := c.JS.Publish(testCtx(t), natsjs.EventSubjectPrefix+"a", []byte("x")); err == nil {
		t.Fatal("a publish without quorum was stored")
	}
	rctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	if err := c.Ready(rctx); err == nil || !strings.Contains(err.Error(), "has no leader") {
		t.Errorf("Ready without quorum: %v; want the stream has no leader", err)
	}
	cluster.Nodes[1].Restart(t)
	waitReady(t, c, "a second server came back")
}

// A process whose event stream's leader crashed is not ready until the
// others elect a new one, and /readyz says why the read timed out rather
// than only "context deadline exceeded".
func TestNotReadyWhileStreamLeaderIsElected(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	nc, js := cluster.Connect(t)
	lost := cluster.Nodes[1]
	c := replicatedEvents(t, cluster.Nodes[0])
	cluster.MoveLeader(t, js, nc, natsjs.EventStream, "", lost.Name)
	lost.Kill()
	// The others notice a crashed leader after their election time-out
	// (at least 4 s): until then, reads of the stream go unanswered.
	rctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
	defer cancel()
	if err := c.Ready(rctx); err == nil || !strings.Contains(err.Error(), "did not answer in time") {
		t.Errorf("Ready just after the stream leader crashed: %v; want it did not answer in time", err)
	}
	waitReady(t, c, "the stream leader crashed")
}

// waitReady waits up to 60 s for c to be ready after what happened.
func waitReady(t *testing.T, c *natsjs.Conn, after string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		rctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
		err := c.Ready(rctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready 60 s after %s: %v", after, err)
		}
	}
}

// replicatedEvents connects to home and makes the event stream with three
// replicas.
func replicatedEvents(t *testing.T, home *testnats.Node) *natsjs.Conn {
	t.Helper()
	topo := natsjs.DefaultTopology()
	topo.Replicas = 3
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: home.ClientURL()}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := topo.EnsureEvents(testCtx(t), c.JS); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStorageMadeOtherwiseIsNamed: a stream or bucket made by hand with
// what JetStream cannot change in place (memory storage, a work-queue
// retention) stops the start with an error that names it and says how to
// get out; nats-server's own ("stream configuration update can not change
// storage type") named neither. The stream is left as it is.
func TestStorageMadeOtherwiseIsNamed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		make   func(context.Context, jetstream.JetStream) error
		ensure func(context.Context, natsjs.Topology, jetstream.JetStream) error
		want   []string
	}{
		{"event stream in memory", func(ctx context.Context, js jetstream.JetStream) error {
			cfg := natsjs.DefaultTopology().EventStreamConfig()
			cfg.Storage = jetstream.MemoryStorage
			_, err := js.CreateStream(ctx, cfg)
			return err
		}, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureEvents(ctx, js)
			return err
		}, []string{"STOWLINE_EVENTS", "Memory storage", "let every queue empty", "nats stream rm STOWLINE_EVENTS"}},
		{"event stream as a work queue", func(ctx context.Context, js jetstream.JetStream) error {
			cfg := natsjs.DefaultTopology().EventStreamConfig()
			cfg.Retention = jetstream.WorkQueuePolicy
			_, err := js.CreateStream(ctx, cfg)
			return err
		}, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureEvents(ctx, js)
			return err
		}, []string{"STOWLINE_EVENTS", "WorkQueue retention policy", "nats stream rm STOWLINE_EVENTS"}},
		{"ledger in memory", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: natsjs.LedgerBucket, Storage: jetstream.MemoryStorage})
			return err
		}, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureLedger(ctx, js, natsjs.DefaultDestination)
			return err
		}, []string{"key-value bucket " + natsjs.LedgerBucket, "Memory storage", "it records what was forwarded", "nats kv del " + natsjs.LedgerBucket}},
		{"dead letters in memory", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: natsjs.DeadLetterStream, Subjects: []string{natsjs.DeadLetterSubjectPrefix + ">"}, Storage: jetstream.MemoryStorage})
			return err
		}, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureDeadLetters(ctx, js)
			return err
		}, []string{"stream " + natsjs.DeadLetterStream, "Memory storage", "replay or purge its dead letters", "nats stream rm " + natsjs.DeadLetterStream}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
			ctx := testCtx(t)
			if err := tc.make(ctx, js); err != nil {
				t.Fatal(err)
			}
			err := tc.ensure(ctx, natsjs.DefaultTopology(), js)
			if err == nil {
				t.Fatal("ensured without an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
