package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/stowline/stowline/internal/secretfile"
)

// assertionLifetime is how long a client assertion is valid: Entra asks
// for 5 to 10 minutes after nbf; a fresh one is signed for every request.
const assertionLifetime = 5 * time.Minute

// assertionSkew backdates an assertion's nbf, for an identity provider
// whose clock is a little behind (exp - nbf stays within Entra's 10 min).
const assertionSkew = 30 * time.Second

// ClientAssertion makes the client_assertion of a token request (RFC 7523
// §2.2): *AssertionKey or *AssertionFile.
type ClientAssertion interface {
	// clientAssertion returns the JWT for clientID to present at
	// audience (the token endpoint) at time now.
	clientAssertion(clientID, audience string, now time.Time) (string, error)
}

// AssertionFile is a client assertion another issuer made, kept in a
// file: a Kubernetes projected service account token that the identity
// provider trusts (Azure workload identity federation). The file is read
// for every token request, since the kubelet replaces the token before it
// expires; its content never appears in errors.
type AssertionFile struct {
	path string
}

// NewAssertionFile returns the assertion kept in the file at path. The
// file is read once now, so a missing or empty one fails at startup.
func NewAssertionFile(path string) (*AssertionFile, error) {
	f := &AssertionFile{path: path}
	if _, err := f.clientAssertion("", "", time.Time{}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return f, nil
}

// clientAssertion returns the file's JWT as it is: its issuer chose its
// subject, audience and lifetime.
func (f *AssertionFile) clientAssertion(string, string, time.Time) (string, error) {
	s, err := secretfile.Read(f.path)
	if err != nil {
		return "", fmt.Errorf("client assertion file: %w", err)
	}
	return s, nil
}

// AssertionKey signs RFC 7523 client assertions (private_key_jwt) with a
// private key from a PEM file. The file is read again for every assertion,
// so a rotated key (a renewed Kubernetes secret) is picked up without a
// restart. Its text never appears in errors.
type AssertionKey struct {
	path        string
	pem         []byte // instead of path
	keyID       string
	alg         jose.SignatureAlgorithm // "" picks by key type
	requireCert bool
}

// AssertionOption configures an AssertionKey.
type AssertionOption func(*AssertionKey)

// WithAlgorithm fixes the signature algorithm (Entra wants PS256); by
// default RSA keys sign RS256, EC keys ES256/384/512 by curve, Ed25519
// keys EdDSA.
func WithAlgorithm(alg jose.SignatureAlgorithm) AssertionOption {
	return func(k *AssertionKey) { k.alg = alg }
}

// WithCertificateRequired makes a PEM without a certificate an error: the
// assertion's x5t#S256 header (the certificate's SHA-256 thumbprint) is
// how Entra finds the registered certificate.
func WithCertificateRequired() AssertionOption {
	return func(k *AssertionKey) { k.requireCert = true }
}

// NewAssertionKey returns the signer of the PEM file at path: a private
// key (PKCS #8, PKCS #1 or SEC 1, unencrypted) and optionally its
// certificate, whose thumbprint then goes in the x5t#S256 header. keyID,
// if not empty, goes in the kid header. The file is read once now, so a
// bad one fails at startup.
func NewAssertionKey(path, keyID string, opts ...AssertionOption) (*AssertionKey, error) {
	k := &AssertionKey{path: path, keyID: keyID}
	return k.init(opts)
}

// ParseAssertionKey is NewAssertionKey for PEM data in memory.
func ParseAssertionKey(pemData []byte, keyID string, opts ...AssertionOption) (*AssertionKey, error) {
	k := &AssertionKey{pem: pemData, keyID: keyID}
	return k.init(opts)
}

func (k *AssertionKey) init(opts []AssertionOption) (*AssertionKey, error) {
	for _, opt := range opts {
		opt(k)
	}
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *AssertionKey) clientAssertion(clientID, audience string, now time.Time) (string, error) {
	return k.sign(clientID, audience, now)
}

// sign returns a client assertion for clientID to present at audience
// (the token endpoint): iss and sub are the client ID, jti is random, iat
// and nbf are now, exp is assertionLifetime later.
func (k *AssertionKey) sign(clientID, audience string, now time.Time) (string, error) {
	m, err := k.load()
	if err != nil {
		return "", err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.keyID != "" {
		opts = opts.WithHeader("kid", k.keyID)
	}
	if m.thumbprint != "" {
		opts = opts.WithHeader("x5t#S256", m.thumbprint)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: m.alg, Key: m.key}, opts)
	if err != nil {
		return "", fmt.Errorf("%w: client assertion: %w", ErrInvalidConfig, err)
	}
	claims := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{audience},
		ID:       rand.Text(),
		IssuedAt: jwt.NewNumericDate(now),
		// Valid from a little before now: an identity provider whose
		// clock is behind ours would refuse it as not yet valid.
		NotBefore: jwt.NewNumericDate(now.Add(-assertionSkew)),
		Expiry:    jwt.NewNumericDate(now.Add(assertionLifetime)),
	}
	raw, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("%w: client assertion: %w", ErrInvalidConfig, err)
	}
	return raw, nil
}

type loadedKey struct {
	key        crypto.Signer
	alg        jose.SignatureAlgorithm
	thumbprint string
}

func (k *AssertionKey) source() string {
	if k.path != "" {
		return k.path
	}
	return "PEM data"
}

func (k *AssertionKey) load() (*loadedKey, error) {
	data := k.pem
	if k.path != "" {
		var err error
		if data, err = os.ReadFile(k.path); err != nil {
			return nil, fmt.Errorf("%w: client assertion key: %w", ErrInvalidConfig, err)
		}
	}
	m, err := parseKeyPEM(data, k.alg)
	if err != nil {
		return nil, fmt.Errorf("%w: client assertion key %s: %w", ErrInvalidConfig, k.source(), err)
	}
	if k.requireCert && m.thumbprint == "" {
		return nil, fmt.Errorf("%w: client assertion key %s: no CERTIFICATE block (the certificate is needed for its x5t#S256 thumbprint)", ErrInvalidConfig, k.source())
	}
	return m, nil
}

// parseKeyPEM finds the private key and the first certificate in data.
// Errors describe the blocks, never their content.
func parseKeyPEM(data []byte, alg jose.SignatureAlgorithm) (*loadedKey, error) {
	var (
		key  crypto.Signer
		cert *x509.Certificate
	)
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			if cert != nil {
				continue // the leaf comes first; the rest is its chain
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("CERTIFICATE block: %w", err)
			}
			cert = c
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			if key != nil {
				return nil, errors.New("more than one private key")
			}
			k, err := parsePrivateKey(block)
			if err != nil {
				return nil, err
			}
			key = k
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the private key is encrypted; store it unencrypted in a secret (openssl pkcs8 -nocrypt)")
		}
	}
	if key == nil {
		return nil, errors.New("no PRIVATE KEY block found")
	}
	m := &loadedKey{key: key}
	if cert != nil {
		pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pub.Equal(key.Public()) {
			return nil, errors.New("the certificate does not match the private key")
		}
		sum := sha256.Sum256(cert.Raw)
		m.thumbprint = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	var err error
	if m.alg, err = algorithmFor(key, alg); err != nil {
		return nil, err
	}
	return m, nil
}

func parsePrivateKey(block *pem.Block) (crypto.Signer, error) {
	var (
		k   any
		err error
	)
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("%s block: %w", block.Type, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s block: unsupported key type %T", block.Type, k)
	}
	return s, nil
}

// algorithmFor picks (or checks) the JWS algorithm for key.
func algorithmFor(key crypto.Signer, want jose.SignatureAlgorithm) (jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
		switch want {
		case "":
			return jose.RS256, nil
		case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
			return want, nil
		}
	case *ecdsa.PrivateKey:
		var alg jose.SignatureAlgorithm
		switch k.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		case elliptic.P521():
			alg = jose.ES512
		default:
			return "", errors.New("unsupported EC curve")
		}
		if want == "" || want == alg {
			return alg, nil
		}
	case ed25519.PrivateKey:
		if want == "" || want == jose.EdDSA {
			return jose.EdDSA, nil
		}
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	return "", fmt.Errorf("a %T cannot sign %s", key, want)
}
