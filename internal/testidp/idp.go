// Package testidp runs a real OAuth2 authorization server for tests, built on
// zitadel's OpenID provider (github.com/zitadel/oidc/v3/pkg/op) with an
// in-memory storage, and a Gate: a reverse proxy that admits only requests
// carrying a valid access token of that server.
//
// The server issues JWT access tokens through the client_credentials grant,
// with client_secret_basic or client_secret_post, and serves discovery at
// /.well-known/openid-configuration and its signing keys at /keys.
// It listens on plain HTTP on 127.0.0.1 and is stopped by t.Cleanup.
package testidp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http/httptest"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
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

	storage *storage
}

// Option configures an IdP.
type Option func(*config)

type config struct {
	clients  []credential
	lifetime time.Duration
}

type credential struct{ id, secret string }

// WithClient registers a client allowed the client_credentials grant. It may
// be given several times; the first client is the IdP's ClientID. Without it,
// a client DefaultClientID with a random secret is registered.
func WithClient(id, secret string) Option {
	return func(c *config) { c.clients = append(c.clients, credential{id: id, secret: secret}) }
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
	cfg := config{lifetime: DefaultTokenLifetime}
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.lifetime < time.Second {
		t.Fatalf("testidp: token lifetime %v is under a second", cfg.lifetime)
	}
	if len(cfg.clients) == 0 {
		cfg.clients = []credential{{id: DefaultClientID, secret: rand.Text()}}
	}
	for _, c := range cfg.clients {
		if c.id == "" || c.secret == "" {
			t.Fatalf("testidp: client ID and secret must not be empty")
		}
	}

	// ES256: key generation is instant (RSA takes a noticeable while per
	// IdP), and zitadel's verifiers accept it by default.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testidp: generating signing key: %v", err)
	}
	st := newStorage(cfg.clients, cfg.lifetime, signingKey{id: rand.Text(), alg: jose.ES256, key: key})

	// The issuer must be known before the provider is built, and it contains
	// the port: listen first, serve later.
	srv := httptest.NewUnstartedServer(nil)
	issuer := "http://" + srv.Listener.Addr().String()

	// CryptoKey encrypts opaque access tokens, which these clients never
	// get (they are issued JWTs), but the provider insists on one.
	opCfg := &op.Config{AuthMethodPost: true}
	if _, err := rand.Read(opCfg.CryptoKey[:]); err != nil {
		t.Fatalf("testidp: %v", err)
	}
	// WithAllowInsecure: zitadel refuses an http:// issuer without it.
	provider, err := op.NewProvider(opCfg, st, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		srv.Close()
		t.Fatalf("testidp: creating provider: %v", err)
	}
	srv.Config.Handler = provider
	srv.Start()
	t.Cleanup(srv.Close)

	return &IdP{
		Issuer:       issuer,
		TokenURL:     provider.TokenEndpoint().Absolute(issuer),
		JWKSURL:      provider.KeysEndpoint().Absolute(issuer),
		ClientID:     cfg.clients[0].id,
		ClientSecret: cfg.clients[0].secret,
		storage:      st,
	}
}

// TokensIssued is how many access tokens the IdP has issued.
func (p *IdP) TokensIssued() int { return int(p.storage.issued.Load()) }
