package web

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// size is the number of clients the limiter holds.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// The per-client table stays bounded however many addresses send.
func TestLimiterBounded(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	l := newLimiter(10, 20, func() time.Time { return now })
	for i := range 5 * maxClients {
		now = now.Add(time.Microsecond)
		if ok, _ := l.allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)); !ok {
			t.Fatal("a new client was limited")
		}
		if n := l.size(); n > maxClients {
			t.Fatalf("%d clients tracked, want at most %d", n, maxClients)
		}
	}
	// Idle clients are evicted once their bucket would be full again.
	now = now.Add(l.idleAfter())
	l.allow("192.0.2.1")
	if n := l.size(); n != 1 {
		t.Errorf("%d clients tracked after all went idle, want 1", n)
	}
}

func TestClientIP(t *testing.T) {
	lb := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")}
	tests := []struct {
		name, remote string
		xff          []string
		trusted      []netip.Prefix
		want         string
	}{
		{"no proxies configured: header ignored", "192.0.2.7:5000", []string{"198.51.100.1"}, nil, "192.0.2.7"},
		{"untrusted peer: header ignored", "192.0.2.7:5000", []string{"198.51.100.1"}, lb, "192.0.2.7"},
		{"trusted peer names the client", "10.0.0.5:5000", []string{"198.51.100.1"}, lb, "198.51.100.1"},
		{"spoofed left entries ignored", "10.0.0.5:5000", []string{"203.0.113.66, 198.51.100.1"}, lb, "198.51.100.1"},
		{"chain of trusted proxies", "10.0.0.5:5000", []string{"198.51.100.1, 10.0.0.9"}, lb, "198.51.100.1"},
		{"several header lines", "10.0.0.5:5000", []string{"203.0.113.66", "198.51.100.1"}, lb, "198.51.100.1"},
		{"no header: the proxy itself", "10.0.0.5:5000", nil, lb, "10.0.0.5"},
		{"garbage: the proxy itself", "10.0.0.5:5000", []string{"198.51.100.1, not-an-ip"}, lb, "10.0.0.5"},
		{"only proxies in the chain", "10.0.0.5:5000", []string{"10.0.0.6"}, lb, "10.0.0.5"},
		{"IPv6 proxy", "[fd00::1]:5000", []string{"2001:db8::7"}, lb, "2001:db8::7"},
		{"IPv4-mapped client", "10.0.0.5:5000", []string{"::ffff:198.51.100.1"}, lb, "198.51.100.1"},
		{"client with a port (Azure Application Gateway)", "10.0.0.5:5000", []string{"198.51.100.1:51234"}, lb, "198.51.100.1"},
		{"IPv6 client with a port", "10.0.0.5:5000", []string{"[2001:db8::7]:51234"}, lb, "2001:db8::7"},
		{"trusted proxy with a port, then the client", "10.0.0.5:5000", []string{"198.51.100.1, 10.0.0.9:443"}, lb, "198.51.100.1"},
		{"IPv6 proxy with a zone", "[fd00::1%eth0]:5000", []string{"2001:db8::7"}, lb, "2001:db8::7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientIP(r, tt.trusted); got != tt.want {
				t.Errorf("clientIP = %q, want %q", got, tt.want)
			}
		})
	}
}

// The "event rejected" lines are spaced per reason and client, so that a
// flood from one address does not hide another client's refusal, and the
// clients told apart stay bounded: past refusalClients (none quiet for a
// minute), the others share one count per reason.
func TestRefusalLogPerClientBounded(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	var l refusalLog
	for range 100 {
		l.refused("unauthorized", "192.0.2.1", now)
	}
	if _, log := l.refused("unauthorized", "192.0.2.2", now); !log {
		t.Error("another client's first refusal, during a flood from one address, was not logged")
	}
	// An IPv6 host is its /64, as the rate limit counts it: new addresses
	// of it neither get lines of their own nor fill the table.
	l.refused("unauthorized", "2001:db8::1", now)
	if _, log := l.refused("unauthorized", "2001:db8::2", now); log {
		t.Error("another address of the same IPv6 /64 was logged as a new client")
	}
	for i := range refusalClients - 3 { // with the three above: full
		l.refused("unauthorized", fmt.Sprintf("10.0.%d.%d", i>>8, i&255), now)
	}
	if _, log := l.refused("unauthorized", "198.51.100.1", now); !log {
		t.Error("the first refusal past the bound was not logged")
	}
	if n, log := l.refused("unauthorized", "198.51.100.2", now); log || n != 1 {
		t.Errorf("a second client past the bound: logged %v, count %d since the shared line; want 1, not logged", log, n)
	}
	if len(l.clients) > refusalClients+1 {
		t.Fatalf("%d clients kept, want at most %d and the shared count", len(l.clients), refusalClients)
	}
	// A minute on, the quiet clients make room.
	now = now.Add(refusalLogEvery)
	if _, log := l.refused("unauthorized", "198.51.100.3", now); !log {
		t.Error("a new client a minute later was not logged")
	}
	if _, ok := l.clients[refusalKey{"unauthorized", "198.51.100.3"}]; !ok {
		t.Error("the quiet clients made no room for a new one")
	}
}
