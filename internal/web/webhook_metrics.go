package web

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	received       *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	publishSeconds prometheus.Histogram
	// previousToken counts requests authenticated by a token other than
	// the first (INGEST_TOKEN_PREVIOUS): at 0 the rotation is done.
	previousToken prometheus.Counter
	// lastUpdateAhead counts events stored whose lastUpdate is more than
	// events.MaxLastUpdateAhead after their arrival.
	lastUpdateAhead prometheus.Counter
	// otherSource counts events stored under a source name the
	// reconciler does not publish under.
	otherSource prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_ingest_events_received_total",
			Help: "Events stored in JetStream, by result (accepted, duplicate).",
		}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_ingest_events_rejected_total",
			Help: "Webhook requests refused, by reason.",
		}, []string{"reason"}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "stowline_ingest_publish_duration_seconds",
			Help:    "Time from publish to JetStream acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18), // to 65.5 s: INGEST_PUBLISH_TIMEOUT reaches 50 s
		}),
		previousToken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stowline_ingest_previous_token_total",
			Help: "Webhook requests authenticated with INGEST_TOKEN_PREVIOUS rather than INGEST_TOKEN: an Orthanc not yet given the new token.",
		}),
		lastUpdateAhead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stowline_ingest_events_lastupdate_ahead_total",
			Help: "Valid webhook events (authenticated, queued or not) whose lastUpdate is more than a day after the ingest received them: an Orthanc clock ahead, which also dates the study and its ledger records ahead: mend it; or a forged event, whose value the forwarders do not record.",
		}),
		otherSource: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stowline_ingest_events_unreconciled_source_total",
			Help: "Webhook events stored whose source is none of those this ingest's reconciler publishes under: the Lua script's Stowline.Source and ORTHANC_SOURCE_NAME differ, and each study is queued under both names.",
		}),
	}
	for _, r := range []string{"accepted", "duplicate"} {
		m.received.WithLabelValues(r)
	}
	// From 0, so that an alert on their increase (StowlineNATSStorageFull,
	// StowlineWebhookRefused, StowlineWebhookNotStored: every refusal of
	// an authenticated post) fires at the first refusal, not the second.
	for _, r := range []string{"jetstream_unavailable", "jetstream_full", "unauthorized", "bad_signature",
		"unsupported_media_type", "malformed", "invalid", "too_large", "timeout"} {
		m.rejected.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.received, m.rejected, m.publishSeconds, m.previousToken, m.lastUpdateAhead, m.otherSource} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ingest: register metrics: %w", err)
		}
	}
	return m, nil
}
