// Package testidp runs a real OAuth2 authorization server for tests, built on
// zitadel's OpenID provider (github.com/zitadel/oidc/v3/pkg/op) with an
// in-memory storage, and a Gate: a reverse proxy that admits only requests
// carrying a valid access token of that server.
//
// The server issues JWT access tokens through the client_credentials grant,
// with client_secret_basic, client_secret_post or private_key_jwt (RFC 7523
// client assertions, checked by zitadel's JWT profile verifier), and serves
// discovery at /.well-known/openid-configuration and its signing keys at
// /keys. Tests can take its token endpoint down (SetDown) and revoke the
// tokens it issued (RevokeIssued). It listens on plain HTTP on 127.0.0.1
// and is stopped by t.Cleanup (Start), or by Close (New, for programs that
// are not tests, such as the local demo).
package testidp

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// DefaultTokenLifetime is the access token lifetime unless WithTokenLifetime
// says otherwise; short, so that tests exercise refreshing.
const DefaultTokenLifetime = 5 * time.Second

// DefaultClientID names the client registered when no WithClient is given.
const DefaultClientID = "stowline"

// IdP is a running authorization server.
type IdP struct {
	Issuer   string // http://127.0.0.1:port, no trailing slash
	TokenURL string
	JWKSURL  string
	// ClientID and ClientSecret are those of the first registered client:
	// the one Gate admits by default.
	ClientID     string
	ClientSecret string

	storage  *storage
	srv      *httptest.Server
	down     atomic.Bool
	requests atomic.Int64 // to the token endpoint, refused ones included
	// serving is held (read) by every token request and (write) by
	// SetDown, which so waits for the requests in progress.
	serving sync.RWMutex
}

// Option configures an IdP.
type Option func(*config)

type config struct {
	clients  []credential
	lifetime time.Duration
}

type credential struct {
	id, secret string
	keyID      string
	pub        crypto.PublicKey // set for a private_key_jwt client
}

// WithClient registers a client allowed the client_credentials grant. It may
// be given several times; the first client is the IdP's ClientID. Without it,
// a client DefaultClientID with a random secret is registered.
func WithClient(id, secret string) Option {
	return func(c *config) { c.clients = append(c.clients, credential{id: id, secret: secret}) }
}

// WithKeyClient registers a client that authenticates with private_key_jwt:
// client assertions signed with the private key of pub (RSA, EC or
// Ed25519), carrying kid keyID (or none). Their audience must be the token
// endpoint or the issuer.
func WithKeyClient(id, keyID string, pub crypto.PublicKey) Option {
	return func(c *config) { c.clients = append(c.clients, credential{id: id, keyID: keyID, pub: pub}) }
}

// WithTokenLifetime sets how long access tokens live. It must be at least a
// second, since expires_in is a whole number of seconds (and 0 would mean
// "does not expire" to clients).
func WithTokenLifetime(d time.Duration) Option {
	return func(c *config) { c.lifetime = d }
}

// Start runs an IdP until the end of the test.
func Start(t testing.TB, opts ...Option) *IdP {
	t.Helper()
	p, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// New runs an IdP until Close. It is Start for programs that are not tests
// (the local demo, which shows the real client-credentials path).
func New(opts ...Option) (*IdP, error) {
	cfg := config{lifetime: DefaultTokenLifetime}
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.lifetime < time.Second {
		return nil, fmt.Errorf("testidp: token lifetime %v is under a second", cfg.lifetime)
	}
	if len(cfg.clients) == 0 {
		cfg.clients = []credential{{id: DefaultClientID, secret: rand.Text()}}
	}
	for _, c := range cfg.clients {
		if c.id == "" || (c.secret == "" && c.pub == nil) {
			return nil, errors.New("testidp: client ID and secret (or key) must not be empty")
		}
	}

	// ES256: key generation is instant (RSA takes a noticeable while per
	// IdP), and zitadel's verifiers accept it by default.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testidp: generating signing key: %w", err)
	}
	st := newStorage(cfg.clients, cfg.lifetime, signingKey{id: rand.Text(), alg: jose.ES256, key: key})

	// The issuer must be known before the provider is built, and it contains
	// the port: listen first, serve later.
	srv := httptest.NewUnstartedServer(nil)
	issuer := "http://" + srv.Listener.Addr().String()

	// CryptoKey encrypts opaque access tokens, which these clients never
	// get (they are issued JWTs), but the provider insists on one.
	opCfg := &op.Config{AuthMethodPost: true, AuthMethodPrivateKeyJWT: true}
	if _, err := rand.Read(opCfg.CryptoKey[:]); err != nil {
		srv.Close()
		return nil, fmt.Errorf("testidp: %w", err)
	}
	// WithAllowInsecure: zitadel refuses an http:// issuer without it.
	provider, err := op.NewProvider(opCfg, st, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("testidp: creating provider: %w", err)
	}
	p := &IdP{
		Issuer:       issuer,
		TokenURL:     provider.TokenEndpoint().Absolute(issuer),
		JWKSURL:      provider.KeysEndpoint().Absolute(issuer),
		ClientID:     cfg.clients[0].id,
		ClientSecret: cfg.clients[0].secret,
		storage:      st,
		srv:          srv,
	}
	tokenPath := provider.TokenEndpoint().Relative()
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == tokenPath {
			p.serveToken(w, r, provider)
			return
		}
		provider.ServeHTTP(w, r)
	})
	srv.Start()
	return p, nil
}

// Close stops the IdP's server.
func (p *IdP) Close() { p.srv.Close() }

// SetDown makes the token endpoint answer 503 temporarily_unavailable
// (true) or work again (false); discovery and keys stay up, as behind a
// failing token service. It returns once the token requests in progress
// are answered, so that RevokeIssued after SetDown(true) revokes every
// token issued while the endpoint was up.
func (p *IdP) SetDown(down bool) {
	p.serving.Lock()
	defer p.serving.Unlock()
	p.down.Store(down)
}

// SetClientSecrets makes secrets the only ones client id authenticates
// with, as an identity provider's secret rotation does: both old and new
// while clients move over, then the new one alone. Tokens already issued
// stay valid.
func (p *IdP) SetClientSecrets(id string, secrets ...string) error {
	return p.storage.setSecrets(id, secrets)
}

// RevokeIssued revokes every token issued so far: the Gate refuses them
// from now on ("token revoked"), as a resource server would after a key
// rotation or a revocation.
func (p *IdP) RevokeIssued() { p.storage.revokeIssued() }

// TokenRequests is how many requests reached the token endpoint, refused
// ones included.
func (p *IdP) TokenRequests() int { return int(p.requests.Load()) }

// serveToken is the token endpoint: the outage switch, then a client
// assertion (private_key_jwt) verified with zitadel's JWT profile verifier,
// then zitadel's token endpoint.
func (p *IdP) serveToken(w http.ResponseWriter, r *http.Request, provider *op.Provider) {
	p.serving.RLock()
	defer p.serving.RUnlock()
	p.requests.Add(1)
	if p.down.Load() {
		writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "testidp: the token endpoint is down")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "malformed form")
		return
	}
	if r.PostForm.Get("client_assertion_type") == oidc.ClientAssertionTypeJWTAssertion {
		id, err := p.verifyAssertion(r.Context(), r.PostForm.Get("client_assertion"))
		if err != nil {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "client assertion: "+err.Error())
			return
		}
		if cid := r.PostForm.Get("client_id"); cid != "" && cid != id {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "client_id does not match the assertion")
			return
		}
		// zitadel reads the form parsed here; it authenticates the client
		// through Storage.ClientCredentials, told by the context.
		r.Form.Set("client_id", id)
		r = r.WithContext(context.WithValue(r.Context(), assertedClientKey{}, id))
	}
	provider.ServeHTTP(w, r)
}

// verifyAssertion checks an RFC 7523 client assertion (signature with the
// client's registered key, iss = sub, exp, iat, audience) and returns the
// client ID. The audience may be the token endpoint (OpenID Connect Core
// §9) or the issuer.
func (p *IdP) verifyAssertion(ctx context.Context, assertion string) (string, error) {
	if assertion == "" {
		return "", errors.New("missing")
	}
	var err error
	for _, aud := range []string{p.TokenURL, p.Issuer} {
		var req *oidc.JWTTokenRequest
		req, err = op.VerifyJWTAssertion(ctx, assertion, op.NewJWTProfileVerifier(p.storage, aud, time.Hour, time.Second))
		if err == nil {
			return req.Issuer, nil
		}
		if !errors.Is(err, oidc.ErrAudience) {
			break
		}
	}
	return "", err
}

func writeOAuthError(w http.ResponseWriter, status int, code, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
}

// TokensIssued is how many access tokens the IdP has issued.
func (p *IdP) TokensIssued() int { return int(p.storage.issued.Load()) }
