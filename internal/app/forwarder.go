package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/web"
)

// forwarderRole is the workers that send studies to the destination, with
// their health, metrics and admin API on FORWARDER_ADDR.
type forwarderRole struct {
	cfg     *config.Forwarder
	sources *Sources
}

func (r *forwarderRole) start(ctx context.Context, g *errgroup.Group, p *process) error {
	fc := r.cfg
	log := p.log.With("component", "forwarder")
	reg := newRegistry()
	if err := p.status.registerQueue(reg); err != nil {
		return err
	}
	tokenHost, oauth := tokenEndpointHost(fc)
	tw, err := status.NewTokenWatch(urlHost(fc.DICOMwebURL), tokenHost, oauth, reg)
	if err != nil {
		return err
	}
	// The provider, its credentials, TLS: destination.go. ctx outlives
	// every token refresh.
	dest, err := newDestination(ctx, fc, tw.Observe, log)
	if err != nil {
		return err
	}

	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	cons, err := p.topo.EnsureConsumer(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	dlStream, err := p.topo.EnsureDeadLetters(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	failureKV, err := p.topo.EnsureFailureLog(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	ledgerKV, err := p.topo.EnsureLedger(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	dls := deadletter.NewStore(p.conn.JS, dlStream)
	opts := forward.Options{
		Consumer:           cons,
		SourceFor:          r.sourceFor,
		Destination:        dest.STOW,
		Concurrency:        fc.Concurrency,
		MaxInstances:       fc.StowMaxInstances,
		MaxBytes:           int64(fc.StowMaxBytes),
		RequestConcurrency: fc.StowParallel,
		AckWait:            fc.AckWait,
		RetryDelay:         fc.RetryDelay,
		RetryMaxDelay:      fc.RetryMaxDelay,
		DeadLetters:        dls,
		Failures:           deadletter.NewFailureLog(failureKV),
		MaxDeliveries:      fc.MaxDeliveries,
		InstanceRetries:    fc.InstanceRetries,
		Completed:          ledger.New(ledgerKV).Record,
		Logger:             log,
		Registerer:         reg,
	}
	if fc.DeleteFromSource {
		opts.CleanerFor = r.cleanerFor
		log.Warn("buffer mode: forwarded instances are deleted from the source Orthanc once the destination stored them (FORWARDER_DELETE_FROM_SOURCE=true)")
	}
	if err := p.status.track(ctx, g, p.topo, fc.Concurrency, tw, &opts, log); err != nil {
		return err
	}
	fw, err := forward.New(opts)
	if err != nil {
		return err
	}

	router := newRouter()
	checks := map[string]web.Check{
		"jetstream": p.conn.Ready,
		"orthanc":   r.sources.Ready,
	}
	if dest.Tokens != nil {
		checks["destination_token"] = func(ctx context.Context) error {
			if _, err := dest.Tokens.TokenContext(ctx); err != nil {
				return fmt.Errorf("destination token: %w", err)
			}
			return nil
		}
	}
	web.MountHealth(router, reg, checks)
	if p.status.adminToken != "" {
		(&web.AdminAPI{Store: dls, JS: p.conn.JS, Token: p.status.adminToken, Log: p.log.With("component", "admin")}).Mount(router)
	} else {
		log.Info("ADMIN_TOKEN is empty: the admin API (dead letters, replay) is disabled")
	}
	if err := serveHTTP(ctx, g, "forwarder", fc.Addr, router, p.serverTLS, log); err != nil {
		return err
	}
	if err := watchMaxDeliver(ctx, p, reg, log); err != nil {
		return err
	}
	g.Go(named("forwarder", func() error { return fw.Run(ctx) }))
	return nil
}

// watchMaxDeliver counts and logs, until ctx ends, the events JetStream
// stops delivering to the forwarders (the consumer's MaxDeliver): an
// event that left the queue without a dead letter.
func watchMaxDeliver(ctx context.Context, p *process, reg prometheus.Registerer, log *slog.Logger) error {
	reached := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stowline_forwarder_max_deliver_reached_total",
		Help: "Events JetStream stopped delivering to the forwarders after the consumer's MaxDeliver, without a dead letter; `forwarder audit` lists their studies.",
	})
	if err := reg.Register(reached); err != nil {
		return err
	}
	stop, err := natsjs.WatchMaxDeliver(p.conn.NC, natsjs.ForwarderConsumer, func(a natsjs.MaxDeliverReached) {
		reached.Inc()
		log.Error("JetStream stopped delivering an event after the consumer's MaxDeliver, without a dead letter: run `forwarder audit --enqueue` to queue its study again",
			"stream_seq", a.StreamSeq, "deliveries", a.Deliveries)
	})
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, stop)
	return nil
}

// sourceFor returns the Orthanc of the event's source. An unknown source
// is an error matching ErrUnknownSource, classified permanent: retrying
// cannot help, so the study is dead-lettered at once and can be replayed
// once the source is configured.
func (r *forwarderRole) sourceFor(name string) (forward.Source, error) {
	c, err := r.sources.Lookup(name)
	if err != nil {
		return nil, &forward.Error{Class: forward.Permanent, Err: err}
	}
	return c, nil
}

// cleanerFor returns the Orthanc of the event's source for buffer mode.
func (r *forwarderRole) cleanerFor(name string) (forward.SourceCleaner, error) {
	return r.sources.Lookup(name)
}

// newDestinationTransport is tuned for a few long uploads to one host:
// connections are reused, HTTP/2 is used where offered, and a server that
// never answers is noticed.
func newDestinationTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A STOW-RS response comes after the whole body is stored; a
		// large request can take minutes, so no ResponseHeaderTimeout.
	}
}

// urlHost is the host of a configured URL: a bounded label value that
// holds no path, query or credentials.
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return u.Host
}
