package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
)

// RunIngest runs the webhook service until ctx ends.
func RunIngest(ctx context.Context, c *config.IngestService, log *slog.Logger) error {
	return runIngest(ctx, c, eventStreamCheckEvery, log)
}

// runIngest is RunIngest checking every streamCheckEvery that the event
// stream exists (watchEventStream).
func runIngest(ctx context.Context, c *config.IngestService, streamCheckEvery time.Duration, log *slog.Logger) error {
	in := &ingestRole{cfg: &c.Ingest, reconcile: &c.Reconcile, sourceMetrics: true}
	if config.ReadsOrthanc(&c.Ingest.Priority, &c.Reconcile) {
		var err error
		if in.sources, err = newSources(&c.Orthanc); err != nil {
			return err
		}
		in.sources.warnProxied(log, environmentProxy)
	}
	tp, stopTracing, err := startTracing(ctx, "ingest", "stowline-ingest", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, nil, c.ListenTLS, c.Admin, false, c.Ingest.Addr, tp, log)
	if err != nil {
		return err
	}
	p.streamCheckEvery = streamCheckEvery
	p.stopTracing = stopTracing
	return p.run(ctx, in)
}

// RunForwarder runs the forwarder until ctx ends.
func RunForwarder(ctx context.Context, c *config.ForwarderService, log *slog.Logger) error {
	return runForwarder(ctx, c, eventStreamCheckEvery, log)
}

// runForwarder is RunForwarder checking every streamCheckEvery that the
// event stream exists (watchEventStream).
func runForwarder(ctx context.Context, c *config.ForwarderService, streamCheckEvery time.Duration, log *slog.Logger) error {
	sources, err := newSources(&c.Orthanc)
	if err != nil {
		return err
	}
	sources.warnProxied(log, environmentProxy)
	tp, stopTracing, err := startTracing(ctx, "forwarder", "stowline-forwarder", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, &c.Forwarder, c.ListenTLS, c.Admin, false, c.Forwarder.Addr, tp, log)
	if err != nil {
		return err
	}
	p.streamCheckEvery = streamCheckEvery
	p.stopTracing = stopTracing
	return p.run(ctx, &forwarderRole{cfg: &c.Forwarder, sources: sources})
}

// RunSingleHost runs ingest and forwarder in one process, on an embedded
// JetStream server unless NATS_URL is set. They share the JetStream
// connection and the Orthanc clients.
func RunSingleHost(ctx context.Context, c *config.SingleHost, log *slog.Logger) error {
	sources, err := newSources(&c.Orthanc)
	if err != nil {
		return err
	}
	sources.warnProxied(log, environmentProxy)
	in := &ingestRole{cfg: &c.Ingest, reconcile: &c.Reconcile}
	if config.ReadsOrthanc(&c.Ingest.Priority, &c.Reconcile) {
		in.sources = sources
	}
	tp, stopTracing, err := startTracing(ctx, "stowline", "stowline", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	p, err := newProcess(ctx, c.NATS, &c.Forwarder, c.ListenTLS, c.Admin, true, c.Ingest.Addr, tp, log)
	if err != nil {
		return err
	}
	p.stopTracing = stopTracing
	// The forwarder starts first: the webhook's /readyz then says the
	// whole process is up, not only its ingest.
	return p.run(ctx, &forwarderRole{cfg: &c.Forwarder, sources: sources, sharedWithIngest: in.sources != nil}, in)
}

// process is what the roles of one process share.
type process struct {
	conn      *natsjs.Conn
	topo      natsjs.Topology
	serverTLS *tls.Config
	status    *statusWiring
	// tracer is the process's TracerProvider; nil when tracing is off.
	// stopTracing flushes its spans (startTracing), at close; may be nil.
	tracer      trace.TracerProvider
	stopTracing func()
	// streamCheckEvery is how often watchEventStream checks that the
	// event stream exists; 0 does not check. streamCreated is when the
	// stream the process started with was made.
	streamCheckEvery time.Duration
	streamCreated    time.Time
	// starting answers the probes on the process's HTTP address until a
	// role listens there; nil when none does (an embedded server).
	starting *startingServer
	log      *slog.Logger
}

// role is one service of the process: it starts its goroutines in g and
// returns once they run; they stop when ctx ends.
type role interface {
	start(ctx context.Context, g *errgroup.Group, p *process) error
}

// newProcess connects to JetStream and creates the event stream; fc is
// nil without a forwarder, tp without tracing. A process without a
// forwarder, or a single host's, runs the ingest. With a NATS server of
// its own (NATS_URL) it waits for one that does not answer yet, until ctx
// ends, its probes answered on addr from then until its role listens
// there (startingServer).
func newProcess(ctx context.Context, nc config.NATS, fc *config.Forwarder, lt config.ListenTLS, admin config.Admin, singleHost bool,
	addr string, tp trace.TracerProvider, log *slog.Logger) (*process, error) {
	limitMemoryToCgroup(log)
	serverTLS, err := listenTLS(lt, log)
	if err != nil {
		return nil, err
	}
	// Opened at the first failed attempt only: with NATS up the address
	// stays closed until the role listens, so /healthz still means the
	// service is up there.
	var starting *startingServer
	var unreachable func(error)
	if !nc.Embedded() {
		opened := false
		unreachable = func(err error) {
			if !opened {
				opened = true
				var lerr error
				if starting, lerr = startStarting(addr, serverTLS, log); lerr != nil {
					log.Warn("cannot answer the probes while waiting for NATS", "err", lerr)
				}
			}
			starting.waiting(err)
		}
	}
	conn, err := connectWaiting(ctx, nc, unreachable, log)
	if err != nil {
		starting.close()
		return nil, err
	}
	starting.waiting(errors.New("starting: creating the JetStream streams, consumers and buckets"))
	warnSingleHostStore(nc, log)
	p := &process{conn: conn, topo: topology(nc, fc, fc == nil || singleHost), serverTLS: serverTLS, tracer: tp,
		streamCheckEvery: eventStreamCheckEvery, starting: starting, log: log}
	p.topo.Log = log
	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	stream, err := p.topo.EnsureEvents(pctx, conn.JS)
	if err != nil {
		starting.close()
		conn.Close()
		return nil, err
	}
	if info := stream.CachedInfo(); info != nil {
		p.streamCreated = info.Created
	}
	p.status = newStatusWiring(conn, admin, singleHost, log)
	return p, nil
}

// run starts the roles and waits until ctx ends or one of them fails. A
// role that fails to start stops those already started. The JetStream
// connection closes last, so every accepted event is published and every
// ack is flushed.
func (p *process) run(ctx context.Context, roles ...role) error {
	defer p.close()
	defer p.starting.close() // a role that failed to start before listening
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
	// So must a NATS server that lost the event stream: the next start
	// creates it again, with the consumers and buckets.
	if p.streamCheckEvery > 0 {
		g.Go(func() error {
			return watchEventStream(gctx, p.conn.JS, p.conn.Reconnected(), p.streamCheckEvery, p.streamCreated, p.log)
		})
	}
	p.log.Info("stowline started")
	err := g.Wait()
	p.log.Info("stowline stopped", "err", err)
	return err
}

// close closes the JetStream connection and flushes the traces side by
// side: each waits up to 5 s for a server that does not answer, and one
// after the other they took a forwarder's stop to its grace + 17 s, past
// the grace + 15 s the chart and compose give it (forward's
// settleAfterGrace, then the status key's removal, 2 s, then these).
func (p *process) close() {
	var wg sync.WaitGroup
	if p.stopTracing != nil {
		wg.Go(p.stopTracing)
	}
	p.conn.Close()
	wg.Wait()
}

// eventStreamCheckEvery is how often watchEventStream checks the event
// stream: a process whose NATS server lost it ends within two of these.
const eventStreamCheckEvery = 30 * time.Second

// errEventStreamLost ends a process whose NATS server no longer has the
// event stream; errEventStreamRemade one whose event stream was made
// again since it started (by another process, first to restart).
var (
	errEventStreamLost = errors.New("JetStream lost the event stream " + natsjs.EventStream +
		" (a NATS server restarted without its store?): stopping so that the next start creates it again")
	errEventStreamRemade = errors.New("JetStream's event stream " + natsjs.EventStream +
		" was made again since this process started (a NATS server restarted without its store, and another stowline process made it first): stopping so that the next start makes what this process made at its start again (consumers, buckets)")
)

// watchEventStream checks, after each reconnect and every interval until
// ctx ends, that the event stream exists, and returns errEventStreamLost
// once two checks in a row, at least half an interval apart, found it
// missing, or errEventStreamRemade once it exists with another creation
// time than created (the stream's when this process started; zero: not
// compared). The stream, the lane consumers, the dead-letter stream and the
// buckets are created only at start: a NATS server restarted on an empty
// store (no persistent volume, a lost one, `nats stream rm`) left the
// ingest answering 503 and the forwarder retrying its pulls for good,
// alive to /healthz. Ending the process has its supervisor start it
// again, which creates them all. A cluster electing a leader may answer
// "not found" for a moment: one answer stops nothing, nor do two with
// another error between them (a time-out, no connection: an outage
// between two elections). A stream made again is no passing state: the
// first process to restart makes it, and the others' second check finds
// it, without what each of them makes only at its own start.
func watchEventStream(ctx context.Context, js jetstream.JetStream, reconnected <-chan struct{}, interval time.Duration, created time.Time, log *slog.Logger) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var missingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			// The next check comes an interval after this one: two
			// reconnects in quick succession are not two sightings.
			ticker.Reset(interval)
		case <-ticker.C:
		}
		cctx, cancel := context.WithTimeout(ctx, min(interval, eventStreamCheckTimeout))
		stream, err := js.Stream(cctx, natsjs.EventStream)
		cancel()
		now := time.Now()
		switch {
		case err == nil:
			if info := stream.CachedInfo(); !created.IsZero() && info != nil && !info.Created.Equal(created) {
				return errEventStreamRemade
			}
			if !missingSince.IsZero() {
				log.Info("JetStream has the event stream again", "stream", natsjs.EventStream)
			}
			missingSince = time.Time{}
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if missingSince.IsZero() {
				missingSince = now
				log.Warn("JetStream has no event stream (a NATS server restarted without its store?): this process stops if it is still missing at the next check",
					"stream", natsjs.EventStream, "next_check_in", interval)
			} else if now.Sub(missingSince) >= interval/2 {
				return errEventStreamLost
			}
		case ctx.Err() != nil:
			return nil
		default:
			log.Debug("could not check the event stream", "stream", natsjs.EventStream, "err", err)
			missingSince = time.Time{}
		}
	}
}

// eventStreamCheckTimeout bounds one check of watchEventStream.
const eventStreamCheckTimeout = 10 * time.Second

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
