package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/oauth2"
)

// errNoTokenSource is returned by a Transport built without a token source.
var errNoTokenSource = errors.New("auth: no token source")

// contextTokenSource is a token source whose callers can stop waiting.
type contextTokenSource interface {
	TokenContext(ctx context.Context) (*oauth2.Token, error)
}

// invalidator drops a token that the destination rejected.
type invalidator interface {
	Invalidate(tok *oauth2.Token)
}

// Transport returns a RoundTripper that sends every request through base
// (http.DefaultTransport if nil) with "Authorization: Bearer <token>" from src.
//
// If src is a *TokenSource (or anything with TokenContext), a request whose
// context ends while it waits for a token fails at once. If src has an
// Invalidate method, a 401 response invalidates the token it was sent with.
// The request is not retried: its body is a stream that may already be
// consumed, so retrying is up to the caller, who can rebuild it.
func Transport(src oauth2.TokenSource, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{src: src, base: base}
}

type transport struct {
	src  oauth2.TokenSource
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := CheckRedirect(req); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	tok, err := t.token(req.Context())
	if err != nil {
		// A RoundTripper must close the body, even on error.
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}

	// A RoundTripper must not modify the caller's request; Clone copies the
	// headers and shares the body stream.
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "Bearer "+tok.AccessToken)

	resp, err := t.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		if inv, ok := t.src.(invalidator); ok {
			inv.Invalidate(tok)
		}
	}
	return resp, nil
}

// ErrCrossOriginRedirect is returned for a redirect to another scheme,
// host or port than the request's first: the credential a transport adds
// goes only to the destination it was configured for.
var ErrCrossOriginRedirect = errors.New("auth: redirect to another origin refused")

// CheckRedirect returns ErrCrossOriginRedirect when req follows a
// redirect (http.Client sets req.Response) to another origin than the
// request that began the chain. Go's client drops the caller's own
// credentials on such a redirect, but not a header a transport adds on
// every hop, as this package's do: without the check the token would go to
// whatever Location named, over plain HTTP too.
func CheckRedirect(req *http.Request) error {
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	if first == req || (first.URL.Scheme == req.URL.Scheme && first.URL.Host == req.URL.Host) {
		return nil
	}
	return fmt.Errorf("%w: %s://%s to %s://%s", ErrCrossOriginRedirect, first.URL.Scheme, first.URL.Host, req.URL.Scheme, req.URL.Host)
}

// maxRedirects is http.Client's own limit, kept by SameOriginRedirect.
const maxRedirects = 10

// SameOriginRedirect is an http.Client's CheckRedirect that follows a
// redirect only within the origin the request began with: for a client
// whose transport adds no credential, which CheckRedirect would guard,
// but whose requests must not be steered to another host either (a
// DELETE followed by a 307 is sent again, as a DELETE).
func SameOriginRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("auth: stopped after %d redirects", maxRedirects)
	}
	return CheckRedirect(req)
}

func (t *transport) token(ctx context.Context) (*oauth2.Token, error) {
	if t.src == nil {
		return nil, errNoTokenSource
	}
	var (
		tok *oauth2.Token
		err error
	)
	if cs, ok := t.src.(contextTokenSource); ok {
		tok, err = cs.TokenContext(ctx)
	} else {
		tok, err = t.src.Token()
	}
	if err != nil {
		return nil, err
	}
	if tok == nil || tok.AccessToken == "" {
		return nil, fmt.Errorf("%w: empty access token", ErrToken)
	}
	return tok, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach base.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
