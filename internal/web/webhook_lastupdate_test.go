package web_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// lockedBuffer is a log sink the handler writes from its goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// An event whose lastUpdate is more than a day after its arrival (a
// forged one, an Orthanc whose clock runs ahead) is queued, not refused:
// refused, an Orthanc's studies were lost while its clock is wrong. It is
// counted and logged, so that the clock gets mended.
func TestWebhookWarnsOfALastUpdateAhead(t *testing.T) {
	ns := testnats.Start(t)
	reg := prometheus.NewRegistry()
	var logs lockedBuffer
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	h, err := web.NewWebhook(web.WebhookOptions{
		Tokens: []string{token}, Publisher: natsjs.Publisher{JS: ns.JS}, PublishTimeout: storedPublishTimeout,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	const layout = "20060102T150405"
	ahead := 0.0
	for i, tt := range []struct {
		name, lastUpdate string
		warned           bool
	}{
		{"an hour before", now.Add(-time.Hour).Format(layout), false},
		{"23 hours ahead", now.Add(23 * time.Hour).Format(layout), false},
		{"25 hours ahead", now.Add(25 * time.Hour).Format(layout), true},
		{"year 9999", "99991231T235959", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(logs.String())
			// A study of its own each, so that JetStream stores every one.
			body := strings.Replace(strings.Replace(validBody, "20261126T101500", tt.lastUpdate, 1), "53925988", fmt.Sprintf("5392598%d", i), 1)
			if status, out := post(t, srv.URL, "application/json", "Bearer "+token, body); status != http.StatusAccepted || out["duplicate"] == true {
				t.Fatalf("status %d %v, want 202, queued", status, out)
			}
			if tt.warned {
				ahead++
			}
			if got := counter(t, reg, "stowline_ingest_events_lastupdate_ahead_total", "", ""); got != ahead {
				t.Errorf("stowline_ingest_events_lastupdate_ahead_total = %v, want %v", got, ahead)
			}
			line := logs.String()[before:]
			if warned := strings.Contains(line, "level=WARN") && strings.Contains(line, "more than a day after its arrival") &&
				strings.Contains(line, "last_update="+tt.lastUpdate); warned != tt.warned {
				t.Errorf("warned %v, want %v; log:\n%s", warned, tt.warned, line)
			}
		})
	}
}
