package bench

import (
	"strings"
	"testing"
	"time"
)

// TestSinkShapeSettings: STOWLINE_BENCH_SINK_LATENCY and _SINK_RATE make
// the Pipeline sinks far (off by default); a bad value names the variable.
func TestSinkShapeSettings(t *testing.T) {
	for _, tc := range []struct {
		latency, rate string
		wantLatency   time.Duration
		wantRate      int
		wantErr       string
	}{
		{wantLatency: 0, wantRate: 0},
		{latency: "40ms", rate: "26214400", wantLatency: 40 * time.Millisecond, wantRate: 25 << 20},
		{latency: "0s", rate: "0"},
		{latency: "40", wantErr: envPrefix + "SINK_LATENCY"},
		{latency: "-1ms", wantErr: envPrefix + "SINK_LATENCY"},
		{rate: "25MB", wantErr: envPrefix + "SINK_RATE"},
		{rate: "-1", wantErr: envPrefix + "SINK_RATE"},
	} {
		s, err := loadSettings(func(k string) string {
			switch k {
			case envPrefix + "SINK_LATENCY":
				return tc.latency
			case envPrefix + "SINK_RATE":
				return tc.rate
			}
			return ""
		})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("latency %q, rate %q: error %v, want one naming %s", tc.latency, tc.rate, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("latency %q, rate %q: %v", tc.latency, tc.rate, err)
		}
		if s.SinkLatency != tc.wantLatency || s.SinkRate != tc.wantRate {
			t.Errorf("latency %q, rate %q: got %v, %d; want %v, %d", tc.latency, tc.rate, s.SinkLatency, s.SinkRate, tc.wantLatency, tc.wantRate)
		}
	}
}
