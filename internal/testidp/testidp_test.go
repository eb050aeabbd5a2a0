package testidp_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/client"
	"github.com/zitadel/oidc/v3/pkg/crypto"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/testidp"
)

// upstream stands in for the DICOMweb server behind the Gate.
type upstream struct {
	URL   string
	hits  atomic.Int64
	auths atomic.Int64 // requests that still carried an Authorization header
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		if r.Header.Get("Authorization") != "" {
			u.auths.Add(1)
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

// tokenSource returns an auth.TokenSource for a client of idp.
func tokenSource(t *testing.T, idp *testidp.IdP, id, secret string, opts ...auth.Option) *auth.TokenSource {
	t.Helper()
	ts, err := auth.NewTokenSource(t.Context(), auth.Config{
		TokenURL: idp.TokenURL, ClientID: id, ClientSecret: secret, Scopes: []string{"dicomweb"},
	}, opts...)
	if err != nil {
		t.Fatalf("NewTokenSource: %v", err)
	}
	return ts
}

// fetchToken obtains an access token for a client of idp.
func fetchToken(t *testing.T, idp *testidp.IdP, id, secret string) string {
	t.Helper()
	tok, err := tokenSource(t, idp, id, secret).Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok.AccessToken
}

// get sends GET url with the given Authorization header ("" for none).
func get(t *testing.T, url, authorization string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

// jwtClaims decodes the claims of a JWT without verifying it.
func jwtClaims(t *testing.T, raw string) *oidc.AccessTokenClaims {
	t.Helper()
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("access token is not a JWS: %v", err)
	}
	claims := new(oidc.AccessTokenClaims)
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), claims); err != nil {
		t.Fatalf("JWT claims: %v", err)
	}
	return claims
}

func TestDiscovery(t *testing.T) {
	idp := testidp.Start(t)
	disc, err := client.Discover(t.Context(), idp.Issuer, http.DefaultClient)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if disc.TokenEndpoint != idp.TokenURL || disc.JwksURI != idp.JWKSURL {
		t.Errorf("token endpoint, jwks = %q, %q; want %q, %q", disc.TokenEndpoint, disc.JwksURI, idp.TokenURL, idp.JWKSURL)
	}
	if !slices.Contains(disc.GrantTypesSupported, oidc.GrantTypeClientCredentials) {
		t.Errorf("grant types %v lack client_credentials", disc.GrantTypesSupported)
	}
	for _, m := range []oidc.AuthMethod{oidc.AuthMethodBasic, oidc.AuthMethodPost} {
		if !slices.Contains(disc.TokenEndpointAuthMethodsSupported, m) {
			t.Errorf("token endpoint auth methods %v lack %s", disc.TokenEndpointAuthMethodsSupported, m)
		}
	}
}

func TestIssuesJWTAccessTokens(t *testing.T) {
	tests := []struct {
		name  string
		style oauth2.AuthStyle
	}{
		{name: "client_secret_basic", style: oauth2.AuthStyleInHeader},
		{name: "client_secret_post", style: oauth2.AuthStyleInParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const lifetime = 4 * time.Second
			idp := testidp.Start(t, testidp.WithClient("orthanc-forwarder", "s3cr3t"), testidp.WithTokenLifetime(lifetime))
			// expires_in must be the configured lifetime, not a second
			// less. The IdP rounds exp up to a whole second and zitadel
			// announces exp less its own later clock reading, truncated,
			// so a fetch that spans a second boundary is announced a
			// second short even when right: such a fetch is made again.
			// The bug announced a second short every time.
			var (
				tok        *oauth2.Token
				start, end time.Time
				fetches    int
				err        error
			)
			for fetches == 0 || !start.Truncate(time.Second).Equal(end.Truncate(time.Second)) {
				if fetches == 5 {
					t.Fatalf("none of %d token fetches was within one whole second", fetches)
				}
				start = time.Now()
				tok, err = tokenSource(t, idp, "orthanc-forwarder", "s3cr3t", auth.WithAuthStyle(tt.style)).Token()
				end = time.Now()
				fetches++
				if err != nil {
					t.Fatalf("Token: %v", err)
				}
			}
			// The client's expiry is its clock on receipt plus expires_in.
			if tok.Expiry.Before(start.Add(lifetime)) || tok.Expiry.After(end.Add(lifetime)) {
				t.Errorf("token expires %v after it was asked for, want %v", tok.Expiry.Sub(start).Round(time.Millisecond), lifetime)
			}
			claims := jwtClaims(t, tok.AccessToken)
			if claims.Issuer != idp.Issuer || claims.ClientID != "orthanc-forwarder" || claims.Subject != "orthanc-forwarder" {
				t.Errorf("iss, client_id, sub = %q, %q, %q", claims.Issuer, claims.ClientID, claims.Subject)
			}
			if exp := claims.Expiration.AsTime(); exp.Before(tok.Expiry) {
				t.Errorf("JWT exp %v is before the expiry the client computed, %v", exp, tok.Expiry)
			}
			if got := idp.TokensIssued(); got != fetches {
				t.Errorf("TokensIssued = %d, want %d", got, fetches)
			}
		})
	}
}

func TestRejectsBadClientCredentials(t *testing.T) {
	idp := testidp.Start(t, testidp.WithClient("stowline", "right-secret"))
	_, err := tokenSource(t, idp, "stowline", "wrong-secret").Token()
	if !errors.Is(err, auth.ErrToken) {
		t.Fatalf("err = %v, want auth.ErrToken", err)
	}
	t.Logf("error text: %s", err)
	if text := err.Error(); !strings.Contains(text, "invalid_client") || strings.Contains(text, "wrong-secret") {
		t.Fatalf("error text %q: want invalid_client and no secret", text)
	}
	if got := idp.TokensIssued(); got != 0 {
		t.Fatalf("TokensIssued = %d, want 0", got)
	}
}

// forge signs claims with a key the IdP never published.
func forge(t *testing.T, claims any) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithHeader("kid", "forged"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := crypto.Sign(claims, signer)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// unsigned builds an "alg":"none" JWT.
func unsigned(t *testing.T, claims any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + "."
}

func TestGate(t *testing.T) {
	idp := testidp.Start(t, testidp.WithClient("stowline", "secret-1"), testidp.WithClient("intruder", "secret-2"))
	other := testidp.Start(t, testidp.WithClient("stowline", "secret-1"))
	up := newUpstream(t, nil)
	gate := idp.Gate(t, up.URL)

	valid := fetchToken(t, idp, "stowline", "secret-1")
	claims := oidc.NewAccessTokenClaims(idp.Issuer, "stowline", []string{"stowline"}, time.Now().Add(time.Minute), "jti", "stowline", 0)

	tests := []struct {
		name          string
		authorization string
		wantStatus    int
		wantChallenge string // substring of WWW-Authenticate
	}{
		{name: "valid token", authorization: "Bearer " + valid, wantStatus: http.StatusOK},
		{name: "lower-case scheme", authorization: "bearer " + valid, wantStatus: http.StatusOK},
		{name: "no token", wantStatus: http.StatusUnauthorized, wantChallenge: `Bearer realm="testidp"`},
		{name: "basic credentials", authorization: "Basic c3Rvd2xpbmU6c2VjcmV0LTE=", wantStatus: http.StatusUnauthorized, wantChallenge: `Bearer realm="testidp"`},
		{name: "not a JWT", authorization: "Bearer garbage", wantStatus: http.StatusUnauthorized, wantChallenge: "malformed token"},
		{name: "token of another issuer", authorization: "Bearer " + fetchToken(t, other, "stowline", "secret-1"), wantStatus: http.StatusUnauthorized, wantChallenge: "wrong issuer"},
		{name: "right issuer, unknown key", authorization: "Bearer " + forge(t, claims), wantStatus: http.StatusUnauthorized, wantChallenge: "bad signature"},
		{name: "unsigned", authorization: "Bearer " + unsigned(t, claims), wantStatus: http.StatusUnauthorized, wantChallenge: "invalid_token"},
		{name: "client not allowed", authorization: "Bearer " + fetchToken(t, idp, "intruder", "secret-2"), wantStatus: http.StatusUnauthorized, wantChallenge: "client not allowed"},
	}
	var wantAccepted, wantRejected int
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, gate.URL+"/dicom-web/studies", tt.authorization)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			challenge := resp.Header.Get("WWW-Authenticate")
			if tt.wantChallenge != "" && !strings.Contains(challenge, tt.wantChallenge) {
				t.Errorf("WWW-Authenticate = %q, want it to contain %q", challenge, tt.wantChallenge)
			}
		})
		if tt.wantStatus == http.StatusOK {
			wantAccepted++
		} else {
			wantRejected++
		}
	}
	if gate.Accepted() != wantAccepted || gate.Rejected() != wantRejected {
		t.Errorf("Accepted, Rejected = %d, %d; want %d, %d", gate.Accepted(), gate.Rejected(), wantAccepted, wantRejected)
	}
	if int(up.hits.Load()) != wantAccepted {
		t.Errorf("upstream hits = %d, want %d (rejected requests must not reach it)", up.hits.Load(), wantAccepted)
	}
	if up.auths.Load() != 0 {
		t.Error("the Gate forwarded the Authorization header upstream")
	}
}

func TestGateRejectsExpiredToken(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithTokenLifetime(time.Second))
	gate := idp.Gate(t, newUpstream(t, nil).URL)

	raw := fetchToken(t, idp, idp.ClientID, idp.ClientSecret)
	if resp := get(t, gate.URL, "Bearer "+raw); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh token: status = %d, want 200", resp.StatusCode)
	}
	time.Sleep(time.Until(jwtClaims(t, raw).Expiration.AsTime()) + 100*time.Millisecond)
	resp := get(t, gate.URL, "Bearer "+raw)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "token expired") {
		t.Fatalf("expired token: status %d, challenge %q; want 401 token expired", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

// TestGateStreams checks that the Gate forwards a request body while it is
// still being written, instead of buffering it.
func TestGateStreams(t *testing.T) {
	t.Parallel()
	const chunk = 1 << 20
	firstChunk := make(chan struct{})
	var received atomic.Int64
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, chunk)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		close(firstChunk)
		n, _ := io.Copy(io.Discard, r.Body)
		received.Store(int64(chunk) + n)
	})
	idp := testidp.Start(t)
	gate := idp.Gate(t, up.URL)
	ts := tokenSource(t, idp, idp.ClientID, idp.ClientSecret)
	httpClient := &http.Client{Transport: auth.Transport(ts, nil)}

	pr, pw := io.Pipe()
	go func() {
		// Write the rest only once the upstream has the first megabyte: a
		// buffering proxy would never deliver it, and the test would time out.
		_, _ = pw.Write(bytes.Repeat([]byte{'a'}, chunk))
		select {
		case <-firstChunk:
			_, _ = pw.Write(bytes.Repeat([]byte{'b'}, 16*chunk))
			_ = pw.Close()
		case <-time.After(5 * time.Second):
			_ = pw.CloseWithError(errors.New("upstream never saw the first chunk: the gate buffers"))
		}
	}()
	resp, err := httpClient.Post(gate.URL+"/dicom-web/studies", "application/dicom", pr)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || received.Load() != 17*chunk {
		t.Fatalf("status %d, upstream received %d bytes; want 200 and %d", resp.StatusCode, received.Load(), 17*chunk)
	}
}

// TestTokensRefreshUnderLoad sends requests through auth.Transport for
// about 8 s with 3 s tokens: none may be rejected, and tokens are reused.
func TestTokensRefreshUnderLoad(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithTokenLifetime(3*time.Second))
	up := newUpstream(t, nil)
	gate := idp.Gate(t, up.URL)
	ts := tokenSource(t, idp, idp.ClientID, idp.ClientSecret)
	httpClient := &http.Client{Transport: auth.Transport(ts, nil), Timeout: 5 * time.Second}

	var requests int
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); requests++ {
		resp, err := httpClient.Post(gate.URL+"/dicom-web/studies", "application/dicom", strings.NewReader("DICM"))
		if err != nil {
			t.Fatalf("request %d: %v", requests, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d (%s)", requests, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	issued := idp.TokensIssued()
	t.Logf("%d requests, %d tokens issued", requests, issued)
	// Each token is used for half of its 3 s life: about 6 tokens in 8 s.
	if issued < 3 || issued > 8 {
		t.Errorf("TokensIssued = %d, want 3..8 (refreshed, but not per request)", issued)
	}
	if gate.Rejected() != 0 || gate.Accepted() != requests {
		t.Errorf("gate accepted %d, rejected %d; want %d, 0", gate.Accepted(), gate.Rejected(), requests)
	}
}
