package app

import (
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestOnlyTheIngestLowersTheDedupeWindow: the ingest checks its
// EVENTS_DEDUPE_WINDOW against INGEST_HMAC_MAX_SKEW; a forwarder started
// after it with a shorter one lowered the event stream's window below
// what the ingest needs. A forwarder's start keeps the stream's window; a
// process that runs the ingest (the ingest, a single host) sets its own.
func TestOnlyTheIngestLowersTheDedupeWindow(t *testing.T) {
	const lower = time.Hour
	for _, tt := range []struct {
		name       string
		forwarder  bool
		singleHost bool
		want       time.Duration
	}{
		{"forwarder", true, false, natsjs.DefaultTopology().DedupeWindow},
		{"ingest", false, false, lower},
		{"single host", true, true, lower},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The stream made with the default window, 24h.
			srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
			nc := config.NATS{URL: srv.ClientURL(), Replicas: 1, EventsRetention: 7 * 24 * time.Hour, DedupeWindow: lower}
			var fc *config.Forwarder
			if tt.forwarder {
				fc = &config.Forwarder{}
			}
			p, err := newProcess(t.Context(), nc, fc, config.ListenTLS{}, config.Admin{}, tt.singleHost, "", nil, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.conn.Close)
			s, err := srv.JS.Stream(t.Context(), natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.CachedInfo().Config.Duplicates; got != tt.want {
				t.Errorf("duplicate window %v after the %s's start with EVENTS_DEDUPE_WINDOW=%v, want %v", got, tt.name, lower, tt.want)
			}
		})
	}
}
