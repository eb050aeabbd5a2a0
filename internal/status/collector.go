package status

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultScrapeTimeout bounds the JetStream queries of one scrape.
const DefaultScrapeTimeout = 2 * time.Second

// QueueCollector exports the queue depth and the dead-letter count, read
// from JetStream at every scrape (so every process reports the same,
// current numbers, whichever replica did the work).
type QueueCollector struct {
	js      jetstream.JetStream
	timeout time.Duration
	log     *slog.Logger

	pending, ackPending, redelivered, waiting, deadLetters, up *prometheus.Desc
}

// NewQueueCollector returns the collector; timeout 0 means
// DefaultScrapeTimeout. Register it on the process's registry.
func NewQueueCollector(js jetstream.JetStream, timeout time.Duration, log *slog.Logger) *QueueCollector {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &QueueCollector{
		js: js, timeout: timeout, log: log,
		pending: prometheus.NewDesc("stowline_queue_pending_events",
			"Events stored in JetStream and not yet delivered to a forwarder (consumer num_pending).", nil, nil),
		ackPending: prometheus.NewDesc("stowline_queue_ack_pending_events",
			"Events delivered to a forwarder and not yet acknowledged: being sent, or waiting for a retry (consumer num_ack_pending).", nil, nil),
		redelivered: prometheus.NewDesc("stowline_queue_redelivered_events",
			"Unacknowledged events that were delivered more than once (consumer num_redelivered).", nil, nil),
		waiting: prometheus.NewDesc("stowline_queue_waiting_pulls",
			"Pull requests open on the consumer: forwarder workers idle and waiting for an event (consumer num_waiting).", nil, nil),
		deadLetters: prometheus.NewDesc("stowline_deadletter_studies",
			"Studies in the dead-letter stream, waiting for an operator to replay or purge them.", nil, nil),
		up: prometheus.NewDesc("stowline_jetstream_info_success",
			"1 if JetStream answered this scrape's queue queries in time, else 0 (and the queue metrics are absent).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.ackPending, c.redelivered, c.waiting, c.deadLetters, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it queries JetStream now.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	q, err := ReadQueue(ctx, c.js)
	if err != nil {
		c.log.Warn("queue metrics: JetStream did not answer", "err", err)
		gauge(ch, c.up, 0)
		return
	}
	gauge(ch, c.up, 1)
	gauge(ch, c.pending, float64(q.Pending))
	gauge(ch, c.ackPending, float64(q.AckPending))
	gauge(ch, c.redelivered, float64(q.Redelivered))
	gauge(ch, c.waiting, float64(q.Waiting))
	gauge(ch, c.deadLetters, float64(q.DeadLetters))
}

// gauge sends one label-less gauge sample.
func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64) {
	if m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v); err == nil {
		ch <- m
	}
}
