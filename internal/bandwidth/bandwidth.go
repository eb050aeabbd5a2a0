// Package bandwidth caps the bytes per second sent to a destination
// (STOW_MAX_BYTES_PER_SECOND): a token bucket shared by every request of
// the destination in the process, whose rate is the process's share of
// the cap when several replicas serve the destination.
package bandwidth

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/stowline/stowline/internal/flow"
)

// burstFraction: the bucket holds 1/burstFraction of a second of the
// rate, so a request never sends more than that ahead of the cap, and
// chunks stay small enough to share the rate fairly between requests.
const burstFraction = 20

// minBurst keeps the chunks of a low cap from being tiny.
const minBurst = 4 << 10

// Limiter is the token bucket of one destination. Its zero value and a
// nil *Limiter do not limit.
type Limiter struct {
	mu       sync.Mutex
	limit    int64 // the whole cap, bytes per second
	replicas int
	lim      *rate.Limiter
}

// New returns the limiter of a cap of bytesPerSecond over every replica
// (0: no cap). It takes the whole cap until SetReplicas says otherwise.
func New(bytesPerSecond int64) *Limiter {
	l := &Limiter{limit: bytesPerSecond, replicas: 1}
	if bytesPerSecond > 0 {
		l.lim = rate.NewLimiter(rate.Limit(bytesPerSecond), burst(bytesPerSecond))
	}
	return l
}

func burst(bytesPerSecond int64) int {
	return int(max(bytesPerSecond/burstFraction, minBurst))
}

// SetReplicas shares the cap between n replicas (at least 1): this
// process sends at most cap/n bytes per second.
func (l *Limiter) SetReplicas(n int) {
	if l == nil || l.lim == nil {
		return
	}
	n = max(n, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if n == l.replicas {
		return
	}
	l.replicas = n
	r := max(l.limit/int64(n), 1)
	l.lim.SetLimit(rate.Limit(r))
	l.lim.SetBurst(burst(r))
}

// Rate is this process's rate now, bytes per second (0: no cap): the
// bucket's own, which the reads wait on, so that what the log and the
// tests see is what is sent.
func (l *Limiter) Rate() int64 {
	if l == nil || l.lim == nil {
		return 0
	}
	return int64(l.lim.Limit())
}

// Limited reports whether there is a cap.
func (l *Limiter) Limited() bool { return l != nil && l.lim != nil }

// Reader returns r, read no faster than the limiter allows; reads wait
// for the bucket, or end with ctx's error.
func (l *Limiter) Reader(ctx context.Context, r io.Reader) io.Reader {
	if !l.Limited() {
		return r
	}
	return &reader{ctx: ctx, r: r, l: l}
}

type reader struct {
	ctx context.Context
	r   io.Reader
	l   *Limiter
}

func (r *reader) Read(p []byte) (int, error) {
	// rate.Limiter is safe for concurrent use: no lock of ours per read.
	b := r.l.lim.Burst()
	if len(p) > b {
		p = p[:b]
	}
	n, err := r.r.Read(p)
	// Wait before the bytes leave: the chunk is sent only once the
	// bucket holds it. In pieces of the burst as it is now: SetReplicas
	// may have lowered it while Read waited, and WaitN refuses more.
	// The wait is the cap's, not the destination's: told to the request's
	// limit (flow.ReportWait), else a cap below what the destination
	// takes would read as its latency and lower the requests in flight.
	start := time.Now()
	defer func() { flow.ReportWait(r.ctx, time.Since(start)) }()
	for left := n; left > 0; {
		piece := min(left, r.l.lim.Burst())
		if werr := r.l.lim.WaitN(r.ctx, piece); werr != nil {
			if r.ctx.Err() == nil && piece > r.l.lim.Burst() {
				continue // lowered between the two calls: a smaller piece
			}
			return 0, werr
		}
		left -= piece
	}
	return n, err
}

// Transport returns rt with every request body read through the
// limiter: the cap counts what is sent to the destination, whatever the
// request (STOW-RS bodies; a GET has none).
func (l *Limiter) Transport(rt http.RoundTripper) http.RoundTripper {
	if !l.Limited() {
		return rt
	}
	return &transport{rt: rt, l: l}
}

type transport struct {
	rt http.RoundTripper
	l  *Limiter
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return t.rt.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.Body = &body{Reader: t.l.Reader(req.Context(), req.Body), c: req.Body}
	return t.rt.RoundTrip(r)
}

type body struct {
	io.Reader
	c io.Closer
}

func (b *body) Close() error { return b.c.Close() }
