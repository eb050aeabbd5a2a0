package azure

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/testidp"
)

// federatedToken stands in for AKS's projected service account token.
const federatedToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImFrcyJ9.eyJhdWQiOlsiYXBpOi8vQXp1cmVBRFRva2VuRXhjaGFuZ2UiXSwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OnBhY3M6c3Rvd2xpbmUifQ.c2ln"

func writeTokenFile(t *testing.T, path, token string) {
	t.Helper()
	// The kubelet swaps the file as a whole; a rename does the same.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestWorkloadIdentityRequest checks the request AKS workload identity
// makes (Microsoft identity platform, client credentials "Third case:
// access token request with a federated credential"): the tenant's v2.0
// token endpoint, client_id, the projected token as it is in
// client_assertion, client_assertion_type jwt-bearer, the DICOM scope,
// no secret.
func TestWorkloadIdentityRequest(t *testing.T) {
	e := newEntra(t)
	path := filepath.Join(t.TempDir(), "azure-identity-token")
	writeTokenFile(t, path, federatedToken+"\n")
	cfg := Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path, AuthorityHost: e.URL + "/"}
	if cfg.Kind() != "workload identity" || cfg.TokenOptions() != nil {
		t.Errorf("Kind %q, %d token options", cfg.Kind(), len(cfg.TokenOptions()))
	}
	if _, err := source(t, cfg).Token(); err != nil {
		t.Fatal(err)
	}
	r, form := e.requests[0], e.forms[0]
	if r.Method != http.MethodPost || r.URL.Path != "/"+tenant+"/oauth2/v2.0/token" || r.Header.Get("Authorization") != "" {
		t.Errorf("%s %s, Authorization %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
	}
	want := url.Values{"client_id": {clientID}, "scope": {defaultScope}, "grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {federatedToken}}
	if form.Encode() != want.Encode() {
		t.Errorf("form = %v\nwant   %v", form, want)
	}
}

// TestWorkloadIdentityWithRealIdP gets tokens from a real authorization
// server (zitadel's, internal/testidp) standing in for Entra ID behind
// the tenant's v2.0 path: it verifies the assertion with a key it trusts,
// as Entra verifies the service account token with the cluster's OIDC
// issuer keys. The file is read for every token: an expired token in it
// is refused, and the next one the kubelet writes is accepted without a
// restart.
func TestWorkloadIdentityWithRealIdP(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idp := testidp.Start(t, testidp.WithKeyClient(clientID, "aks-oidc", key.Public()))
	idpToken, err := url.Parse(idp.TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	tenantPath := "/" + tenant + "/oauth2/v2.0/token"
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(idpToken)
		r.Out.URL.Path = idpToken.Path
	}}
	authority := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != tenantPath {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(authority.Close)

	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "aks-oidc"))
	if err != nil {
		t.Fatal(err)
	}
	// issued returns a token of the "cluster" issued at iat, valid an hour.
	issued := func(iat time.Time) string {
		t.Helper()
		raw, err := jwt.Signed(signer).Claims(jwt.Claims{
			Issuer: clientID, Subject: clientID, Audience: jwt.Audience{idp.TokenURL}, ID: rand.Text(),
			IssuedAt: jwt.NewNumericDate(iat), NotBefore: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(iat.Add(time.Hour)),
		}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	path := filepath.Join(t.TempDir(), "azure-identity-token")
	writeTokenFile(t, path, issued(time.Now()))
	ep, err := Endpoint(Config{TenantID: tenant, ClientID: clientID, FederatedTokenFile: path, AuthorityHost: authority.URL, Scopes: []string{"dicomweb"}})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := auth.NewSource(t.Context(), ep, auth.WithRetries(0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("first token: %v", err)
	}
	if info := auth.Inspect(tok, time.Now()); info.ClientID != clientID {
		t.Errorf("token of client %q, want %q", info.ClientID, clientID)
	}

	// The kubelet stopped rotating: the file's token expired.
	writeTokenFile(t, path, issued(time.Now().Add(-2*time.Hour)))
	_, err = ep.Fetch(t.Context())
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); !ok || re.Response.StatusCode != http.StatusUnauthorized || re.ErrorCode != "invalid_client" {
		t.Fatalf("expired token in the file: %v; want 401 invalid_client", err)
	}

	writeTokenFile(t, path, issued(time.Now()))
	if _, err := ep.Fetch(t.Context()); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if n := idp.TokenRequests(); n != 3 {
		t.Errorf("%d token requests reached the IdP, want 3", n)
	}
}
