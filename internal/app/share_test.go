package app

import (
	"cmp"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testharness"
)

func TestReplicasByDestination(t *testing.T) {
	snaps := []status.Snapshot{
		{ID: "a", Tokens: []status.TokenStatus{{Destination: "archive"}, {Destination: "ai"}, {Destination: "ai"}}},
		{ID: "b", Tokens: []status.TokenStatus{{Destination: "archive"}}},
		{ID: "c", Tokens: []status.TokenStatus{{Destination: "archive"}}},
	}
	got := replicasByDestination(snaps)
	if got["archive"] != 3 || got["ai"] != 1 || got["other"] != 0 {
		t.Errorf("replicas %v, want archive 3, ai 1", got)
	}
}

// TestWhenDrained: the share's context outlives the process's while a
// forwarder still drains, and ends once it returned.
func TestWhenDrained(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, stop := context.WithCancel(t.Context())
		var running sync.WaitGroup
		running.Add(1)
		drained := whenDrained(ctx, &running)
		stop()
		synctest.Wait()
		if drained.Err() != nil {
			t.Fatal("ended while a forwarder drains")
		}
		running.Done()
		synctest.Wait()
		if drained.Err() == nil {
			t.Fatal("still running after the forwarders returned")
		}
	})
}

// The status bucket is kept in memory: a NATS server that restarts (a
// single server, or every node holding the bucket) loses it while the
// forwarders run. They create it again, so that they count each other
// again; before, each found no other replica for good (until restarted)
// and took the whole STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND.
func TestStatusBucketLostIsCreatedAgain(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	ctx, g := runGroup(t)
	var first *statusWiring
	for range 2 { // two forwarder processes serving one destination
		s := trackArchive(t, ctx, g, conn, log)
		if first == nil {
			first = s
		}
	}
	counted := func(want int, within time.Duration) {
		t.Helper()
		got := 0
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			snaps, err := first.forwarders(ctx)
			if got = replicasByDestination(snaps)["archive"]; err == nil && got == want {
				return
			}
		}
		t.Fatalf("%d replicas counted, want %d", got, want)
	}
	counted(2, 5*time.Second)
	if err := conn.JS.DeleteKeyValue(ctx, natsjs.StatusBucket); err != nil {
		t.Fatal(err)
	}
	counted(2, 3*status.ShareInterval)
}

// recordedLimit is a shared limit that keeps the replicas it was given.
type recordedLimit struct{ replicas atomic.Int64 }

func (l *recordedLimit) SetReplicas(n int) { l.replicas.Store(int64(n)) }

// A forwarder whose NATS user may not read the status bucket (a
// hand-written permission block without the bucket's CONSUMER entries)
// cannot count the other replicas and keeps the whole of each shared
// limit: it says so at warn, naming the permission, rather than at debug
// only; stowline_forwarder_replicas shows what it counted.
func TestShareLimitsWithoutReadingTheBucket(t *testing.T) {
	tests := []struct {
		name     string
		deny     []string
		replicas float64 // counted
		share    int64   // the replicas given to the limits; 0: none, the whole limit kept
		warning  string  // in the warning expected; "" for none
	}{
		{"permitted", nil, 2, 2, ""},
		{"no consumer of the status bucket", []string{"$JS.API.CONSUMER.*.KV_stowline_forwarders.>"}, 1, 0, "failed_reads=3"},
		// It counts the other, which does not count it: the warning
		// names the limits they may exceed together. It said "status
		// page" only, and the replicas gauge read 1 on the other.
		{"no put to the status bucket", []string{"$KV.stowline_forwarders.>"}, 2, 2, "other replicas serving its destinations do not count it: together they may exceed STOW_PARALLEL_REQUESTS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "authz", Port: -1,
				Configure: func(o *server.Options) {
					o.Users = []*server.User{
						{Username: "other", Password: "other-password"},
						{Username: "forwarder", Password: "forwarder-password", Permissions: &server.Permissions{
							Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: tt.deny},
						}},
					}
				}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Shutdown)
			quiet := slog.New(slog.DiscardHandler)
			connect := func(user, password string) *natsjs.Conn {
				t.Helper()
				conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL(), Auth: []nats.Option{nats.UserInfo(user, password)}}, quiet)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(conn.Close)
				return conn
			}
			ctx, g := runGroup(t)
			trackArchive(t, ctx, g, connect("other", "other-password"), quiet) // another replica, in the bucket
			s := trackArchive(t, ctx, g, connect("forwarder", "forwarder-password"), quiet)

			logs := &testharness.LogBuffer{}
			log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			replicas, err := newReplicasGauge(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			limit := &recordedLimit{}
			g.Go(func() error {
				return shareLimits(ctx, s, map[string][]replicaLimit{"archive": {limit}}, replicas, nil, 200*time.Millisecond, log)
			})
			counted := func() float64 { return testutil.ToFloat64(replicas.WithLabelValues("archive")) }
			warned := func() bool {
				for line := range strings.Lines(logs.String()) {
					if strings.Contains(line, "level=WARN") && strings.Contains(line, "stowline_forwarders") &&
						strings.Contains(line, cmp.Or(tt.warning, "failed_reads=3")) {
						return true
					}
				}
				return false
			}
			// Each case ends at a condition: the count of both replicas,
			// or the warning after three failed reads.
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if tt.warning != "" && warned() || tt.warning == "" && counted() == 2 {
					break
				}
			}
			if warned() != (tt.warning != "") {
				t.Errorf("warned %v, want %v; log:\n%s", warned(), tt.warning != "", logs.String())
			}
			if testing.Verbose() {
				t.Logf("log:\n%s", logs.String())
			}
			if got := counted(); got != tt.replicas {
				t.Errorf("stowline_forwarder_replicas = %v, want %v", got, tt.replicas)
			}
			if got := limit.replicas.Load(); got != tt.share {
				t.Errorf("the limit's share is for %d replicas, want %d", got, tt.share)
			}
		})
	}
}

// A forwarder cut off from NATS cannot count the replicas either, and its
// reads fail as a refused one does (they time out): its warning says NATS
// is unreachable rather than blaming a permission.
func TestShareLimitsWhileNATSIsUnreachable(t *testing.T) {
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "lost", Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	shutdown := sync.OnceFunc(srv.Shutdown)
	t.Cleanup(shutdown)
	quiet := slog.New(slog.DiscardHandler)
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	ctx, g := runGroup(t)
	s := trackArchive(t, ctx, g, conn, quiet)
	shutdown()
	for deadline := time.Now().Add(10 * time.Second); conn.NC.Status() == nats.CONNECTED; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client still reports itself connected to the stopped server")
		}
	}

	logs := &testharness.LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	replicas, err := newReplicasGauge(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g.Go(func() error {
		return shareLimits(ctx, s, map[string][]replicaLimit{"archive": {&recordedLimit{}}}, replicas, nil, 200*time.Millisecond, log)
	})
	warning := func() string {
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "failed_reads=3") {
				return line
			}
		}
		return ""
	}
	for deadline := time.Now().Add(20 * time.Second); warning() == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	}
	line := warning()
	if !strings.Contains(line, "NATS is unreachable") || strings.Contains(line, "permission") {
		t.Errorf("warning %q, want it to say NATS is unreachable, naming no permission; log:\n%s", line, logs.String())
	}
}

// runGroup is the context and group a test's status wiring runs in; the
// test's end cancels the one and waits for the other.
func runGroup(t *testing.T) (context.Context, *errgroup.Group) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	g := &errgroup.Group{}
	t.Cleanup(func() { cancel(); _ = g.Wait() })
	return ctx, g
}

// trackArchive starts the status wiring of a forwarder on conn serving
// the one destination archive, as its start does.
func trackArchive(t *testing.T, ctx context.Context, g *errgroup.Group, conn *natsjs.Conn, log *slog.Logger) *statusWiring {
	t.Helper()
	return trackArchiveWithKeys(t, ctx, g, conn, nil, log)
}

// trackArchiveWithKeys is trackArchive, its snapshots' KeyFingerprints
// keys.
func trackArchiveWithKeys(t *testing.T, ctx context.Context, g *errgroup.Group, conn *natsjs.Conn, keys map[string]string, log *slog.Logger) *statusWiring {
	t.Helper()
	s := newStatusWiring(conn, config.Admin{}, false, log)
	tw, err := status.NewTokenWatch("archive", "dicom.example.org", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.track(ctx, g, natsjs.DefaultTopology(), 1, []*status.TokenWatch{tw}, keys, log); err != nil {
		t.Fatal(err)
	}
	return s
}
