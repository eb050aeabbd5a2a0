package dicomweb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/testidp"
)

// TestBodilessRequestsRenewARefusedToken: the destination starts refusing
// the cached token (revoked at the identity provider, or expired early):
// a QIDO-RS listing, a probe and a DELETE are asked once more with a
// fresh token, as a STOW-RS request is, instead of failing with the 401
// that the forwarder takes for a permanent refusal (a stored study
// verified with STOW_VERIFY=qido was dead-lettered).
func TestBodilessRequestsRenewARefusedToken(t *testing.T) {
	const clientID, secret = "stowline-qido", "qido-secret-0123456789"
	tests := []struct {
		name string
		call func(t *testing.T, c *Client) error
	}{
		{"listing", func(t *testing.T, c *Client) error {
			uids, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3})
			if err == nil && len(uids) != 3 {
				t.Errorf("%d UIDs listed, want 3", len(uids))
			}
			return err
		}},
		{"probe", func(t *testing.T, c *Client) error { return c.Probe(t.Context(), "1.2.3") }},
		{"delete", func(t *testing.T, c *Client) error {
			return c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.9", "1.2.3.0")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idp := testidp.Start(t, testidp.WithClient(clientID, secret), testidp.WithTokenLifetime(time.Hour))
			var asked atomic.Int64
			qido := qidoServer(t, 3, false, false, 0, 0, &asked)
			upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodDelete {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				r.URL.Scheme, r.URL.Host = "", ""
				qido.Config.Handler.ServeHTTP(w, r)
			}))
			t.Cleanup(upstream.Close)
			gate := idp.Gate(t, upstream.URL)

			ts, err := auth.NewTokenSource(t.Context(), auth.Config{TokenURL: idp.TokenURL, ClientID: clientID, ClientSecret: secret})
			if err != nil {
				t.Fatal(err)
			}
			c, err := New(gate.URL+"/dicom-web", &http.Client{Transport: auth.Transport(ts, nil)})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.call(t, c); err != nil {
				t.Fatalf("with a valid token: %v", err)
			}
			idp.RevokeIssued()
			if err := tt.call(t, c); err != nil {
				t.Fatalf("after the token was revoked: %v", err)
			}
			if gate.Rejected() != 1 || idp.TokensIssued() != 2 {
				t.Errorf("gate rejected %d, tokens issued %d: want 1 and 2 (one fresh token after the 401)", gate.Rejected(), idp.TokensIssued())
			}
		})
	}
}

// TestCrossOriginRedirectIsRedirected: a destination that redirects to
// another origin (DICOMWEB_URL with http:// where it serves https://)
// answered; the auth transport refuses to carry the token there. That is
// ErrRedirected, a base URL to fix, not ErrNoAnswer: the breaker took the
// destination for down and held every study behind probes that failed
// the same way, and a STOW-RS request was sent again on a reused
// connection.
func TestCrossOriginRedirectIsRedirected(t *testing.T) {
	const clientID, secret = "stowline-redirect", "redirect-secret-0123456789"
	idp := testidp.Start(t, testidp.WithClient(clientID, secret), testidp.WithTokenLifetime(time.Hour))
	var asked atomic.Int64
	other := qidoServer(t, 3, false, false, 0, 0, &asked)
	var posts atomic.Int64
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
		}
		http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusMovedPermanently)
	}))
	t.Cleanup(redirecting.Close)
	ts, err := auth.NewTokenSource(t.Context(), auth.Config{TokenURL: idp.TokenURL, ClientID: clientID, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: auth.Transport(ts, &http.Transport{})}
	t.Cleanup(hc.CloseIdleConnections)
	c, err := New(redirecting.URL+"/dicom-web", hc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"store", func() error { _, err := c.Store(t.Context(), []Part{uidPart("1.2.3.1", nil)}); return err }},
		{"listing", func() error { _, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3}); return err }},
		{"probe", func() error { return c.Probe(t.Context(), "1.2.3") }},
		{"delete", func() error { return c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.9", "1.2.3.0") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Twice: the second request goes on a reused connection.
			for range 2 {
				err := tt.call()
				if !errors.Is(err, ErrRedirected) || errors.Is(err, ErrNoAnswer) {
					t.Fatalf("err = %v; want ErrRedirected, not ErrNoAnswer", err)
				}
			}
		})
	}
	if n := posts.Load(); n != 2 {
		t.Errorf("the redirecting server got %d STOW-RS requests, want 2 (none sent again)", n)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the other origin was asked %d times, want 0", n)
	}

	// A token endpoint that redirects elsewhere is no redirect of the
	// destination: the error is the token's, naming its URL, so the
	// operator fixes OAUTH_TOKEN_URL, not DICOMWEB_URL.
	movedIdP := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, idp.TokenURL, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(movedIdP.Close)
	moved, err := auth.NewTokenSource(t.Context(), auth.Config{TokenURL: movedIdP.URL + "/token", ClientID: clientID, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	hc2 := &http.Client{Transport: auth.Transport(moved, &http.Transport{})}
	t.Cleanup(hc2.CloseIdleConnections)
	c2, err := New(other.URL+"/dicom-web", hc2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"store", func() error { _, err := c2.Store(t.Context(), []Part{uidPart("1.2.3.1", nil)}); return err }},
		{"listing", func() error { _, err := c2.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3}); return err }},
		{"delete", func() error { return c2.DeleteInstance(t.Context(), "1.2.3", "1.2.3.9", "1.2.3.0") }},
	} {
		var te *auth.TokenError
		if err := tt.call(); errors.Is(err, ErrRedirected) || !errors.As(err, &te) {
			t.Errorf("%s with a redirecting token endpoint: err = %v; want the TokenError, not ErrRedirected", tt.name, err)
		}
	}
}

// A client secret the identity provider refuses (a rotation not made in
// stowline's file yet) fails the request before it connects: the error
// says there was no token, naming the refusal, not "no connection to the
// destination", which sent the operator to the network; it still counts
// as not connected, the destination's fault whatever the study.
func TestRefusedSecretSaysNoToken(t *testing.T) {
	const clientID = "stowline-rotated"
	idp := testidp.Start(t, testidp.WithClient(clientID, "the-new-secret-0123456789"))
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the destination was asked %s %s without a token", r.Method, r.URL.Path)
	}))
	t.Cleanup(dest.Close)
	ts, err := auth.NewTokenSource(t.Context(), auth.Config{TokenURL: idp.TokenURL, ClientID: clientID, ClientSecret: "the-old-secret-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(dest.URL+"/dicom-web", &http.Client{Transport: auth.Transport(ts, nil)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Store(t.Context(), []Part{{SOPInstanceUID: "1.2.3.4", Size: 4, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("DICM")), nil
	}}})
	if !errors.Is(err, ErrNotConnected) || !errors.Is(err, ErrNoAnswer) || !errors.As(err, new(*auth.TokenError)) ||
		!strings.Contains(err.Error(), "no token for the destination: ") || strings.Contains(err.Error(), "no connection") ||
		!strings.Contains(err.Error(), "invalid_client") || strings.Contains(err.Error(), "the-old-secret") {
		t.Errorf("got %v: want no token, naming the refusal and not the secret, counted as not connected", err)
	}
}
