package status

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TokenStatus is what a forwarder knows about its destination's OAuth2
// token: never the token itself.
type TokenStatus struct {
	// Destination names the destination; Host is its DICOMweb URL's host.
	Destination string `json:"destination"`
	Host        string `json:"host,omitempty"`
	// OAuth is false when requests go without authentication.
	OAuth bool `json:"oauth"`
	// TokenHost is the host of the token endpoint.
	TokenHost   string    `json:"tokenHost,omitempty"`
	Fetches     uint64    `json:"fetches"`
	Errors      uint64    `json:"errors"`
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
	// LastError is the text of the last failed fetch (the token endpoint's
	// error and description; the client secret is scrubbed from it).
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
}

// OK reports whether the last fetch, if any, succeeded.
func (s TokenStatus) OK() bool { return s.LastErrorAt.IsZero() || s.LastSuccess.After(s.LastErrorAt) }

// TokenWatch observes a destination's token fetches (auth.WithObserver)
// for the metrics and the status page.
type TokenWatch struct {
	mu sync.Mutex
	st TokenStatus

	fetches     prometheus.Counter
	errors      prometheus.Counter
	duration    prometheus.Histogram
	lastSuccess prometheus.Gauge
}

// NewTokenWatch returns the watch of one destination, whose DICOMweb URL
// is on host. With oauth set it registers the token metrics on reg,
// labelled with the destination's name.
func NewTokenWatch(destination, host, tokenHost string, oauth bool, reg prometheus.Registerer) (*TokenWatch, error) {
	w := &TokenWatch{st: TokenStatus{Destination: destination, Host: host, OAuth: oauth, TokenHost: tokenHost}}
	if !oauth || reg == nil {
		return w, nil
	}
	labels := prometheus.Labels{"destination": destination}
	w.fetches = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stowline_forwarder_token_fetches_total", ConstLabels: labels,
		Help: "Requests to the destination's OAuth2 token endpoint (successful or not).",
	})
	w.errors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stowline_forwarder_token_fetch_errors_total", ConstLabels: labels,
		Help: "Requests to the destination's OAuth2 token endpoint that gave no token (endpoint down, credentials refused).",
	})
	w.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "stowline_forwarder_token_fetch_duration_seconds", ConstLabels: labels,
		Help:    "Time of one request to the destination's OAuth2 token endpoint.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 13), // to 41 s: the client times out at 30 s
	})
	w.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "stowline_forwarder_token_last_success_timestamp_seconds", ConstLabels: labels,
		Help: "Unix time of the last token obtained from the destination's token endpoint (0: none yet).",
	})
	for _, c := range []prometheus.Collector{w.fetches, w.errors, w.duration, w.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("status: register token metrics: %w", err)
		}
	}
	return w, nil
}

// Observe records one request to the token endpoint; it has the signature
// auth.WithObserver wants and never blocks for long.
func (w *TokenWatch) Observe(err error, d time.Duration) {
	now := time.Now().UTC()
	w.mu.Lock()
	w.st.Fetches++
	if err != nil {
		w.st.Errors++
		w.st.LastError = err.Error()
		w.st.LastErrorAt = now
	} else {
		w.st.LastSuccess = now
	}
	w.mu.Unlock()
	if w.fetches == nil {
		return
	}
	w.fetches.Inc()
	w.duration.Observe(d.Seconds())
	if err != nil {
		w.errors.Inc()
	} else {
		w.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	}
}

// Status returns the current token status.
func (w *TokenWatch) Status() TokenStatus {
	if w == nil {
		return TokenStatus{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}
