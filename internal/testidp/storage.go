package testidp

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// zitadel's example storage (example/server/storage) does support
// client_credentials, but with one hard-coded service user and a fixed
// five-minute token lifetime in unexported fields, so this package implements
// the few op.Storage methods the client_credentials grant needs and refuses
// the rest (authorization code, refresh, introspection).
//
// For the client_credentials grant zitadel hands client authentication to
// Storage.ClientCredentials with the client ID and secret only, so a
// private_key_jwt client's assertion is verified before that (IdP.serve,
// with zitadel's own JWT profile verifier and GetKeyByIDAndClientID), and
// ClientCredentials accepts a key client only when the request's context
// says its assertion was verified.

var (
	_ op.Storage                  = (*storage)(nil)
	_ op.ClientCredentialsStorage = (*storage)(nil)
)

// errUnsupported answers every flow other than client_credentials.
var errUnsupported = errors.New("testidp: only the client_credentials grant is supported")

// errBadClient answers an unknown client or a wrong secret. A plain error is
// what zitadel turns into invalid_client; an oidc server_error would be a 500.
var errBadClient = errors.New("testidp: unknown client or wrong secret")

// storage's clients, lifetime and key are immutable after newStorage; the
// counter is atomic; the token IDs and the secrets replaced by
// setSecrets are under mu.
type storage struct {
	clients  map[string]*serviceClient
	lifetime time.Duration
	key      signingKey
	issued   atomic.Int64

	mu      sync.Mutex
	ids     []string            // IDs (jti) of the tokens issued and not revoked
	revoked map[string]struct{} // IDs of revoked tokens
	secrets map[string][]string // client ID -> secrets accepted instead of its own
}

func newStorage(creds []credential, lifetime time.Duration, key signingKey) *storage {
	s := &storage{clients: make(map[string]*serviceClient, len(creds)), lifetime: lifetime, key: key, revoked: map[string]struct{}{}}
	for _, c := range creds {
		s.clients[c.id] = &serviceClient{id: c.id, secret: c.secret, keyID: c.keyID, pub: c.pub}
	}
	return s
}

func (s *storage) authenticate(clientID, secret string) (*serviceClient, error) {
	c, ok := s.clients[clientID]
	if !ok || c.pub != nil {
		return nil, errBadClient
	}
	s.mu.Lock()
	accepted, replaced := s.secrets[clientID]
	s.mu.Unlock()
	if !replaced {
		accepted = []string{c.secret}
	}
	for _, a := range accepted {
		if subtle.ConstantTimeCompare([]byte(a), []byte(secret)) == 1 {
			return c, nil
		}
	}
	return nil, errBadClient
}

// setSecrets makes secrets the ones clientID may authenticate with.
func (s *storage) setSecrets(clientID string, secrets []string) error {
	if c, ok := s.clients[clientID]; !ok || c.pub != nil {
		return fmt.Errorf("testidp: no client %q with a secret", clientID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets == nil {
		s.secrets = map[string][]string{}
	}
	s.secrets[clientID] = secrets
	return nil
}

// assertedClientKey marks a request context whose client assertion was
// verified; its value is the client ID.
type assertedClientKey struct{}

// ClientCredentials authenticates a client of the client_credentials grant,
// whether it sent its secret as client_secret_basic or client_secret_post,
// or a private_key_jwt assertion verified before (see IdP.serve).
func (s *storage) ClientCredentials(ctx context.Context, clientID, clientSecret string) (op.Client, error) {
	if asserted, ok := ctx.Value(assertedClientKey{}).(string); ok {
		c, known := s.clients[clientID]
		if !known || c.pub == nil || asserted != clientID || clientSecret != "" {
			return nil, errBadClient
		}
		return c, nil
	}
	return s.authenticate(clientID, clientSecret)
}

// revokeIssued revokes every token issued so far.
func (s *storage) revokeIssued() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.ids {
		s.revoked[id] = struct{}{}
	}
	s.ids = nil
}

func (s *storage) isRevoked(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.revoked[id]
	return ok
}

func (s *storage) ClientCredentialsTokenRequest(_ context.Context, clientID string, scopes []string) (op.TokenRequest, error) {
	if _, ok := s.clients[clientID]; !ok {
		return nil, errBadClient
	}
	return &tokenRequest{clientID: clientID, scopes: scopes}, nil
}

// CreateAccessToken returns the ID and expiry of a new token; zitadel signs
// the JWT itself with SigningKey.
func (s *storage) CreateAccessToken(_ context.Context, _ op.TokenRequest) (string, time.Time, error) {
	s.issued.Add(1)
	// The JWT exp claim has whole seconds and zitadel truncates expires_in
	// (exp minus now) to whole seconds, so exp = now+lifetime would be
	// announced as lifetime-1s. Rounding exp up to the next second announces
	// the lifetime exactly, and the JWT never expires before the client
	// expects it to.
	exp := time.Now().Add(s.lifetime).Truncate(time.Second).Add(time.Second)
	id := rand.Text()
	s.mu.Lock()
	s.ids = append(s.ids, id)
	s.mu.Unlock()
	return id, exp, nil
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return &s.key, nil }

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{s.key.alg}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, clientID string) (op.Client, error) {
	c, ok := s.clients[clientID]
	if !ok {
		return nil, errBadClient
	}
	return c, nil
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, clientID, clientSecret string) error {
	_, err := s.authenticate(clientID, clientSecret)
	return err
}

// GetPrivateClaimsFromScopes adds no claims beyond the standard ones
// (iss, sub, aud, exp, iat, nbf, jti, client_id).
func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) Health(context.Context) error { return nil }

// The rest of op.Storage serves flows this IdP does not offer.

func (s *storage) CreateAuthRequest(context.Context, *oidc.AuthRequest, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}

func (s *storage) AuthRequestByID(context.Context, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}

func (s *storage) AuthRequestByCode(context.Context, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}

func (s *storage) SaveAuthCode(context.Context, string, string) error { return errUnsupported }

func (s *storage) DeleteAuthRequest(context.Context, string) error { return errUnsupported }

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errUnsupported
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(context.Context, string, string) error { return errUnsupported }

func (s *storage) RevokeToken(context.Context, string, string, string) *oidc.Error {
	return oidc.ErrUnsupportedGrantType().WithDescription("revocation is not supported")
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

func (s *storage) SetUserinfoFromToken(context.Context, *oidc.UserInfo, string, string, string) error {
	return errUnsupported
}

func (s *storage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return errUnsupported
}

// GetKeyByIDAndClientID returns the public key a private_key_jwt client
// registered, for zitadel's JWT profile verifier. An assertion without kid
// is checked against the client's one key.
func (s *storage) GetKeyByIDAndClientID(_ context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	c, ok := s.clients[clientID]
	if !ok || c.pub == nil || (keyID != "" && keyID != c.keyID) {
		return nil, errBadClient
	}
	return &jose.JSONWebKey{Key: c.pub, KeyID: c.keyID, Use: "sig"}, nil
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errUnsupported
}

// tokenRequest is the op.TokenRequest of a client_credentials grant: the
// client is both subject and audience.
type tokenRequest struct {
	clientID string
	scopes   []string
}

func (r *tokenRequest) GetSubject() string    { return r.clientID }
func (r *tokenRequest) GetAudience() []string { return []string{r.clientID} }
func (r *tokenRequest) GetScopes() []string   { return r.scopes }

// signingKey implements op.SigningKey.
type signingKey struct {
	id  string
	alg jose.SignatureAlgorithm
	key *ecdsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return k.alg }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

// publicKey implements op.Key, as published at the JWKS endpoint.
type publicKey struct{ k signingKey }

func (p publicKey) ID() string                         { return p.k.id }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return p.k.alg }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any                           { return &p.k.key.PublicKey }

// serviceClient is a service account: it may only use client_credentials and gets
// JWT access tokens. It authenticates with its secret or, when pub is set,
// with private_key_jwt assertions signed by the key pub belongs to.
type serviceClient struct {
	id, secret string
	keyID      string
	pub        crypto.PublicKey
}

var _ op.Client = (*serviceClient)(nil)

func (c *serviceClient) GetID() string                       { return c.id }
func (c *serviceClient) RedirectURIs() []string              { return nil }
func (c *serviceClient) PostLogoutRedirectURIs() []string    { return nil }
func (c *serviceClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *serviceClient) AuthMethod() oidc.AuthMethod {
	if c.pub != nil {
		return oidc.AuthMethodPrivateKeyJWT
	}
	return oidc.AuthMethodBasic
}
func (c *serviceClient) ResponseTypes() []oidc.ResponseType { return nil }
func (c *serviceClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeClientCredentials}
}
func (c *serviceClient) LoginURL(string) string               { return "" }
func (c *serviceClient) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeJWT }
func (c *serviceClient) IDTokenLifetime() time.Duration       { return 0 }
func (c *serviceClient) DevMode() bool                        { return false }
func (c *serviceClient) IsScopeAllowed(string) bool           { return true }
func (c *serviceClient) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c *serviceClient) ClockSkew() time.Duration             { return 0 }
func (c *serviceClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *serviceClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
