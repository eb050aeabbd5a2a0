package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testKey returns an assertion key (RSA 2048) and its public key; with
// cert, the PEM also holds a self-signed certificate.
func testKey(t *testing.T, cert bool, opts ...AssertionOption) (*AssertionKey, *x509.Certificate) {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)})
	var c *x509.Certificate
	if cert {
		c = selfSigned(t, priv)
		data = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), data...)
	}
	k, err := ParseAssertionKey(data, "kid-1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return k, c
}

func selfSigned(t *testing.T, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stowline"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAssertionClaimsAndHeader(t *testing.T) {
	key, cert := testKey(t, true, WithAlgorithm(jose.PS256), WithCertificateRequired())
	now := time.Now().Truncate(time.Second)
	raw, err := key.sign("client-1", "https://idp.example/token", now)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.PS256})
	if err != nil {
		t.Fatal(err)
	}
	h := tok.Headers[0]
	sum := sha256.Sum256(cert.Raw)
	if h.Algorithm != "PS256" || h.KeyID != "kid-1" || h.ExtraHeaders["typ"] != "JWT" ||
		h.ExtraHeaders["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Errorf("header = %+v", h)
	}
	var claims jwt.Claims
	if err := tok.Claims(cert.PublicKey, &claims); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if claims.Issuer != "client-1" || claims.Subject != "client-1" || len(claims.Audience) != 1 || claims.Audience[0] != "https://idp.example/token" ||
		claims.ID == "" || claims.IssuedAt.Time() != now || claims.NotBefore.Time() != now.Add(-assertionSkew) || claims.Expiry.Time() != now.Add(assertionLifetime) {
		t.Errorf("claims = %+v", claims)
	}
	again, _ := key.sign("client-1", "https://idp.example/token", now)
	if again == raw {
		t.Error("two assertions share a jti")
	}
}

func TestAssertionKeyFiles(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	smallKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkcs8 := func(k crypto.Signer) []byte {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	certPEM := func(k crypto.Signer) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t, k).Raw})
	}
	tests := []struct {
		name    string
		pem     []byte
		opts    []AssertionOption
		wantAlg jose.SignatureAlgorithm
		wantErr string
	}{
		{name: "PKCS#8 RSA", pem: pkcs8(rsaKey), wantAlg: jose.RS256},
		{name: "SEC 1 P-384", pem: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), wantAlg: jose.ES384},
		{name: "key and certificate", pem: append(certPEM(rsaKey), pkcs8(rsaKey)...), opts: []AssertionOption{WithCertificateRequired()}, wantAlg: jose.RS256},
		{name: "certificate of another key", pem: append(certPEM(otherKey), pkcs8(rsaKey)...), wantErr: "does not match"},
		{name: "certificate required", pem: pkcs8(rsaKey), opts: []AssertionOption{WithCertificateRequired()}, wantErr: "no CERTIFICATE"},
		{name: "short RSA key", pem: pkcs8(smallKey), wantErr: "1024 bits"},
		{name: "PS256 with an EC key", pem: pkcs8(otherKey), opts: []AssertionOption{WithAlgorithm(jose.PS256)}, wantErr: "cannot sign PS256"},
		{name: "encrypted", pem: pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("x")}), wantErr: "encrypted"},
		{name: "no key", pem: certPEM(rsaKey), wantErr: "no PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := os.WriteFile(path, tt.pem, 0o600); err != nil {
				t.Fatal(err)
			}
			k, err := NewAssertionKey(path, "", tt.opts...)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidConfig with %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), "MII") {
					t.Fatal("the error shows key material")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, err := k.sign("c", "aud", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{tt.wantAlg})
			if err != nil {
				t.Fatalf("alg: %v", err)
			}
			_ = tok
		})
	}
}

func TestAssertionKeyReread(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key.pem")
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	write := func(k *ecdsa.PrivateKey) {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(k1)
	key, err := NewAssertionKey(path, "")
	if err != nil {
		t.Fatal(err)
	}
	write(k2) // rotated
	raw, err := key.sign("c", "aud", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	var c jwt.Claims
	if err := tok.Claims(&k2.PublicKey, &c); err != nil {
		t.Fatalf("not signed with the rotated key: %v", err)
	}
}
