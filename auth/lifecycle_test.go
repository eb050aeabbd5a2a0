package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/oauth2"
)

// TestBackgroundRefreshNoCallerWaits: with 2 s tokens and a token endpoint
// taking 300 ms, callers asking every 10 ms for 4 s never wait for the
// endpoint after the first token, and tokens are reused, not fetched per
// call. It runs on synctest's fake clock.
func TestBackgroundRefreshNoCallerWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newInMemoryTokenServer(issue(2, 300*time.Millisecond))
		ts := newSource(t, srv)
		mustToken(t, ts)

		var slowest time.Duration
		for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			start := time.Now()
			mustToken(t, ts)
			slowest = max(slowest, time.Since(start))
		}
		t.Logf("slowest Token call %v, %d token requests", slowest, srv.Requests())
		if slowest > 100*time.Millisecond {
			t.Errorf("a caller waited %v: the refresh was not in the background", slowest)
		}
		// One token per half lifetime (1 s): about 5 in 4.3 s.
		if got := srv.Requests(); got < 3 || got > 7 {
			t.Errorf("token requests = %d, want 3..7", got)
		}
	})
}

// refreshFailed is a source of 4 s tokens whose endpoint went down
// once it issued the first, at start.
type refreshFailed struct {
	ts    *TokenSource
	first *oauth2.Token
	start time.Time
	down  atomic.Bool // false brings the endpoint back
}

// startRefreshFailed starts a refreshFailed in t's synctest bubble and
// returns at 2.5 s: the refresh due at 2 s has failed, and the first
// token is good until 3.6 s.
func startRefreshFailed(t *testing.T) *refreshFailed {
	t.Helper()
	rf := &refreshFailed{}
	ok := issue(4, 0)
	srv := newInMemoryTokenServer(func(w http.ResponseWriter, r *http.Request) {
		if rf.down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	})
	rf.ts = newSource(t, srv, fastRetries)
	rf.start = time.Now()
	rf.first = mustToken(t, rf.ts)
	rf.down.Store(true)
	time.Sleep(time.Until(rf.start.Add(2500 * time.Millisecond)))
	synctest.Wait()
	return rf
}

// TestBackgroundRefreshFailureKeepsToken: a failing background refresh
// leaves the current token in use until it is about to expire; then
// callers see the error; once the endpoint is back, a new token. It runs
// on synctest's fake clock.
func TestBackgroundRefreshFailureKeepsToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rf := startRefreshFailed(t)
		if tok := mustToken(t, rf.ts); tok.AccessToken != rf.first.AccessToken {
			t.Fatal("got another token while the endpoint is down")
		}
		time.Sleep(time.Until(rf.start.Add(3800 * time.Millisecond)))
		if _, err := rf.ts.Token(); !errors.Is(err, ErrToken) {
			t.Fatalf("after the token went stale: err = %v, want ErrToken", err)
		}
		rf.down.Store(false)
		if tok := mustToken(t, rf.ts); tok.AccessToken == rf.first.AccessToken {
			t.Fatal("the stale token was handed out")
		}
	})
}

func TestRetriesRecoverWithinOneCall(t *testing.T) {
	var n atomic.Int64
	ok := issue(3600, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			http.Error(w, "bad gateway", http.StatusBadGateway)
		case 2:
			w.Header().Set("Retry-After", "0")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		default:
			ok(w, r)
		}
	})
	var observed []error
	ts := newSource(t, srv, fastRetries, WithAuthStyle(oauth2.AuthStyleInHeader),
		WithObserver(func(err error, _ time.Duration) { observed = append(observed, err) }))
	mustToken(t, ts)
	if srv.Requests() != 3 || len(observed) != 3 || observed[0] == nil || observed[1] == nil || observed[2] != nil {
		t.Fatalf("requests %d, observed %v: want 3 (2 failures, 1 success)", srv.Requests(), observed)
	}
}

func TestStaleTime(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		lifetime, want time.Duration // want: after now
	}{
		{time.Hour, time.Hour - 10*time.Second},
		{2 * time.Second, 1800 * time.Millisecond},
		{-time.Second, -time.Second},
	}
	for _, tt := range tests {
		if got := staleTime(now.Add(tt.lifetime), now).Sub(now); got != tt.want {
			t.Errorf("staleTime(lifetime %v) = +%v, want +%v", tt.lifetime, got, tt.want)
		}
	}
	if !staleTime(time.Time{}, now).IsZero() {
		t.Error("no expiry must mean never stale")
	}
}

// TestEndpointParams: audience and resource reach the token endpoint.
func TestEndpointParams(t *testing.T) {
	var form url.Values
	ok := issue(3600, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		form = r.PostForm
		ok(w, r)
	})
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, ClientSecret: testSecret,
		AuthStyle: oauth2.AuthStyleInHeader, Scopes: []string{"a", "b"},
		EndpointParams: url.Values{"audience": {"https://dicom.example"}, "resource": {"urn:dicom"}}})
	if err != nil {
		t.Fatal(err)
	}
	mustToken(t, ts)
	if form.Get("audience") != "https://dicom.example" || form.Get("resource") != "urn:dicom" || form.Get("scope") != "a b" ||
		form.Get("grant_type") != "client_credentials" || form.Has("client_secret") {
		t.Fatalf("form = %v", form)
	}
}

// TestScrubsEchoedAssertion: a server echoing the request never gets a
// client assertion (a bearer credential for minutes) into the error.
func TestScrubsEchoedAssertion(t *testing.T) {
	key, _ := testKey(t, false)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.WriteHeader(http.StatusBadRequest)
		_, _ = fmt.Fprintf(w, "cannot parse %s", r.PostForm.Get("client_assertion"))
	})
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, Assertion: key})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if err == nil || strings.Contains(err.Error(), "eyJ") || !strings.Contains(err.Error(), "[REDACTED JWT]") {
		t.Fatalf("err = %v, want the assertion redacted", err)
	}
}

func TestNewSourceValidates(t *testing.T) {
	fetch := func(context.Context) (*oauth2.Token, error) { return nil, nil }
	if _, err := NewSource(t.Context(), Endpoint{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no Fetch: %v", err)
	}
	if _, err := NewSource(t.Context(), Endpoint{Fetch: fetch}, WithRetries(-1, 0, 0)); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("negative retries: %v", err)
	}
	ts, err := NewSource(t.Context(), Endpoint{Fetch: fetch}, fastRetries)
	if err != nil || ts.Provider() != providerGeneric || ts.TokenURL() != "" {
		t.Errorf("defaults: %v, %q, %q", err, ts.Provider(), ts.TokenURL())
	}
	if _, err := ts.Token(); !errors.Is(err, ErrToken) {
		t.Errorf("empty token: %v", err)
	}
}

// TestFailedFetchRetriedInBackground: a fetch that leaves no token (the
// client refused) is tried again in the background with no caller
// asking, after 30 s, then 60 s, ..., at most 5 minutes apart, each wait
// drawn in [d/2, d] so that replicas restarted together do not ask in
// lockstep; the failure shows steadily on a quiet host and a repaired one
// has a token before the next caller, who then sends no request. It runs
// on synctest's fake clock.
func TestFailedFetchRetriedInBackground(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const replicas = 4
		var refuse atomic.Bool
		refuse.Store(true)
		start := time.Now()
		rs := startReplicas(t, replicas, func(w http.ResponseWriter) bool {
			if !refuse.Load() {
				return false
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return true
		})
		for _, r := range rs {
			if _, err := r.ts.Token(); !errors.Is(err, ErrToken) {
				t.Fatalf("refused: err = %v, want ErrToken", err)
			}
		}
		synctest.Wait()
		for i, r := range rs {
			if got := r.srv.Requests(); got != 1 {
				t.Fatalf("replica %d: %d token requests, want 1 (a refusal is not retried at once)", i, got)
			}
		}
		// The longest waits, 30+60+120+240+300+300 s, end at 1050 s.
		time.Sleep(1051 * time.Second)
		synctest.Wait()
		firstRetry := map[time.Duration]bool{}
		for i, r := range rs {
			var at []time.Duration // when each token request came, from start
			for _, when := range r.requests() {
				at = append(at, when.Sub(start))
			}
			if len(at) < 7 {
				t.Fatalf("replica %d: token requests at %v, want at least 7 by 1051 s", i, at)
			}
			for n := 1; n < len(at); n++ {
				d := min(30*time.Second<<min(n-1, 4), 5*time.Minute)
				if gap := at[n] - at[n-1]; gap < d/2 || gap > d {
					t.Errorf("replica %d: retry %d came %s after the one before, want %s to %s", i, n, gap, d/2, d)
				}
			}
			firstRetry[at[1]] = true
		}
		if len(firstRetry) == 1 {
			t.Errorf("all %d replicas retried at the same moment: no jitter", replicas)
		}
		refuse.Store(false)
		before := make([]int, replicas)
		for i, r := range rs {
			before[i] = r.srv.Requests()
		}
		time.Sleep(5*time.Minute + time.Second)
		synctest.Wait()
		for i, r := range rs {
			if got := r.srv.Requests(); got != before[i]+1 {
				t.Fatalf("replica %d: %d token requests after the repair, want %d (one background fetch)", i, got, before[i]+1)
			}
			mustToken(t, r.ts)
		}
		// The tokens are cached; their refresh is due about 55 minutes on.
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		for i, r := range rs {
			if got := r.srv.Requests(); got != before[i]+1 {
				t.Errorf("replica %d: %d token requests, want %d: the token is cached", i, got, before[i]+1)
			}
		}
	})
}

// TestRefreshesSpreadWithinBounds: replicas given tokens at the same
// moment renew them each at a moment drawn in the last tenth of the wait
// to the scheduled refresh (earlier, never later), not together; and a
// refresh that fails while the token is still good is tried again between
// a quarter and three quarters of the way to the token's staleness, not
// together, and always before it. It runs on synctest's fake clock.
func TestRefreshesSpreadWithinBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const replicas = 8
		var down atomic.Bool
		start := time.Now()
		// One request a fetch: no in-fetch retries.
		rs := startReplicas(t, replicas, func(w http.ResponseWriter) bool {
			if !down.Load() {
				return false
			}
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return true
		}, WithRetries(0, 0, 0))
		for _, r := range rs {
			mustToken(t, r.ts)
		}
		expiry := start.Add(3600 * time.Second)
		scheduled, stale := refreshTime(expiry, start, defaultRefreshMargin), staleTime(expiry, start)
		wait := scheduled.Sub(start)
		down.Store(true)

		time.Sleep(time.Until(scheduled.Add(time.Second)))
		synctest.Wait()
		refreshes := map[time.Time]bool{}
		for i, r := range rs {
			at := r.requests()
			if len(at) < 2 {
				t.Fatalf("replica %d: %d token requests by the scheduled refresh, want the first token and its refresh", i, len(at))
			}
			if d := at[1].Sub(start); d < wait-wait/10 || d > wait {
				t.Errorf("replica %d: refresh %s after the token came, want %s to %s", i, d, wait-wait/10, wait)
			}
			refreshes[at[1]] = true
		}
		if len(refreshes) == 1 {
			t.Errorf("all %d replicas refreshed at the same moment: no jitter", replicas)
		}

		// The refresh failed; the token stays good until stale.
		time.Sleep(time.Until(stale.Add(-time.Millisecond)))
		synctest.Wait()
		retries := map[time.Time]bool{}
		for i, r := range rs {
			at := r.requests()
			if len(at) < 3 {
				t.Fatalf("replica %d: token requests at %v, want a retry before the token went stale", i, at)
			}
			remaining := stale.Sub(at[1])
			if gap := at[2].Sub(at[1]); gap < remaining/4 || gap > remaining/4+remaining/2 {
				t.Errorf("replica %d: retry %s after the failed refresh, want %s to %s (a quarter to three quarters of the %s left)", i, gap, remaining/4, remaining/4+remaining/2, remaining)
			}
			for _, a := range at {
				if !a.Before(stale) {
					t.Errorf("replica %d: a token request at %s, not before the token went stale at %s", i, a.Sub(start), stale.Sub(start))
				}
			}
			retries[at[2]] = true
			if tok := mustToken(t, r.ts); tok == nil {
				t.Errorf("replica %d: no token while the current one is good", i)
			}
		}
		if len(retries) == 1 {
			t.Errorf("all %d replicas retried at the same moment: no jitter", replicas)
		}
	})
}

// tokenReplica is one of several token sources started together, each
// with a token server of its own that records when each request came.
type tokenReplica struct {
	ts  *TokenSource
	srv *tokenServer
	mu  sync.Mutex
	at  []time.Time
}

// requests returns when the replica's token requests came.
func (r *tokenReplica) requests() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.at)
}

// startReplicas starts n replicas whose token servers issue hour-long
// tokens, or answer as fail writes when it reports true. A fetch is one
// request (one auth style, not auto-detected).
func startReplicas(t *testing.T, n int, fail func(http.ResponseWriter) bool, opts ...Option) []*tokenReplica {
	t.Helper()
	rs := make([]*tokenReplica, n)
	for i := range rs {
		r := &tokenReplica{}
		ok := issue(3600, 0)
		r.srv = newInMemoryTokenServer(func(w http.ResponseWriter, req *http.Request) {
			r.mu.Lock()
			r.at = append(r.at, time.Now())
			r.mu.Unlock()
			if fail(w) {
				return
			}
			ok(w, req)
		})
		r.ts = newSource(t, r.srv, append([]Option{WithAuthStyle(oauth2.AuthStyleInHeader)}, opts...)...)
		rs[i] = r
	}
	return rs
}
