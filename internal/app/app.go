// Package app assembles stowline from configuration and runs it: one
// struct per role (the ingest, the forwarder, and both in one process on
// single host), each building its parts from its own settings. The
// commands in cmd/ only call Main and the subcommands here.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/keypair"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/web"
)

// HTTPShutdownGrace bounds how long HTTP servers wait for in-flight
// requests at shutdown (the ingest's: see ingestHTTPGrace). An
// orchestrator's stop timeout must exceed it (deploy/compose_test.go
// checks docker-compose.yml).
const HTTPShutdownGrace = 15 * time.Second

// IngestShutdownGrace bounds how long the ingest takes to stop with an
// INGEST_PUBLISH_TIMEOUT of at most 13 s (the default is 10 s): its HTTP
// server's grace, then the wait for the webhook events still waiting for
// PRIORITY_RULE (drainTriage). An orchestrator's stop timeout must exceed
// it (deploy/compose_test.go, the chart's check).
const IngestShutdownGrace = 20 * time.Second

// IngestMaxShutdownGrace is IngestShutdownGrace with the longest
// INGEST_PUBLISH_TIMEOUT (config.MaxIngestPublishTimeout): the stop
// timeout of an ingest whose publish timeout the deployment does not fix.
const IngestMaxShutdownGrace = 60 * time.Second

// publishAnswerMargin is the time a webhook request takes to be answered
// once its publish timed out (a log line, a 503).
const publishAnswerMargin = 2 * time.Second

// ingestHTTPGrace is the ingest's HTTP shutdown grace: long enough for a
// webhook request waiting for JetStream to be answered (202 or 503).
// Cut sooner, Orthanc logs its study as not announced while JetStream
// may store it yet.
func ingestHTTPGrace(publishTimeout time.Duration) time.Duration {
	return max(HTTPShutdownGrace, publishTimeout+publishAnswerMargin)
}

// provisionTimeout bounds the creation of the streams and buckets a role
// needs at startup.
const provisionTimeout = 30 * time.Second

// newLogger returns the process logger: JSON lines (stable keys) or text.
func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// newRegistry returns a Prometheus registry with the Go, process and
// build collectors; one per listener, no global state.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), readBuild().collector())
	return reg
}

// connect connects to NATS_URL with its credentials, or starts the
// embedded server when it is empty (ctx ends a wait for its recovery).
func connect(ctx context.Context, c config.NATS, log *slog.Logger) (*natsjs.Conn, error) {
	return connectWaiting(ctx, c, nil, log)
}

// connectWaiting is connect waiting for a NATS server that does not
// answer yet when unreachable is set (natsjs.ConnectOptions.Unreachable).
func connectWaiting(ctx context.Context, c config.NATS, unreachable func(error), log *slog.Logger) (*natsjs.Conn, error) {
	o := natsjs.ConnectOptions{URL: c.URL, StoreDir: c.StoreDir, Unreachable: unreachable}
	if !c.Embedded() {
		var err error
		if o.Auth, err = natsAuthOptions(c); err != nil {
			return nil, err
		}
	}
	return natsjs.Connect(ctx, o, log)
}

// connectTool is connect for the operator's commands. With NATS_URL
// empty they open a single host's store, which only one process may
// hold: stowline, while it runs.
func connectTool(ctx context.Context, c config.NATS, log *slog.Logger) (*natsjs.Conn, error) {
	conn, err := connect(ctx, c, log)
	if errors.Is(err, natsjs.ErrStoreInUse) {
		return nil, fmt.Errorf("%w: stop stowline first (systemctl stop stowline) and start it again after the command, or use its admin API (replay, purge, reforward)", err)
	}
	return conn, err
}

// topology derives the streams' and buckets' settings from configuration;
// fc is nil for the ingest, which keeps the defaults of what only the
// forwarder provisions. ingest is whether the process takes webhooks:
// only then does its start lower the event stream's duplicate window, as
// its configuration was checked against INGEST_HMAC_MAX_SKEW.
func topology(n config.NATS, fc *config.Forwarder, ingest bool) natsjs.Topology {
	t := natsjs.DefaultTopology()
	t.Retention = n.EventsRetention
	t.DedupeWindow = n.DedupeWindow
	t.KeepDedupeWindow = !ingest
	t.Replicas = n.Replicas
	if fc != nil {
		t.AckWait = fc.AckWait
		t.DeadLetterRetention = fc.DeadLetterRetention
		t.StoredRetention = fc.StoredRetention
		if fc.MaxDeliveries > 0 {
			// Room for the deliveries that dead-letter a study (and for
			// retries of a dead letter that could not be stored), with
			// a bound on a study that kills every forwarder.
			t.MaxDeliver = 2 * fc.MaxDeliveries
		}
	}
	return t
}

// newRouter returns a chi router with the middleware every listener uses.
func newRouter() *chi.Mux {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	return r
}

// serveHTTP listens now on addr, the value of variable addrVar (so a busy
// port fails startup, naming it), taking it over from starting (nil: none),
// and serves in g until ctx ends, then gives in-flight requests grace;
// over HTTPS when serverTLS is not nil.
func serveHTTP(ctx context.Context, g *errgroup.Group, starting *startingServer, name, addrVar, addr string, h http.Handler, serverTLS *tls.Config, grace time.Duration, log *slog.Logger, stopped func()) error {
	starting.release(addr)
	ln, err := web.Listen(addr)
	if err != nil {
		return fmt.Errorf("%s: %s=%s: %w", name, addrVar, addr, err)
	}
	log.Info("listening", "server", name, "addr", ln.Addr().String(), "tls", serverTLS != nil)
	srv := web.NewServer(h, log)
	if serverTLS != nil {
		ln = tls.NewListener(ln, serverTLS)
	}
	g.Go(named(name, func() error {
		err := web.Serve(ctx, srv, ln, grace)
		if stopped != nil && ctx.Err() != nil {
			stopped() // a shutdown, not a server that failed
		}
		if errors.Is(err, web.ErrShutdownGraceExceeded) {
			// A slow client at a stop: nothing accepted is lost (an
			// event is answered only once JetStream has it), and the
			// stop is no failure of the process.
			log.Warn("shutdown: requests still running after the grace were cut off", "server", name, "grace", grace.String())
			return nil
		}
		return err
	}))
	return nil
}

// named prefixes a goroutine's error with what failed.
func named(name string, fn func() error) func() error {
	return func() error {
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
}

// listenTLS returns the listeners' HTTPS configuration, or nil for plain
// HTTP. The certificate is re-read when its files change.
func listenTLS(lt config.ListenTLS, log *slog.Logger) (*tls.Config, error) {
	if !lt.Enabled() {
		return nil, nil
	}
	kp, err := keypair.New(lt.CertFile, lt.KeyFile, 0, log.With("component", "listen-tls"))
	if err != nil {
		return nil, fmt.Errorf("TLS_LISTEN_CERT_FILE, TLS_LISTEN_KEY_FILE: %w", err)
	}
	return kp.ServerConfig(), nil
}
