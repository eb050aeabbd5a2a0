package faultproxy

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// InFlightLimit answers 429 Too Many Requests, with a Retry-After when
// set, to a request that arrives while n others are being served: a
// throttled service (a request quota, HealthImaging's
// ThrottlingException); or 503 (BusyInFlight). Requests it refuses are
// not passed on.
type InFlightLimit struct {
	next       http.Handler
	n          int64
	retryAfter time.Duration
	status     int

	inFlight, most atomic.Int64
	refused        atomic.Int64
}

// LimitInFlight wraps next. retryAfter is rounded up to whole seconds (0:
// no header).
func LimitInFlight(next http.Handler, n int, retryAfter time.Duration) *InFlightLimit {
	return &InFlightLimit{next: next, n: int64(n), retryAfter: retryAfter, status: http.StatusTooManyRequests}
}

// BusyInFlight wraps next, answering 503 Service Unavailable without a
// Retry-After above n requests in flight, as a proxy in front of a busy
// server does by default (nginx's limit_conn and limit_req, HAProxy's
// queue time-out).
func BusyInFlight(next http.Handler, n int) *InFlightLimit {
	return &InFlightLimit{next: next, n: int64(n), status: http.StatusServiceUnavailable}
}

func (l *InFlightLimit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		l.next.ServeHTTP(w, r)
		return
	}
	defer l.inFlight.Add(-1)
	if now := l.inFlight.Add(1); now > l.n {
		l.refused.Add(1)
		if l.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((l.retryAfter+time.Second-1)/time.Second)))
		}
		http.Error(w, "too many requests in flight", l.status)
		return
	}
	for {
		m, now := l.most.Load(), l.inFlight.Load()
		if now <= m || l.most.CompareAndSwap(m, now) {
			break
		}
	}
	l.next.ServeHTTP(w, r)
}

// Refused counts the requests refused (429, or 503).
func (l *InFlightLimit) Refused() int64 { return l.refused.Load() }

// Most is the most requests served at once.
func (l *InFlightLimit) Most() int64 { return l.most.Load() }
