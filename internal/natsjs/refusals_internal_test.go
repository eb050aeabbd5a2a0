package natsjs

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A subject refused again past refusalMemory stays listed without a
// "no longer reported" line and a second first-refusal line: its new
// refusal is the one that counts (it was forgotten, then added again).
func TestRefusedAgainStaysListedQuietly(t *testing.T) {
	var logs bytes.Buffer
	start := time.Now()
	now := start
	r := &refusals{log: slog.New(slog.NewJSONHandler(&logs, nil)), now: func() time.Time { return now }}
	const subject = EventSubjectPrefix + "main.stat"
	r.refusedPublish(subject)
	now = start.Add(refusalMemory + time.Minute)
	r.refusedPublish(subject)
	if strings.Contains(logs.String(), "no longer reported") || strings.Count(logs.String(), "NATS refuses this client") != 1 {
		t.Errorf("a subject refused again logged as forgotten and refused anew:\n%s", logs.String())
	}
	now = now.Add(refusalMemory - time.Second)
	if got := r.publishes(); len(got) != 1 || got[0] != subject {
		t.Errorf("publishes = %v, want %s still listed within refusalMemory of its last refusal", got, subject)
	}
}
