package app

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/web"
)

// statusWiring connects what operators see: the queue metrics on every
// listener, the forwarder's tracker (shared through JetStream) and the
// ingest's status page.
type statusWiring struct {
	conn       *natsjs.Conn
	adminToken string
	singleHost bool
	log        *slog.Logger
	// tracker is this process's forwarder, if any; set once the forwarder
	// starts (the ingest may already serve the page).
	tracker atomic.Pointer[status.Tracker]
}

func newStatusWiring(conn *natsjs.Conn, admin config.Admin, singleHost bool, log *slog.Logger) *statusWiring {
	return &statusWiring{conn: conn, adminToken: admin.AdminToken, singleHost: singleHost, log: log}
}

// registerQueue adds the queue-depth and dead-letter collector to reg: it
// asks JetStream at every scrape.
func (s *statusWiring) registerQueue(reg prometheus.Registerer) error {
	// EmbeddedStorageLimits says ok=false when NATS is not embedded.
	return reg.Register(status.NewQueueCollector(s.conn.JS, status.DefaultScrapeTimeout, s.log, status.WithServerLimits(s.conn.EmbeddedStorageLimits)))
}

// mountUI adds the status page to the ingest's router, if ADMIN_TOKEN is set.
func (s *statusWiring) mountUI(r chi.Router, trusted []netip.Prefix) error {
	if s.adminToken == "" {
		s.log.Info("ADMIN_TOKEN is empty: the status page (/ui) is disabled")
		mountDisabled(r, "/ui", "the status page is disabled: ADMIN_TOKEN is not set on this ingest; set ADMIN_TOKEN (or ADMIN_TOKEN_FILE), its password, and restart")
		return nil
	}
	h, err := web.NewStatusPage(web.StatusPageOptions{
		JS:             s.conn.JS,
		Forwarders:     s.forwarders,
		SingleHost:     s.singleHost,
		AdminToken:     s.adminToken,
		TrustedProxies: trusted,
		Logger:         s.log.With("component", "ui"),
	})
	if err != nil {
		return err
	}
	h.Mount(r)
	return nil
}

// mountDisabled answers every request under path with 404 and msg, so a
// page turned off says why and how to turn it on: a newcomer who opens
// it otherwise gets a bare "404 page not found" and a wrong address is
// the first thing suspected.
func mountDisabled(r chi.Router, path, msg string) {
	h := func(w http.ResponseWriter, _ *http.Request) { web.WriteError(w, http.StatusNotFound, msg) }
	r.HandleFunc(path, h)
	r.HandleFunc(path+"/*", h)
}

// forwarders returns this process's forwarder (exact and current) and the
// others' shared snapshots.
func (s *statusWiring) forwarders(ctx context.Context) ([]status.Snapshot, error) {
	snaps, _, err := s.read(ctx)
	return snaps, err
}

// read is forwarders, and reports whether the bucket held this process's
// own snapshot: only then did the others see it (a bucket lost or
// recreated holds none until the next put).
func (s *statusWiring) read(ctx context.Context) (snaps []status.Snapshot, ownListed bool, err error) {
	shared, err := status.ReadShared(ctx, s.conn.JS)
	own := s.tracker.Load()
	if own == nil {
		return shared, false, err
	}
	out := []status.Snapshot{own.Snapshot()}
	for _, o := range shared {
		if o.ID == own.ID() {
			ownListed = true
		} else {
			out = append(out, o)
		}
	}
	return out, ownListed, err
}

// lastPutError is the error of the last put of this process's snapshot in
// the status bucket; nil without a forwarder.
func (s *statusWiring) lastPutError() error {
	if t := s.tracker.Load(); t != nil {
		return t.LastPutError()
	}
	return nil
}

// track returns the tracker that the forwarders report to, and shares
// what it tracks in JetStream until ctx ends; keys are its snapshots'
// KeyFingerprints, set before the first is shared.
func (s *statusWiring) track(ctx context.Context, g *errgroup.Group, topo natsjs.Topology, concurrency int, tokens []*status.TokenWatch,
	keys map[string]string, log *slog.Logger) (*status.Tracker, error) {
	t := status.NewTracker(concurrency, tokens...)
	t.SetKeyFingerprints(keys)
	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	kv, err := topo.EnsureStatus(pctx, s.conn.JS)
	if err != nil {
		return nil, err
	}
	s.tracker.Store(t)
	// A cluster electing the bucket's leader answers no put for a few
	// seconds, each 5 s put of every forwarder asking again: one line a
	// minute says it.
	unanswered := &repeatlog.Failures{Every: time.Minute}
	bucket := statusBucket{KeyValue: kv, ensure: func(ctx context.Context) error {
		if n, ok := unanswered.Failed(); ok {
			log.Info("status: no answer from the bucket (a NATS cluster electing its leader, or a restarted server that lost it: it is kept in memory); creating it again if it is gone",
				"bucket", natsjs.StatusBucket, "unanswered_since_start", n)
		}
		_, err := topo.EnsureStatus(ctx, s.conn.JS)
		return err
	}}
	g.Go(named("status", func() error { return t.Share(ctx, bucket, status.ShareInterval, log) }))
	return t, nil
}

// statusBucket is the status bucket as a forwarder writes its snapshot
// to it. The bucket is kept in memory: a NATS server that restarts (a
// single server, or every node holding the bucket) loses it, and nothing
// else creates it while the forwarders run, so a put that finds no bucket
// creates it again and puts once more. Without it the replicas each found
// no other in the bucket, for good, and took the whole of the shared
// limits (STOW_PARALLEL_REQUESTS, STOW_MAX_BYTES_PER_SECOND).
type statusBucket struct {
	jetstream.KeyValue
	ensure func(context.Context) error
}

func (b statusBucket) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := b.KeyValue.Put(ctx, key, value)
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		return rev, err
	}
	if err := b.ensure(ctx); err != nil {
		return 0, err
	}
	return b.KeyValue.Put(ctx, key, value)
}
