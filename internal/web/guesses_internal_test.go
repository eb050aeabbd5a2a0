package web

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

const rightGuess = "admin-token-0123456789"

// newTestGuessGuard is a guess guard whose clock stands still until the
// test moves *now.
func newTestGuessGuard(now *time.Time) *guessGuard {
	g := newGuessGuard("test", nil, nil, func(w http.ResponseWriter, status int, msg string) { http.Error(w, msg, status) })
	g.wrong.now = func() time.Time { return *now }
	return g
}

// guessStatus presents tok from client to g: 200 if g let the request
// through, 401 for a wrong token it counted, 429 if it refused the client.
func guessStatus(g *guessGuard, client, tok string) int {
	r := httptest.NewRequest(http.MethodGet, "/ui", nil)
	r.RemoteAddr = net.JoinHostPort(client, "40000")
	rec := httptest.NewRecorder()
	authorized := func() (bool, bool) { return true, tok == rightGuess }
	if g.check(rec, r, authorized, func() { rec.WriteHeader(http.StatusUnauthorized) }) {
		return http.StatusOK
	}
	return rec.Code
}

// The wrong tokens of an IPv4 address count together, and those of an
// IPv6 /48: a tunnel broker hands out a /48 for free, and counted per
// /64 its 65,536 networks would each have their own ten guesses.
func TestGuessesCountPerNetwork(t *testing.T) {
	tests := []struct {
		name, guesser, other string
		shared               bool
	}{
		{"IPv4: the same address", "192.0.2.7", "192.0.2.7", true},
		{"IPv4: another address", "192.0.2.7", "192.0.2.8", false},
		{"IPv4-mapped IPv6: its IPv4 address", "::ffff:192.0.2.7", "192.0.2.7", true},
		{"IPv6: the same /64", "2001:db8:7:1::1", "2001:db8:7:1:abcd::2", true},
		{"IPv6: another /64 of the same /48", "2001:db8:7:1::1", "2001:db8:7:ffff::2", true},
		{"IPv6: another /48", "2001:db8:7::1", "2001:db8:8::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1_790_000_000, 0)
			g := newTestGuessGuard(&now)
			for i := range guessBurst {
				if code := guessStatus(g, tt.guesser, "wrong"); code != http.StatusUnauthorized {
					t.Fatalf("wrong token %d from %s: %d, want 401", i+1, tt.guesser, code)
				}
			}
			want := http.StatusOK
			if tt.shared {
				want = http.StatusTooManyRequests
			}
			if code := guessStatus(g, tt.other, rightGuess); code != want {
				t.Errorf("the right token from %s after %d wrong ones from %s: %d, want %d", tt.other, guessBurst, tt.guesser, code, want)
			}
		})
	}
}

// Filling the table with new clients gives no client back the guesses it
// spent: neither a blocked one nor one a guess short of blocked. The
// clients past the bound share one budget, and the table stays bounded.
func TestGuessesNotForgottenWhenTableFull(t *testing.T) {
	tests := []struct {
		name, client string
		spent        int // wrong tokens client sent before the flood
	}{
		{"blocked IPv4 client", "192.0.2.7", guessBurst},
		{"blocked IPv6 /48", "2001:db8:7::1", guessBurst},
		{"IPv4 client a guess short of blocked", "192.0.2.7", guessBurst - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1_790_000_000, 0)
			g := newTestGuessGuard(&now)
			for range tt.spent {
				guessStatus(g, tt.client, "wrong")
			}
			// A flood of new clients, a microsecond apart, one wrong
			// token each: enough to fill the table, then to spend the
			// budget the ones past it share.
			flood := func(i int) string { return fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255) }
			n := maxClients - 1 + guessBurst
			for i := range n {
				now = now.Add(time.Microsecond)
				if code := guessStatus(g, flood(i), "wrong"); code != http.StatusUnauthorized {
					t.Fatalf("new client %d of the flood: %d, want 401", i+1, code)
				}
			}
			left := 0
			for guessStatus(g, tt.client, "wrong") == http.StatusUnauthorized && left <= guessBurst {
				left++
			}
			if want := guessBurst - tt.spent; left != want {
				t.Errorf("%s had %d wrong tokens left after the flood, want %d (as before it)", tt.client, left, want)
			}
			if code := guessStatus(g, flood(n), "wrong"); code != http.StatusTooManyRequests {
				t.Errorf("a new client once those past the bound spent their %d: %d, want 429", guessBurst, code)
			}
			if size := g.wrong.size(); size > maxClients+1 {
				t.Errorf("%d clients tracked, want at most %d and the shared bucket", size, maxClients)
			}
			// Once idle long enough to be full again, all are forgotten.
			now = now.Add(g.wrong.idleAfter())
			if code := guessStatus(g, "198.51.100.1", "wrong"); code != http.StatusUnauthorized {
				t.Errorf("a new client once the flood aged out: %d, want 401", code)
			}
			if size := g.wrong.size(); size != 1 {
				t.Errorf("%d clients tracked once the flood aged out, want 1", size)
			}
		})
	}
}
