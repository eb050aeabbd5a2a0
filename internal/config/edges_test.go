package config

import (
	"maps"
	"strings"
	"testing"
)

// TestRangeEdges loads each range-checked variable at the edge its error
// (and -h) names, which must start, and one step past it, which must be
// refused with the variable named: a check off by one refused a setting
// the README gives as valid, or let through one it says is refused.
func TestRangeEdges(t *testing.T) {
	for _, tt := range []struct {
		name, accepted, refused string
		// with are the other variables the edge needs to load alone.
		with map[string]string
	}{
		{"NATS_REPLICAS", "5", "6", map[string]string{"NATS_URL": "nats://nats:4222"}},
		{"EVENTS_RETENTION", "1m", "59s", map[string]string{"EVENTS_DEDUPE_WINDOW": "30s", "FORWARDER_MAX_DELIVERIES": "1"}},
		{"EVENTS_DEDUPE_WINDOW", "200h", "200h0m1s", map[string]string{"EVENTS_RETENTION": "200h"}},
		{"FORWARDER_CONCURRENCY", "256", "257", nil},
		{"FORWARDER_ACK_WAIT", "3s", "2999ms", nil},
		{"FORWARDER_INSTANCE_RETRIES", "10", "11", nil},
		{"FORWARDER_STAT_CONCURRENCY", "64", "65", nil},
		{"FORWARDER_SHUTDOWN_GRACE", "1s", "999ms", nil},
		{"FORWARDER_SHUTDOWN_GRACE", "1h", "1h0m1s", nil},
		{"DEADLETTER_RETENTION", "1h", "59m59s", nil},
		{"STORED_RECORD_RETENTION", "24h", "23h59m59s", nil},
		{"INGEST_PUBLISH_TIMEOUT", "100ms", "99ms", nil},
		{"INGEST_PUBLISH_TIMEOUT", "50s", "50001ms", nil},
		{"ORTHANC_RESPONSE_TIMEOUT", "1h", "1h0m1s", nil},
		{"RECONCILE_LEASE_TTL", "10m", "10m1s", nil},
		{"RECONCILE_POLL_INTERVAL", "1h", "1h0m1s", nil},
		{"STOW_PARALLEL_REQUESTS", "64", "65", nil},
		{"STOW_PARALLEL_MIN", "4", "5", map[string]string{"STOW_PARALLEL_REQUESTS": "4"}},
		{"STOW_MAX_BYTES", "1MiB", "1048575", nil},
		{"STOW_BREAKER_FAILURES", "1000", "1001", nil},
		{"STOW_MAX_BYTES_PER_SECOND", "1KiB", "1023", nil},
		// 16 characters, at least a quarter of them different.
		{"ADMIN_TOKEN", "k3J9x7Qz2mP5w8Rt", "k3J9x7Qz2mP5w8R", nil},
	} {
		t.Run(tt.name+"="+tt.accepted, func(t *testing.T) {
			e := baseEnv()
			maps.Copy(e, tt.with)
			e[tt.name] = tt.accepted
			if err := Load(mapEnv(e), &SingleHost{}); err != nil {
				t.Errorf("%s=%s (the edge of its range) refused: %v", tt.name, tt.accepted, err)
			}
			e[tt.name] = tt.refused
			err := Load(mapEnv(e), &SingleHost{})
			if err == nil || !strings.Contains(err.Error(), tt.name+"=") && !strings.Contains(err.Error(), tt.name+":") {
				t.Errorf("%s=%s (past its range): err %v, want one naming %s", tt.name, tt.refused, err, tt.name)
			}
		})
	}
}
