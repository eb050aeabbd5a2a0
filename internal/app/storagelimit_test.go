package app

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestSingleHostReportsTheEmbeddedServerStorageLimit: a single host's
// queue metrics report the embedded server's storage limit as the
// account's (which has none of its own: -1), so that
// StowlineNATSStorageNearFull covers it; a process on a NATS server of
// its own reports only its account's limits (none here).
func TestSingleHostReportsTheEmbeddedServerStorageLimit(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	embedded, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(embedded.Close)
	// A connection to a server stowline did not start.
	external := &natsjs.Conn{JS: testnats.Start(t).JS}
	want, _, _ := embedded.EmbeddedStorageLimits()
	for _, tc := range []struct {
		name      string
		conn      *natsjs.Conn
		wantLimit bool
	}{
		{"embedded", embedded, true},
		{"NATS_URL", external, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			if err := newStatusWiring(tc.conn, config.Admin{}, tc.wantLimit, log).registerQueue(reg); err != nil {
				t.Fatal(err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var limit float64
			found := false
			for _, mf := range mfs {
				if mf.GetName() != "stowline_jetstream_account_limit_bytes" {
					continue
				}
				for _, m := range mf.GetMetric() {
					if m.GetLabel()[0].GetValue() == "file" {
						limit, found = m.GetGauge().GetValue(), true
					}
				}
			}
			if found != tc.wantLimit || found && limit != float64(want) {
				t.Errorf("file limit reported %v (%v); want reported %v, %d", found, limit, tc.wantLimit, want)
			}
		})
	}
}
