package natsjs_test

import (
	"context"
	"io"
	"log/slog"
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
			conn, err := natsjs.Connect(natsjs.ConnectOptions{URL: cluster.URLs()}, log)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			defer conn.Close()
			// What the ingest and the forwarder create at startup.
			js := conn.JS
			steps := []func() error{
				func() error { _, err := topo.EnsureEvents(ctx, js); return err },
				func() error { _, err := topo.EnsureConsumer(ctx, js, natsjs.DefaultDestination); return err },
				func() error { _, err := topo.EnsureDeadLetters(ctx, js); return err },
				func() error { _, err := topo.EnsureFailureLog(ctx, js); return err },
				func() error { _, err := topo.EnsureLedger(ctx, js, natsjs.DefaultDestination); return err },
				func() error { _, err := topo.EnsureStatus(ctx, js); return err },
				func() error { _, err := topo.EnsureReconcile(ctx, js); return err },
			}
			for _, step := range steps {
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

// countingJS counts the create-or-update requests for streams and for
// key-value buckets.
type countingJS struct {
	jetstream.JetStream
	updates, kvUpdates int
}

func (c *countingJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	c.kvUpdates++
	return c.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
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
	s, err := topo.EnsureEvents(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if c.updates != 2 || s.CachedInfo().Config.MaxAge != 48*time.Hour {
		t.Errorf("after a change: %d requests, MaxAge %s; want 2, 48h", c.updates, s.CachedInfo().Config.MaxAge)
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
