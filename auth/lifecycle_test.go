package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
)

// TestBackgroundRefreshNoCallerWaits: with 2 s tokens and a token endpoint
// taking 300 ms, callers asking every 10 ms for 4 s never wait for the
// endpoint after the first token, and tokens are reused, not fetched per
// call.
func TestBackgroundRefreshNoCallerWaits(t *testing.T) {
	t.Parallel()
	srv := newTokenServer(t, issue(2, 300*time.Millisecond))
	ts := newSource(t, srv)
	mustToken(t, ts)

	var slowest time.Duration
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		start := time.Now()
		mustToken(t, ts)
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest Token call %v, %d token requests", slowest, srv.Requests())
	if slowest > 100*time.Millisecond {
		t.Errorf("a caller waited %v: the refresh was not in the background", slowest)
	}
	// One token per half lifetime (1 s): about 5 in 4.3 s.
	if got := srv.Requests(); got < 3 || got > 7 {
		t.Errorf("token requests = %d, want 3..7", got)
	}
}

// TestBackgroundRefreshFailureKeepsToken: a failing background refresh
// leaves the current token in use until it is about to expire; then
// callers see the error; once the endpoint is back, a new token.
func TestBackgroundRefreshFailureKeepsToken(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	ok := issue(4, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	})
	ts := newSource(t, srv, fastRetries)
	start := time.Now()
	first := mustToken(t, ts)
	down.Store(true)

	// Refresh is due at 2 s and fails; the token is good until 3.6 s.
	time.Sleep(time.Until(start.Add(2500 * time.Millisecond)))
	if tok := mustToken(t, ts); tok.AccessToken != first.AccessToken {
		t.Fatal("got another token while the endpoint is down")
	}
	time.Sleep(time.Until(start.Add(3800 * time.Millisecond)))
	if _, err := ts.Token(); !errors.Is(err, ErrToken) {
		t.Fatalf("after the token went stale: err = %v, want ErrToken", err)
	}
	down.Store(false)
	if tok := mustToken(t, ts); tok.AccessToken == first.AccessToken {
		t.Fatal("the stale token was handed out")
	}
}

func TestRetriesRecoverWithinOneCall(t *testing.T) {
	var n atomic.Int64
	ok := issue(3600, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			http.Error(w, "bad gateway", http.StatusBadGateway)
		case 2:
			w.Header().Set("Retry-After", "0")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		default:
			ok(w, r)
		}
	})
	var observed []error
	ts := newSource(t, srv, fastRetries, WithAuthStyle(oauth2.AuthStyleInHeader),
		WithObserver(func(err error, _ time.Duration) { observed = append(observed, err) }))
	mustToken(t, ts)
	if srv.Requests() != 3 || len(observed) != 3 || observed[0] == nil || observed[1] == nil || observed[2] != nil {
		t.Fatalf("requests %d, observed %v: want 3 (2 failures, 1 success)", srv.Requests(), observed)
	}
}

func TestStaleTime(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		lifetime, want time.Duration // want: after now
	}{
		{time.Hour, time.Hour - 10*time.Second},
		{2 * time.Second, 1800 * time.Millisecond},
		{-time.Second, -time.Second},
	}
	for _, tt := range tests {
		if got := staleTime(now.Add(tt.lifetime), now).Sub(now); got != tt.want {
			t.Errorf("staleTime(lifetime %v) = +%v, want +%v", tt.lifetime, got, tt.want)
		}
	}
	if !staleTime(time.Time{}, now).IsZero() {
		t.Error("no expiry must mean never stale")
	}
}

// TestEndpointParams: audience and resource reach the token endpoint.
func TestEndpointParams(t *testing.T) {
	var form url.Values
	ok := issue(3600, 0)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		form = r.PostForm
		ok(w, r)
	})
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, ClientSecret: testSecret,
		AuthStyle: oauth2.AuthStyleInHeader, Scopes: []string{"a", "b"},
		EndpointParams: url.Values{"audience": {"https://dicom.example"}, "resource": {"urn:dicom"}}})
	if err != nil {
		t.Fatal(err)
	}
	mustToken(t, ts)
	if form.Get("audience") != "https://dicom.example" || form.Get("resource") != "urn:dicom" || form.Get("scope") != "a b" ||
		form.Get("grant_type") != "client_credentials" || form.Has("client_secret") {
		t.Fatalf("form = %v", form)
	}
}

// TestScrubsEchoedAssertion: a server echoing the request never gets a
// client assertion (a bearer credential for minutes) into the error.
func TestScrubsEchoedAssertion(t *testing.T) {
	key, _ := testKey(t, false)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.WriteHeader(http.StatusBadRequest)
		_, _ = fmt.Fprintf(w, "cannot parse %s", r.PostForm.Get("client_assertion"))
	})
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, Assertion: key})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if err == nil || strings.Contains(err.Error(), "eyJ") || !strings.Contains(err.Error(), "[REDACTED JWT]") {
		t.Fatalf("err = %v, want the assertion redacted", err)
	}
}

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
	raw, err := key.Sign("client-1", "https://idp.example/token", now)
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
		claims.ID == "" || claims.IssuedAt.Time() != now || claims.NotBefore.Time() != now || claims.Expiry.Time() != now.Add(AssertionLifetime) {
		t.Errorf("claims = %+v", claims)
	}
	again, _ := key.Sign("client-1", "https://idp.example/token", now)
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
			raw, err := k.Sign("c", "aud", time.Now())
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
	raw, err := key.Sign("c", "aud", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	var c jwt.Claims
	if err := tok.Claims(&k2.PublicKey, &c); err != nil {
		t.Fatalf("not signed with the rotated key: %v", err)
	}
}

func TestInspect(t *testing.T) {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now()
	jwtTok := (&oauth2.Token{AccessToken: enc(map[string]string{"alg": "RS256"}) + "." +
		enc(map[string]any{"iss": "https://sts.windows.net/t/", "aud": "https://dicom.healthcareapis.azure.com", "roles": []string{"DICOM.Write"}, "appid": "app-1"}) + ".sig",
		TokenType: "Bearer", Expiry: now.Add(time.Hour)})
	info := Inspect(jwtTok, now)
	if !info.JWT || info.Issuer != "https://sts.windows.net/t/" || len(info.Audience) != 1 || info.Roles[0] != "DICOM.Write" ||
		info.ClientID != "app-1" || info.Lifetime != time.Hour || info.Type != "Bearer" {
		t.Errorf("JWT: %+v", info)
	}
	opaque := (&oauth2.Token{AccessToken: "ya29.opaque", Expiry: now.Add(time.Minute)}).WithExtra(map[string]any{"scope": "a b"})
	info = Inspect(opaque, now)
	if info.JWT || len(info.Scopes) != 2 || info.Lifetime != time.Minute {
		t.Errorf("opaque: %+v", info)
	}
	scp := &oauth2.Token{AccessToken: enc(map[string]string{}) + "." + enc(map[string]any{"scp": []string{"x", "y"}}) + ".s"}
	if info := Inspect(scp, now); len(info.Scopes) != 2 || info.Lifetime != 0 {
		t.Errorf("scp array: %+v", info)
	}
}

func TestNewSourceValidates(t *testing.T) {
	fetch := func(context.Context) (*oauth2.Token, error) { return nil, nil }
	if _, err := NewSource(t.Context(), Endpoint{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no Fetch: %v", err)
	}
	if _, err := NewSource(t.Context(), Endpoint{Fetch: fetch}, WithRetries(-1, 0, 0)); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("negative retries: %v", err)
	}
	ts, err := NewSource(t.Context(), Endpoint{Fetch: fetch}, fastRetries)
	if err != nil || ts.Provider() != ProviderGeneric || ts.TokenURL() != "" {
		t.Errorf("defaults: %v, %q, %q", err, ts.Provider(), ts.TokenURL())
	}
	if _, err := ts.Token(); !errors.Is(err, ErrToken) {
		t.Errorf("empty token: %v", err)
	}
}
