package web_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// TestWebhookStorageFull: a NATS whose storage is full (the server's
// max_file_store, the account's limit, a stream's cap) answers the
// publish at once, with a refusal. The webhook answers 503 saying the
// storage is full, counts it as jetstream_full and logs it so; it said
// "JetStream did not acknowledge" and counted jetstream_unavailable,
// which docs/metrics.md reads as "NATS is down", and the IT team looked
// for an outage of a NATS that was up. Once space is freed, events are
// stored again.
func TestWebhookStorageFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf func(*server.Options)
		cap  bool // a cap on the event stream (nats stream edit)
	}{
		{"server max_file_store", func(o *server.Options) { o.JetStreamMaxStore = 64 << 10 }, false},
		{"stream cap", nil, true},
		{"account storage limit", testnats.AccountLimits(t, "max_file: 64K"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := testnats.StartWith(t, tc.conf).JS
			ctx := t.Context()
			stream, err := natsjs.DefaultTopology().EnsureEvents(ctx, js)
			if err != nil {
				t.Fatal(err)
			}
			if tc.cap {
				cfg := stream.CachedInfo().Config
				cfg.MaxMsgs = 5
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			}
			var logs testharness.LogBuffer
			reg := prometheus.NewRegistry()
			h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: natsjs.Publisher{JS: js},
				Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			r := chi.NewRouter()
			h.Mount(r)
			hs := httptest.NewServer(r)
			t.Cleanup(hs.Close)

			// Fill the store with studies, each a new event.
			status, body := 0, map[string]any(nil)
			for i := 0; i < 1000; i++ {
				id := fmt.Sprintf("%08x-4f66fb14-03f4081b-f9341db2-53925988", i)
				status, body = post(t, hs.URL, "application/json", "Bearer "+token, strings.Replace(validBody, "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", id, 1))
				if status != http.StatusAccepted {
					break
				}
			}
			if status != http.StatusServiceUnavailable {
				t.Fatalf("status %d (%v) once the store is full, want 503", status, body)
			}
			if msg, _ := body["error"].(string); !strings.Contains(msg, "storage is full") || !strings.Contains(msg, "not stored") {
				t.Errorf("answer %q; want it to say the storage is full and the event not stored", msg)
			}
			if got := rejected(t, reg, "jetstream_full"); got != 1 {
				t.Errorf("rejected{reason=jetstream_full} = %v, want 1", got)
			}
			if strings.Contains(logs.String(), "did not acknowledge") || !strings.Contains(logs.String(), "its storage is full") {
				t.Errorf("the log does not say the storage is full:\n%s", logs.String())
			}

			// Space freed: events are stored again.
			if err := stream.Purge(ctx); err != nil {
				t.Fatal(err)
			}
			if status, body := post(t, hs.URL, "application/json", "Bearer "+token, validBody); status != http.StatusAccepted {
				t.Errorf("after space was freed: status %d (%v), want 202", status, body)
			}
		})
	}
}

// TestWebhookJetStreamDownLoggedOnce: an event JetStream did not store
// is one log line, the error naming the study and the client; it was
// logged twice, "event not stored" and again "event rejected" with the
// same error, so an outage doubled the error lines an IT team counts.
func TestWebhookJetStreamDownLoggedOnce(t *testing.T) {
	ns := testnats.Start(t)
	var logs testharness.LogBuffer
	h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: natsjs.Publisher{JS: ns.JS},
		PublishTimeout: 500 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	ns.Shutdown() // a real outage: the server is gone
	if status, body := post(t, hs.URL, "application/json", "Bearer "+token, validBody); status != http.StatusServiceUnavailable {
		t.Fatalf("status %d (%v), want 503", status, body)
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["level"] == "WARN" || m["level"] == "ERROR" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d warning or error lines, want 1:\n%s", len(lines), logs.String())
	}
	for _, k := range []string{"orthanc_study_id", "source", "client", "err"} {
		if lines[0][k] == nil {
			t.Errorf("the line lacks %s: %v", k, lines[0])
		}
	}
}

// rejected reads the webhook's count of requests refused for reason.
func rejected(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return counter(t, reg, "stowline_ingest_events_rejected_total", "reason", reason)
}

// counter reads the counter name in reg, the series whose label has
// value (label empty: the one series); 0 if there is none.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestWebhookUnavailableSaysWhenToRetry: every 503 of the webhook carries
// Retry-After, so a client that retries waits for NATS to reconnect, or
// longer for an operator to free JetStream's storage, instead of
// hammering an ingest that cannot store anything; the 503s had none.
func TestWebhookUnavailableSaysWhenToRetry(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf func(*server.Options)
		// unavailable makes the next publish fail.
		unavailable func(t *testing.T, ns *testnats.Server)
		want        string
	}{
		{"NATS down", nil, func(t *testing.T, ns *testnats.Server) { ns.Shutdown() }, "5"},
		{"storage full", func(o *server.Options) { o.JetStreamMaxStore = 64 << 10 },
			func(t *testing.T, ns *testnats.Server) { testnats.FillStore(t.Context(), t, ns.JS) }, "60"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testnats.StartWith(t, tc.conf)
			h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: natsjs.Publisher{JS: ns.JS},
				PublishTimeout: 500 * time.Millisecond, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			r := chi.NewRouter()
			h.Mount(r)
			hs := httptest.NewServer(r)
			t.Cleanup(hs.Close)
			tc.unavailable(t, ns)

			resp := postHeaders(t, hs.URL, nil, validBody)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503", resp.StatusCode)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.want {
				t.Errorf("Retry-After = %q, want %q", got, tc.want)
			}
		})
	}
}
