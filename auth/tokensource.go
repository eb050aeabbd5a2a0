package auth

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

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
	ep.Provider = cmp.Or(ep.Provider, providerGeneric)
	if ep.TokenURL == nil {
		ep.TokenURL = func() string { return "" }
	}
	o := options{margin: defaultRefreshMargin, retries: defaultRetries, retryBase: defaultRetryBase, retryMax: defaultRetryMax}
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
		return nil, errNoTokenSource
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
