package testharness

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# HELP stowline_forwarder_studies_total Attempts.
# TYPE stowline_forwarder_studies_total counter
stowline_forwarder_studies_total{destination="ai",result="forwarded"} 2
stowline_forwarder_studies_total{destination="default",result="forwarded"} 3
stowline_forwarder_studies_total{destination="default",result="retry"} 7
stowline_queue_pending_events{destination=""} 4
stowline_odd{reason="a \"quoted\", {braced} value"} 1.5
stowline_jetstream_info_success 1
`)
	}))
	defer srv.Close()
	for _, tt := range []struct {
		sample string
		want   float64
		ok     bool
	}{
		{`stowline_forwarder_studies_total{result="forwarded"}`, 5, true},
		{`stowline_forwarder_studies_total{destination="default",result="forwarded"}`, 3, true},
		{`stowline_forwarder_studies_total`, 12, true},
		{`stowline_forwarder_studies_total{result="interrupted"}`, 0, false},
		{`stowline_queue_pending_events`, 4, true},
		{`stowline_queue_pending_events{destination=""}`, 4, true},
		{`stowline_odd{reason="a \"quoted\", {braced} value"}`, 1.5, true},
		{`stowline_jetstream_info_success`, 1, true},
		{`stowline_forwarder`, 0, false},
	} {
		got, ok := Metric(t, srv.URL, tt.sample)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Metric(%s) = %v, %v; want %v, %v", tt.sample, got, ok, tt.want, tt.ok)
		}
	}
}
