package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/web"
)

// startReconciler runs the change-log reconciler of every Orthanc source
// with the ingest (unless RECONCILE_ENABLED is false) and adds a readiness
// check per source to checks.
func startReconciler(g *group, ctx context.Context, js *JetStream, nc config.NATS, oc *config.Orthanc, rc *config.Reconcile,
	publishTimeout time.Duration, reg prometheus.Registerer, checks map[string]web.Check, log *slog.Logger) error {
	if !rc.Enabled {
		log.Warn("reconciler disabled (RECONCILE_ENABLED=false): a lost webhook event goes unnoticed until `forwarder audit` runs")
		return nil
	}
	sources, err := NewSources(oc)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kv, err := reconcile.EnsureBucket(bctx, js.JS, nc.Replicas)
	if err != nil {
		return err
	}
	var rs []reconcile.Source
	for _, s := range sources.List() {
		rs = append(rs, reconcile.Source{Name: s.Name, Orthanc: s.Client})
	}
	rec, err := reconcile.New(reconcile.Options{
		Sources:        rs,
		KV:             kv,
		Publisher:      web.JetStreamPublisher{JS: js.JS},
		PollInterval:   rc.PollInterval,
		LeaseTTL:       rc.LeaseTTL,
		PublishTimeout: publishTimeout,
		Logger:         log,
		Registerer:     reg,
	})
	if err != nil {
		return err
	}
	for name, check := range rec.Checks() {
		checks[name] = web.Advisory(check)
	}
	g.Go("reconciler", func() error { return rec.Run(ctx) })
	return nil
}
