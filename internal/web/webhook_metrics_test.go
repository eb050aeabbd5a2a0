package web_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/web"
)

// TestWebhookAlertedRefusalsStartAtZero: the refusals deploy/alerts.yml
// alerts on are exported at 0 from the start. increase() needs two
// samples, so a series the first refusal created alerted only at the
// second: with every post refused for a wrong token, one study a night
// went unalerted.
func TestWebhookAlertedRefusalsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: natsjs.Publisher{}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "stowline_ingest_events_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					exported[l.GetValue()] = true
				}
			}
		}
	}
	for _, reason := range []string{"jetstream_unavailable", "jetstream_full", "unauthorized", "bad_signature",
		"unsupported_media_type", "malformed", "invalid", "too_large", "timeout"} {
		if !exported[reason] {
			t.Errorf("stowline_ingest_events_rejected_total{reason=%q} is not exported before the first refusal", reason)
		}
	}
}

// The publish histogram reaches INGEST_PUBLISH_TIMEOUT's largest value
// (50 s): a slow JetStream past the top bucket counted only in +Inf, so
// the p99 metrics.md tells operators to watch stayed flat at 4 s.
func TestPublishBucketsCoverTheTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: natsjs.Publisher{}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if top := testharness.HistogramTop(t, reg, "stowline_ingest_publish_duration_seconds"); top < 50 {
		t.Errorf("top bucket %g s, want at least 50 s", top)
	}
}
