package testidp_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/client"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testidp"
)

// pemKey encodes key as PKCS #8 PEM.
func pemKey(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func assertionKey(t *testing.T, key crypto.Signer, keyID string) *auth.AssertionKey {
	t.Helper()
	k, err := auth.ParseAssertionKey(pemKey(t, key), keyID)
	if err != nil {
		t.Fatalf("ParseAssertionKey: %v", err)
	}
	return k
}

// TestClientAuthenticationMethods gets a token from the real server with
// each method stowline offers for a generic IdP, with the token endpoint
// given or discovered, and uses it through the Gate.
func TestClientAuthenticationMethods(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idp := testidp.Start(t,
		testidp.WithClient("secret-client", "s3cr3t+/="),
		testidp.WithKeyClient("rsa-client", "rsa-1", rsaKey.Public()),
		testidp.WithKeyClient("ec-client", "ec-1", ecKey.Public()),
		testidp.WithKeyClient("nokid-client", "", rsaKey.Public()),
	)
	gate := idp.Gate(t, newUpstream(t, nil).URL, testidp.AllowClients("secret-client", "rsa-client", "ec-client", "nokid-client"))

	tests := []struct {
		name string
		cfg  auth.Config
	}{
		{"client_secret_basic", auth.Config{TokenURL: idp.TokenURL, ClientID: "secret-client", ClientSecret: "s3cr3t+/=", AuthStyle: oauth2.AuthStyleInHeader}},
		{"client_secret_post", auth.Config{TokenURL: idp.TokenURL, ClientID: "secret-client", ClientSecret: "s3cr3t+/=", AuthStyle: oauth2.AuthStyleInParams}},
		{"discovery + client_secret_basic", auth.Config{IssuerURL: idp.Issuer, ClientID: "secret-client", ClientSecret: "s3cr3t+/=", AuthStyle: oauth2.AuthStyleInHeader}},
		{"private_key_jwt RS256", auth.Config{TokenURL: idp.TokenURL, ClientID: "rsa-client", Assertion: assertionKey(t, rsaKey, "rsa-1")}},
		{"private_key_jwt ES256 discovered", auth.Config{IssuerURL: idp.Issuer + "/", ClientID: "ec-client", Assertion: assertionKey(t, ecKey, "ec-1")}},
		{"private_key_jwt RS256 without kid", auth.Config{TokenURL: idp.TokenURL, ClientID: "nokid-client", Assertion: assertionKey(t, rsaKey, "")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Scopes = []string{"dicomweb"}
			ts, err := auth.NewTokenSource(t.Context(), tt.cfg)
			if err != nil {
				t.Fatalf("NewTokenSource: %v", err)
			}
			tok, err := ts.Token()
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if ts.TokenURL() != idp.TokenURL {
				t.Errorf("TokenURL = %q, want %q", ts.TokenURL(), idp.TokenURL)
			}
			info := auth.Inspect(tok, time.Now())
			if info.ClientID != tt.cfg.ClientID || !slices.Contains(info.Scopes, "dicomweb") || info.Lifetime <= 0 {
				t.Errorf("Inspect = %+v", info)
			}
			hc := &http.Client{Transport: auth.Transport(ts, nil)}
			resp, err := hc.Get(gate.URL + "/dicom-web/studies")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("gate answered %d", resp.StatusCode)
			}
		})
	}
}

func TestDiscoveryAdvertisesPrivateKeyJWT(t *testing.T) {
	idp := testidp.Start(t)
	disc, err := client.Discover(t.Context(), idp.Issuer, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(disc.TokenEndpointAuthMethodsSupported, oidc.AuthMethodPrivateKeyJWT) {
		t.Errorf("token endpoint auth methods %v lack private_key_jwt", disc.TokenEndpointAuthMethodsSupported)
	}
}

// TestRefusals: what the real server refuses, stowline reports as a
// permanent failure naming the provider and quoting the server.
func TestRefusals(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idp := testidp.Start(t, testidp.WithClient("stowline", "right-secret"), testidp.WithKeyClient("keyed", "k1", key.Public()))
	tests := []struct {
		name string
		cfg  auth.Config
		want []string
	}{
		{"wrong secret", auth.Config{TokenURL: idp.TokenURL, ClientID: "stowline", ClientSecret: "wrong-secret"}, []string{"invalid_client"}},
		{"assertion signed by another key", auth.Config{TokenURL: idp.TokenURL, ClientID: "keyed", Assertion: assertionKey(t, other, "k1")}, []string{"invalid_client", "client assertion"}},
		{"assertion with an unknown kid", auth.Config{TokenURL: idp.TokenURL, ClientID: "keyed", Assertion: assertionKey(t, key, "k2")}, []string{"invalid_client"}},
		{"secret for a key client", auth.Config{TokenURL: idp.TokenURL, ClientID: "keyed", ClientSecret: "guess"}, []string{"invalid_client"}},
		{"issuer without discovery", auth.Config{IssuerURL: idp.Issuer + "/nothing", ClientID: "stowline", ClientSecret: "right-secret"}, []string{"404", "OpenID discovery"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, err := auth.NewTokenSource(t.Context(), tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ts.Token()
			te, ok := errors.AsType[*auth.TokenError](err)
			if !ok {
				t.Fatalf("err = %v, want a TokenError", err)
			}
			text := err.Error()
			t.Logf("error: %s", text)
			for _, w := range append(tt.want, "generic token endpoint") {
				if !strings.Contains(text, w) {
					t.Errorf("error lacks %q", w)
				}
			}
			if strings.Contains(text, "wrong-secret") || strings.Contains(text, "guess") || strings.Contains(text, "eyJ") {
				t.Error("error text holds a secret or an assertion")
			}
			// Not fetched again at once; for the forwarder, the
			// destination down (its breaker holds the studies).
			if te.Attempts != 1 || forward.Classify(err) != forward.Transient || !forward.DestinationDown(err) {
				t.Errorf("attempts %d, class %s, destination down %v: want 1, transient, true", te.Attempts, forward.Classify(err), forward.DestinationDown(err))
			}
		})
	}
}

// TestOutageAndRevocation: while the token endpoint is down the token
// source reports a transient error after its retries, and serves again
// once it is back; a revoked token is refused by the Gate.
func TestOutageAndRevocation(t *testing.T) {
	idp := testidp.Start(t, testidp.WithTokenLifetime(time.Minute))
	gate := idp.Gate(t, newUpstream(t, nil).URL)
	ts := tokenSource(t, idp, idp.ClientID, idp.ClientSecret, auth.WithAuthStyle(oauth2.AuthStyleInHeader),
		auth.WithRetries(2, time.Millisecond, 5*time.Millisecond))

	idp.SetDown(true)
	_, err := ts.Token()
	te, ok := errors.AsType[*auth.TokenError](err)
	if !ok || te.StatusCode != http.StatusServiceUnavailable || te.Attempts != 3 || forward.Classify(err) != forward.Transient {
		t.Fatalf("while down: err = %v (%+v), want a transient 503 after 3 attempts", err, te)
	}
	if got := idp.TokenRequests(); got != 3 {
		t.Errorf("token requests = %d, want 3", got)
	}
	idp.SetDown(false)
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if resp := get(t, gate.URL, "Bearer "+tok.AccessToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh token: %d", resp.StatusCode)
	}
	idp.RevokeIssued()
	resp := get(t, gate.URL, "Bearer "+tok.AccessToken)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "token revoked") {
		t.Fatalf("revoked token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// A token issued after the revocation is good.
	ts.Invalidate(tok)
	if tok2, err := ts.Token(); err != nil || get(t, gate.URL, "Bearer "+tok2.AccessToken).StatusCode != http.StatusOK {
		t.Fatalf("token after revocation: %v", err)
	}
}
