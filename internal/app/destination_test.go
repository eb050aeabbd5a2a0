package app

import (
	"context"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stowline/stowline/internal/config"
)

// A destination that offers HTTP/2 gets it, also with a private CA
// (TLS_CA_FILE), and the token endpoint and the STOW client, which share
// the TLS settings, can start at the same time (run with -race).
func TestDestinationUsesHTTP2(t *testing.T) {
	var mu sync.Mutex
	protos := map[string]bool{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos[r.Proto] = true
		mu.Unlock()
		if r.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"tok-0123456789","token_type":"Bearer","expires_in":3600}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": srv.URL + "/dicomweb", "TLS_CA_FILE": caFile,
		"OAUTH_TOKEN_URL": srv.URL + "/token", "OAUTH_CLIENT_ID": "stowline", "OAUTH_CLIENT_SECRET": "secret-0123456789",
	}
	var c config.ForwarderService
	if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d, err := newDestination(ctx, &c.DestinationList()[0], nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			resp, err := d.HTTP.Get(srv.URL + "/dicomweb/studies")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Errorf("destination answered over %s, want HTTP/2", resp.Proto)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(protos) != 1 || !protos["HTTP/2.0"] {
		t.Errorf("the server saw %v, want only HTTP/2.0 (token endpoint included)", protos)
	}
}
