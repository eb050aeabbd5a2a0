package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/web"
)

// ingestRole is the webhook service: the webhook, the change-log
// reconciler and the status page, on INGEST_ADDR.
type ingestRole struct {
	cfg       *config.Ingest
	reconcile *config.Reconcile
	// sources are the Orthancs the reconciler and PRIORITY_RULE read; nil
	// when neither is on.
	sources *Sources
	// sourceMetrics: the ingest's /metrics reports the sources' request
	// slots; not in a single host, whose forwarder reports the same
	// clients.
	sourceMetrics bool
}

func (r *ingestRole) start(ctx context.Context, g *errgroup.Group, p *process) error {
	reg := newRegistry()
	log := p.log.With("component", "ingest")
	// The webhook's and the reconciler's events go in the lane of their
	// priority, or PRIORITY_RULE's.
	pub, err := newPrioritizer(p.conn.JS, r.cfg.Priority.Rule, r.sources, reg, log)
	if err != nil {
		return err
	}
	pub.reconciled = r.reconcile != nil && r.reconcile.Enabled
	if r.cfg.Priority.Rule != "" {
		log.Info("PRIORITY_RULE: studies it is true for go in the stat lane")
	}
	tokens := []string{r.cfg.Token}
	if r.cfg.PreviousToken != "" {
		tokens = append(tokens, r.cfg.PreviousToken)
	}
	warnWebhookAuth(log, r.cfg)
	checks := map[string]web.Check{
		"jetstream": p.conn.Ready,
		// A refusal may be one lane's or one source's subject: the others
		// are stored, and a publish there is what clears it (or 10 min
		// without a refusal there).
		"jetstream_publish": web.Advisory(p.conn.PublishRefused),
	}
	rec, err := r.startReconciler(ctx, g, p, pub, reg, checks)
	if err != nil {
		return err
	}
	var sourceNames func() []string
	sourcesNamed := false
	if rec != nil {
		sourceNames = rec.Names
		for _, s := range r.sources.List() {
			sourcesNamed = sourcesNamed || s.Name != ""
		}
	}
	h, err := web.NewWebhook(web.WebhookOptions{
		Tokens:         tokens,
		HMACSecret:     r.cfg.HMACSecret,
		HMACMaxSkew:    r.cfg.HMACMaxSkew,
		RateLimit:      r.cfg.RateLimit,
		RateBurst:      r.cfg.RateBurst,
		TrustedProxies: r.cfg.TrustedProxies,
		Publisher:      webhookPublisher{p: pub, ctx: ctx, connected: p.conn.NC.IsConnected},
		PublishTimeout: r.cfg.PublishTimeout,
		Logger:         log,
		Registerer:     reg,
		TracerProvider: p.tracer,
		SourceNames:    sourceNames,
		SourcesNamed:   sourcesNamed,
	})
	if err != nil {
		return err
	}
	if err := reg.Register(natsReconnects(p.conn.NC)); err != nil {
		return err
	}
	router := newRouter()
	h.Mount(router)
	if r.sources != nil && r.sourceMetrics {
		if err := reg.Register(r.sources.collector()); err != nil {
			return err
		}
	}
	if err := errors.Join(p.status.registerQueue(reg), p.status.mountUI(router, r.cfg.TrustedProxies)); err != nil {
		return err
	}
	web.MountHealth(router, reg, checks)
	// Once the webhook takes no more events, those it answered for that
	// still wait for PRIORITY_RULE are stored before the process closes
	// its JetStream connection.
	return serveHTTP(ctx, g, p.starting, "ingest", "INGEST_ADDR", r.cfg.Addr, router, p.serverTLS, ingestHTTPGrace(r.cfg.PublishTimeout), p.log, func() { pub.drainTriage(triageShutdownWait-triageShutdownQueue, triageShutdownQueue) })
}

// warnWebhookAuth logs, once at start, the webhook settings that refuse
// Orthanc's posts unless the operator acts; never the secrets.
func warnWebhookAuth(log *slog.Logger, cfg *config.Ingest) {
	if cfg.PreviousToken != "" {
		log.Warn("INGEST_TOKEN_PREVIOUS is accepted too: unset it once every Orthanc sends INGEST_TOKEN (stowline_ingest_previous_token_total stops growing)")
	}
	if cfg.HMACSecret != "" {
		log.Warn("INGEST_HMAC_SECRET is set: Orthanc's Lua script cannot sign, so the webhook refuses its posts (401, reason bad_signature) unless a signing proxy between Orthanc and the ingest adds X-Stowline-Timestamp and X-Stowline-Signature; without one, Orthanc's studies are queued by the reconciler alone, and not at all with RECONCILE_ENABLED=false (docs/webhook-security.md)")
	}
}

// startReconciler runs the change-log reconciler of every Orthanc source
// (unless RECONCILE_ENABLED is false: nil) and adds a readiness check per
// source to checks.
func (r *ingestRole) startReconciler(ctx context.Context, g *errgroup.Group, p *process, pub events.Publisher, reg prometheus.Registerer, checks map[string]web.Check) (*reconcile.Reconciler, error) {
	log := p.log.With("component", "reconciler")
	if !r.reconcile.Enabled {
		log.Warn("reconciler disabled (RECONCILE_ENABLED=false): a lost webhook event goes unnoticed until `forwarder audit` runs")
		if r.cfg.Priority.Rule != "" {
			// The 202 came once the triage copy was stored; its lane
			// copy is made in memory after it.
			log.Warn("PRIORITY_RULE without the reconciler: a study the webhook answered for reaches its lane after the answer, and one whose ingest dies or fails to store it then stays on the triage subject until `forwarder audit --enqueue` runs; keep RECONCILE_ENABLED=true with PRIORITY_RULE")
		}
		return nil, nil
	}
	if err := r.reconcile.AlertWarning(); err != nil {
		log.Warn("RECONCILE_POLL_INTERVAL is too long for an alert", "err", err)
	}
	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	kv, err := p.topo.EnsureReconcile(pctx, p.conn.JS)
	if err != nil {
		return nil, err
	}
	// Read to tell a lost cursor from a first start.
	stream, err := p.conn.JS.Stream(pctx, natsjs.EventStream)
	if err != nil {
		return nil, fmt.Errorf("reconciler: open the event stream: %w", err)
	}
	var rs []reconcile.Source
	for _, s := range r.sources.List() {
		rs = append(rs, reconcile.Source{Name: s.Name, Orthanc: s.Client})
	}
	rec, err := reconcile.New(reconcile.Options{
		Sources:        rs,
		KV:             kv,
		Publisher:      pub,
		Events:         stream,
		PollInterval:   r.reconcile.PollInterval,
		LeaseTTL:       r.reconcile.LeaseTTL,
		AdoptCursor:    r.reconcile.CursorAdoption(),
		PublishTimeout: r.cfg.PublishTimeout,
		Logger:         log,
		Registerer:     reg,
		TracerProvider: p.tracer,
	})
	if err != nil {
		return nil, err
	}
	for name, check := range rec.Checks() {
		checks[name] = web.Advisory(check)
	}
	g.Go(named("reconciler", func() error { return rec.Run(ctx) }))
	return rec, nil
}

// natsReconnects counts the ingest's reconnects to NATS. While it is
// cut off, its readiness fails, and a Kubernetes Service (or a balancer)
// refuses Orthanc's posts before they reach the webhook, uncounted by
// stowline_ingest_events_rejected_total: with the reconciler off those
// studies are lost, and StowlineWebhookNotStored reads this too.
func natsReconnects(nc *nats.Conn) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "stowline_ingest_nats_reconnects_total",
		Help: "Times the ingest's NATS connection was lost and made again (Orthanc's posts meanwhile may have been refused before they reached it).",
	}, func() float64 { return float64(nc.Stats().Reconnects) })
}
