package app

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// probe is one answer of a probe: its status, and for /readyz the
// failed checks.
type probe struct {
	status int
	failed map[string]string
}

func getProbe(addr, path string) (probe, bool) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return probe{}, false
	}
	defer resp.Body.Close()
	var body struct {
		Failed map[string]string `json:"failed"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return probe{status: resp.StatusCode, failed: body.Failed}, true
}

// The services wait for a NATS server that comes up after them, alive
// to /healthz and not ready, naming why, meanwhile; they exited with
// "connect to NATS: no servers available". /metrics fails meanwhile, so
// that up reads 0 and StowlineDown fires (deploy/alerts_test.yml): it
// answered 200 without the stowline series, and no shipped alert fired.
// A SIGTERM still stops them while they wait, as a stop (exit status
// 0): it was a failure (exit status 1) for systemd to record.
func TestServicesWaitForNATSStartedLate(t *testing.T) {
	services := []struct {
		name string
		env  map[string]string
		run  func(ctx context.Context, getenv func(string) string, environ []string) error
	}{
		{"ingest", map[string]string{"INGEST_TOKEN": "ingest-token-0123456789", "RECONCILE_ENABLED": "false"},
			func(ctx context.Context, getenv func(string) string, environ []string) error {
				return Main(ctx, "ingest", nil, getenv, environ, io.Discard, io.Discard, RunIngest)
			}},
		{"forwarder", map[string]string{"DICOMWEB_URL": "http://127.0.0.1:1/dicomweb"},
			func(ctx context.Context, getenv func(string) string, environ []string) error {
				return Main(ctx, "forwarder", nil, getenv, environ, io.Discard, io.Discard, RunForwarder)
			}},
		{"single host", map[string]string{"DICOMWEB_URL": "http://127.0.0.1:1/dicomweb", "INGEST_TOKEN": "ingest-token-0123456789", "RECONCILE_ENABLED": "false"},
			func(ctx context.Context, getenv func(string) string, environ []string) error {
				return Main(ctx, "stowline", nil, getenv, environ, io.Discard, io.Discard, RunSingleHost)
			}},
	}
	for _, tt := range services {
		for _, natsComes := range []bool{true, false} {
			name := tt.name + "/NATS comes up"
			if !natsComes {
				name = tt.name + "/stopped while waiting"
			}
			t.Run(name, func(t *testing.T) {
				port := testharness.FreePort(t)
				url := "nats://127.0.0.1:" + strconv.Itoa(port)
				addr := testharness.FreeAddr(t)
				env := map[string]string{"NATS_URL": url, "INGEST_ADDR": addr, "FORWARDER_ADDR": addr}
				if tt.name == "single host" {
					env["FORWARDER_ADDR"] = testharness.FreeAddr(t)
				}
				for k, v := range tt.env {
					env[k] = v
				}
				ctx, stop := context.WithCancel(t.Context())
				defer stop()
				done := make(chan error, 1)
				var environ []string
				for k, v := range env {
					environ = append(environ, k+"="+v)
				}
				go func() { done <- tt.run(ctx, func(k string) string { return env[k] }, environ) }()
				running := func() {
					t.Helper()
					select {
					case err := <-done:
						t.Fatalf("%s = %v while NATS is not up", tt.name, err)
					default:
					}
				}
				waitFor(t, "/healthz ok and /readyz naming the NATS server waited for", func() bool {
					running()
					live, ok := getProbe(addr, "/healthz")
					if !ok || live.status != http.StatusOK {
						return false
					}
					ready, ok := getProbe(addr, "/readyz")
					return ok && ready.status == http.StatusServiceUnavailable && strings.Contains(ready.failed["jetstream"], "waiting for NATS at "+url)
				})
				if metrics, ok := getProbe(addr, "/metrics"); !ok || metrics.status != http.StatusServiceUnavailable {
					t.Errorf("/metrics while waiting for NATS: %d (answered: %v), want 503: a scrape that fails", metrics.status, ok)
				}
				// What the role serves once started answers 503 with the
				// reason: a 404 to the webhook sent Orthanc's script to
				// "check the path of IngestUrl".
				post, err := http.Post("http://"+addr+web.WebhookPath, "application/json", strings.NewReader(`{}`))
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(post.Body)
				post.Body.Close()
				if post.StatusCode != http.StatusServiceUnavailable || post.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "waiting for NATS at") {
					t.Errorf("webhook while waiting for NATS: %d, Retry-After %q, %s; want 503 naming the wait, with Retry-After", post.StatusCode, post.Header.Get("Retry-After"), body)
				}
				if !natsComes {
					stop()
					select {
					case err := <-done:
						var stderr strings.Builder
						if code := ExitCode(tt.name, err, &stderr); code != 0 {
							t.Errorf("%s stopped while waiting for NATS: exit status %d, want 0 (a stop): %s", tt.name, code, stderr.String())
						}
					case <-time.After(5 * time.Second):
						t.Fatalf("%s still waiting for NATS 5 s after its stop", tt.name)
					}
					return
				}
				testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = port, false })
				waitFor(t, "the role's /readyz with JetStream ready", func() bool {
					running()
					ready, ok := getProbe(addr, "/readyz")
					_, jsFailed := ready.failed["jetstream"]
					return ok && ready.status != 0 && !jsFailed && (ready.status == http.StatusOK || len(ready.failed) > 0)
				})
				stop()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("%s = %v at its stop", tt.name, err)
					}
				case <-time.After(60 * time.Second):
					t.Fatalf("%s still running 60 s after its stop", tt.name)
				}
			})
		}
	}
}
