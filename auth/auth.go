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
	"context"
	"errors"
	"time"

	"golang.org/x/oauth2"
)

// Sentinel errors; test for them with errors.Is.
var (
	// ErrInvalidConfig reports a missing or malformed Config field or Option.
	ErrInvalidConfig = errors.New("auth: invalid config")
	// ErrToken reports that no token could be obtained from the token endpoint.
	ErrToken = errors.New("auth: cannot obtain token")
	// ErrClockSkew reports a request the destination answered by refusing
	// the time it was signed at (awssig: AWS's 403 for a signature more
	// than 5 minutes off). The destination did answer, and the transport
	// signs the next request at the destination's time: sent again, the
	// request should go through.
	ErrClockSkew = errors.New("this host's clock is off")
)

// providerGeneric names the standards-only identity provider.
const providerGeneric = "generic"

const (
	// defaultRefreshMargin is how long before expiry a token is replaced
	// in the background, unless WithRefreshMargin says otherwise. It is
	// capped at half the token's lifetime.
	defaultRefreshMargin = 5 * time.Minute
	// defaultRetries is how many times a failed token request is retried
	// (network errors, 408, 429, 5xx) before the caller sees the error.
	defaultRetries = 3
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
	// Secrets returns what is scrubbed from error text: a misbehaving
	// server may echo the request in its error body. nil: nothing.
	Secrets func() []string
	// RetryStatuses are this endpoint's answers that mean "try again
	// later" besides 408, 429 and 5xx (Azure IMDS: 404 and 410 while it
	// is being updated).
	RetryStatuses []int
}
