package auth

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDiscoveryRefusesADowngradedTokenEndpoint: an https issuer whose
// discovery document names a plain-http token endpoint is refused: the
// client secret or assertion would cross the network unencrypted, and no
// warning looks at a discovered URL. An https one is taken.
func TestDiscoveryRefusesADowngradedTokenEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint string
		ok             bool
	}{
		{"https", "https://idp.example/token", true},
		{"plain http", "http://idp.example/token", false},
		{"plain http, capitals", "HTTP://idp.example/token", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var issuer string
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"issuer":%q,"token_endpoint":%q}`, issuer, tc.endpoint)
			}))
			t.Cleanup(srv.Close)
			issuer = srv.URL
			got, err := discoverTokenEndpoint(t.Context(), srv.Client(), issuer)
			switch {
			case tc.ok && (err != nil || got != tc.endpoint):
				t.Errorf("got %q, %v; want %q", got, err, tc.endpoint)
			case !tc.ok && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "unencrypted")):
				t.Errorf("got %q, %v; want ErrInvalidConfig saying the credentials would be sent unencrypted", got, err)
			}
		})
	}
}

// TestDiscoveryRefusesAnotherIssuer: a discovery document must name the
// issuer it was asked of (OpenID Connect Discovery 4.3): one naming
// another (a proxy's or a mistyped tenant's document, or an attacker's
// mix-up) would have the client secret sent to a token endpoint the
// operator never configured.
func TestDiscoveryRefusesAnotherIssuer(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  func(issuer string) string
		ok   bool
	}{
		{"same issuer", func(issuer string) string { return issuer }, true},
		{"same issuer, trailing slash", func(issuer string) string { return issuer + "/" }, true},
		{"another issuer", func(string) string { return "https://login.elsewhere.example/tenant" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var issuer string
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"issuer":%q,"token_endpoint":"https://idp.example/token"}`, tc.doc(issuer))
			}))
			t.Cleanup(srv.Close)
			issuer = srv.URL
			got, err := discoverTokenEndpoint(t.Context(), srv.Client(), issuer)
			switch {
			case tc.ok && err != nil:
				t.Errorf("got %q, %v; want the token endpoint", got, err)
			case !tc.ok && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "names issuer")):
				t.Errorf("got %q, %v; want ErrInvalidConfig naming the other issuer", got, err)
			}
		})
	}
}
