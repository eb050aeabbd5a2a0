package google

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/forward"
)

const email = "stowline@my-project.iam.gserviceaccount.com"

// writeKey writes a service-account JSON key whose token_uri is tokenURI.
func writeKey(t *testing.T, tokenURI string) (string, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	data, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "my-project", "private_key_id": "0123456789abcdef",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": email, "client_id": "1234567890", "token_uri": tokenURI,
	})
	path := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, key
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

// TestServiceAccountJWTBearer checks the request against Google's
// documented contract ("Using OAuth 2.0 for Server to Server
// Applications"): grant_type jwt-bearer, an RS256 JWT with kid = the key
// ID, iss = the service account, scope, aud = the token URI, iat, and exp
// at most one hour after iat; verified with the key's public half.
func TestServiceAccountJWTBearer(t *testing.T) {
	var form url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		form = r.PostForm
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.c.opaque","expires_in":3599,"token_type":"Bearer"}`))
	}))
	t.Cleanup(srv.Close)
	path, key := writeKey(t, srv.URL+"/token")

	ts := source(t, Config{CredentialsFile: path})
	// x/oauth2 backdates iat by 10 s for clock skew.
	before, after := time.Now().Add(-15*time.Second).Unix(), time.Now().Unix()
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "ya29.c.opaque" || time.Until(tok.Expiry) < 3590*time.Second || ts.TokenURL() != srv.URL+"/token" {
		t.Errorf("token %q expiring in %v from %s", tok.AccessToken, time.Until(tok.Expiry), ts.TokenURL())
	}
	if form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" || len(form) != 2 {
		t.Errorf("form = %v", form)
	}
	jws, err := jose.ParseSignedCompact(form.Get("assertion"), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("assertion is not an RS256 JWS: %v", err)
	}
	if jws.Signatures[0].Header.KeyID != "0123456789abcdef" {
		t.Errorf("kid = %q", jws.Signatures[0].Header.KeyID)
	}
	payload, err := jws.Verify(&key.PublicKey)
	if err != nil {
		t.Fatalf("signature does not verify with the key's public half: %v", err)
	}
	var c struct {
		Iss   string `json:"iss"`
		Scope string `json:"scope"`
		Aud   string `json:"aud"`
		Iat   int64  `json:"iat"`
		Exp   int64  `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	if c.Iss != email || c.Scope != defaultScope || c.Aud != srv.URL+"/token" {
		t.Errorf("iss %q scope %q aud %q", c.Iss, c.Scope, c.Aud)
	}
	if c.Iat < before || c.Iat > after || c.Exp <= c.Iat || c.Exp-c.Iat > 3600 {
		t.Errorf("iat %d exp %d: want exp within an hour after iat", c.Iat, c.Exp)
	}
}

// TestGoogleErrorReported: Google's answer to a bad assertion reaches the
// error (error and error_description from the body), naming the provider.
func TestGoogleErrorReported(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`))
	}))
	t.Cleanup(srv.Close)
	path, _ := writeKey(t, srv.URL)
	_, err := source(t, Config{CredentialsFile: path}).Token()
	te, ok := errors.AsType[*auth.TokenError](err)
	if !ok || te.Code != "invalid_grant" || te.Description != "Invalid JWT Signature." ||
		!strings.Contains(err.Error(), "google token endpoint") || forward.Classify(err) != forward.Transient || !forward.DestinationDown(err) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), "eyJ") {
		t.Fatal("error text holds key material or the assertion")
	}
}

// TestMetadataServer checks the metadata server request (GET, header
// Metadata-Flavor: Google, scopes) and refuses an answer without the
// header.
func TestMetadataServer(t *testing.T) {
	var got *http.Request
	flavor := "Google"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "Missing Metadata-Flavor:Google header", http.StatusForbidden)
			return
		}
		w.Header().Set("Metadata-Flavor", flavor)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.metadata","expires_in":3000,"token_type":"Bearer"}`))
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	ts := source(t, Config{MetadataHost: host, Scopes: []string{defaultScope, "https://www.googleapis.com/auth/cloud-platform"}})
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if got.Method != http.MethodGet || got.URL.Path != "/computeMetadata/v1/instance/service-accounts/default/token" ||
		got.URL.Query().Get("scopes") != defaultScope+",https://www.googleapis.com/auth/cloud-platform" {
		t.Errorf("request %s %s", got.Method, got.URL)
	}
	if tok.AccessToken != "ya29.metadata" || time.Until(tok.Expiry) < 2990*time.Second {
		t.Errorf("token %q, expiry %v", tok.AccessToken, tok.Expiry)
	}

	flavor = ""
	if _, err := source(t, Config{MetadataHost: host}).Token(); err == nil || !strings.Contains(err.Error(), "not a metadata server") {
		t.Errorf("answer without Metadata-Flavor: err = %v", err)
	}
}

func TestBadKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "user.json")
	_ = os.WriteFile(path, []byte(`{"type":"authorized_user","client_id":"x","client_secret":"y","refresh_token":"z"}`), 0o600)
	for _, file := range []string{path, filepath.Join(t.TempDir(), "missing.json")} {
		if _, err := Endpoint(Config{CredentialsFile: file}); !errors.Is(err, auth.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", file, err)
		}
	}
}

// TestKeyOfAnotherServiceAccountRefused: the key file is read again for
// every token (rotation), but a key of another service account put in
// its place is refused, not used under the account the logs and the
// status page name since startup.
func TestKeyOfAnotherServiceAccountRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.c.opaque","expires_in":3599,"token_type":"Bearer"}`))
	}))
	t.Cleanup(srv.Close)
	path, _ := writeKey(t, srv.URL+"/token")
	ts := source(t, Config{CredentialsFile: path})
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}

	var key map[string]string
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &key)
	}
	if err != nil {
		t.Fatal(err)
	}
	key["client_email"] = "someone-else@my-project.iam.gserviceaccount.com"
	data, _ = json.Marshal(key)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ts.Invalidate(tok) // the next Token fetches, reading the key again
	if _, err := ts.Token(); err == nil || !strings.Contains(err.Error(), "another service account") {
		t.Fatalf("Token with another account's key = %v, want it refused as another service account's", err)
	}
}
