package web_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/web"
)

// An event whose source is none the reconciler publishes under (the Lua
// script's Stowline.Source set, ORTHANC_SOURCE_NAME not, or another
// spelling): each study is then queued under both names and forwarded
// twice, and the only signs were StowlineWebhookFailing (the webhook
// works) and conflicts at the destinations. It is queued all the same,
// counted, and logged once an hour, naming both.
func TestWebhookEventOfAnotherSource(t *testing.T) {
	const otherSource = "stowline_ingest_events_unreconciled_source_total"
	for _, tt := range []struct {
		name    string
		names   func() []string // nil: no reconciler
		named   bool            // the names are configured
		counted float64         // of the three events
		says    string          // what the warning says follows
	}{
		{"the reconciler's name", func() []string { return []string{"orthanc-b", "orthanc-a"} }, true, 0, ""},
		// The one unnamed Orthanc: its forwarders take any name.
		{"another name than Orthanc's", func() []string { return []string{"main"} }, false, 3, "forwarded twice"},
		// Configured names: the forwarders refuse the other one.
		{"another name than the configured one", func() []string { return []string{"main"} }, true, 3, "dead-letter it as from an unknown source"},
		{"name not known yet", func() []string { return nil }, false, 0, ""},
		{"no reconciler", nil, false, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			var logs lockedBuffer
			pub := &fakePublisher{}
			srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: pub, Registerer: reg,
				Logger: slog.New(slog.NewJSONHandler(&logs, nil)), SourceNames: tt.names, SourcesNamed: tt.named})
			for range 3 {
				if status, body := post(t, srv.URL, "application/json", "Bearer "+token, validBody); status != 202 {
					t.Fatalf("status %d (%v), want 202: the event is queued whatever its source", status, body)
				}
			}
			if pub.published() != 3 {
				t.Errorf("%d events published, want 3", pub.published())
			}
			if got := counter(t, reg, otherSource, "", ""); got != tt.counted {
				t.Errorf("%s = %v, want %v", otherSource, got, tt.counted)
			}
			warned := strings.Count(logs.String(), "webhook event names a source the reconciler does not")
			if want := min(1, int(tt.counted)); warned != want {
				t.Errorf("warned %d times, want %d (the first, then one an hour):\n%s", warned, want, logs.String())
			}
			if tt.counted > 0 && (!strings.Contains(logs.String(), `"source":"orthanc-a"`) || !strings.Contains(logs.String(), `"reconciled_sources":["main"]`)) {
				t.Errorf("the warning does not name both sources:\n%s", logs.String())
			}
			if tt.says != "" && !strings.Contains(logs.String(), tt.says) {
				t.Errorf("the warning does not say %q:\n%s", tt.says, logs.String())
			}
		})
	}
}
