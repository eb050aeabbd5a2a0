package reconcile

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	lag       *prometheus.GaugeVec
	leaseHeld *prometheus.GaugeVec
	pending   *prometheus.GaugeVec
	published *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	// changesSkipped counts changes moved past while Orthanc kept failing.
	changesSkipped *prometheus.CounterVec
	pollErrors     *prometheus.CounterVec
	polls          *prometheus.CounterVec
	resets         *prometheus.CounterVec
	// changeLogTrimmed counts cursor changes gone while their resource
	// is still in Orthanc (cursorChangeGone).
	changeLogTrimmed *prometheus.CounterVec
	// clockUnavailable is 1 while Orthanc refuses GET /tools/now.
	clockUnavailable *prometheus.GaugeVec
	// cursorMissing counts starts without a cursor for a source the
	// event stream holds events of (cursorLost).
	cursorMissing *prometheus.CounterVec
	// lastSuccess and interval let StowlineReconcilerFailing wait for a
	// poll as long as RECONCILE_POLL_INTERVAL asks: counts of polls over
	// a fixed window missed an interval longer than the window.
	lastSuccess *prometheus.GaugeVec
	interval    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stowline_reconcile_lag_changes",
			Help: "Entries of the source's change log the reconciler has not read yet (Orthanc's last change minus the cursor); only the replica holding the lease reports it.",
		}, []string{"source"}),
		leaseHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stowline_reconcile_lease_held",
			Help: "1 while this replica holds the source's lease and polls its change log, else 0.",
		}, []string{"source"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stowline_reconcile_pending_studies",
			Help: "Studies that received instances and are waiting to become stable; only the replica holding the lease reports them.",
		}, []string{"source"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_events_published_total",
			Help: "Events the reconciler published, by result (stored; duplicate: JetStream already had it, from the Lua script or an earlier poll).",
		}, []string{"source", "result"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_studies_skipped_total",
			Help: "Stable studies not published, by reason (deleted: gone from Orthanc; invalid: the event would be invalid).",
		}, []string{"source", "reason"}),
		changesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_changes_skipped_total",
			Help: "New instances and series whose study Orthanc kept failing to read (an error answer other than 408, 429, 502, 503 or 504, 5 polls in a row): the reconciler moved past them.",
		}, []string{"source"}),
		pollErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_poll_errors_total",
			Help: "Polls that failed (Orthanc unreachable, JetStream unreachable or its storage full); the reconciler backs off and retries. Source \"(unnamed)\": the Orthanc without a configured source name could not be asked its name.",
		}, []string{"source"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_polls_total",
			Help: "Polls that read a page of the change log and stored the cursor (only the replica holding the lease polls): with stowline_reconcile_poll_errors_total, whether polls fail now and then or all of them.",
		}, []string{"source"}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_change_log_resets_total",
			Help: "Times the source's change log was found reset (Orthanc's database recreated, restored from a backup or replaced) and rescanned from the start.",
		}, []string{"source"}),
		changeLogTrimmed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_change_log_trimmed_total",
			Help: "Times the change the cursor points at was found gone from the source's change log while the resource it names is still in Orthanc: the log was trimmed (DELETE /changes); run forwarder audit.",
		}, []string{"source"}),
		clockUnavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stowline_reconcile_clock_unavailable",
			Help: "1 while Orthanc (or its proxy) refuses GET /tools/now: stable studies are published without the same-second check, which Orthanc processes sharing one database need; only the replica holding the lease reports it.",
		}, []string{"source"}),
		cursorMissing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_reconcile_cursor_missing_total",
			Help: "Times the reconciler found no cursor for a source whose events the event stream holds (its bucket lost or recreated, the cursor deleted): it started at the end of the change log, so studies whose webhook was lost before are not published; run forwarder audit --enqueue.",
		}, []string{"source"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stowline_reconcile_last_poll_success_timestamp_seconds",
			Help: "Unix time of this replica's last poll of the source that read the change log and stored the cursor; the time it took the source's lease, if none succeeded before; 0 before it took the lease.",
		}, []string{"source"}),
		interval: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stowline_reconcile_poll_interval_seconds",
			Help: "RECONCILE_POLL_INTERVAL: the pause between polls once a source's change log is read to its end.",
		}),
	}
	for _, c := range []prometheus.Collector{m.lag, m.leaseHeld, m.pending, m.published, m.skipped, m.changesSkipped, m.pollErrors, m.polls, m.resets, m.changeLogTrimmed, m.clockUnavailable, m.cursorMissing, m.lastSuccess, m.interval} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("reconcile: register metrics: %w", err)
		}
	}
	return m, nil
}

// init creates the series of a source, so they are exported as 0 before
// anything happens.
func (m *metrics) init(source string) {
	m.lag.WithLabelValues(source)
	m.leaseHeld.WithLabelValues(source)
	m.pending.WithLabelValues(source)
	for _, r := range []string{"stored", "duplicate"} {
		m.published.WithLabelValues(source, r)
	}
	for _, r := range []string{"deleted", "invalid"} {
		m.skipped.WithLabelValues(source, r)
	}
	m.changesSkipped.WithLabelValues(source)
	m.pollErrors.WithLabelValues(source)
	m.polls.WithLabelValues(source)
	m.resets.WithLabelValues(source)
	m.changeLogTrimmed.WithLabelValues(source)
	m.clockUnavailable.WithLabelValues(source)
	m.cursorMissing.WithLabelValues(source)
	m.lastSuccess.WithLabelValues(source)
}

// drop deletes the series of a source, renamed since.
func (m *metrics) drop(source string) {
	for _, v := range []*prometheus.MetricVec{m.lag.MetricVec, m.leaseHeld.MetricVec, m.pending.MetricVec,
		m.published.MetricVec, m.skipped.MetricVec, m.changesSkipped.MetricVec, m.pollErrors.MetricVec, m.polls.MetricVec, m.resets.MetricVec,
		m.changeLogTrimmed.MetricVec, m.clockUnavailable.MetricVec, m.cursorMissing.MetricVec, m.lastSuccess.MetricVec} {
		v.DeletePartialMatch(prometheus.Labels{"source": source})
	}
}
