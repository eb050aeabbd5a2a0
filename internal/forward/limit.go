package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/flow"
)

// overloadResends is how many times one request refused with 429 (too
// many requests: this one, not the service), or with 503 while the
// destination serves others (busyWithin), is sent again within a
// delivery, after resendDelay doubling, the limiter's halving and any
// Retry-After, before the study fails transiently (and is retried later
// with backoff). A Retry-After longer than resendPause fails the study at
// once instead: its worker is better spent on other studies, and the
// retry policy honours the Retry-After too. A time-out, or a 503 with no
// request answered within busyWithin, halves the limit and fails the
// study at once, as an outage should: the backoff, not re-sends, paces
// the requests of a destination that is down.
const (
	overloadResends = 5
	resendPause     = 5 * time.Second
	resendDelay     = 250 * time.Millisecond
)

// busyWithin: a 503 is the destination's load, not an outage, when it
// answered a request without overload this recently. A proxy in front of
// a busy server answers 503 above its limit by default (nginx's
// limit_conn and limit_req, HAProxy's queue time-out); failing the study
// and counting it for the breaker made a busy destination open and close
// the breaker in a loop (each close puts the limit back to the ceiling).
// A request still refused after overloadResends fails the study as any
// 503: a destination down right after an answer is counted about 8 s
// (the re-sends' delays) after a fast 503, but a proxy answering 503
// after its connect time-out S (Envoy) makes each send take S: up to
// about busyWithin + S after the last answer, more while requests queue
// at a low limit. Only STOW answers count (Permit.Done), not the probe's
// nor STOW_VERIFY's queries.
const busyWithin = time.Minute

// The status label values of stowline_forwarder_stow_resends_total.
const (
	resend429 = "429"
	resend503 = "503"
)

// newLimiter returns the limiter all studies of the destination share in
// this process: between MinRequestConcurrency and RequestConcurrency STOW
// requests in flight, adapted (internal/flow). Changes are counted by
// reason; a decrease is logged at info, an increase at debug.
func newLimiter(opts *Options, reg prometheus.Registerer, log *slog.Logger) (*flow.Limiter, error) {
	labels := prometheus.Labels{"destination": opts.DestinationName}
	changes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_stow_parallel_changes_total",
		Help:        "Changes of stowline_forwarder_stow_parallel_limit, by reason: increase (throughput grew, latency held), no_gain (the last increase did not pay), latency (requests took over twice the best time of recent rounds, allowing for their size), overload_429, overload_503, timeout (halved), retry_after (new requests paused, limit unchanged), replica_share (the replicas serving the destination changed), recovered (back from an outage: the start level again), probe_down (half the start level tried once), probe_up (back from that try: half carried less).",
		ConstLabels: labels,
	}, []string{"reason"})
	for _, r := range flow.Reasons {
		changes.WithLabelValues(string(r))
	}
	floor := max(opts.MinRequestConcurrency, 1)
	l, err := flow.New(flow.Options{Min: floor, Max: max(opts.RequestConcurrency, floor), OnChange: func(c flow.Change) {
		changes.WithLabelValues(string(c.Reason)).Inc()
		switch {
		case c.Reason == flow.RetryAfter:
			log.Info("destination asked to wait: no new STOW-RS request before the pause ends", "pause", c.Pause.String(), "limit", c.To)
		case c.To < c.From:
			log.Info("fewer STOW-RS requests in flight to the destination", "from", c.From, "to", c.To, "reason", string(c.Reason))
		default:
			log.Debug("more STOW-RS requests in flight to the destination", "from", c.From, "to", c.To, "reason", string(c.Reason))
		}
	}})
	if err != nil {
		return nil, fmt.Errorf("forward: request concurrency: %w", err)
	}
	// Read at each scrape: changes are reported outside the limiter's
	// lock, so two at once could be reported in the other order and a
	// gauge set from them left showing the older limit.
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "stowline_forwarder_stow_parallel_limit",
		Help:        "STOW-RS requests this process may have in flight to the destination now, over all its studies (adapted between STOW_PARALLEL_MIN and STOW_PARALLEL_REQUESTS, or this replica's share of it).",
		ConstLabels: labels,
	}, func() float64 { return float64(l.Limit()) })
	for _, c := range []prometheus.Collector{gauge, changes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("forward: register metrics: %w", err)
		}
	}
	return l, nil
}

// SetReplicas tells the forwarder how many replicas serve its destination
// (itself included): its ceiling of STOW-RS requests in flight becomes its
// share of RequestConcurrency, and the studies it may park its share of
// MaxParked, so that together they stay within them.
func (f *Forwarder) SetReplicas(n int) {
	f.limit.SetReplicas(n)
	if f.unknown != nil {
		f.unknown.mu.Lock()
		f.unknown.replicas = n
		f.unknown.mu.Unlock()
	}
	if f.parking != nil {
		f.parking.mu.Lock()
		f.parking.replicas = n
		f.parking.mu.Unlock()
	}
}

// overload reports whether a request's error says the destination is
// overloaded (429, 503, a time-out), with its Retry-After. A request
// cancelled by ctx is no overload.
func overload(ctx context.Context, err error) (flow.Reason, time.Duration, bool) {
	if err == nil || ctx.Err() != nil {
		return "", 0, false
	}
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusTooManyRequests:
			return flow.Overload429, he.RetryAfter, true
		case http.StatusServiceUnavailable:
			return flow.Overload503, he.RetryAfter, true
		case http.StatusRequestTimeout, http.StatusGatewayTimeout:
			return flow.Timeout, he.RetryAfter, true
		}
		return "", 0, false
	}
	// Only the destination's own silence: a time-out reading the source
	// (a slow conversion in Orthanc) says nothing about the destination.
	var ne net.Error
	if errors.Is(err, dicomweb.ErrNoAnswer) && (errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)) {
		return flow.Timeout, 0, true
	}
	return "", 0, false
}

// requestPriority is the priority of a study's requests for a place in
// the limit: a stat study's go before the others', so that it does not
// wait behind a backfill's even with a small share of the limit (8
// replicas of 16: 2 each); a low lane's go last.
func requestPriority(lane events.Priority) flow.Priority {
	switch lane {
	case events.PriorityStat:
		return flow.High
	case events.PriorityLow:
		return flow.Low
	}
	return flow.Normal
}

// requestsAtOnce is the number a study's requests are a multiple of:
// the current limit (flow's SplitLimit), shared by the studies this
// process sends now, so that the studies together fill it (a study alone fills it), without
// splitting small studies into tiny requests for a ceiling not reached.
func (f *Forwarder) requestsAtOnce() int {
	if f.limit == nil {
		return max(f.opts.RequestConcurrency, 1)
	}
	return max(f.limit.SplitLimit()/max(int(f.sending.Load()), 1), 1)
}
