package web

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// maxClients bounds the per-client table: beyond it the least recently
// seen clients' buckets are dropped (a dropped client starts again with a
// full bucket, which only ever errs on the side of admitting), or, in a
// limiter that shares its overflow, the new clients share one bucket.
const maxClients = 10000

// overflowKey is the bucket the clients past maxClients share in a
// limiter that shares its overflow.
const overflowKey = ""

// fullSweepEvery spaces the sweeps of a table kept full by a shared
// overflow: a flood of new clients would otherwise scan it at each
// request.
const fullSweepEvery = time.Second

// limiter is a token bucket per client IP address.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	// shareOverflow: past maxClients, new clients share the bucket
	// overflowKey, and only idle clients are dropped, instead of the
	// least recently seen half.
	shareOverflow bool

	mu      sync.Mutex
	clients map[string]*bucket
	lastGC  time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int, now func() time.Time) *limiter {
	if burst < 1 {
		burst = 1
	}
	return &limiter{rate: rate, burst: float64(burst), now: now, clients: map[string]*bucket{}}
}

// allow takes a token of client's bucket; if there is none it returns how
// long until there is.
func (l *limiter) allow(client string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.evictLocked(now)
	client = l.keyLocked(client)
	b, ok := l.clients[client]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.clients[client] = b
	}
	b.tokens, b.last = l.level(b, now), now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, l.waitFor(b.tokens)
}

// level is b's tokens at now, refilled since b.last.
func (l *limiter) level(b *bucket, now time.Time) float64 {
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		return math.Min(l.burst, b.tokens+elapsed*l.rate)
	}
	return b.tokens
}

// waitFor is how long a bucket holding tokens (below one) waits for one.
func (l *limiter) waitFor(tokens float64) time.Duration {
	return time.Duration((1 - tokens) / l.rate * float64(time.Second))
}

// empty reports whether client's bucket has no token left, and how long
// until it has one, without taking any.
func (l *limiter) empty(client string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	// Swept as allow sweeps, so that both find client in the same bucket.
	l.evictLocked(now)
	b, ok := l.clients[l.keyLocked(client)]
	if !ok {
		return false, 0
	}
	if tokens := l.level(b, now); tokens < 1 {
		return true, l.waitFor(tokens)
	}
	return false, 0
}

// idleAfter is how long a client's bucket takes to refill completely; an
// entry idle that long is equal to a new one and can go.
func (l *limiter) idleAfter() time.Duration {
	return time.Duration(l.burst/l.rate*float64(time.Second)) + time.Second
}

// keyLocked is the key of client's bucket: client's own, unless the
// limiter shares its overflow, client has no bucket yet and the table is
// full.
func (l *limiter) keyLocked(client string) string {
	if _, ok := l.clients[client]; ok || !l.shareOverflow || len(l.clients) < maxClients {
		return client
	}
	return overflowKey
}

// evictLocked drops the idle clients (equal to new ones), and, unless the
// limiter shares its overflow, the oldest half of a table still full.
func (l *limiter) evictLocked(now time.Time) {
	idle := l.idleAfter()
	since := now.Sub(l.lastGC)
	full := len(l.clients) >= maxClients
	if !full && since < idle {
		return
	}
	if full && l.shareOverflow && since < fullSweepEvery {
		return
	}
	l.lastGC = now
	for k, b := range l.clients {
		if now.Sub(b.last) >= idle {
			delete(l.clients, k)
		}
	}
	// Still full of active clients: drop the oldest half.
	if !l.shareOverflow && len(l.clients) >= maxClients {
		var oldest time.Time
		for _, b := range l.clients {
			if oldest.IsZero() || b.last.Before(oldest) {
				oldest = b.last
			}
		}
		cut := oldest.Add(now.Sub(oldest) / 2)
		for k, b := range l.clients {
			if !b.last.After(cut) {
				delete(l.clients, k)
			}
		}
	}
}

// clientIP is the client's address: the peer's, or, when the peer is one
// of the trusted proxies, the right-most X-Forwarded-For address that is
// not itself a trusted proxy. Addresses further left are not used: anyone
// can put anything there, only what the trusted proxies appended counts.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	peer := r.RemoteAddr
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	if len(trusted) == 0 || !isTrusted(peer, trusted) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := hopAddr(strings.TrimSpace(hops[i]))
		if !ok {
			return peer // a garbled chain: fall back to what is certain
		}
		if !trustedAddr(a, trusted) {
			return a.String()
		}
	}
	return peer
}

// limitKey is the key of a client's bucket in the webhook's rate limit:
// its address, or for IPv6 its /64 network, whose 2^64 addresses one host
// may use at will (privacy addresses change by themselves): counted per
// address, a client would never run out of requests.
func limitKey(client string) string {
	return networkKey(client, 64)
}

// networkKey is client's IPv4 address, or its IPv6 network of v6Bits;
// client as is if it is no address.
func networkKey(client string, v6Bits int) string {
	a, err := netip.ParseAddr(client)
	if err != nil {
		return client
	}
	if a = a.Unmap().WithZone(""); a.Is4() {
		return a.String()
	}
	return netip.PrefixFrom(a, v6Bits).Masked().String()
}

// hopAddr reads an X-Forwarded-For entry: an address, or an address and
// port as some proxies write it (Azure Application Gateway: ip:port,
// [v6]:port); the port and an IPv6 zone are dropped.
func hopAddr(hop string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(hop)
	if err != nil {
		ap, perr := netip.ParseAddrPort(hop)
		if perr != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone(""), true
}

func isTrusted(addr string, trusted []netip.Prefix) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	return trustedAddr(a.Unmap().WithZone(""), trusted)
}

func trustedAddr(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
