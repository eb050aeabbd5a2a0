package app

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestForwarderConsumersBoundDeliveries: JetStream's own bound on one
// event's deliveries, the last one when every delivery kills its
// forwarder, is twice FORWARDER_MAX_DELIVERIES (room for the deliveries
// that dead-letter a study, and for retries of a letter that could not
// be stored), or natsjs.DefaultMaxDeliver when the limit is off
// (docs/guarantees.md, Delivery). Each lane's consumer gets it.
func TestForwarderConsumersBoundDeliveries(t *testing.T) {
	for _, tt := range []struct {
		name          string
		maxDeliveries int
		want          int
	}{
		{"a limit", 3, 6},
		{"the default limit", 48, 96},
		{"no limit", 0, natsjs.DefaultMaxDeliver},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
			nc := config.NATS{URL: srv.ClientURL(), Replicas: 1, EventsRetention: 7 * 24 * time.Hour, DedupeWindow: time.Hour}
			topo := topology(nc, &config.Forwarder{MaxDeliveries: tt.maxDeliveries, AckWait: time.Minute}, false)
			if _, err := topo.EnsureEvents(t.Context(), srv.JS); err != nil {
				t.Fatal(err)
			}
			lanes, err := topo.EnsureLanes(t.Context(), srv.JS, []string{"default"})
			if err != nil {
				t.Fatal(err)
			}
			if len(lanes["default"]) == 0 {
				t.Fatal("no lane consumers")
			}
			for lane, c := range lanes["default"] {
				if got := c.CachedInfo().Config.MaxDeliver; got != tt.want {
					t.Errorf("lane %v: MaxDeliver %d with FORWARDER_MAX_DELIVERIES=%d, want %d", lane, got, tt.maxDeliveries, tt.want)
				}
			}
		})
	}
}
