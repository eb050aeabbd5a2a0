package testidp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/client"
	"github.com/zitadel/oidc/v3/pkg/client/rp"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Gate is a resource server in front of an upstream (a DICOMweb server in
// end-to-end tests). It answers 401 with a WWW-Authenticate challenge to any
// request lacking a valid bearer token of its IdP and streams the others to
// the upstream.
type Gate struct {
	URL string

	verifier *op.AccessTokenVerifier
	revoked  func(jti string) bool
	allowed  map[string]bool
	proxy    *httputil.ReverseProxy
	srv      *httptest.Server
	// closeIdle closes the proxy's idle connections to the upstream.
	closeIdle func()
	accepted  atomic.Int64
	rejected  atomic.Int64
}

// GateOption configures a Gate.
type GateOption func(*gateConfig)

type gateConfig struct {
	allowed []string
	logf    func(format string, args ...any) // upstream errors
}

// withErrorLog sends the Gate's upstream errors to logf (the test's log).
func withErrorLog(logf func(format string, args ...any)) GateOption {
	return func(c *gateConfig) { c.logf = logf }
}

// AllowClients sets the clients whose tokens the Gate accepts, instead of the
// IdP's ClientID.
func AllowClients(ids ...string) GateOption {
	return func(c *gateConfig) { c.allowed = ids }
}

// Gate starts a Gate in front of upstream until the end of the test. Like a
// real resource server it learns the IdP's keys through discovery and its
// JWKS endpoint, and checks each token's signature, issuer, expiry and client,
// and that the IdP has not revoked it (IdP.RevokeIssued).
func (p *IdP) Gate(t testing.TB, upstream string, opts ...GateOption) *Gate {
	t.Helper()
	g, err := p.NewGate(t.Context(), upstream, append([]GateOption{withErrorLog(t.Logf)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// NewGate is Gate for programs that are not tests: it runs until Close.
// ctx bounds the discovery request only.
func (p *IdP) NewGate(ctx context.Context, upstream string, opts ...GateOption) (*Gate, error) {
	cfg := gateConfig{allowed: []string{p.ClientID}, logf: func(string, ...any) {}}
	for _, opt := range opts {
		opt(&cfg)
	}
	target, err := url.Parse(upstream)
	if err != nil || target.Scheme == "" || target.Host == "" {
		return nil, fmt.Errorf("testidp: upstream %q is not an absolute URL", upstream)
	}

	httpClient := &http.Client{Timeout: 10 * time.Second}
	disc, err := client.Discover(ctx, p.Issuer, httpClient)
	if err != nil {
		return nil, fmt.Errorf("testidp: discovery: %w", err)
	}

	g := &Gate{
		verifier: op.NewAccessTokenVerifier(disc.Issuer, rp.NewRemoteKeySet(httpClient, disc.JwksURI)),
		revoked:  p.storage.isRevoked,
		allowed:  make(map[string]bool, len(cfg.allowed)),
	}
	for _, id := range cfg.allowed {
		g.allowed[id] = true
	}

	// A transport of its own, so the Gate's idle connections end with it.
	// Idle ones close before Orthanc closes them (1 s, measured on 1.10.1,
	// which says Keep-Alive: timeout=1): a POST sent on one the
	// server was closing failed with "use of closed network connection",
	// not retried, and the forwarder's attempt met a 502 the destination
	// never gave.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.IdleConnTimeout = 300 * time.Millisecond
	g.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			// The token is for the Gate: the upstream has no use for it,
			// and one with authentication of its own would reject it.
			pr.Out.Header.Del("Authorization")
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			cfg.logf("testidp: gate: %s %s: %v", r.Method, r.URL.Path, err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}

	g.srv = httptest.NewServer(g)
	g.closeIdle = transport.CloseIdleConnections
	g.URL = g.srv.URL
	return g, nil
}

// Close stops the Gate's server and closes its idle upstream connections.
func (g *Gate) Close() {
	g.srv.Close()
	g.closeIdle()
}

// Accepted is how many requests the Gate let through.
func (g *Gate) Accepted() int { return int(g.accepted.Load()) }

// Rejected is how many requests the Gate answered with 401.
func (g *Gate) Rejected() int { return int(g.rejected.Load()) }

func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, ok := bearerToken(r)
	if !ok {
		// RFC 6750 3.1: no error code when the request had no credentials.
		g.reject(w, "")
		return
	}
	claims, err := op.VerifyAccessToken[*oidc.AccessTokenClaims](r.Context(), raw, g.verifier)
	if err != nil {
		g.reject(w, rejection(err))
		return
	}
	if g.revoked(claims.JWTID) {
		g.reject(w, "token revoked")
		return
	}
	if !g.allowed[claims.ClientID] {
		g.reject(w, "client not allowed")
		return
	}
	g.accepted.Add(1)
	g.proxy.ServeHTTP(w, r)
}

// reject answers 401 with a Bearer challenge. The description is one of a
// few fixed phrases: never the token, nor the verifier's raw error.
func (g *Gate) reject(w http.ResponseWriter, description string) {
	g.rejected.Add(1)
	challenge := `Bearer realm="testidp"`
	if description != "" {
		challenge += fmt.Sprintf(`, error="invalid_token", error_description=%q`, description)
	}
	w.Header().Set("WWW-Authenticate", challenge)
	http.Error(w, "unauthorized", http.StatusUnauthorized)
}

func rejection(err error) string {
	switch {
	case errors.Is(err, oidc.ErrExpired):
		return "token expired"
	case errors.Is(err, oidc.ErrIssuerInvalid):
		return "wrong issuer"
	case errors.Is(err, oidc.ErrSignatureInvalid), errors.Is(err, oidc.ErrSignatureInvalidPayload),
		errors.Is(err, oidc.ErrSignatureUnsupportedAlg), errors.Is(err, oidc.ErrSignatureMissing):
		return "bad signature"
	default:
		return "malformed token"
	}
}

// bearerToken returns the token of an "Authorization: Bearer" header; the
// scheme is case-insensitive (RFC 7235).
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}
