package forward

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	checkTopBucket(t, reg, map[string]time.Duration{
		"stowline_forwarder_study_duration_seconds":  6 * time.Hour,
		"stowline_forwarder_verify_duration_seconds": 10 * time.Minute,
	})
}

// checkTopBucket fails unless each named histogram's largest finite
// bucket is at least its duration.
func checkTopBucket(t *testing.T, g prometheus.Gatherer, want map[string]time.Duration) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		d, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		seen[mf.GetName()] = true
		b := mf.GetMetric()[0].GetHistogram().GetBucket()
		if top := b[len(b)-1].GetUpperBound(); top < d.Seconds() {
			t.Errorf("%s: top bucket %g s, want at least %v", mf.GetName(), top, d)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s not registered", name)
		}
	}
}
