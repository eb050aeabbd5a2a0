package web

import (
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// A client address may present a wrong admin token guessBurst times, then
// once every guessEvery: the admin API and the status page share one
// token, which must not be guessed at speed.
const (
	guessBurst = 10
	guessEvery = 6 * time.Second
)

// guessKey is the key of a client's wrong guesses: its IPv4 address, or
// its IPv6 /48. Not the /64 of limitKey: a /48 is free from a tunnel
// broker, and its 65,536 /64s, ten guesses each, would make 655,360
// guesses at once and 11,000 a second after. The cost: the users of one
// site's /48 share the count, as those behind one IPv4 NAT do.
func guessKey(client string) string {
	return networkKey(client, 48)
}

// guessGuard throttles wrong admin credentials per client address. A
// request without credentials is no guess (a browser asks once before it
// sends them) and is not counted.
type guessGuard struct {
	// mu makes a check whole: requests at once could otherwise all find
	// tokens left before any of them took one.
	mu      sync.Mutex
	wrong   *limiter
	trusted []netip.Prefix
	log     *slog.Logger
	what    string // "admin API" or "status page", for the log
	// refuse writes an error answer as the guarded handlers do (JSON or
	// plain text).
	refuse func(w http.ResponseWriter, status int, msg string)
}

func newGuessGuard(what string, trusted []netip.Prefix, log *slog.Logger, refuse func(w http.ResponseWriter, status int, msg string)) *guessGuard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wrong := newLimiter(1/guessEvery.Seconds(), guessBurst, time.Now)
	// Dropping the oldest clients of a full table, as the webhook's rate
	// limit does, gave those dropped a fresh ten guesses: a guesser with
	// 10,000 networks filled the table and got its spent guesses back.
	// Keeping only the blocked ones would not do: one a guess short of
	// blocked would still get nine back, and a table full of blocked
	// clients would have no room. Dropping only idle clients, whose
	// bucket has refilled completely, gives back nothing, and the clients
	// past the bound sharing one bucket share its ten guesses; the table
	// stays bounded. The cost: during such a flood, an operator without a
	// wrong token of its own in the last minute (a right one takes no
	// bucket) shares that bucket, and may be refused until the flood
	// stops.
	wrong.shareOverflow = true
	return &guessGuard{wrong: wrong, trusted: trusted, log: log, what: what, refuse: refuse}
}

// check runs the credential check authorized (which reports whether the
// request presented any, and whether they are right) unless the client
// used up its wrong guesses, in which case it answers 429 itself, the
// credentials unchecked. It returns whether the request may go on;
// unauthorized says how to answer wrong or missing credentials.
func (g *guessGuard) check(w http.ResponseWriter, r *http.Request, authorized func() (presented, ok bool), unauthorized func()) bool {
	client := clientIP(r, g.trusted)
	key := guessKey(client)
	g.mu.Lock()
	defer g.mu.Unlock()
	if blocked, wait := g.wrong.empty(key); blocked {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		g.refuse(w, http.StatusTooManyRequests, "too many requests with a wrong admin token from this address; retry later")
		return false
	}
	presented, ok := authorized()
	if ok {
		return true
	}
	if presented {
		g.wrong.allow(key)
		g.log.Warn(g.what+": refused a wrong admin token", "client", client, "method", r.Method, "path", r.URL.Path)
	}
	unauthorized()
	return false
}
