package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testidp"
)

// TestAssertionSignedAtTheIdPsTime: a host whose clock is minutes off
// signs client assertions (private_key_jwt) the identity provider finds
// expired or not yet valid, and every token request was refused (401
// invalid_client), every study dead-lettered as refused credentials. The
// refusal's Date gives the provider's time: the assertion is signed again
// at it, and later ones too, as the AWS transport does for SigV4. A real
// provider (zitadel's JWT profile verifier) checks the assertions.
func TestAssertionSignedAtTheIdPsTime(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := ParseAssertionKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), "k1")
	if err != nil {
		t.Fatal(err)
	}
	idp := testidp.Start(t, testidp.WithKeyClient("keyed", "k1", key.Public()))
	for _, off := range []time.Duration{-10 * time.Minute, 10 * time.Minute} {
		t.Run("host clock "+off.String(), func(t *testing.T) {
			cfg := Config{TokenURL: idp.TokenURL, ClientID: "keyed", Assertion: ak, Scopes: []string{"dicomweb"}}
			g := &clientCredentials{cfg: cfg, now: func() time.Time { return time.Now().Add(off) }}
			ts, err := NewSource(t.Context(), Endpoint{TokenURL: g.url, Fetch: g.fetch}, WithRetries(0, 0, 0))
			if err != nil {
				t.Fatal(err)
			}
			before := idp.TokenRequests()
			if _, err := ts.Token(); err != nil {
				t.Fatalf("first token: %v", err)
			}
			// The next fetch signs at the provider's time at once.
			ts.Invalidate(ts.tok)
			mid := idp.TokenRequests()
			if _, err := ts.Token(); err != nil {
				t.Fatalf("second token: %v", err)
			}
			if n := idp.TokenRequests() - mid; n != 1 {
				t.Errorf("second token took %d requests, want 1 (signed at the provider's time from the start)", n)
			}
			if n := mid - before; n != 2 {
				t.Errorf("first token took %d requests, want 2 (refused, then signed at the provider's time)", n)
			}
		})
	}
	t.Run("refused for another reason", func(t *testing.T) {
		cfg := Config{TokenURL: idp.TokenURL, ClientID: "keyed", Assertion: ak, Scopes: []string{"dicomweb"}}
		cfg.ClientID = "unknown"
		g := &clientCredentials{cfg: cfg, now: time.Now}
		ts, err := NewSource(t.Context(), Endpoint{TokenURL: g.url, Fetch: g.fetch}, WithRetries(0, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		before := idp.TokenRequests()
		if _, err := ts.Token(); err == nil {
			t.Fatal("an unknown client got a token")
		}
		if n := idp.TokenRequests() - before; n != 1 {
			t.Errorf("%d requests, want 1: a refusal by a provider whose clock agrees is not asked again", n)
		}
	})
}
