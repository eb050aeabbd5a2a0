package auth

import (
	"errors"
	"net/http"
	"testing"
	"testing/synctest"

	"golang.org/x/oauth2"
)

// TestTokenSourceReady: Ready reports the token state for readiness
// probes and asks the identity provider only when no fetch has answered
// yet (none made, or the token invalidated): refused credentials get one
// request however often it is called, not one a probe.
func TestTokenSourceReady(t *testing.T) {
	refuse := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
	}
	tests := []struct {
		name         string
		handler      http.HandlerFunc
		invalidate   bool // drop the token after the first call
		wantReady    bool
		wantRequests int
	}{
		{name: "refused", handler: refuse, wantRequests: 1},
		{name: "good", handler: issue(3600, 0), wantReady: true, wantRequests: 1},
		{name: "good, invalidated", handler: issue(3600, 0), invalidate: true, wantReady: true, wantRequests: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.handler)
			// One request a fetch: auto-detection would try both
			// styles on a refusal.
			ts := newSource(t, srv, fastRetries, WithAuthStyle(oauth2.AuthStyleInHeader))
			for i := range 10 {
				err := ts.Ready(t.Context())
				if (err == nil) != tt.wantReady {
					t.Fatalf("call %d: %v, want ready %v", i+1, err, tt.wantReady)
				}
				if err != nil && !errors.Is(err, ErrToken) {
					t.Errorf("call %d: %v, want the fetch's ErrToken", i+1, err)
				}
				if i == 0 && tt.invalidate {
					tok, err := ts.Token()
					if err != nil {
						t.Fatal(err)
					}
					ts.Invalidate(tok)
				}
			}
			if got := srv.Requests(); got != tt.wantRequests {
				t.Errorf("%d token requests for 10 calls, want %d", got, tt.wantRequests)
			}
		})
	}
}

// TestTokenSourceReadyAfterInvalidate: a background refresh that failed
// while the token was still good leaves its error behind; once the
// destination refuses that token (Invalidate), Ready asks the identity
// provider again instead of reporting that old failure, which said
// nothing of the credentials now (the endpoint is back).
func TestTokenSourceReadyAfterInvalidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rf := startRefreshFailed(t)
		if err := rf.ts.Ready(t.Context()); err != nil {
			t.Fatalf("Ready with a good token: %v", err)
		}
		rf.down.Store(false)
		rf.ts.Invalidate(rf.first)
		if err := rf.ts.Ready(t.Context()); err != nil {
			t.Fatalf("Ready after Invalidate, the endpoint back: %v, want a new token", err)
		}
		if tok := mustToken(t, rf.ts); tok.AccessToken == rf.first.AccessToken {
			t.Fatal("the invalidated token was handed out")
		}
	})
}
