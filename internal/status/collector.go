package status

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/repeatlog"
)

// DefaultScrapeTimeout bounds the JetStream queries of one scrape.
const DefaultScrapeTimeout = 2 * time.Second

// QueueCollector exports each destination's queue depth and dead-letter
// count, read from JetStream at every scrape (so every process reports the
// same, current numbers, whichever replica did the work), labelled
// destination.
type QueueCollector struct {
	js      jetstream.JetStream
	timeout time.Duration
	log     *slog.Logger
	// unanswered spaces the outage's warnings: every scrape of every
	// Prometheus asks, and fails the same way, while NATS is down.
	unanswered repeatlog.Failures
	// unread spaces the warnings of lane consumers that cannot be read
	// (on a cluster, their servers offline or electing a leader).
	unread repeatlog.Failures

	// mu serializes the reads; last is the last one's answer, doneAt
	// when it ended: scrapes that came while it ran take its answer.
	// Each read is 3 JetStream requests a destination and more, and
	// /metrics answers anyone who can reach the port: scrapes at once (a
	// scan, a flood) made as many reads at once against the JetStream
	// leaders the forwarders depend on; now one at a time.
	mu     sync.Mutex
	last   queueRead
	doneAt time.Time

	pending, ackPending, redelivered, waiting, deadLetters, up *prometheus.Desc
	unreadable                                                 *prometheus.Desc
	lanePending                                                *prometheus.Desc
	laneAckPending                                             *prometheus.Desc
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
	dest := []string{"destination"}
	return &QueueCollector{
		js: js, timeout: timeout, log: log,
		unanswered: repeatlog.Failures{Every: time.Minute},
		unread:     repeatlog.Failures{Every: time.Minute},
		pending: prometheus.NewDesc("stowline_queue_pending_events",
			"Events stored in JetStream and not yet delivered to the destination's forwarders (consumer num_pending).", dest, nil),
		ackPending: prometheus.NewDesc("stowline_queue_ack_pending_events",
			"Events delivered to the destination's forwarders and not yet acknowledged: being sent, or waiting for a retry (consumer num_ack_pending).", dest, nil),
		redelivered: prometheus.NewDesc("stowline_queue_redelivered_events",
			"Unacknowledged events that were delivered more than once (consumer num_redelivered).", dest, nil),
		waiting: prometheus.NewDesc("stowline_queue_waiting_pulls",
			"Pull requests open on the destination's consumer: forwarder workers idle and waiting for an event (consumer num_waiting).", dest, nil),
		deadLetters: prometheus.NewDesc("stowline_deadletter_studies",
			"Studies of the destination in the dead-letter stream, waiting for an operator to replay or purge them.", dest, nil),
		lanePending: prometheus.NewDesc("stowline_queue_lane_pending_events",
			"Events not yet delivered to the destination's forwarders, by priority lane (stat, routine, low): the num_pending of each lane's consumer.", []string{"destination", "lane"}, nil),
		laneAckPending: prometheus.NewDesc("stowline_queue_lane_ack_pending_events",
			"Events delivered and not yet acknowledged, by priority lane (stat, routine, low): the num_ack_pending of each lane's consumer.", []string{"destination", "lane"}, nil),
		unreadable: prometheus.NewDesc("stowline_queue_unreadable_consumers",
			"Lane consumers of the destination that exist but JetStream did not answer for in this scrape (on a cluster: their servers offline or electing a leader); while above 0 the destination's queue totals are absent and only its readable lanes are reported.", dest, nil),
		up: prometheus.NewDesc("stowline_jetstream_info_success",
			"1 if JetStream answered this scrape's queue queries in time, else 0 (and the queue metrics are absent).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.ackPending, c.redelivered, c.waiting, c.deadLetters, c.up, c.lanePending, c.laneAckPending, c.unreadable} {
		ch <- d
	}
}

// queueRead is one read of the queues (ReadQueue).
type queueRead struct {
	q   Queue
	err error
}

// Collect implements prometheus.Collector: it queries JetStream now, or
// takes the answer of a query that ended while it waited for it.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.read()
	if r.err != nil {
		gauge(ch, c.up, 0)
		return
	}
	q := r.q
	gauge(ch, c.up, 1)
	if !q.ConsumerExists {
		// No forwarder made its consumer yet, so the destinations are not
		// known: the stream's events are pending under an empty
		// destination until one does.
		gauge(ch, c.pending, float64(q.Pending), "")
		gauge(ch, c.ackPending, 0, "")
		gauge(ch, c.redelivered, 0, "")
		gauge(ch, c.waiting, 0, "")
		if len(q.Destinations) == 0 {
			gauge(ch, c.deadLetters, 0, "")
		}
	}
	for _, d := range q.Destinations {
		if d.ConsumerExists {
			gauge(ch, c.unreadable, float64(len(d.Unread)), d.Destination)
			// A sum over the lanes read would be taken for the whole
			// queue (a backlog looking drained): left out.
			if len(d.Unread) == 0 {
				gauge(ch, c.pending, float64(d.Pending), d.Destination)
				gauge(ch, c.ackPending, float64(d.AckPending), d.Destination)
				gauge(ch, c.redelivered, float64(d.Redelivered), d.Destination)
				gauge(ch, c.waiting, float64(d.Waiting), d.Destination)
			}
			for lane, l := range d.Lanes {
				gauge(ch, c.lanePending, float64(l.Pending), d.Destination, string(lane))
				gauge(ch, c.laneAckPending, float64(l.AckPending), d.Destination, string(lane))
			}
		}
		gauge(ch, c.deadLetters, float64(d.DeadLetters), d.Destination)
	}
}

// gauge sends one gauge sample.
func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	if m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, labels...); err == nil {
		ch <- m
	}
}

// read reads the queues, or returns the read that ended while it waited
// for another to finish.
func (c *QueueCollector) read() queueRead {
	came := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.doneAt.After(came) {
		return c.last
	}
	defer func() { c.doneAt = time.Now() }()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	q, err := ReadQueue(ctx, c.js)
	c.last = queueRead{q: q, err: err}
	if err != nil {
		if n, ok := c.unanswered.Failed(); ok {
			c.log.Warn("queue metrics: JetStream did not answer (stowline_jetstream_info_success 0; logged again once a minute while it lasts)", "err", err, "failures", n)
		}
		return c.last
	}
	if n := c.unanswered.Succeeded(); n > 0 {
		c.log.Info("queue metrics: JetStream answers again", "failures", n)
	}
	if q.UnreadErr != nil {
		if n, ok := c.unread.Failed(); ok {
			c.log.Warn("queue metrics: lane consumers could not be read; their destinations' queue totals left out (stowline_queue_unreadable_consumers; logged again once a minute while it lasts)", "err", q.UnreadErr, "failures", n)
		}
	} else if n := c.unread.Succeeded(); n > 0 {
		c.log.Info("queue metrics: every lane consumer read again", "failures", n)
	}
	return c.last
}
