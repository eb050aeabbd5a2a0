package forward

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/testharness"
)

// The duration histograms reach the times large studies take: a study
// past the top bucket counts only in +Inf, and histogram_quantile then
// gives that bucket's bound, so the dashboard's p95 stayed flat at
// 27 min for studies of hours (a 10 GB thin-slice CT over a capped
// uplink).
func TestDurationBucketsCoverLargeStudies(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newMetrics(reg, "x"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]time.Duration{
		"stowline_forwarder_study_duration_seconds":  6 * time.Hour,
		"stowline_forwarder_verify_duration_seconds": 10 * time.Minute,
	} {
		if top := testharness.HistogramTop(t, reg, name); top < want.Seconds() {
			t.Errorf("%s: top bucket %g s, want at least %v", name, top, want)
		}
	}
}
