package app

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/web"
)

// FORWARDER_SHUTDOWN_GRACE reaches every destination's forwarder: it was
// not read, and the 30 s default cut a study that needed longer however
// long the orchestrator waited, sending it again whole elsewhere.
func TestShutdownGraceReachesTheForwarder(t *testing.T) {
	tests := []struct {
		name string
		set  string
		want time.Duration
	}{
		// The chart, compose and systemd checks take this constant as
		// the variable's default.
		{"default", "", forward.DefaultShutdownGrace},
		{"longer", "2m", 2 * time.Minute},
		{"shorter", "5s", 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{
				"NATS_URL": "nats://127.0.0.1:4222", "DESTINATIONS": "ai",
				"DESTINATION_AI_URL": "https://ai.example.org/dicomweb",
			}
			if tt.set != "" {
				env["FORWARDER_SHUTDOWN_GRACE"] = tt.set
			}
			var c config.ForwarderService
			if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
				t.Fatal(err)
			}
			sources, err := newSources(&c.Orthanc)
			if err != nil {
				t.Fatal(err)
			}
			r := &forwarderRole{cfg: &c.Forwarder, sources: sources}
			p := &process{conn: &natsjs.Conn{}, log: slog.New(slog.DiscardHandler)}
			o, _, err := r.destination(t.Context(), p, c.DestinationList()[0], prometheus.NewRegistry(), p.log, map[string]web.Check{})
			if err != nil {
				t.Fatal(err)
			}
			if o.ShutdownGrace != tt.want {
				t.Errorf("forward.Options.ShutdownGrace = %s, want %s", o.ShutdownGrace, tt.want)
			}
		})
	}
}
