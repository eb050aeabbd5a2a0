package auth

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/internal/tracing"
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
	// notBefore is the end of the wait the identity provider asked for
	// (Retry-After) when it last refused; until then a caller without a
	// token gets waitErr, that refusal, instead of a new request.
	notBefore time.Time
	waitErr   error
	// failed counts the fetches failed in a row with no token to fall
	// back on, for the background retry's backoff.
	failed int
	// lastErr is the last fetch's error, nil once one succeeded or the
	// token was invalidated: what Ready reports while there is no token.
	lastErr error
}

const (
	// failedRetryBase and failedRetryMax bound the wait before a fetch
	// that left no token is tried again in the background (each wait
	// drawn in [d/2, d]).
	failedRetryBase = 30 * time.Second
	failedRetryMax  = 5 * time.Minute
)

// maxTokenRetryAfter bounds the wait a token endpoint's Retry-After can
// impose: a proxy's mistaken value must not stop forwarding for hours.
const maxTokenRetryAfter = 5 * time.Minute

// fetch is one request to the token endpoint (with its retries) that any
// number of callers wait on.
type fetch struct {
	done chan struct{} // closed once tok/err are set
	tok  *oauth2.Token
	err  error
	// span is the fetch's "token fetch" span (a no-op one without
	// tracing); parent is the span of the caller that started it.
	span   trace.Span
	parent trace.SpanContext
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
	if o.httpClient.CheckRedirect == nil {
		// A token request's body holds the client's credential
		// (client_secret_post, a client assertion), which Go's client
		// sends again on a 307 or 308 to whatever host, or scheme, the
		// answer names: it goes only to the token endpoint's origin.
		hc := *o.httpClient
		hc.CheckRedirect = SameOriginRedirect
		o.httpClient = &hc
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
	if ts.opts.tracer == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		// Outside a trace (readiness checks, `forwarder check`) a span
		// would start a trace of its own for every probe.
		tok, _, err := ts.token(ctx)
		return tok, err
	}
	ctx, span := ts.opts.tracer.Start(ctx, "destination token", trace.WithAttributes(ts.opts.traceAttrs...))
	defer span.End()
	tok, f, err := ts.token(ctx)
	span.SetAttributes(attribute.Bool("auth.token.cached", f == nil), attribute.String("auth.provider", ts.ep.Provider))
	if f != nil && !f.parent.Equal(span.SpanContext()) {
		// It waited for a fetch another caller (or a refresh) started.
		span.AddLink(trace.Link{SpanContext: f.span.SpanContext()})
	}
	if err != nil {
		span.SetStatus(codes.Error, "no token")
		span.SetAttributes(tracing.ErrorType.String("token"))
	}
	return tok, err
}

// token returns the cached token, or waits for a fetch: the one in flight
// or one it starts. f is the fetch it waited for, nil for a cached token.
func (ts *TokenSource) token(ctx context.Context) (*oauth2.Token, *fetch, error) {
	now := time.Now()
	ts.mu.Lock()
	if ts.validLocked(now) {
		tok := ts.tok
		if !ts.refreshAt.IsZero() && !now.Before(ts.refreshAt) && ts.inflight == nil && !now.Before(ts.notBefore) {
			// Due for replacement (the timer may not have fired yet):
			// fetch in the background, hand out the current one meanwhile.
			ts.startLocked(trace.SpanContext{}, true)
		}
		ts.mu.Unlock()
		return tok, nil, nil
	}
	f := ts.inflight
	if f == nil {
		if now.Before(ts.notBefore) {
			err := ts.waitErrLocked(now)
			ts.mu.Unlock()
			return nil, nil, err
		}
		f = ts.startLocked(trace.SpanContextFromContext(ctx), false)
	}
	ts.mu.Unlock()

	select {
	case <-f.done:
		return f.tok, f, f.err
	case <-ctx.Done():
		return nil, f, fmt.Errorf("%w: gave up waiting: %w", ErrToken, context.Cause(ctx))
	}
}

// Ready reports, for a readiness probe, whether a token can be had: nil
// while a usable one is cached, else the last fetch's error, without
// asking the identity provider again: the background retry keeps its
// backoff (30 s, then 1, 2, 4 min, then every 5), where a fetch per probe
// sent refused credentials every probe period. It fetches only when no
// fetch has told anything yet (none made, or the token was invalidated),
// and waits for one in flight until ctx is done.
func (ts *TokenSource) Ready(ctx context.Context) error {
	if ts == nil {
		return errNoTokenSource
	}
	now := time.Now()
	ts.mu.Lock()
	if ts.validLocked(now) {
		ts.mu.Unlock()
		return nil
	}
	if ts.inflight == nil && ts.lastErr != nil {
		err := ts.lastErr
		if now.Before(ts.notBefore) {
			err = ts.waitErrLocked(now)
		}
		ts.mu.Unlock()
		return err
	}
	ts.mu.Unlock()
	_, err := ts.TokenContext(ctx)
	return err
}

// waitErrLocked is the refusal handed out until notBefore, saying the wait
// that is left: a caller schedules its retry by RetryAfter (the
// forwarder's backoff), and the whole wait, told again to a caller that
// came late, put it off by up to maxTokenRetryAfter beyond the end.
func (ts *TokenSource) waitErrLocked(now time.Time) error {
	te, ok := ts.waitErr.(*TokenError)
	if !ok {
		return ts.waitErr
	}
	left := *te
	left.RetryAfter = ts.notBefore.Sub(now)
	return &left
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
		// A failed background refresh's error says nothing of a fetch
		// now: Ready fetches rather than report it.
		ts.lastErr = nil
	}
}

func (ts *TokenSource) validLocked(now time.Time) bool {
	return ts.tok != nil && (ts.staleAt.IsZero() || now.Before(ts.staleAt))
}

// startLocked starts a fetch on a goroutine of its own, so that no caller's
// cancellation can abandon the fetch the others are waiting for. Its span
// is a child of parent, the waiting caller's span, or a root when parent
// is not valid (a caller outside any trace, a refresh in the background).
func (ts *TokenSource) startLocked(parent trace.SpanContext, background bool) *fetch {
	f := &fetch{done: make(chan struct{}), span: noSpan, parent: parent}
	if ts.opts.tracer != nil {
		_, f.span = ts.opts.tracer.Start(trace.ContextWithSpanContext(ts.ctx, parent), "token fetch",
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(ts.opts.traceAttrs...))
		f.span.SetAttributes(attribute.String("auth.provider", ts.ep.Provider), attribute.Bool("auth.background", background))
	}
	ts.inflight = f
	go ts.run(f)
	return f
}

// noSpan is the span of a fetch without tracing.
var noSpan = trace.SpanFromContext(context.Background())

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
		ts.startLocked(trace.SpanContext{}, true)
	}
}

func (ts *TokenSource) run(f *fetch) {
	tok, err := ts.fetchWithRetries(f.span)
	now := time.Now()
	ts.endSpan(f.span, tok, err, now)

	ts.mu.Lock()
	ts.notBefore, ts.waitErr = time.Time{}, nil
	if te, ok := errors.AsType[*TokenError](err); ok && te.RetryAfter > 0 {
		ts.notBefore, ts.waitErr = now.Add(te.RetryAfter), err
	}
	switch {
	case err == nil:
		ts.failed = 0
		ts.tok = tok
		expiry := tok.Expiry
		if !expiry.IsZero() && !expiry.After(now) {
			// Expired on arrival: the provider's clock and this host's
			// disagree (an absolute expires_on read on a clock ahead)
			// or it states no lifetime (expires_in 0 or less). By it,
			// the token would go to no caller and be replaced at once,
			// back to back for ever: it is used, as one without a
			// stated lifetime, until the destination refuses it (401).
			expiry = time.Time{}
		}
		ts.refreshAt = refreshTime(expiry, now, ts.opts.margin)
		if !ts.refreshAt.IsZero() {
			// Replicas given tokens together do not renew them together.
			ts.refreshAt = now.Add(jitterEarlier(ts.refreshAt.Sub(now)))
		}
		ts.staleAt = staleTime(expiry, now)
		ts.armLocked(ts.refreshAt, now)
	case ts.validLocked(now):
		// A background refresh failed while the current token is still
		// good: try again about halfway to the end of its use (at random
		// between a quarter and three quarters of the way, so replicas
		// do not retry together). refreshAt moves there too, or every call
		// until then would start a fetch (an identity provider refusing or
		// throttling would get one a request).
		ts.refreshAt = now.Add(retryWhileValid(ts.staleAt.Sub(now)))
		if ts.refreshAt.Before(ts.notBefore) {
			ts.refreshAt = ts.notBefore
		}
		ts.armLocked(ts.refreshAt, now)
	default:
		// No token to fall back on: try again in the background, so that
		// refused credentials or an endpoint down show steadily (the token
		// metrics and their alert, readiness, the status page) even on a
		// quiet host where no study asks for a token, and once repaired
		// (a rotated secret file) a token is at hand before the next study.
		ts.failed++
		at := now.Add(jitter(min(failedRetryBase<<min(ts.failed-1, 4), failedRetryMax)))
		if at.Before(ts.notBefore) {
			at = ts.notBefore
		}
		ts.armLocked(at, now)
	}
	ts.inflight = nil
	ts.lastErr = err
	f.tok, f.err = tok, err
	ts.mu.Unlock()
	close(f.done)
}

// refreshTime is when a token expiring at expiry, received at now, is
// replaced: delta before expiry, but at least twice as long before it as
// the token stops being handed out (staleTime: a smaller delta left every
// caller waiting for the identity provider at each renewal), and no
// earlier than half its lifetime. A zero expiry (the server sent no
// expires_in) means never.
func refreshTime(expiry, now time.Time, delta time.Duration) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	delta = max(delta, 2*expiry.Sub(staleTime(expiry, now)))
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

// endSpan ends a fetch's span with its outcome: the token's lifetime, or
// what failed (the endpoint's status and RFC 6749 error code, never its
// description or the token).
func (ts *TokenSource) endSpan(span trace.Span, tok *oauth2.Token, err error, now time.Time) {
	if !span.IsRecording() {
		return
	}
	if u, perr := url.Parse(ts.ep.TokenURL()); perr == nil && u.Host != "" {
		span.SetAttributes(tracing.ServerAddress.String(u.Host))
	}
	var te *TokenError
	switch {
	case err == nil:
		if !tok.Expiry.IsZero() {
			span.SetAttributes(attribute.Int64("auth.token.lifetime_s", int64(tok.Expiry.Sub(now).Seconds())))
		}
	case errors.As(err, &te):
		span.SetAttributes(attribute.Int("auth.attempts", te.Attempts), tracing.ErrorType.String(tokenErrorType(te)))
		if te.StatusCode != 0 {
			span.SetAttributes(tracing.HTTPStatus.Int(te.StatusCode))
		}
		if code := spanErrorCode(ts.scrub(te.Code)); code != "" {
			span.SetAttributes(attribute.String("oauth2.error", code))
		}
		span.SetStatus(codes.Error, "no token")
	default:
		span.SetStatus(codes.Error, "no token")
	}
	span.End()
}

// maxSpanErrorCode bounds oauth2.error: an RFC 6749 code is a short
// word, but it is the token server's own text, of any length.
const maxSpanErrorCode = 64

// spanErrorCode is code for a span attribute: its printable ASCII
// characters (those RFC 6749 allows, and space), at most
// maxSpanErrorCode of them.
func spanErrorCode(code string) string {
	b := make([]byte, 0, min(len(code), maxSpanErrorCode))
	for i := 0; i < len(code) && len(b) < maxSpanErrorCode; i++ {
		if c := code[i]; c >= 0x20 && c <= 0x7E {
			b = append(b, c)
		}
	}
	return string(b)
}

// tokenErrorType is a bounded word for what a token request met.
func tokenErrorType(te *TokenError) string {
	switch {
	case te.StatusCode != 0:
		return "http_" + fmt.Sprint(te.StatusCode)
	case isTLSRefusal(te.Err):
		return "tls"
	case errors.Is(te.Err, ErrInvalidConfig):
		return "config"
	}
	return "network"
}
