package app

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testnats"
)

// Replicas of the ingest and the forwarder starting at the same moment on
// a fresh 3-node cluster (a compose or Kubernetes rollout) all create the
// R3 streams, consumer and buckets at once: every one of them comes up.
// Without provisioningJS, nats-server leaves some of the racing requests
// unanswered and those services fail at startup.
func TestClusterConcurrentProvisioning(t *testing.T) {
	cluster := testnats.StartCluster(t, 3)
	nc := config.NATS{
		URL:             cluster.URLs(),
		Replicas:        3,
		EventsRetention: time.Hour,
		DedupeWindow:    time.Minute,
	}
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
			js, err := ConnectJetStream(ctx, nc, Topology(nc, 5*time.Second), log)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			defer js.Close()
			// What startForwarder, completedRecorder, track and
			// startReconciler create.
			steps := []func() error{
				func() error { _, err := ensureConsumer(ctx, js, nc, 5*time.Second); return err },
				func() error { _, err := deadletter.Ensure(ctx, js.JS, time.Hour, nc.Replicas); return err },
				func() error {
					_, err := deadletter.EnsureFailureLog(ctx, js.JS, nc.EventsRetention, nc.Replicas)
					return err
				},
				func() error { _, err := completedRecorder(ctx, js, nc); return err },
				func() error { _, err := status.EnsureBucket(ctx, js.JS, nc.Replicas); return err },
				func() error { _, err := reconcile.EnsureBucket(ctx, js.JS, nc.Replicas); return err },
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
