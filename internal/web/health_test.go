package web

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthAndReadiness(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "stowline_test_total", Help: "test"})
	reg.MustRegister(c)
	ready := true
	r := chi.NewRouter()
	MountHealth(r, reg, map[string]Check{
		"jetstream": func(context.Context) error {
			if !ready {
				return errors.New("no responders")
			}
			return nil
		},
		"orthanc":        func(context.Context) error { return nil },
		"reconcile_main": Advisory(func(context.Context) error { return errors.New("orthanc unreachable") }),
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)

	get := func(path string) (int, map[string]any, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		var raw strings.Builder
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			_ = json.NewDecoder(resp.Body).Decode(&body)
		} else {
			buf := make([]byte, 1<<16)
			n, _ := resp.Body.Read(buf)
			raw.Write(buf[:n])
		}
		return resp.StatusCode, body, raw.String()
	}
	if code, body, _ := get("/healthz"); code != 200 || body["status"] != "ok" {
		t.Errorf("/healthz = %d %v", code, body)
	}
	code, body, _ := get("/readyz")
	degraded, _ := body["degraded"].(map[string]any)
	if code != 200 || body["status"] != "ready" || degraded["reconcile_main"] != "orthanc unreachable" {
		t.Errorf("/readyz with an advisory check failing = %d %v, want 200 ready, degraded", code, body)
	}
	ready = false
	code, body, _ = get("/readyz")
	failed, _ := body["failed"].(map[string]any)
	if code != 503 || failed["jetstream"] != "no responders" || failed["orthanc"] != nil {
		t.Errorf("/readyz with JetStream down = %d %v", code, body)
	}
	if _, _, raw := get("/metrics"); !strings.Contains(raw, "stowline_test_total") {
		t.Errorf("/metrics does not expose the registry: %q", raw)
	}
}

// TestServeCutsOffAfterGrace: a request still running after the
// shutdown grace is cut off, and Serve says so with its own error (a
// stop, which the caller does not take for a failed server).
func TestServeCutsOffAfterGrace(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, 100*time.Millisecond) }()
	go func() {
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrShutdownGraceExceeded) {
			t.Errorf("Serve = %v, want ErrShutdownGraceExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the grace")
	}
}
