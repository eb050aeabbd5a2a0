package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/oauth2"
)

const (
	testClientID = "stowline"
	// testSecret has characters that form encoding changes, to check that
	// scrubbing catches the encoded form too.
	testSecret = "s3cr3t+v/alue=&x"
)

// tokenServer is a minimal token endpoint for unit tests; the real
// authorization server is exercised in internal/testidp.
type tokenServer struct {
	URL      string
	requests atomic.Int64
	// client reaches the server when it is in memory
	// (newInMemoryTokenServer); nil for a real one.
	client *http.Client
}

// Requests is how many token requests the server has received.
func (s *tokenServer) Requests() int { return int(s.requests.Load()) }

// newTokenServer serves h as the token endpoint, counting requests.
func newTokenServer(t *testing.T, h http.HandlerFunc) *tokenServer {
	t.Helper()
	ts := &tokenServer{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.requests.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	ts.URL = srv.URL + "/token"
	return ts
}

// newInMemoryTokenServer serves h as the token endpoint without a socket,
// for tests in a synctest bubble: its fake clock moves only while every
// goroutine of the bubble is durably blocked, which one waiting on a
// socket never is.
func newInMemoryTokenServer(h http.HandlerFunc) *tokenServer {
	ts := &tokenServer{URL: "http://idp.test/token"}
	ts.client = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		ts.requests.Add(1)
		rec := httptest.NewRecorder()
		h(rec, r.Clone(r.Context()))
		if err := r.Context().Err(); err != nil {
			return nil, err
		}
		return rec.Result(), nil
	})}
	return ts
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// issue returns a handler that checks the client credentials (basic or post)
// and issues numbered tokens living expiresIn seconds, after delay.
func issue(expiresIn int, delay time.Duration) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		// Read the body first: only then does the server notice a client
		// that gave up, which lets the test server close promptly.
		_ = r.ParseForm()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		id, secret, ok := r.BasicAuth()
		if ok {
			// RFC 6749 2.3.1: form-encoded before Basic encoding.
			id, _ = url.QueryUnescape(id)
			secret, _ = url.QueryUnescape(secret)
		} else {
			id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
		}
		if r.PostFormValue("grant_type") != "client_credentials" || id != testClientID || secret != testSecret {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("token-%d", n.Add(1)),
			"token_type":   "bearer",
			"expires_in":   expiresIn,
		})
	}
}

// fastRetries keeps retrying tests quick.
var fastRetries = WithRetries(defaultRetries, time.Millisecond, 10*time.Millisecond)

// newSource builds a TokenSource for srv and the test client.
func newSource(t *testing.T, srv *tokenServer, opts ...Option) *TokenSource {
	t.Helper()
	if srv.client != nil {
		opts = append([]Option{WithHTTPClient(srv.client)}, opts...)
	}
	ts, err := NewTokenSource(t.Context(), Config{
		TokenURL: srv.URL, ClientID: testClientID, ClientSecret: testSecret, Scopes: []string{"stow"},
	}, opts...)
	if err != nil {
		t.Fatalf("NewTokenSource: %v", err)
	}
	return ts
}

// mustToken calls ts.Token and fails the test on error.
func mustToken(t *testing.T, ts *TokenSource) *oauth2.Token {
	t.Helper()
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok
}

func TestNewTokenSourceValidates(t *testing.T) {
	valid := Config{TokenURL: "https://idp.example/token", ClientID: "id", ClientSecret: "secret"}
	tests := []struct {
		name string
		edit func(*Config)
		opts []Option
		want string // substring of the error; "" means no error
	}{
		{name: "valid", edit: func(*Config) {}},
		{name: "no token URL", edit: func(c *Config) { c.TokenURL = "" }, want: "TokenURL"},
		{name: "relative token URL", edit: func(c *Config) { c.TokenURL = "/token" }, want: "TokenURL"},
		{name: "no client ID", edit: func(c *Config) { c.ClientID = "" }, want: "ClientID"},
		{name: "no client secret", edit: func(c *Config) { c.ClientSecret = "" }, want: "ClientSecret"},
		{name: "client secret and secret file", edit: func(c *Config) { c.ClientSecretFile = "/run/secrets/oauth" }, want: "one of ClientSecret, ClientSecretFile and Assertion"},
		{name: "token URL and issuer URL", edit: func(c *Config) { c.IssuerURL = "https://idp.example" }, want: "not both"},
		{name: "negative delta", edit: func(*Config) {}, opts: []Option{WithRefreshMargin(-time.Second)}, want: "expiry delta"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.edit(&cfg)
			_, err := NewTokenSource(t.Context(), cfg, tt.opts...)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("NewTokenSource: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalidConfig naming %q", err, tt.want)
			}
		})
	}
}

func TestTokenSourceCaches(t *testing.T) {
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleAutoDetect, oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		t.Run(fmt.Sprintf("auth style %d", style), func(t *testing.T) {
			srv := newTokenServer(t, issue(3600, 0))
			ts := newSource(t, srv, WithAuthStyle(style))
			first := mustToken(t, ts)
			for range 5 {
				if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
					t.Fatalf("token changed from %q to %q", first.AccessToken, tok.AccessToken)
				}
			}
			if got := srv.Requests(); got != 1 {
				t.Fatalf("token requests = %d, want 1", got)
			}
		})
	}
}

func TestTokenSourceSingleFlight(t *testing.T) {
	srv := newTokenServer(t, issue(3600, 200*time.Millisecond))
	ts := newSource(t, srv)

	const workers = 64
	var (
		wg     sync.WaitGroup
		tokens [workers]string
		errs   [workers]error
	)
	start := make(chan struct{})
	for i := range workers {
		wg.Go(func() {
			<-start
			tok, err := ts.Token()
			errs[i] = err
			if err == nil {
				tokens[i] = tok.AccessToken
			}
		})
	}
	close(start)
	wg.Wait()

	for i := range workers {
		if errs[i] != nil {
			t.Fatalf("worker %d: %v", i, errs[i])
		}
		if tokens[i] != tokens[0] {
			t.Fatalf("worker %d got %q, worker 0 got %q", i, tokens[i], tokens[0])
		}
	}
	if got := srv.Requests(); got != 1 {
		t.Fatalf("token requests = %d, want 1 for %d concurrent workers", got, workers)
	}
}

func TestTokenSourceCancelledWaiterDoesNotPoisonCache(t *testing.T) {
	srv := newTokenServer(t, issue(3600, 300*time.Millisecond))
	ts := newSource(t, srv)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := ts.TokenContext(ctx); !errors.Is(err, ErrToken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TokenContext with expiring ctx: err = %v, want ErrToken and DeadlineExceeded", err)
	}
	// The fetch started for the impatient caller goes on and serves the next one.
	mustToken(t, ts)
	if got := srv.Requests(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
}

func TestRefreshTime(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		lifetime time.Duration
		delta    time.Duration
		want     time.Duration // after now; -1 means never
	}{
		{name: "long token uses delta", lifetime: time.Hour, delta: time.Minute, want: time.Hour - time.Minute},
		// Handed out until 10 s before expiry: refreshed 20 s before.
		{name: "delta below the stale margin", lifetime: time.Hour, delta: 5 * time.Second, want: time.Hour - 20*time.Second},
		{name: "zero delta on long token", lifetime: time.Hour, delta: 0, want: time.Hour - 20*time.Second},
		{name: "short token capped at half", lifetime: 3 * time.Second, delta: 10 * time.Second, want: 1500 * time.Millisecond},
		{name: "small delta on short token", lifetime: 3 * time.Second, delta: 200 * time.Millisecond, want: 2400 * time.Millisecond},
		{name: "zero delta", lifetime: 3 * time.Second, delta: 0, want: 2400 * time.Millisecond},
		{name: "already expired", lifetime: -time.Second, delta: 10 * time.Second, want: -time.Second},
		{name: "no expiry", lifetime: 0, delta: 10 * time.Second, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var expiry time.Time
			if tt.lifetime != 0 {
				expiry = now.Add(tt.lifetime)
			}
			got := refreshTime(expiry, now, tt.delta)
			if tt.want == -1 {
				if !got.IsZero() {
					t.Fatalf("refreshTime = %v, want zero (never)", got)
				}
				return
			}
			if d := got.Sub(now); d != tt.want {
				t.Fatalf("refresh after %v, want %v", d, tt.want)
			}
			if stale := staleTime(expiry, now); tt.lifetime > 0 && !got.Before(stale) {
				t.Errorf("refreshed at %v, not before the token stops being handed out (%v)", got.Sub(now), stale.Sub(now))
			}
		})
	}
}

// TestTokenSourceRefreshMargin runs 3-second tokens on synctest's fake
// clock; TestRefreshTime covers the other cases.
func TestTokenSourceRefreshMargin(t *testing.T) {
	tests := []struct {
		name      string
		opts      []Option
		reusedAt  time.Duration // the first token is still handed out then
		refreshBy time.Duration // and replaced by then
	}{
		{name: "default delta capped at half lifetime", reusedAt: time.Second, refreshBy: 1800 * time.Millisecond},
		// Refreshed 0.6 s before its 3 s expiry (twice its 0.3 s stale
		// margin), made up to a tenth earlier at random (jitterEarlier):
		// from 2.16 s on.
		{name: "500ms delta", opts: []Option{WithRefreshMargin(500 * time.Millisecond)}, reusedAt: 2100 * time.Millisecond, refreshBy: 2800 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := newInMemoryTokenServer(issue(3, 0))
				ts := newSource(t, srv, tt.opts...)

				start := time.Now()
				first := mustToken(t, ts)

				time.Sleep(time.Until(start.Add(tt.reusedAt)))
				if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
					t.Fatalf("at %v: got a new token, want the first one reused", tt.reusedAt)
				}
				time.Sleep(time.Until(start.Add(tt.refreshBy)))
				if tok := mustToken(t, ts); tok.AccessToken == first.AccessToken {
					t.Fatalf("at %v: still the first token, want a refreshed one", tt.refreshBy)
				}
				if got := srv.Requests(); got != 2 {
					t.Fatalf("token requests = %d, want 2", got)
				}
			})
		})
	}
}

func TestTokenSourceInvalidate(t *testing.T) {
	srv := newTokenServer(t, issue(3600, 0))
	ts := newSource(t, srv)

	first := mustToken(t, ts)
	ts.Invalidate(first)
	second := mustToken(t, ts)
	if second.AccessToken == first.AccessToken {
		t.Fatal("Invalidate: the rejected token was handed out again")
	}
	// Late 401s for the old token must not throw away its replacement.
	ts.Invalidate(first)
	ts.Invalidate(nil)
	if tok := mustToken(t, ts); tok.AccessToken != second.AccessToken {
		t.Fatalf("stale Invalidate dropped the current token: got %q, want %q", tok.AccessToken, second.AccessToken)
	}
	if got := srv.Requests(); got != 2 {
		t.Fatalf("token requests = %d, want 2", got)
	}
}

func TestTokenSourceErrors(t *testing.T) {
	// echo is a broken server that reflects the request in its error body.
	echo := func(status int, contentType string, format string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			_, secret, _ := r.BasicAuth()
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(status)
			_, _ = fmt.Fprintf(w, format, secret, r.Form.Encode())
		}
	}
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		url        string // overrides the server URL
		style      oauth2.AuthStyle
		wantStatus int
		wantCode   string
		wantText   []string
		// wantAttempts: a refusal is not retried; what may pass is.
		wantAttempts int
	}{
		{
			name:         "oauth2 error with description",
			handler:      echo(http.StatusUnauthorized, "application/json", `{"error":"invalid_client","error_description":"bad secret %s for %s"}`),
			style:        oauth2.AuthStyleInHeader,
			wantStatus:   http.StatusUnauthorized,
			wantCode:     "invalid_client",
			wantText:     []string{"generic token endpoint", "401", "invalid_client", "bad secret"},
			wantAttempts: 1,
		},
		{
			name:         "plain server error",
			handler:      echo(http.StatusBadGateway, "text/plain", "upstream failed for secret=%s form=%s"),
			style:        oauth2.AuthStyleInHeader,
			wantStatus:   http.StatusBadGateway,
			wantText:     []string{"502", "upstream failed"},
			wantAttempts: 1 + defaultRetries,
		},
		{
			name:         "plain server error echoing client_secret_post form",
			handler:      echo(http.StatusBadGateway, "text/plain", "upstream failed for secret=%s form=%s"),
			style:        oauth2.AuthStyleInParams,
			wantStatus:   http.StatusBadGateway,
			wantText:     []string{"502", "client_id=stowline"},
			wantAttempts: 1 + defaultRetries,
		},
		{
			name: "plain server error echoing client_secret_basic's header",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadGateway)
				_, _ = fmt.Fprintf(w, "upstream failed for Authorization: %s", r.Header.Get("Authorization"))
			},
			style:        oauth2.AuthStyleInHeader,
			wantStatus:   http.StatusBadGateway,
			wantText:     []string{"502", "Authorization: Basic [REDACTED]"},
			wantAttempts: 1 + defaultRetries,
		},
		{
			// Entra ID's descriptions hold CR LF before their trace IDs.
			name:         "oauth2 error description over several lines",
			handler:      echo(http.StatusBadRequest, "application/json", `{"error":"invalid_request","error_description":"AADSTS90002: Tenant not found.\r\nTrace ID: 0f1e%.0s\r\nCorrelation ID: 2d3c%.0s"}`),
			style:        oauth2.AuthStyleInHeader,
			wantStatus:   http.StatusBadRequest,
			wantCode:     "invalid_request",
			wantText:     []string{"400", "AADSTS90002: Tenant not found. Trace ID: 0f1e Correlation ID: 2d3c"},
			wantAttempts: 1,
		},
		{
			// A wrong OAUTH_TOKEN_URL path behind nginx: its HTML page,
			// over several lines, on one line in the error (logs in text
			// format, forwarder check's table).
			name:         "html page over several lines",
			handler:      echo(http.StatusNotFound, "text/html", "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>%.0s%.0s"),
			style:        oauth2.AuthStyleInHeader,
			wantStatus:   http.StatusNotFound,
			wantText:     []string{"404", "<head><title>404 Not Found</title></head> <body>"},
			wantAttempts: 1,
		},
		{
			name:         "unreachable endpoint",
			url:          "http://127.0.0.1:1/token",
			wantText:     []string{"127.0.0.1:1"},
			wantAttempts: 1 + defaultRetries,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.handler)
			if tt.url != "" {
				srv.URL = tt.url
			}
			var observed []error
			ts := newSource(t, srv, WithAuthStyle(tt.style), fastRetries,
				WithObserver(func(err error, _ time.Duration) { observed = append(observed, err) }))

			_, err := ts.Token()
			if !errors.Is(err, ErrToken) {
				t.Fatalf("err = %v, want ErrToken", err)
			}
			text := err.Error()
			t.Logf("error text: %s", text)
			basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(testClientID) + ":" + url.QueryEscape(testSecret)))
			for _, secret := range []string{testSecret, url.QueryEscape(testSecret), "s3cr3t", basic} {
				if strings.Contains(text, secret) {
					t.Fatalf("error text leaks the secret: %s", text)
				}
			}
			for _, want := range tt.wantText {
				if !strings.Contains(text, want) {
					t.Errorf("error text %q lacks %q", text, want)
				}
			}
			if strings.ContainsAny(text, "\r\n") {
				t.Errorf("error text %q is not one line", text)
			}
			te, ok := errors.AsType[*TokenError](err)
			if !ok {
				t.Fatalf("err %T is not a *TokenError", err)
			}
			if te.StatusCode != tt.wantStatus || te.Code != tt.wantCode {
				t.Errorf("status, code = %d, %q; want %d, %q", te.StatusCode, te.Code, tt.wantStatus, tt.wantCode)
			}
			if te.Attempts != tt.wantAttempts || te.Temporary() != (tt.wantAttempts > 1) {
				t.Errorf("attempts %d, temporary %v; want %d", te.Attempts, te.Temporary(), tt.wantAttempts)
			}
			if len(observed) != tt.wantAttempts || !errors.Is(observed[0], ErrToken) {
				t.Errorf("observer saw %v, want %d ErrToken", observed, tt.wantAttempts)
			}
		})
	}
}

func TestTokenSourceRetriesAfterError(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	ok := issue(3600, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	})
	var observed atomic.Int64
	ts := newSource(t, srv, fastRetries, WithObserver(func(err error, d time.Duration) {
		if err == nil && d > 0 {
			observed.Add(1)
		}
	}))

	if _, err := ts.Token(); err == nil {
		t.Fatal("Token: want an error while the endpoint is down")
	}
	fail.Store(false)
	mustToken(t, ts)
	if got := observed.Load(); got != 1 {
		t.Fatalf("observer saw %d successful fetches, want 1", got)
	}
}

// After a background refresh failed, the current token is handed out
// without a fetch per call until the retry is due: an identity provider
// that refuses or throttles gets one request, not one per STOW request.
func TestTokenSourceFailedRefreshDoesNotStampede(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		good := issue(60, 0)
		srv := newInMemoryTokenServer(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				good(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		})
		ts := newSource(t, srv, fastRetries)
		start := time.Now()
		first := mustToken(t, ts)
		// Past the refresh (at most half the lifetime), which failed.
		time.Sleep(time.Until(start.Add(31 * time.Second)))
		synctest.Wait()
		after := srv.Requests()
		if after < 2 {
			t.Fatalf("%d token requests by 31 s, want the failed refresh too", after)
		}
		for range 100 {
			if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
				t.Fatalf("got %q, want the first token while it is good", tok.AccessToken)
			}
			synctest.Wait()
		}
		if got := srv.Requests() - after; got != 0 {
			t.Errorf("%d token requests for 100 calls after a failed refresh, want none until the retry", got)
		}
	})
}

// TestTokenSourceHonoursLongRetryAfter: an identity provider that
// throttles with a Retry-After longer than the backoff's ceiling gets no
// request until it passes: the fetch stops at once, and the callers
// meanwhile get its refusal without asking again, with the wait that is
// left (a study refused 25 s into a 30 s wait is retried 5 s later, not
// 30).
func TestTokenSourceHonoursLongRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var throttled atomic.Bool
		throttled.Store(true)
		ok := issue(3600, 0)
		srv := newInMemoryTokenServer(func(w http.ResponseWriter, r *http.Request) {
			if throttled.Load() {
				writeThrottled(w, "30")
				return
			}
			ok(w, r)
		})
		ts := newSource(t, srv, WithAuthStyle(oauth2.AuthStyleInHeader))
		start := time.Now()
		for i := range 5 {
			_, err := ts.Token()
			te, isTE := errors.AsType[*TokenError](err)
			if !isTE || te.StatusCode != http.StatusTooManyRequests {
				t.Fatalf("throttled: err = %v, want a 429 TokenError", err)
			}
			if want := 30*time.Second - time.Duration(i)*5*time.Second; te.RetryAfter != want {
				t.Fatalf("throttled, %d s into the wait: retry after %v, want %v", i*5, te.RetryAfter, want)
			}
			time.Sleep(5 * time.Second)
		}
		if n := srv.Requests(); n != 1 {
			t.Fatalf("%d token requests within the 30 s asked for, want 1", n)
		}
		throttled.Store(false)
		time.Sleep(time.Until(start.Add(31 * time.Second)))
		mustToken(t, ts)
		if n := srv.Requests(); n != 2 {
			t.Errorf("%d token requests, want 2: one after the wait", n)
		}
	})
}

// writeThrottled answers a token request 429 with retryAfter, as an
// identity provider throttling its clients does.
func writeThrottled(w http.ResponseWriter, retryAfter string) {
	w.Header().Set("Retry-After", retryAfter)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write([]byte(`{"error":"temporarily_unavailable"}`))
}

// TestTokenRetryAfterBounded: a proxy's Retry-After of hours reaches the
// callers (and so the studies' retries) as at most maxTokenRetryAfter.
func TestTokenRetryAfterBounded(t *testing.T) {
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "10800")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	_, err := newSource(t, srv, WithAuthStyle(oauth2.AuthStyleInHeader)).Token()
	te, ok := errors.AsType[*TokenError](err)
	if !ok || te.RetryAfter != maxTokenRetryAfter {
		t.Fatalf("err = %v, want a TokenError with RetryAfter %v", err, maxTokenRetryAfter)
	}
}

// TestTokenRetryAfterDateOnTheServersClock: a Retry-After given as a date
// is read against the answer's Date, the identity provider's clock: a
// forwarder whose clock is minutes off waits what was asked, neither
// nothing (its clock ahead) nor minutes more (behind).
func TestTokenRetryAfterDateOnTheServersClock(t *testing.T) {
	for _, off := range []time.Duration{-10 * time.Minute, 10 * time.Minute} {
		t.Run("server clock "+off.String(), func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
				now := time.Now().Add(off)
				w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
				w.Header().Set("Retry-After", now.Add(20*time.Second).UTC().Format(http.TimeFormat))
				w.WriteHeader(http.StatusServiceUnavailable)
			})
			_, err := newSource(t, srv, WithAuthStyle(oauth2.AuthStyleInHeader)).Token()
			te, ok := errors.AsType[*TokenError](err)
			if !ok {
				t.Fatalf("err = %v, want a TokenError", err)
			}
			if te.RetryAfter < 19*time.Second || te.RetryAfter > 20*time.Second {
				t.Fatalf("RetryAfter = %v, want 20 s (on the server's own clock)", te.RetryAfter)
			}
		})
	}
}

// TestTokenErrorHidesTheURLsCredentials: a token URL may carry a
// credential in its query (an API gateway's key) or its user info; the
// startup log drops them, and so does the token error, which goes to
// logs, dead letters, the status page and the unauthenticated /readyz.
func TestTokenErrorHidesTheURLsCredentials(t *testing.T) {
	const key = "gw-key-0123456789"
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
	})
	tests := []struct {
		name, url string
	}{
		{"refused", strings.Replace(srv.URL, "http://", "http://gw:"+key+"@", 1) + "?apikey=" + key},
		{"unreachable", "http://gw:" + key + "@127.0.0.1:1/token?apikey=" + key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, err := NewTokenSource(t.Context(), Config{TokenURL: tt.url, ClientID: testClientID, ClientSecret: testSecret},
				WithAuthStyle(oauth2.AuthStyleInParams), WithRetries(0, 0, 0))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ts.Token()
			te, ok := errors.AsType[*TokenError](err)
			if !ok {
				t.Fatalf("err = %v, want a TokenError", err)
			}
			if strings.Contains(err.Error(), key) || strings.Contains(te.TokenURL, key) {
				t.Errorf("the URL's credential is in the error: %q (TokenURL %q)", err, te.TokenURL)
			}
			if !strings.Contains(err.Error(), "/token") {
				t.Errorf("error %q does not name the endpoint", err)
			}
		})
	}
}

// TestTokenExpiredOnArrival: a token whose expiry is already past when it
// arrives (IMDS's absolute expires_on read on a clock hours ahead, a
// provider's expires_in of 0 or less) was scheduled for replacement at
// once, and every replacement too: the token source asked the provider
// back to back for as long as it ran (a thousand requests in 10 s here),
// and handed the token to no one, so each caller fetched again. Such a
// token is used until the destination refuses it, as one without a
// stated lifetime.
func TestTokenExpiredOnArrival(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fetches atomic.Int64
		ep := Endpoint{Fetch: func(ctx context.Context) (*oauth2.Token, error) {
			n := fetches.Add(1)
			select { // the round trip
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &oauth2.Token{AccessToken: fmt.Sprint("expired-", n), Expiry: time.Now().Add(-time.Hour)}, nil
		}}
		ts, err := NewSource(t.Context(), ep)
		if err != nil {
			t.Fatal(err)
		}
		first := mustToken(t, ts)
		for range 5 {
			if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
				t.Fatalf("token %q, want the one fetched, %q", tok.AccessToken, first.AccessToken)
			}
		}
		time.Sleep(10 * time.Second)
		if n := fetches.Load(); n != 1 {
			t.Fatalf("%d token requests in 10 s, want 1", n)
		}
		// The destination refuses it (401): the next caller gets another.
		ts.Invalidate(first)
		if tok := mustToken(t, ts); tok.AccessToken == first.AccessToken || fetches.Load() != 2 {
			t.Errorf("after a 401: token %q after %d requests, want a new one after 2", tok.AccessToken, fetches.Load())
		}
	})
}

// TestBackgroundRefreshThrottledWaitsOutRetryAfter: a background refresh
// the identity provider throttles while the current token is still good
// is tried again no sooner than its Retry-After, though the retry while
// the token is good (a quarter to three quarters of the way to its end)
// may come earlier: an identity provider that asked for a pause must not
// be asked again within it.
func TestBackgroundRefreshThrottledWaitsOutRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			throttled atomic.Bool
			mu        sync.Mutex
			asked     []time.Time
		)
		// A token of 10 min is refreshed 5 to 5.5 min before it
		// expires, 290 to 320 s before it goes stale (10 s before
		// expiry): its retry while good comes after at most three
		// quarters of that, 240 s.
		ok := issue(600, 0)
		srv := newInMemoryTokenServer(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			asked = append(asked, time.Now())
			mu.Unlock()
			if throttled.Load() {
				// Past the retries' longest backoff (8 s): no retry
				// within the fetch.
				writeThrottled(w, "280")
				return
			}
			ok(w, r)
		})
		ts := newSource(t, srv, WithAuthStyle(oauth2.AuthStyleInHeader))
		start := time.Now()
		first := mustToken(t, ts)
		throttled.Store(true)
		for srv.Requests() < 2 {
			time.Sleep(time.Second)
		}
		throttled.Store(false)
		if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
			t.Fatal("the token still good was not handed out after the throttled refresh")
		}
		for srv.Requests() < 3 && time.Since(start) < time.Hour {
			time.Sleep(time.Second)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(asked) < 3 {
			t.Fatalf("%d token requests in an hour, want the refresh tried again", len(asked))
		}
		if gap := asked[2].Sub(asked[1]); gap < 280*time.Second {
			t.Errorf("the throttled refresh was tried again after %s, want no sooner than its Retry-After of 280s", gap)
		}
	})
}
