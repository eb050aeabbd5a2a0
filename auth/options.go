package auth

import (
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
)

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
	tracer     trace.Tracer
	traceAttrs []attribute.KeyValue
}

// WithHTTPClient sets the client used to reach the token endpoint (timeouts,
// CA pool, proxy); nil means a client with a 30 s timeout. It is not used
// for requests to the destination.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.httpClient = c }
}

// WithRefreshMargin sets how long before expiry a cached token is replaced
// (default 5 minutes). The replacement is fetched in the
// background while the current token goes on being used. Whatever d is, a
// token is used for at least half of its lifetime, so that tokens living
// only a few seconds are still reused rather than fetched for every
// request.
func WithRefreshMargin(d time.Duration) Option {
	return func(o *options) { o.margin = d }
}

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
// callers see the error (default 3; 0 disables retries).
// Backoff starts at base and doubles up to max, with jitter; a
// Retry-After no longer than max is honoured.
func WithRetries(n int, base, max time.Duration) Option {
	return func(o *options) { o.retries, o.retryBase, o.retryMax = n, base, max }
}

// WithTracerProvider traces tokens with tp: every request to the token
// endpoint (with its retries) is a "token fetch" span, a child of the
// request that needed it or a root when it refreshes in the background;
// and a caller inside a trace gets a "destination token" span, saying
// whether the token was cached. attrs (the destination's name, say) are
// added to both. Spans never carry a token or a secret. nil tp: no
// tracing, the default.
func WithTracerProvider(tp trace.TracerProvider, attrs ...attribute.KeyValue) Option {
	return func(o *options) {
		if tp == nil {
			o.tracer, o.traceAttrs = nil, nil
			return
		}
		o.tracer, o.traceAttrs = tp.Tracer("github.com/stowline/stowline/auth"), attrs
	}
}
