package app

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"time"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/web"
)

// RunIngest runs the webhook service until ctx ends.
func RunIngest(ctx context.Context, c *config.IngestService, log *slog.Logger) error {
	return run(ctx, log, c.NATS, 0, &c.Ingest, nil, &c.Orthanc, &c.Reconcile, c.Admin, c.ListenTLS)
}

// RunForwarder runs the forwarder until ctx ends.
func RunForwarder(ctx context.Context, c *config.ForwarderService, log *slog.Logger) error {
	return run(ctx, log, c.NATS, c.AckWait, nil, &c.Forwarder, &c.Orthanc, nil, c.Admin, c.ListenTLS)
}

// RunSingleHost runs ingest and forwarder in one process, on an embedded
// JetStream server unless NATS_URL is set.
func RunSingleHost(ctx context.Context, c *config.SingleHost, log *slog.Logger) error {
	return run(ctx, log, c.NATS, c.AckWait, &c.Ingest, &c.Forwarder, &c.Orthanc, &c.Reconcile, c.Admin, c.ListenTLS)
}

func run(ctx context.Context, log *slog.Logger, nc config.NATS, ackWait time.Duration, ic *config.Ingest, fc *config.Forwarder,
	oc *config.Orthanc, rc *config.Reconcile, admin config.Admin, lt config.ListenTLS) error {
	serverTLS, err := listenTLS(lt, log)
	if err != nil {
		return err
	}
	js, err := ConnectJetStream(ctx, nc, Topology(nc, ackWait), log)
	if err != nil {
		return err
	}
	// Closed last: the servers and workers below stop first, so every
	// accepted event is published and every ack is flushed.
	defer js.Close()

	g, gctx := newGroup(ctx)
	st := newStatusWiring(js, admin, ic != nil && fc != nil, log)
	if ic != nil {
		reg := NewRegistry()
		h, err := web.NewWebhook(web.WebhookOptions{
			Tokens:         []string{ic.Token},
			HMACSecret:     ic.HMACSecret,
			HMACMaxSkew:    ic.HMACMaxSkew,
			RateLimit:      ic.RateLimit,
			RateBurst:      ic.RateBurst,
			TrustedProxies: ic.TrustedProxies,
			Publisher:      web.JetStreamPublisher{JS: js.JS},
			PublishTimeout: ic.PublishTimeout,
			Logger:         log.With("component", "ingest"),
			Registerer:     reg,
		})
		if err != nil {
			return err
		}
		checks := map[string]web.Check{"jetstream": js.Ready}
		if err := startReconciler(g, gctx, js, nc, oc, rc, ic.PublishTimeout, reg, checks, log.With("component", "reconciler")); err != nil {
			g.cancel()
			_ = g.Wait()
			return err
		}
		r := newRouter()
		h.Mount(r)
		if err := errors.Join(st.registerQueue(reg), st.mountUI(r)); err != nil {
			g.cancel()
			_ = g.Wait()
			return err
		}
		web.Mount(r, reg, checks)
		if err := serveHTTP(g, gctx, "ingest", ic.Addr, r, serverTLS, log); err != nil {
			g.cancel()
			_ = g.Wait()
			return err
		}
	}
	if fc != nil {
		if err := startForwarder(g, gctx, js, nc, ackWait, fc, oc, st, serverTLS, log.With("component", "forwarder")); err != nil {
			g.cancel()
			_ = g.Wait()
			return err
		}
	}
	log.Info("stowline started")
	err = g.Wait()
	log.Info("stowline stopped", "err", err)
	return err
}

func startForwarder(g *group, ctx context.Context, js *JetStream, nc config.NATS, ackWait time.Duration, fc *config.Forwarder, oc *config.Orthanc, st *statusWiring, serverTLS *tls.Config, log *slog.Logger) error {
	reg := NewRegistry()
	if err := st.registerQueue(reg); err != nil {
		return err
	}
	deps, err := NewForwarderDeps(ctx, fc, oc, reg, log)
	if err != nil {
		return err
	}
	completed, err := completedRecorder(ctx, js, nc)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cons, err := ensureConsumer(cctx, js, nc, ackWait)
	if err != nil {
		return err
	}
	dls, err := deadletter.Ensure(cctx, js.JS, fc.DeadLetterRetention, nc.Replicas)
	if err != nil {
		return err
	}
	failures, err := deadletter.EnsureFailureLog(cctx, js.JS, nc.EventsRetention, nc.Replicas)
	if err != nil {
		return err
	}
	opts := forward.Options{
		Consumer:           cons,
		SourceFor:          deps.SourceFor,
		Destination:        deps.Destination,
		Concurrency:        fc.Concurrency,
		MaxInstances:       fc.StowMaxInstances,
		MaxBytes:           int64(fc.StowMaxBytes),
		RequestConcurrency: fc.StowParallel,
		AckWait:            fc.AckWait,
		RetryDelay:         fc.RetryDelay,
		RetryMaxDelay:      fc.RetryMaxDelay,
		DeadLetters:        dls,
		Failures:           failures,
		MaxDeliveries:      fc.MaxDeliveries,
		InstanceRetries:    fc.InstanceRetries,
		Completed:          completed,
		Logger:             log,
		Registerer:         reg,
	}
	if fc.DeleteFromSource {
		opts.CleanerFor = deps.CleanerFor
		log.Warn("buffer mode: forwarded instances are deleted from the source Orthanc once the destination stored them (FORWARDER_DELETE_FROM_SOURCE=true)")
	}
	if err := st.track(g, ctx, nc, fc, deps, &opts, log); err != nil {
		return err
	}
	fw, err := forward.New(opts)
	if err != nil {
		return err
	}
	r := newRouter()
	checks := map[string]web.Check{
		"jetstream": js.Ready,
		"orthanc":   deps.SourceReady,
	}
	if deps.Tokens != nil {
		checks["destination_token"] = deps.TokenReady
	}
	web.Mount(r, reg, checks)
	if st.adminToken != "" {
		(&web.AdminAPI{Store: dls, JS: js.JS, Token: st.adminToken, Log: log.With("component", "admin")}).Mount(r)
	} else {
		log.Info("ADMIN_TOKEN is empty: the admin API (dead letters, replay) is disabled")
	}
	if err := serveHTTP(g, ctx, "forwarder", fc.Addr, r, serverTLS, log); err != nil {
		return err
	}
	g.Go("forwarder", func() error { return fw.Run(ctx) })
	return nil
}
