package auth

import (
	"errors"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/internal/tracing"
)

// fetchWithRetries asks the endpoint for a token, retrying failures that
// may pass with exponential backoff and jitter. The error is a *TokenError.
// Each failed request is an event on span.
func (ts *TokenSource) fetchWithRetries(span trace.Span) (*oauth2.Token, error) {
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
			if attempt > 0 {
				span.SetAttributes(attribute.Int("auth.attempts", attempt+1))
			}
			return tok, nil
		}
		if span.IsRecording() {
			span.AddEvent("token request failed", trace.WithAttributes(attribute.Int("auth.attempt", attempt+1),
				tracing.HTTPStatus.Int(te.StatusCode), attribute.Bool("auth.temporary", te.Temporary())))
		}
		// A wait longer than the backoff allows is the token source's to
		// keep (notBefore), not a retry's.
		if attempt >= ts.opts.retries || !te.Temporary() || ts.ctx.Err() != nil || te.RetryAfter > ts.opts.retryMax {
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
// sent (at most retryMax: fetchWithRetries stops before a longer one),
// else exponential with jitter (half fixed, half
// random, so retries neither synchronise nor come back at once).
func (ts *TokenSource) backoff(attempt int, te *TokenError) time.Duration {
	if te.RetryAfter > 0 && te.RetryAfter <= ts.opts.retryMax {
		return te.RetryAfter
	}
	return jitter(min(ts.opts.retryBase<<min(attempt, 20), ts.opts.retryMax))
}

// jitter returns a wait drawn at random in [d/2, d]: replicas that failed
// together (restarted together, or an endpoint back from an outage) then
// do not ask again together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// jitterEarlier returns a wait drawn at random in [d - d/10, d]: a token's
// scheduled refresh, which may come earlier (the token is still good)
// but not later, spread so that replicas given tokens together do not
// ask for the next ones together.
func jitterEarlier(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d - rand.N(d/10+1)
}

// retryWhileValid returns the wait before a failed refresh is tried
// again while the token is good for remaining: drawn at random between a
// quarter and three quarters of remaining (halfway on average), so the
// retry comes before the token goes stale and replicas do not retry
// together; at least 1 s.
func retryWhileValid(remaining time.Duration) time.Duration {
	if remaining <= 0 {
		return time.Second
	}
	return max(time.Second, remaining/4+rand.N(remaining/2+1))
}
