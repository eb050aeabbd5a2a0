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
// destination; and, alongside, how full stowline's streams, its buckets
// and the account's storage are against their limits (readStorage).
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
	// unsized spaces the warnings of storage reads that failed.
	unsized repeatlog.Failures

	// mu serializes the reads; last is the last one's answer, doneAt
	// when it ended: scrapes that came while it ran, or within reuse
	// after it, take its answer. Each read is 3 JetStream requests a
	// destination and more, and /metrics answers anyone who can reach
	// the port: scrapes at once (a scan, a flood) made as many reads at
	// once against the JetStream leaders the forwarders depend on, and a
	// client scraping in a loop a read each; now at most one a reuse.
	mu     sync.Mutex
	last   queueRead
	doneAt time.Time
	reuse  time.Duration

	pending, ackPending, redelivered, waiting, deadLetters, up *prometheus.Desc
	unreadable                                                 *prometheus.Desc
	lanePending                                                *prometheus.Desc
	laneAckPending                                             *prometheus.Desc

	// serverLimits is the embedded server's storage limits (nil: NATS
	// is not embedded; WithServerLimits).
	serverLimits func() (file, memory int64, ok bool)

	streamBytes, streamMessages, streamMaxBytes *prometheus.Desc
	accountBytes, accountLimit                  *prometheus.Desc
}

// scrapeReuse is how long a read of the queues stands for the scrapes
// after it (Prometheus scrapes every 15 s or more).
const scrapeReuse = time.Second

// QueueOption configures a QueueCollector.
type QueueOption func(*QueueCollector)

// WithServerLimits gives the collector the JetStream server's own storage
// limits, read at each scrape: those of the embedded server of a single
// host (natsjs.Conn.EmbeddedStorageLimits), whose account has none, so
// that its stowline_jetstream_account_limit_bytes is the limit that
// refuses writes.
func WithServerLimits(limits func() (file, memory int64, ok bool)) QueueOption {
	return func(c *QueueCollector) { c.serverLimits = limits }
}

// NewQueueCollector returns the collector; timeout 0 means
// DefaultScrapeTimeout. Register it on the process's registry.
func NewQueueCollector(js jetstream.JetStream, timeout time.Duration, log *slog.Logger, opts ...QueueOption) *QueueCollector {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dest := []string{"destination"}
	c := &QueueCollector{
		js: js, timeout: timeout, log: log, reuse: scrapeReuse,
		unanswered: repeatlog.Failures{Every: time.Minute},
		unread:     repeatlog.Failures{Every: time.Minute},
		unsized:    repeatlog.Failures{Every: time.Minute},
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
		streamBytes: prometheus.NewDesc("stowline_jetstream_stream_bytes",
			"Bytes stored in each of stowline's JetStream streams; a key-value bucket is its stream, KV_<bucket>.", []string{"stream"}, nil),
		streamMessages: prometheus.NewDesc("stowline_jetstream_stream_messages",
			"Messages stored in each of stowline's JetStream streams (for a key-value bucket, KV_<bucket>: its keys, with their kept history and delete markers).", []string{"stream"}, nil),
		streamMaxBytes: prometheus.NewDesc("stowline_jetstream_stream_max_bytes",
			"The stream's size limit (MaxBytes), set by an operator (stowline sets none); absent when it has none.", []string{"stream"}, nil),
		accountBytes: prometheus.NewDesc("stowline_jetstream_account_bytes",
			"Bytes the NATS account stores in JetStream, by storage (file, memory), all streams of the account counted.", []string{"storage"}, nil),
		accountLimit: prometheus.NewDesc("stowline_jetstream_account_limit_bytes",
			"The NATS account's JetStream storage limit (max_file, max_mem), by storage; on a single host's embedded server, the lower of it and the server's own (nats-server's default: 75% of the disk free at start); absent when there is none (another server's max_file_store / max_memory_store still applies).", []string{"storage"}, nil),
		up: prometheus.NewDesc("stowline_jetstream_info_success",
			"1 if JetStream answered this scrape's queue queries in time, else 0 (and the queue metrics are absent).", nil, nil),
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.ackPending, c.redelivered, c.waiting, c.deadLetters, c.up, c.lanePending, c.laneAckPending, c.unreadable, c.streamBytes, c.streamMessages, c.streamMaxBytes, c.accountBytes, c.accountLimit} {
		ch <- d
	}
}

// queueRead is one read of the queues (ReadQueue).
type queueRead struct {
	q   Queue
	err error
	// storage and storageErr are readStorage's answer, made alongside.
	storage    storageRead
	storageErr error
}

// Collect implements prometheus.Collector: it queries JetStream now, or
// takes the answer of a query that ended while it waited for it.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.read()
	if r.storageErr == nil {
		c.collectStorage(ch, r.storage)
	}
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

// collectStorage sends the storage samples; a limit that is not set
// (0, or -1 for unlimited) is left out, so that a ratio to it is absent.
func (c *QueueCollector) collectStorage(ch chan<- prometheus.Metric, st storageRead) {
	for _, s := range st.Streams {
		gauge(ch, c.streamBytes, float64(s.Bytes), s.Stream)
		gauge(ch, c.streamMessages, float64(s.Messages), s.Stream)
		if s.MaxBytes > 0 {
			gauge(ch, c.streamMaxBytes, float64(s.MaxBytes), s.Stream)
		}
	}
	a := st.Account
	gauge(ch, c.accountBytes, float64(a.Store), "file")
	gauge(ch, c.accountBytes, float64(a.Memory), "memory")
	file, memory := a.Limits.MaxStore, a.Limits.MaxMemory
	if c.serverLimits != nil {
		if f, m, ok := c.serverLimits(); ok {
			file, memory = lowerLimit(file, f), lowerLimit(memory, m)
		}
	}
	if file > 0 {
		gauge(ch, c.accountLimit, float64(file), "file")
	}
	if memory > 0 {
		gauge(ch, c.accountLimit, float64(memory), "memory")
	}
}

// lowerLimit is the lower of two limits, where one below 0 is none.
func lowerLimit(a, b int64) int64 {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
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
	if c.doneAt.After(came.Add(-c.reuse)) {
		return c.last
	}
	defer func() { c.doneAt = time.Now() }()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var (
		storage    storageRead
		storageErr error
		wg         sync.WaitGroup
	)
	wg.Go(func() { storage, storageErr = readStorage(ctx, c.js) })
	q, err := ReadQueue(ctx, c.js)
	wg.Wait()
	c.last = queueRead{q: q, err: err, storage: storage, storageErr: storageErr}
	if err != nil {
		if n, ok := c.unanswered.Failed(); ok {
			c.log.Warn("queue metrics: JetStream did not answer (stowline_jetstream_info_success 0; logged again once a minute while it lasts)", "err", err, "failures", n)
		}
		return c.last
	}
	if n := c.unanswered.Succeeded(); n > 0 {
		c.log.Info("queue metrics: JetStream answers again", "failures", n)
	}
	// Logged only while the queues are read: an outage is the queue
	// warning's.
	c.logStorage(storage, storageErr)
	if q.UnreadErr != nil {
		if n, ok := c.unread.Failed(); ok {
			c.log.Warn("queue metrics: lane consumers could not be read; their destinations' queue totals left out (stowline_queue_unreadable_consumers; logged again once a minute while it lasts)", "err", q.UnreadErr, "failures", n)
		}
	} else if n := c.unread.Succeeded(); n > 0 {
		c.log.Info("queue metrics: every lane consumer read again", "failures", n)
	}
	return c.last
}

// logStorage warns, a minute apart, of storage reads that failed: their
// metrics are left out of the scrape, and an alert on them cannot fire.
func (c *QueueCollector) logStorage(st storageRead, err error) {
	if err == nil {
		err = st.StreamsErr
	}
	if err != nil {
		if n, ok := c.unsized.Failed(); ok {
			c.log.Warn("storage metrics: JetStream did not answer for the account or a stream; their stowline_jetstream_stream_* and _account_* samples left out (logged again once a minute while it lasts)", "err", err, "failures", n)
		}
	} else if n := c.unsized.Succeeded(); n > 0 {
		c.log.Info("storage metrics: JetStream answers again", "failures", n)
	}
}
