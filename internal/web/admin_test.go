package web_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/stowline/stowline/internal/web"
)

// The admin API opens only for its token: a request without one, with
// another, or with an empty one when the API was given none, is refused
// before any handler runs (no store is needed to show it). The router is
// called directly: over HTTP a header's trailing space is trimmed, and
// "Bearer " would never arrive as such.
func TestAdminAPIRefusesWithoutItsToken(t *testing.T) {
	for _, tt := range []struct{ token, header string }{
		{"admin-token-0123456789", ""},
		{"admin-token-0123456789", "Bearer wrong-token-0123456789"},
		{"", "Bearer "},
		{"", ""},
	} {
		r := chi.NewRouter()
		(&web.AdminAPI{Token: tt.token}).Mount(r)
		req := httptest.NewRequest(http.MethodGet, "/admin/deadletters", nil)
		if tt.header != "" {
			req.Header.Set("Authorization", tt.header)
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("token %q, Authorization %q: status %d, want 401", tt.token, tt.header, rec.Code)
		}
	}
}
