package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/web"
)

// During a key disagreement /readyz, which answers without credentials,
// says that the keys differ but names neither their fingerprints (each a
// fast check of a guessed key) nor the forwarders' hosts; the log does.
func TestKeyGuardReadyzHidesFingerprintsAndHosts(t *testing.T) {
	const mine, other = "1111111111111111", "2222222222222222"
	g, logs := newTestKeyGuard(t, mine)
	g.compare([]status.Snapshot{
		{ID: "self", Host: "fwd-0", KeyFingerprints: map[string]string{"research": mine}},
		{ID: "peer", Host: "fwd-other-host", KeyFingerprints: map[string]string{"research": other}},
	}, true)
	r := chi.NewRouter()
	web.MountHealth(r, prometheus.NewRegistry(), map[string]web.Check{"destination_deidentify_key": g.check("research")})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "other de-identification key") {
		t.Fatalf("/readyz: %d %s, want 503 saying the keys differ", resp.StatusCode, body)
	}
	for _, secret := range []string{mine, other, "fwd-0", "fwd-other-host"} {
		if strings.Contains(string(body), secret) {
			t.Errorf("/readyz names %q: %s", secret, body)
		}
	}
	for _, part := range []string{other + " (fwd-other-host)", `"key_fingerprint":"` + mine + `"`} {
		if !strings.Contains(logs.String(), part) {
			t.Errorf("log lacks %s:\n%s", part, logs.String())
		}
	}
}
