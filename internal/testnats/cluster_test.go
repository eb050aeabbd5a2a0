package testnats_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// The helper itself: the stream leader moves where it is told, an R3
// stream takes writes again once the others elect a leader after the
// leader's node crashed, and the node catches up after its restart.
func TestClusterNodeLossAndRejoin(t *testing.T) {
	c := testnats.StartCluster(t, 3)
	nc, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo := natsjs.DefaultTopology()
	topo.Replicas = 3
	s, err := topo.EnsureEvents(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(subject string) {
		t.Helper()
		for {
			_, err := js.Publish(ctx, subject, []byte("x"))
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("publish: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	publish(natsjs.EventSubjectPrefix + "a")
	c.MoveLeader(t, js, nc, natsjs.EventStream, "", "n2")
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Node(info.Cluster.Leader)
	if leader == nil || leader.Name != "n2" {
		t.Fatalf("stream leader %q, want n2", info.Cluster.Leader)
	}
	leader.Kill()
	killed := time.Now()
	for range 10 {
		publish(natsjs.EventSubjectPrefix + "b")
	}
	// A crash is noticed by the election timeout (4-9 s), an orderly
	// shutdown at once.
	t.Logf("%s killed: writes again after %s, new leader %s", leader.Name,
		time.Since(killed).Round(time.Millisecond), streamInfo(ctx, t, js).Cluster.Leader)
	leader.Restart(t)
	c.WaitHealthy(t, 30*time.Second)
	info = streamInfo(ctx, t, js)
	if info.State.Msgs != 11 {
		t.Errorf("stream holds %d messages, want 11", info.State.Msgs)
	}
	if len(info.Cluster.Replicas) != 2 {
		t.Errorf("stream has %d followers, want 2: %+v", len(info.Cluster.Replicas), info.Cluster)
	}
	for _, p := range info.Cluster.Replicas {
		if !p.Current || p.Offline {
			t.Errorf("replica %s not current after the restart: %+v", p.Name, p)
		}
	}
}

func streamInfo(ctx context.Context, t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}
