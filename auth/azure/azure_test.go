package azure

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/forward"
)

const (
	tenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	clientID = "00001111-aaaa-2222-bbbb-3333cccc4444"
)

// entra is an httptest stand-in for the Entra ID v2.0 token endpoint: it
// records each request and answers with answer.
type entra struct {
	URL      string
	requests []*http.Request
	forms    []url.Values
	answer   func(w http.ResponseWriter)
}

func newEntra(t *testing.T) *entra {
	t.Helper()
	e := &entra{answer: func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QifQ.eyJyb2xlcyI6WyJESUNPTS5Xcml0ZSJdfQ.sig"}`))
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		e.requests = append(e.requests, r)
		e.forms = append(e.forms, r.PostForm)
		e.answer(w)
	}))
	t.Cleanup(srv.Close)
	e.URL = srv.URL
	return e
}

func source(t *testing.T, cfg Config) *auth.TokenSource {
	t.Helper()
	ep, err := Endpoint(cfg)
	if err != nil {
		t.Fatalf("Endpoint: %v", err)
	}
	ts, err := auth.NewSource(t.Context(), ep, auth.WithRetries(1, time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestClientSecretRequest checks the documented form of the client
// credentials request with a shared secret (Microsoft identity platform,
// "OAuth 2.0 client credentials flow": First case, access token request
// with a shared secret).
func TestClientSecretRequest(t *testing.T) {
	e := newEntra(t)
	ts := source(t, Config{TenantID: tenant, ClientID: clientID, ClientSecret: "qWgdYAmab0YSkuL1qKv5bPX", AuthorityHost: e.URL})
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(tok.Expiry); left < 3590*time.Second {
		t.Errorf("expires in %v", left)
	}
	r, form := e.requests[0], e.forms[0]
	if r.Method != http.MethodPost || r.URL.Path != "/"+tenant+"/oauth2/v2.0/token" || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		t.Errorf("%s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
	}
	want := url.Values{"client_id": {clientID}, "scope": {defaultScope}, "client_secret": {"qWgdYAmab0YSkuL1qKv5bPX"}, "grant_type": {"client_credentials"}}
	if form.Encode() != want.Encode() {
		t.Errorf("form = %v\nwant   %v", form, want)
	}
	if r.Header.Get("Authorization") != "" {
		t.Error("the secret went in a header too")
	}
	if ts.Provider() != "azure" || ts.TokenURL() != e.URL+"/"+tenant+"/oauth2/v2.0/token" {
		t.Errorf("provider %q, token URL %q", ts.Provider(), ts.TokenURL())
	}
}

// writeCert writes a PEM with an RSA key and its self-signed certificate.
func writeCert(t *testing.T) (string, *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "stowline"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	path := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, cert
}

// TestCertificateRequest checks the documented certificate credential
// request ("Second case: access token request with a certificate") and
// assertion format ("Microsoft identity platform certificate credentials":
// header alg PS256, typ JWT, x5t#S256; claims aud = token endpoint,
// iss = sub = client ID, jti, nbf, iat, exp at most 10 minutes on).
func TestCertificateRequest(t *testing.T) {
	e := newEntra(t)
	path, cert := writeCert(t)
	ts := source(t, Config{TenantID: tenant, ClientID: clientID, CertificateKeyFile: path, AuthorityHost: e.URL,
		Scopes: []string{"https://dicom.healthcareapis.azure.com/.default"}})
	before := time.Now().Add(-time.Second)
	if _, err := ts.Token(); err != nil {
		t.Fatal(err)
	}
	form := e.forms[0]
	for _, k := range []string{"client_secret"} {
		if form.Has(k) {
			t.Errorf("form has %s", k)
		}
	}
	if form.Get("client_id") != clientID || form.Get("grant_type") != "client_credentials" || form.Get("scope") != defaultScope ||
		form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		t.Errorf("form = %v", form)
	}
	tok, err := jwt.ParseSigned(form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.PS256})
	if err != nil {
		t.Fatalf("assertion is not a PS256 JWT: %v", err)
	}
	h := tok.Headers[0]
	sum := sha256.Sum256(cert.Raw)
	if h.ExtraHeaders["typ"] != "JWT" || h.ExtraHeaders["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Errorf("header = %+v", h)
	}
	var c jwt.Claims
	if err := tok.Claims(cert.PublicKey, &c); err != nil {
		t.Fatalf("signature does not verify with the certificate's key: %v", err)
	}
	aud := e.URL + "/" + tenant + "/oauth2/v2.0/token"
	if c.Issuer != clientID || c.Subject != clientID || len(c.Audience) != 1 || c.Audience[0] != aud || c.ID == "" {
		t.Errorf("claims = %+v", c)
	}
	// nbf is backdated a little, for an identity provider whose clock is behind.
	if c.NotBefore.Time().Before(before.Truncate(time.Second).Add(-time.Minute)) || !c.IssuedAt.Time().After(c.NotBefore.Time()) ||
		c.Expiry.Time().Sub(c.NotBefore.Time()) > 10*time.Minute || !c.Expiry.Time().After(c.NotBefore.Time()) {
		t.Errorf("times nbf %v iat %v exp %v", c.NotBefore.Time(), c.IssuedAt.Time(), c.Expiry.Time())
	}
}

// TestEntraErrorVerbatim: Entra's error body reaches the error text and
// the failure reason verbatim, naming the provider; the secret does not.
func TestEntraErrorVerbatim(t *testing.T) {
	const description = "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '00001111-aaaa-2222-bbbb-3333cccc4444'. Trace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333 Correlation ID: aaaa0000-bb11-2222-33cc-444444dddddd Timestamp: 2026-11-26 10:00:00Z"
	e := newEntra(t)
	e.answer = func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"error": "invalid_client", "error_description": description, "error_codes": []int{7000215},
			"timestamp": "2026-11-26 10:00:00Z", "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
			"correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd", "error_uri": "https://login.microsoftonline.com/error?code=7000215",
		})
	}
	ts := source(t, Config{TenantID: tenant, ClientID: clientID, ClientSecret: "not~the~secret", AuthorityHost: e.URL})
	_, err := ts.Token()
	te, ok := errors.AsType[*auth.TokenError](err)
	if !ok {
		t.Fatalf("err = %v", err)
	}
	text := err.Error()
	t.Logf("error: %s", text)
	if te.Provider != "azure" || te.Code != "invalid_client" || te.Description != description || te.StatusCode != 401 {
		t.Errorf("TokenError = %+v", te)
	}
	if !strings.Contains(text, "azure token endpoint") || !strings.Contains(text, "invalid_client: "+description) || strings.Contains(text, "not~the~secret") {
		t.Errorf("error text %q", text)
	}
	if got := forward.Classify(err); got != forward.Transient || !forward.DestinationDown(err) || len(e.requests) != 1 {
		t.Errorf("class %s (destination down %v) after %d requests; want transient, down, after 1", got, forward.DestinationDown(err), len(e.requests))
	}
}

// TestManagedIdentity checks the IMDS request (GET, Metadata: true,
// api-version, resource without /.default, client_id of a user-assigned
// identity) and reads IMDS's string-typed numbers.
func TestManagedIdentity(t *testing.T) {
	var got *http.Request
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		if r.Header.Get("Metadata") != "true" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_request","error_description":"Required metadata header not specified"}`))
			return
		}
		if r.URL.Query().Get("client_id") == "unknown" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_request","error_description":"Identity not found"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"eyJ0eXAi.mi.sig","expires_in":"86399","expires_on":"1764200000","resource":"https://dicom.healthcareapis.azure.com","token_type":"Bearer"}`))
	}))
	t.Cleanup(imds.Close)
	endpoint := imds.URL + "/metadata/identity/oauth2/token"

	ts := source(t, Config{IMDSEndpoint: endpoint, ClientID: "user-assigned-id"})
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	q := got.URL.Query()
	if got.Method != http.MethodGet || got.URL.Path != "/metadata/identity/oauth2/token" || q.Get("api-version") != "2018-02-01" ||
		q.Get("resource") != "https://dicom.healthcareapis.azure.com" || q.Get("client_id") != "user-assigned-id" {
		t.Errorf("request %s %s", got.Method, got.URL)
	}
	if left := time.Until(tok.Expiry); left < 86390*time.Second || left > 86400*time.Second {
		t.Errorf("expires in %v", left)
	}
	if ts.TokenURL() != endpoint {
		t.Errorf("TokenURL = %q", ts.TokenURL())
	}

	_, err = source(t, Config{IMDSEndpoint: endpoint, ClientID: "unknown"}).Token()
	if te, ok := errors.AsType[*auth.TokenError](err); !ok || te.Description != "Identity not found" || !strings.Contains(err.Error(), "azure token endpoint") {
		t.Errorf("unknown identity: %v", err)
	}
}

func TestConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "azure-identity-token")
	writeTokenFile(t, path, federatedToken)
	cert, _ := writeCert(t)
	tests := []struct {
		name     string
		cfg      Config
		kind     string
		tokenURL string
		wantErr  string
	}{
		{name: "secret", cfg: Config{TenantID: tenant, ClientID: clientID, ClientSecret: "s"}, kind: kindSecret,
			tokenURL: "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/token"},
		{name: "sovereign cloud", cfg: Config{TenantID: "contoso.onmicrosoft.us", ClientID: clientID, ClientSecret: "s", AuthorityHost: "https://login.microsoftonline.us/"},
			kind: kindSecret, tokenURL: "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/token"},
		{name: "managed identity", cfg: Config{}, kind: kindManagedIdentity, tokenURL: defaultIMDSEndpoint},
		{name: "no tenant", cfg: Config{ClientID: clientID, ClientSecret: "s"}, wantErr: "tenant"},
		{name: "tenant with a slash", cfg: Config{TenantID: "a/b", ClientID: clientID, ClientSecret: "s"}, wantErr: "tenant"},
		{name: "no client", cfg: Config{TenantID: tenant, ClientSecret: "s"}, wantErr: "client ID"},
		{name: "two scopes for a managed identity", cfg: Config{Scopes: []string{"a", "b"}}, wantErr: "one scope"},
		{name: "workload identity", cfg: Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path}, kind: kindWorkloadIdentity,
			tokenURL: "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/token"},
		{name: "workload identity with a secret", cfg: Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path, ClientSecret: "s"}, wantErr: "federated token file (workload identity) or a client secret, not both"},
		{name: "workload identity with a secret file", cfg: Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path, ClientSecretFile: path}, wantErr: "not both"},
		{name: "workload identity with a certificate", cfg: Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path, CertificateKeyFile: cert}, wantErr: "or a client certificate, not both"},
		{name: "workload identity without a tenant", cfg: Config{ClientID: clientID, FederatedTokenFile: path}, wantErr: "tenant"},
		{name: "workload identity without a client", cfg: Config{TenantID: tenant, FederatedTokenFile: path}, wantErr: "client ID is required with a workload identity"},
		{name: "workload identity, file missing", cfg: Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path + ".gone"}, wantErr: path + ".gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, err := Endpoint(tt.cfg)
			if tt.wantErr != "" {
				if !errors.Is(err, auth.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.cfg.Kind() != tt.kind || ep.TokenURL() != tt.tokenURL || ep.Provider != "azure" {
				t.Errorf("kind %q, token URL %q", tt.cfg.Kind(), ep.TokenURL())
			}
		})
	}
}

// TestManagedIdentityUpdating: IMDS answers 404 while it is updating and
// 410 while it is being updated (Microsoft's managed identity
// documentation says to retry both): the token source tries again, and a
// study that meets it is retried, not dead-lettered as refused.
func TestManagedIdentityUpdating(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusGone} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			var requests int
			failAll := false
			imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests++
				if requests == 1 || failAll {
					w.WriteHeader(status)
					return
				}
				_, _ = w.Write([]byte(`{"access_token":"eyJ0eXAi.mi.sig","expires_in":"86399","token_type":"Bearer"}`))
			}))
			t.Cleanup(imds.Close)
			if _, err := source(t, Config{IMDSEndpoint: imds.URL}).Token(); err != nil || requests != 2 {
				t.Fatalf("after one %d: err %v, %d requests; want a token on the second", status, err, requests)
			}

			failAll = true
			_, err := source(t, Config{IMDSEndpoint: imds.URL}).Token()
			te, ok := errors.AsType[*auth.TokenError](err)
			if !ok || !te.Temporary() || forward.Classify(err) != forward.Transient {
				t.Errorf("IMDS %d every time: %v, classified %v; want temporary, transient", status, err, forward.Classify(err))
			}
		})
	}
}

// TestManagedIdentityOutlastsIMDSUpdate: IMDS answers 410 while it is
// being updated, "available within 70 seconds" (Microsoft), which auth's
// default retries (3, waits of 0.5, 1 and 2 s) gave up on: every study
// then waited for the background retry. A managed identity's token
// source retries imdsRetries times, for 80 to 159 s. The waits are scaled
// to milliseconds here; the count is the budget's.
func TestManagedIdentityOutlastsIMDSUpdate(t *testing.T) {
	tests := []struct {
		name      string
		retries   int
		wantToken bool
	}{
		{name: "auth's default count", retries: 3},
		{name: "managed identity budget", retries: imdsRetries, wantToken: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests int
			imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests++
				if requests <= imdsRetries { // gone for all but the last attempt the budget allows
					w.WriteHeader(http.StatusGone)
					return
				}
				_, _ = w.Write([]byte(`{"access_token":"eyJ0eXAi.mi.sig","expires_in":"86399","token_type":"Bearer"}`))
			}))
			t.Cleanup(imds.Close)
			ep, err := Endpoint(Config{IMDSEndpoint: imds.URL})
			if err != nil {
				t.Fatal(err)
			}
			ts, err := auth.NewSource(t.Context(), ep, auth.WithRetries(tt.retries, time.Millisecond, 2*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ts.Token()
			if (err == nil) != tt.wantToken || requests != tt.retries+1 {
				t.Errorf("err %v after %d requests; want a token: %v, after %d", err, requests, tt.wantToken, tt.retries+1)
			}
		})
	}

	// auth's backoff: attempt i waits min(base<<i, max), drawn in [d/2, d]:
	// the shortest draw must outlast an update.
	var shortest time.Duration
	for i := range imdsRetries {
		shortest += min(imdsRetryBase<<i, imdsRetryMax) / 2
	}
	if shortest < 70*time.Second {
		t.Errorf("the retries may wait only %v, less than the 70 s an IMDS update may last", shortest)
	}
	if opts := (Config{}).TokenOptions(); len(opts) != 1 {
		t.Errorf("a managed identity's token options: %d, want the retry budget", len(opts))
	}
	if opts := (Config{TenantID: tenant, ClientID: clientID, ClientSecret: "s"}).TokenOptions(); opts != nil {
		t.Errorf("a client secret's token options: %d, want none (auth's defaults)", len(opts))
	}
}
