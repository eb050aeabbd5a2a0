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
// before any handler runs (no store is needed to show it).
func TestAdminAPIRefusesWithoutItsToken(t *testing.T) {
	for _, tt := range []struct{ token, header string }{
		{"admin-token-0123456789", ""},
		{"admin-token-0123456789", "Bearer wrong-token-0123456789"},
		{"", "Bearer "},
		{"", ""},
	} {
		r := chi.NewRouter()
		(&web.AdminAPI{Token: tt.token}).Mount(r)
		srv := httptest.NewServer(r)
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/admin/deadletters", nil)
		if tt.header != "" {
			req.Header.Set("Authorization", tt.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("token %q, Authorization %q: status %d, want 401", tt.token, tt.header, resp.StatusCode)
		}
	}
}
