// Package auth obtains OAuth2 access tokens for a DICOMweb destination and
// attaches them to outgoing requests.
//
// One TokenSource exists per destination and is shared by all workers: it
// caches the token, replaces it in the background before it expires (so no
// upload waits on the identity provider), makes sure that many workers
// needing a token at once cause a single request to the token endpoint, and
// retries a failing token endpoint with backoff and jitter.
//
// Where tokens come from is an Endpoint: ClientCredentials builds the
// generic RFC 6749 §4.4 one (client_secret_basic, client_secret_post or
// private_key_jwt, token endpoint given or discovered); the azure and
// google subpackages build the cloud providers' ones.
package auth

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/stowline/stowline/internal/retryafter"
)

// Sentinel errors; test for them with errors.Is.
var (
	// ErrInvalidConfig reports a missing or malformed Config field or Option.
	ErrInvalidConfig = errors.New("auth: invalid config")
	// ErrToken reports that no token could be obtained from the token endpoint.
	ErrToken = errors.New("auth: cannot obtain token")
)

// ProviderGeneric names the standards-only identity provider.
const ProviderGeneric = "generic"

const (
	// DefaultRefreshMargin is how long before expiry a token is replaced
	// in the background, unless WithRefreshMargin says otherwise. It is
	// capped at half the token's lifetime.
	DefaultRefreshMargin = 5 * time.Minute
	// DefaultRetries is how many times a failed token request is retried
	// (network errors, 408, 429, 5xx) before the caller sees the error.
	DefaultRetries = 3
	// defaultRetryBase and defaultRetryMax bound the backoff between retries.
	defaultRetryBase = 500 * time.Millisecond
	defaultRetryMax  = 8 * time.Second
	// expirySkew is how long before its expiry a token is no longer handed
	// out even when no replacement could be had (a request needs time to
	// reach the server), capped at a tenth of the lifetime.
	expirySkew = 10 * time.Second
	// defaultFetchTimeout bounds a token request when the caller supplies no
	// HTTP client: fetches run on a process-lifetime context that is never
	// cancelled, so without it a hung endpoint would block every worker.
	defaultFetchTimeout = 30 * time.Second
)

// Endpoint is where a TokenSource gets its tokens: one identity provider
// and the grant it is asked for.
type Endpoint struct {
	// Provider names the identity provider in errors and logs ("generic",
	// "azure", "google").
	Provider string
	// TokenURL returns the token endpoint's URL, for errors and logs (it
	// may be discovered by the first fetch). It never holds a secret.
	TokenURL func() string
	// Fetch requests one new token. The context carries the HTTP client
	// (oauth2.HTTPClient) set with WithHTTPClient. An HTTP error answer
	// should be returned as (or wrap) an *oauth2.RetrieveError, so that its
	// status and the server's error and error_description reach the
	// TokenError.
	Fetch func(ctx context.Context) (*oauth2.Token, error)
	// Secrets are scrubbed from error text: a misbehaving server may echo
	// the request in its error body.
	Secrets []string
}

// Option configures a TokenSource.
type Option func(*options)

type options struct {
	httpClient *http.Client
	margin     time.Duration
	observer   func(err error, d time.Duration)
	authStyle  oauth2.AuthStyle
	retries    int
	retryBase  time.Duration
	retryMax   time.Duration
}

// WithHTTPClient sets the client used to reach the token endpoint (timeouts,
// CA pool, proxy); nil means a client with a 30 s timeout. It is not used
// for requests to the destination.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.httpClient = c }
}

// WithRefreshMargin sets how long before expiry a cached token is replaced
// (default DefaultRefreshMargin). The replacement is fetched in the
// background while the current token goes on being used. Whatever d is, a
// token is used for at least half of its lifetime, so that tokens living
// only a few seconds are still reused rather than fetched for every
// request.
func WithRefreshMargin(d time.Duration) Option {
	return func(o *options) { o.margin = d }
}

// WithExpiryDelta is WithRefreshMargin, under its former name.
func WithExpiryDelta(d time.Duration) Option { return WithRefreshMargin(d) }

// WithObserver registers fn, called after every request to the token
// endpoint (each retry included) with its error (nil on success) and
// duration, e.g. for metrics. It runs on the fetching goroutine and must
// not block.
func WithObserver(fn func(err error, d time.Duration)) Option {
	return func(o *options) { o.observer = fn }
}

// WithAuthStyle fixes how NewTokenSource's client authenticates to the
// token endpoint (oauth2.AuthStyleInHeader for client_secret_basic,
// oauth2.AuthStyleInParams for client_secret_post) when Config.AuthStyle
// does not say. The default auto-detects.
func WithAuthStyle(s oauth2.AuthStyle) Option {
	return func(o *options) { o.authStyle = s }
}

// WithRetries sets how many times a token request that failed for a
// reason that may pass (network error, 408, 429, 5xx) is retried before
// callers see the error (default DefaultRetries; 0 disables retries).
// Backoff starts at base and doubles up to max, with jitter; a
// Retry-After no longer than max is honoured.
func WithRetries(n int, base, max time.Duration) Option {
	return func(o *options) { o.retries, o.retryBase, o.retryMax = n, base, max }
}

// TokenSource is a cached, concurrency-safe source of tokens for one
// destination. It implements oauth2.TokenSource.
type TokenSource struct {
	ctx  context.Context // process lifetime, carries the HTTP client
	ep   Endpoint
	opts options

	mu        sync.Mutex
	tok       *oauth2.Token
	refreshAt time.Time // zero: never; from then on a replacement is fetched in the background
	staleAt   time.Time // zero: never; from then on tok is no longer handed out
	inflight  *fetch
	timer     *time.Timer // the next background refresh
}

// fetch is one request to the token endpoint (with its retries) that any
// number of callers wait on.
type fetch struct {
	done chan struct{} // closed once tok/err are set
	tok  *oauth2.Token
	err  error
}

// NewTokenSource returns the client-credentials token source of one
// destination, to be shared by all its workers; see NewSource.
func NewTokenSource(ctx context.Context, cfg Config, opts ...Option) (*TokenSource, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.AuthStyle == oauth2.AuthStyleAutoDetect {
		cfg.AuthStyle = o.authStyle
	}
	ep, err := ClientCredentials(cfg)
	if err != nil {
		return nil, err
	}
	return NewSource(ctx, ep, opts...)
}

// NewSource returns the token source of one destination, to be shared by
// all its workers. ctx must live as long as the process: tokens are fetched
// with it rather than with a request's context, so that a cancelled request
// never fails a fetch that other workers are waiting for, and background
// refreshing stops when it ends. No token is fetched until the first call
// to Token.
func NewSource(ctx context.Context, ep Endpoint, opts ...Option) (*TokenSource, error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: nil context", ErrInvalidConfig)
	}
	if ep.Fetch == nil {
		return nil, fmt.Errorf("%w: endpoint has no Fetch", ErrInvalidConfig)
	}
	ep.Provider = cmp.Or(ep.Provider, ProviderGeneric)
	if ep.TokenURL == nil {
		ep.TokenURL = func() string { return "" }
	}
	o := options{margin: DefaultRefreshMargin, retries: DefaultRetries, retryBase: defaultRetryBase, retryMax: defaultRetryMax}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.margin < 0:
		return nil, fmt.Errorf("%w: negative expiry delta (refresh margin) %v", ErrInvalidConfig, o.margin)
	case o.retries < 0 || o.retryBase < 0 || o.retryMax < o.retryBase:
		return nil, fmt.Errorf("%w: retries %d, backoff %v..%v", ErrInvalidConfig, o.retries, o.retryBase, o.retryMax)
	}
	if o.httpClient == nil {
		o.httpClient = &http.Client{Timeout: defaultFetchTimeout}
	}
	ts := &TokenSource{
		ctx:  context.WithValue(ctx, oauth2.HTTPClient, o.httpClient),
		ep:   ep,
		opts: o,
	}
	context.AfterFunc(ctx, func() {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if ts.timer != nil {
			ts.timer.Stop()
		}
	})
	return ts, nil
}

// Provider names the identity provider, e.g. "azure".
func (ts *TokenSource) Provider() string { return ts.ep.Provider }

// TokenURL is the token endpoint's URL (once discovered, if it is).
func (ts *TokenSource) TokenURL() string { return ts.ep.TokenURL() }

// Token returns the cached token, fetching a new one if there is none or it
// is about to expire. Concurrent callers share a single fetch. Failures are
// not cached: the next call tries again.
//
// Do not judge the token with its Valid method: that applies oauth2's fixed
// 10 s margin, which a token living a few seconds never passes.
func (ts *TokenSource) Token() (*oauth2.Token, error) {
	return ts.TokenContext(context.Background())
}

// TokenContext is Token, except that the caller stops waiting when ctx is
// done. The fetch itself goes on and its token is cached for later callers.
func (ts *TokenSource) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	if ts == nil {
		return nil, ErrNoTokenSource
	}
	now := time.Now()
	ts.mu.Lock()
	if ts.validLocked(now) {
		tok := ts.tok
		if !ts.refreshAt.IsZero() && !now.Before(ts.refreshAt) && ts.inflight == nil {
			// Due for replacement (the timer may not have fired yet):
			// fetch in the background, hand out the current one meanwhile.
			ts.startLocked()
		}
		ts.mu.Unlock()
		return tok, nil
	}
	f := ts.inflight
	if f == nil {
		f = ts.startLocked()
	}
	ts.mu.Unlock()

	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: gave up waiting: %w", ErrToken, context.Cause(ctx))
	}
}

// Invalidate drops tok from the cache, so the next Token call fetches a new
// one. Call it when the destination answered 401 to a request carrying tok.
// It does nothing if the cache already holds another token, so that many
// workers failing with the same token cause one refetch, not one each.
func (ts *TokenSource) Invalidate(tok *oauth2.Token) {
	if ts == nil || tok == nil {
		return
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok != nil && ts.tok.AccessToken == tok.AccessToken {
		ts.tok = nil
		ts.refreshAt, ts.staleAt = time.Time{}, time.Time{}
	}
}

func (ts *TokenSource) validLocked(now time.Time) bool {
	return ts.tok != nil && (ts.staleAt.IsZero() || now.Before(ts.staleAt))
}

// startLocked starts a fetch on a goroutine of its own, so that no caller's
// cancellation can abandon the fetch the others are waiting for.
func (ts *TokenSource) startLocked() *fetch {
	f := &fetch{done: make(chan struct{})}
	ts.inflight = f
	go ts.run(f)
	return f
}

// armLocked schedules a background refresh at t.
func (ts *TokenSource) armLocked(t, now time.Time) {
	if ts.timer != nil {
		ts.timer.Stop()
	}
	if t.IsZero() || ts.ctx.Err() != nil {
		ts.timer = nil
		return
	}
	ts.timer = time.AfterFunc(t.Sub(now), ts.refreshInBackground)
}

func (ts *TokenSource) refreshInBackground() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.ctx.Err() == nil && ts.inflight == nil {
		ts.startLocked()
	}
}

func (ts *TokenSource) run(f *fetch) {
	tok, err := ts.fetchWithRetries()
	now := time.Now()

	ts.mu.Lock()
	switch {
	case err == nil:
		ts.tok = tok
		ts.refreshAt = refreshTime(tok.Expiry, now, ts.opts.margin)
		ts.staleAt = staleTime(tok.Expiry, now)
		ts.armLocked(ts.refreshAt, now)
	case ts.validLocked(now):
		// A background refresh failed while the current token is still
		// good: try again halfway to the end of its use.
		ts.armLocked(now.Add(max(time.Second, ts.staleAt.Sub(now)/2)), now)
	}
	ts.inflight = nil
	f.tok, f.err = tok, err
	ts.mu.Unlock()
	close(f.done)
}

// fetchWithRetries asks the endpoint for a token, retrying failures that
// may pass with exponential backoff and jitter. The error is a *TokenError.
func (ts *TokenSource) fetchWithRetries() (*oauth2.Token, error) {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		tok, err := ts.ep.Fetch(ts.ctx)
		if err == nil && (tok == nil || tok.AccessToken == "") {
			err = errors.New("empty access token")
		}
		var te *TokenError
		if err != nil {
			te = ts.tokenError(err)
			te.Attempts = attempt + 1
		}
		// Observe before anyone sees the outcome, so metrics are recorded
		// by the time any caller does.
		if ts.opts.observer != nil {
			if te != nil {
				ts.opts.observer(te, time.Since(start))
			} else {
				ts.opts.observer(nil, time.Since(start))
			}
		}
		if te == nil {
			return tok, nil
		}
		if attempt >= ts.opts.retries || !te.Temporary() || ts.ctx.Err() != nil {
			return nil, te
		}
		wait := ts.backoff(attempt, te)
		select {
		case <-time.After(wait):
		case <-ts.ctx.Done():
			return nil, te
		}
	}
}

// backoff is the wait before retry attempt+1: a Retry-After the server
// sent, if reasonable, else exponential with jitter (half fixed, half
// random, so retries neither synchronise nor come back at once).
func (ts *TokenSource) backoff(attempt int, te *TokenError) time.Duration {
	if te.RetryAfter > 0 && te.RetryAfter <= ts.opts.retryMax {
		return te.RetryAfter
	}
	d := min(ts.opts.retryBase<<min(attempt, 20), ts.opts.retryMax)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// refreshTime is when a token expiring at expiry, received at now, is
// replaced: delta before expiry, but no earlier than half its lifetime.
// A zero expiry (the server sent no expires_in) means never.
func refreshTime(expiry, now time.Time, delta time.Duration) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	delta = max(min(delta, expiry.Sub(now)/2), 0)
	return expiry.Add(-delta)
}

// staleTime is when a token stops being handed out even if it could not be
// replaced: expirySkew before expiry, at most a tenth of its lifetime.
func staleTime(expiry, now time.Time) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	return expiry.Add(-max(min(expirySkew, expiry.Sub(now)/10), 0))
}

// TokenError is the error returned when the token endpoint could not be
// reached or refused to issue a token. It matches ErrToken with errors.Is.
// Its text names the provider, the server's error and error_description
// verbatim, and never contains the client secret or a JWT.
type TokenError struct {
	Provider    string // "generic", "azure", "google"
	TokenURL    string
	StatusCode  int    // HTTP status of the token endpoint; 0 if none was received
	Code        string // RFC 6749 "error", e.g. "invalid_client"
	Description string // RFC 6749 "error_description", e.g. Entra's "AADSTS7000215: ..."
	// RetryAfter is the server's Retry-After (429, 503), 0 if none.
	RetryAfter time.Duration
	// Attempts is how many requests were made (retries included).
	Attempts int
	msg      string // scrubbed text of Err
	// Err is the underlying error, e.g. *oauth2.RetrieveError or a network
	// error. Its own text is not scrubbed: log the TokenError, not Err.
	Err error
}

func (e *TokenError) Error() string {
	where := e.TokenURL
	if e.Provider != "" {
		where = e.Provider + " token endpoint " + e.TokenURL
	}
	return fmt.Sprintf("%v from %s: %s", ErrToken, where, e.msg)
}

// Unwrap lets errors.Is match ErrToken and the underlying error.
func (e *TokenError) Unwrap() []error { return []error{ErrToken, e.Err} }

// Temporary reports whether trying again later may succeed: no answer at
// all, or 408, 429 or 5xx. A refusal (other 4xx) needs an operator.
func (e *TokenError) Temporary() bool {
	if errors.Is(e.Err, ErrInvalidConfig) || isTLSRefusal(e.Err) {
		return false
	}
	s := e.StatusCode
	return s == 0 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500
}

// isTLSRefusal reports a certificate the client or the server refused:
// a configuration problem (TLS_CA_FILE, TLS_CERT_FILE) that retrying now
// cannot fix.
func isTLSRefusal(err error) bool {
	var verr *tls.CertificateVerificationError
	var alert tls.AlertError
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var op *net.OpError // a TLS alert from the peer, e.g. "certificate required"
	return errors.As(err, &verr) || errors.As(err, &alert) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		(errors.As(err, &op) && op.Op == "remote error")
}

// maxBodyInError limits how much of a non-OAuth2 error body ends up in logs.
const maxBodyInError = 200

func (ts *TokenSource) tokenError(err error) *TokenError {
	te := &TokenError{Provider: ts.ep.Provider, TokenURL: ts.ep.TokenURL(), Err: err}
	var msg string
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		te.Code, te.Description = re.ErrorCode, re.ErrorDescription
		if te.Code == "" {
			// Some grants (x/oauth2/jwt) leave the RFC 6749 body unparsed.
			var body struct {
				Code        string `json:"error"`
				Description string `json:"error_description"`
			}
			if json.Unmarshal(re.Body, &body) == nil {
				te.Code, te.Description = body.Code, body.Description
			}
		}
		if re.Response != nil {
			te.StatusCode = re.Response.StatusCode
			msg = re.Response.Status
			te.RetryAfter = retryafter.Parse(re.Response.Header.Get("Retry-After"), time.Now())
		}
		if prefix := strings.TrimSuffix(strings.TrimSpace(strings.TrimSuffix(err.Error(), re.Error())), ":"); prefix != "" && prefix != err.Error() {
			// Context added by the endpoint, e.g. "OpenID discovery at ...".
			msg = prefix + ": " + msg
		}
		switch {
		case te.Code != "":
			msg += ": " + te.Code
			if te.Description != "" {
				msg += ": " + te.Description
			}
		case len(re.Body) > 0:
			// Scrub before truncating, so no partial secret survives the cut.
			body := []rune(ts.scrub(strings.TrimSpace(string(re.Body))))
			if len(body) > maxBodyInError {
				body = append(body[:maxBodyInError], []rune("...")...)
			}
			msg += ": " + string(body)
		}
	} else {
		msg = err.Error()
	}
	te.msg = ts.scrub(msg)
	return te
}

// jwtPattern matches compact JWS/JWT strings (access tokens, client
// assertions) that a server might echo back.
var jwtPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)

// scrub removes the endpoint's secrets, as sent and as form-encoded, and
// anything that looks like a JWT from s: a misbehaving server may echo the
// request back in its error body.
func (ts *TokenSource) scrub(s string) string {
	for _, secret := range ts.ep.Secrets {
		if secret == "" {
			continue
		}
		for _, v := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret)} {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return jwtPattern.ReplaceAllString(s, "[REDACTED JWT]")
}
