package app

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: "0d", bad: true},
		{in: "-1h", bad: true},
		{in: "d", bad: true},
		{in: "week", bad: true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("parseSince(%q) = %v, %v; want %v (error: %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// TestVerifyAuditSummarisesPastAFailedStudy: a QIDO-RS request failing
// for one study ended `audit --verify` there, with the error alone: no
// summary, the later studies unchecked. Now each study is tried, the
// summary is printed counting those not verified, and the run exits 1.
func TestVerifyAuditSummarisesPastAFailedStudy(t *testing.T) {
	s := newAuditSite(t, 2, "ai")
	for _, ev := range s.studies {
		s.record(t, ev, "ai")
	}
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	t.Cleanup(dest.Close)
	env := maps.Clone(s.env)
	env["DESTINATIONS"], env["DESTINATION_AI_URL"] = "ai", dest.URL+"/dicom-web"
	var stderr strings.Builder
	err := RunAudit(t.Context(), []string{"--verify", "--destination", "ai", "--since", "1d"}, func(k string) string { return env[k] }, io.Discard, &stderr)
	if code := ExitCode("forwarder audit", err, io.Discard); code != 1 {
		t.Errorf("err = %v (exit %d), want exit 1", err, code)
	}
	if !strings.Contains(stderr.String(), "audit --verify: 2 studies forwarded to ai") || !strings.Contains(stderr.String(), "2 not verified") {
		t.Errorf("no summary counting 2 studies not verified:\n%s", stderr.String())
	}
	for ev := range maps.Values(s.studies) {
		if !strings.Contains(err.Error(), ev.OrthancStudyID) {
			t.Errorf("the error does not name study %s: %v", ev.OrthancStudyID, err)
		}
	}
}

// TestVerifyAuditFailsForAStudyNotQueued: audit --verify --enqueue whose
// re-forward JetStream refuses (the event stream full) exits with an
// error naming the count, even for one study: exit 0 would say the
// study's missing instances are on their way when they are not.
func TestVerifyAuditFailsForAStudyNotQueued(t *testing.T) {
	s := newAuditSite(t, 1, "ai")
	for _, ev := range s.studies {
		s.record(t, ev, "ai")
	}
	// The destination holds none of the study's instances.
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = w.Write([]byte("[]"))
	}))
	t.Cleanup(dest.Close)
	s.fillEventStream(t)
	env := maps.Clone(s.env)
	env["DESTINATIONS"], env["DESTINATION_AI_URL"] = "ai", dest.URL+"/dicom-web"
	var stderr strings.Builder
	err := RunAudit(t.Context(), []string{"--verify", "--destination", "ai", "--since", "1d", "--enqueue"}, func(k string) string { return env[k] }, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "1 studies could not be enqueued") {
		t.Errorf("err = %v, want 1 study not enqueued\n%s", err, stderr.String())
	}
}
