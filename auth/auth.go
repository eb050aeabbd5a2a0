// Package auth obtains OAuth2 access tokens with the client-credentials grant
// and attaches them to outgoing requests to a DICOMweb destination.
//
// One TokenSource exists per destination and is shared by all workers: it
// caches the token, refreshes it shortly before it expires and makes sure that
// many workers needing a token at once cause a single request to the token
// endpoint.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Sentinel errors; test for them with errors.Is.
var (
	// ErrInvalidConfig reports a missing or malformed Config field or Option.
	ErrInvalidConfig = errors.New("auth: invalid config")
	// ErrToken reports that no token could be obtained from the token endpoint.
	ErrToken = errors.New("auth: cannot obtain token")
)

const (
	// DefaultExpiryDelta is how long before expiry a token is refreshed,
	// unless WithExpiryDelta says otherwise.
	DefaultExpiryDelta = 10 * time.Second
	// defaultFetchTimeout bounds a token request when the caller supplies no
	// HTTP client: fetches run on a process-lifetime context that is never
	// cancelled, so without it a hung endpoint would block every worker.
	defaultFetchTimeout = 30 * time.Second
)

// Config identifies the token endpoint and the client credentials of one
// destination.
type Config struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	Scopes       []string
}

func (c Config) validate() error {
	switch {
	case c.TokenURL == "":
		return fmt.Errorf("%w: TokenURL is required", ErrInvalidConfig)
	case c.ClientID == "":
		return fmt.Errorf("%w: ClientID is required", ErrInvalidConfig)
	case c.ClientSecret == "":
		return fmt.Errorf("%w: ClientSecret is required", ErrInvalidConfig)
	}
	u, err := url.Parse(c.TokenURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%w: TokenURL must be an absolute http(s) URL", ErrInvalidConfig)
	}
	return nil
}

// Option configures a TokenSource.
type Option func(*options)

type options struct {
	httpClient  *http.Client
	expiryDelta time.Duration
	observer    func(err error, d time.Duration)
	authStyle   oauth2.AuthStyle
}

// WithHTTPClient sets the client used to reach the token endpoint (timeouts,
// CA pool, proxy); nil means a client with a 30 s timeout. It is not used
// for requests to the destination.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.httpClient = c }
}

// WithExpiryDelta sets how long before expiry a cached token is replaced.
// Whatever d is, a token is used for at least half of its lifetime, so that
// tokens living only a few seconds are still reused rather than fetched for
// every request.
func WithExpiryDelta(d time.Duration) Option {
	return func(o *options) { o.expiryDelta = d }
}

// WithObserver registers fn, called after every request to the token
// endpoint with its error (nil on success) and duration, e.g. for metrics.
// It runs on the fetching goroutine and must not block.
func WithObserver(fn func(err error, d time.Duration)) Option {
	return func(o *options) { o.observer = fn }
}

// WithAuthStyle fixes how the client authenticates to the token endpoint
// (oauth2.AuthStyleInHeader for client_secret_basic, oauth2.AuthStyleInParams
// for client_secret_post). The default auto-detects.
func WithAuthStyle(s oauth2.AuthStyle) Option {
	return func(o *options) { o.authStyle = s }
}

// TokenSource is a cached, concurrency-safe source of client-credentials
// tokens for one destination. It implements oauth2.TokenSource.
type TokenSource struct {
	ctx      context.Context // process lifetime, carries the HTTP client
	cc       *clientcredentials.Config
	tokenURL string
	secret   string // kept only to scrub it from error text
	opts     options

	mu        sync.Mutex
	tok       *oauth2.Token
	refreshAt time.Time // zero: tok has no expiry
	inflight  *fetch
}

// fetch is one request to the token endpoint that any number of callers wait on.
type fetch struct {
	done chan struct{} // closed once tok/err are set
	tok  *oauth2.Token
	err  error
}

// NewTokenSource returns the token source of one destination, to be shared by
// all its workers. ctx must live as long as the process: tokens are fetched
// with it rather than with a request's context, so that a cancelled request
// never fails a fetch that other workers are waiting for. No token is fetched
// until the first call to Token.
func NewTokenSource(ctx context.Context, cfg Config, opts ...Option) (*TokenSource, error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: nil context", ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	o := options{expiryDelta: DefaultExpiryDelta}
	for _, opt := range opts {
		opt(&o)
	}
	if o.expiryDelta < 0 {
		return nil, fmt.Errorf("%w: negative expiry delta %v", ErrInvalidConfig, o.expiryDelta)
	}
	if o.httpClient == nil {
		o.httpClient = &http.Client{Timeout: defaultFetchTimeout}
	}
	return &TokenSource{
		ctx: context.WithValue(ctx, oauth2.HTTPClient, o.httpClient),
		cc: &clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			TokenURL:     cfg.TokenURL,
			Scopes:       append([]string(nil), cfg.Scopes...),
			AuthStyle:    o.authStyle,
		},
		tokenURL: cfg.TokenURL,
		secret:   cfg.ClientSecret,
		opts:     o,
	}, nil
}

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
	ts.mu.Lock()
	if ts.validLocked(time.Now()) {
		tok := ts.tok
		ts.mu.Unlock()
		return tok, nil
	}
	f := ts.inflight
	if f == nil {
		f = &fetch{done: make(chan struct{})}
		ts.inflight = f
		// A goroutine of its own, so that no caller's cancellation can
		// abandon the fetch the others are waiting for.
		go ts.run(f)
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
		ts.refreshAt = time.Time{}
	}
}

func (ts *TokenSource) validLocked(now time.Time) bool {
	return ts.tok != nil && (ts.refreshAt.IsZero() || now.Before(ts.refreshAt))
}

func (ts *TokenSource) run(f *fetch) {
	start := time.Now()
	tok, err := ts.cc.Token(ts.ctx)
	elapsed := time.Since(start)
	if err == nil && (tok == nil || tok.AccessToken == "") {
		err = errors.New("empty access token")
	}
	if err != nil {
		tok, err = nil, ts.tokenError(err)
	}

	ts.mu.Lock()
	if err == nil {
		ts.tok = tok
		ts.refreshAt = refreshTime(tok.Expiry, time.Now(), ts.opts.expiryDelta)
	}
	ts.inflight = nil
	f.tok, f.err = tok, err
	ts.mu.Unlock()

	// Observe before releasing the waiters, so metrics are recorded by the
	// time any caller sees the outcome.
	if ts.opts.observer != nil {
		ts.opts.observer(err, elapsed)
	}
	close(f.done)
}

// refreshTime is when a token expiring at expiry, received at now, stops being
// handed out: delta before expiry, but no earlier than half its lifetime.
// A zero expiry (the server sent no expires_in) means never.
func refreshTime(expiry, now time.Time, delta time.Duration) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	delta = max(min(delta, expiry.Sub(now)/2), 0)
	return expiry.Add(-delta)
}

// TokenError is the error returned when the token endpoint could not be
// reached or refused to issue a token. It matches ErrToken with errors.Is.
// Its text names the server's error and error_description and never contains
// the client secret.
type TokenError struct {
	TokenURL    string
	StatusCode  int    // HTTP status of the token endpoint; 0 if none was received
	Code        string // RFC 6749 "error", e.g. "invalid_client"
	Description string // RFC 6749 "error_description"
	msg         string // scrubbed text of Err
	// Err is the underlying error, e.g. *oauth2.RetrieveError or a network
	// error. Its own text is not scrubbed: log the TokenError, not Err.
	Err error
}

func (e *TokenError) Error() string {
	return fmt.Sprintf("%v from %s: %s", ErrToken, e.TokenURL, e.msg)
}

// Unwrap lets errors.Is match ErrToken and the underlying error.
func (e *TokenError) Unwrap() []error { return []error{ErrToken, e.Err} }

// maxBodyInError limits how much of a non-OAuth2 error body ends up in logs.
const maxBodyInError = 200

func (ts *TokenSource) tokenError(err error) *TokenError {
	te := &TokenError{TokenURL: ts.tokenURL, Err: err}
	var msg string
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		te.Code, te.Description = re.ErrorCode, re.ErrorDescription
		if re.Response != nil {
			te.StatusCode = re.Response.StatusCode
			msg = re.Response.Status
		}
		switch {
		case re.ErrorCode != "":
			msg += ": " + re.ErrorCode
			if re.ErrorDescription != "" {
				msg += ": " + re.ErrorDescription
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

// scrub removes the client secret, as sent and as form-encoded, from s: a
// misbehaving server may echo the request back in its error body.
func (ts *TokenSource) scrub(s string) string {
	if ts.secret == "" {
		return s
	}
	for _, v := range []string{ts.secret, url.QueryEscape(ts.secret), url.PathEscape(ts.secret)} {
		s = strings.ReplaceAll(s, v, "[REDACTED]")
	}
	return s
}
