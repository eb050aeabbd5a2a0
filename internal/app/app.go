// Package app assembles stowline's parts from configuration: the logger,
// the JetStream connection (embedded or external), the ingest webhook and
// the forwarder. The commands in cmd/ only parse flags and call it.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/web"
)

// shutdownGrace bounds how long HTTP servers wait for in-flight requests.
const shutdownGrace = 15 * time.Second

// NewLogger returns the process logger: JSON lines (stable keys) or text.
func NewLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// NewRegistry returns a Prometheus registry with the Go and process
// collectors; one per process, no global state.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// JetStream is a connection to JetStream, embedded or external.
type JetStream struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	embedded *natsjs.Server
}

// ConnectJetStream connects to NATS_URL, or starts the embedded server when
// it is empty, and creates the event stream if needed.
func ConnectJetStream(ctx context.Context, c config.NATS, topo events.Topology, log *slog.Logger) (*JetStream, error) {
	j, err := connectJetStream(c, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := events.EnsureStream(ctx, j.JS, topo); err != nil {
		j.Close()
		return nil, err
	}
	return j, nil
}

func connectJetStream(c config.NATS, log *slog.Logger) (*JetStream, error) {
	j := &JetStream{}
	opts := []nats.Option{
		nats.Name("stowline"),
		nats.MaxReconnects(-1), // a NATS restart must never stop stowline
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
	}
	var err error
	if c.Embedded() {
		j.embedded, err = natsjs.Start(natsjs.Options{StoreDir: c.StoreDir, ServerName: "stowline-embedded"}, log)
		if err != nil {
			return nil, err
		}
		log.Info("embedded JetStream server started (single-host mode)", "store_dir", c.StoreDir)
		j.NC, err = j.embedded.Connect(opts...)
	} else {
		var auth []nats.Option
		if auth, err = natsAuthOptions(c); err != nil {
			return nil, err
		}
		j.NC, err = nats.Connect(c.URL, append(opts, auth...)...)
		if err == nil {
			log.Info("connected to NATS", "url", j.NC.ConnectedUrlRedacted())
		}
	}
	if err != nil {
		j.Close()
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	js, err := jetstream.New(j.NC)
	if err != nil {
		j.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	j.JS = provisioningJS{JetStream: js, log: log}
	return j, nil
}

// Ready reports whether JetStream answers.
func (j *JetStream) Ready(ctx context.Context) error {
	if _, err := j.JS.Stream(ctx, events.StreamName); err != nil {
		return fmt.Errorf("JetStream stream %s: %w", events.StreamName, err)
	}
	return nil
}

// Close drains the connection (pending acks and publishes are flushed)
// and stops the embedded server, if any.
func (j *JetStream) Close() {
	if j.NC != nil {
		if err := j.NC.Drain(); err != nil {
			j.NC.Close()
		}
		for j.NC.IsDraining() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if j.embedded != nil {
		j.embedded.Shutdown()
	}
}

// Topology derives the JetStream topology from configuration.
func Topology(n config.NATS, ackWait time.Duration) events.Topology {
	t := events.DefaultTopology()
	t.Retention = n.EventsRetention
	t.DedupeWindow = n.DedupeWindow
	t.Replicas = n.Replicas
	if ackWait > 0 {
		t.AckWait = ackWait
	}
	return t
}

// newRouter returns a chi router with the middleware every listener uses.
func newRouter() *chi.Mux {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	return r
}

// group runs functions until the first fails or all return, cancelling
// the shared context on the first error.
type group struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	mu     sync.Mutex
	errs   []error
}

func newGroup(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(name string, fn func() error) {
	g.wg.Go(func() {
		if err := fn(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
			g.cancel()
		}
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return errors.Join(g.errs...)
}

// serveHTTP listens now (so a busy port fails startup) and serves until
// ctx ends; over HTTPS when serverTLS is not nil.
func serveHTTP(g *group, ctx context.Context, name, addr string, h http.Handler, serverTLS *tls.Config, log *slog.Logger) error {
	ln, err := web.Listen(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	log.Info("listening", "server", name, "addr", ln.Addr().String(), "tls", serverTLS != nil)
	srv := web.NewServer(h, log)
	if serverTLS != nil {
		ln = tls.NewListener(ln, serverTLS)
	}
	g.Go(name, func() error { return web.Serve(ctx, srv, ln, shutdownGrace) })
	return nil
}
