package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
)

// RunIngest runs the webhook service until ctx ends.
func RunIngest(ctx context.Context, c *config.IngestService, log *slog.Logger) error {
	in := &ingestRole{cfg: &c.Ingest, reconcile: &c.Reconcile, sourceMetrics: true}
	if c.Reconcile.Enabled || c.Ingest.Priority.Rule != "" {
		var err error
		if in.sources, err = NewSources(&c.Orthanc); err != nil {
			return err
		}
		in.sources.warnProxied(log, environmentProxy)
	}
	tp, stopTracing, err := startTracing(ctx, "ingest", "stowline-ingest", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, nil, c.ListenTLS, c.Admin, false, tp, log)
	if err != nil {
		return err
	}
	return p.run(ctx, in)
}

// RunForwarder runs the forwarder until ctx ends.
func RunForwarder(ctx context.Context, c *config.ForwarderService, log *slog.Logger) error {
	sources, err := NewSources(&c.Orthanc)
	if err != nil {
		return err
	}
	sources.warnProxied(log, environmentProxy)
	tp, stopTracing, err := startTracing(ctx, "forwarder", "stowline-forwarder", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, &c.Forwarder, c.ListenTLS, c.Admin, false, tp, log)
	if err != nil {
		return err
	}
	return p.run(ctx, &forwarderRole{cfg: &c.Forwarder, sources: sources})
}

// RunSingleHost runs ingest and forwarder in one process, on an embedded
// JetStream server unless NATS_URL is set. They share the JetStream
// connection and the Orthanc clients.
func RunSingleHost(ctx context.Context, c *config.SingleHost, log *slog.Logger) error {
	sources, err := NewSources(&c.Orthanc)
	if err != nil {
		return err
	}
	sources.warnProxied(log, environmentProxy)
	in := &ingestRole{cfg: &c.Ingest, reconcile: &c.Reconcile}
	if c.Reconcile.Enabled || c.Ingest.Priority.Rule != "" {
		in.sources = sources
	}
	tp, stopTracing, err := startTracing(ctx, "stowline", "stowline", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, &c.Forwarder, c.ListenTLS, c.Admin, true, tp, log)
	if err != nil {
		return err
	}
	// The forwarder starts first: the webhook's /readyz then says the
	// whole process is up, not only its ingest.
	return p.run(ctx, &forwarderRole{cfg: &c.Forwarder, sources: sources}, in)
}

// process is what the roles of one process share.
type process struct {
	conn      *natsjs.Conn
	topo      natsjs.Topology
	serverTLS *tls.Config
	status    *statusWiring
	// tracer is the process's TracerProvider; nil when tracing is off.
	tracer trace.TracerProvider
	log    *slog.Logger
}

// role is one service of the process: it starts its goroutines in g and
// returns once they run; they stop when ctx ends.
type role interface {
	start(ctx context.Context, g *errgroup.Group, p *process) error
}

// newProcess connects to JetStream and creates the event stream; fc is
// nil without a forwarder, tp without tracing. A process without a
// forwarder, or a single host's, runs the ingest.
func newProcess(ctx context.Context, nc config.NATS, fc *config.Forwarder, lt config.ListenTLS, admin config.Admin, singleHost bool,
	tp trace.TracerProvider, log *slog.Logger) (*process, error) {
	limitMemoryToCgroup(log)
	serverTLS, err := listenTLS(lt, log)
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx, nc, log)
	if err != nil {
		return nil, err
	}
	warnSingleHostStore(nc, log)
	p := &process{conn: conn, topo: topology(nc, fc, fc == nil || singleHost), serverTLS: serverTLS, tracer: tp, log: log}
	p.topo.Log = log
	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	if _, err := p.topo.EnsureEvents(pctx, conn.JS); err != nil {
		conn.Close()
		return nil, err
	}
	p.status = newStatusWiring(conn, admin, singleHost, log)
	return p, nil
}

// run starts the roles and waits until ctx ends or one of them fails. A
// role that fails to start stops those already started. The JetStream
// connection closes last, so every accepted event is published and every
// ack is flushed.
func (p *process) run(ctx context.Context, roles ...role) error {
	defer p.conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, r := range roles {
		if err := r.start(gctx, g, p); err != nil {
			cancel()
			_ = g.Wait()
			return err
		}
	}
	// A connection closed for good (credentials revoked or expired) must
	// end the process, for its supervisor to restart it: it would
	// otherwise live on, alive to /healthz, doing nothing.
	g.Go(func() error {
		select {
		case <-p.conn.Closed():
			return fmt.Errorf("the NATS connection was closed for good (credentials revoked or expired?): %v", p.conn.NC.LastError())
		case <-gctx.Done():
			return nil
		}
	})
	p.log.Info("stowline started")
	err := g.Wait()
	p.log.Info("stowline stopped", "err", err)
	return err
}

// warnSingleHostStore warns when a process using a NATS server finds the
// store of a single host's embedded server in NATS_STORE_DIR: a single
// host moved to a NATS server (systemd's unit keeps NATS_STORE_DIR set)
// left in it what it had not forwarded yet, its dead letters and its
// ledgers, which nothing moves to the NATS server.
func warnSingleHostStore(nc config.NATS, log *slog.Logger) {
	if nc.Embedded() || nc.StoreDir == "" {
		return
	}
	if fi, err := os.Stat(filepath.Join(nc.StoreDir, "jetstream")); err != nil || !fi.IsDir() {
		return
	}
	log.Warn("NATS_URL is set, and NATS_STORE_DIR holds the store of a single host's embedded JetStream server: the events it still queues, "+
		"its dead letters and its ledgers of forwarded studies are not on the NATS server and are not sent from there; "+
		"check it with the forwarder commands (NATS_URL empty), then move it away (docs/nats-cluster.md#from-a-single-host-and-back)",
		"store_dir", nc.StoreDir)
}
