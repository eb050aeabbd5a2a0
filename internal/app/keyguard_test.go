package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/status"
)

// newTestKeyGuard is the guard of a forwarder serving research with key
// fingerprint mine, and archive without de-identification; its log is
// returned.
func newTestKeyGuard(t *testing.T, mine string) (*keyGuard, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	g, err := newKeyGuard(map[string]string{"research": mine, "archive": status.NoKey}, prometheus.NewRegistry(),
		slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return g, &logs
}

// A forwarder pulls a de-identifying destination's studies only once it
// has compared its key with the live forwarders serving it, and only
// while they agree: every one of them stops while two differ.
func TestKeyGuardCompare(t *testing.T) {
	const mine, other = "1111111111111111", "2222222222222222"
	self := status.Snapshot{ID: "self", Host: "fwd-0", KeyFingerprints: map[string]string{"research": mine, "archive": status.NoKey}}
	tests := []struct {
		name      string
		peers     []status.Snapshot
		published bool
		wantHeld  string // in the readiness error; "": pulled
		wantLog   []string
	}{
		{name: "alone", published: true},
		{name: "own snapshot not in the bucket yet", published: false, wantHeld: "not yet compared"},
		{name: "same key", published: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": mine}}}},
		{name: "older release: unknown", published: true, peers: []status.Snapshot{{Host: "fwd-1"}}},
		{name: "peer serving another destination", published: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"archive": status.NoKey}}}},
		{name: "another key", published: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": mine}},
			{Host: "fwd-2", KeyFingerprints: map[string]string{"research": other}}},
			wantHeld: other + " (fwd-2), this one " + mine,
			wantLog:  []string{`"level":"ERROR"`, `"destination":"research"`, `"key_fingerprint":"` + mine + `"`, `"other_key_fingerprints":["` + other + ` (fwd-2)"]`}},
		{name: "another key before this snapshot is shared", published: false, peers: []status.Snapshot{
			{Host: "fwd-2", KeyFingerprints: map[string]string{"research": other}}},
			wantHeld: other + " (fwd-2)"},
		{name: "peer sending identifiable copies", published: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": status.NoKey}}},
			wantHeld: "none (fwd-1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, logs := newTestKeyGuard(t, mine)
			g.compare(append([]status.Snapshot{self}, tt.peers...), tt.published)
			err := g.check("research")(t.Context())
			paused := g.paused("research")()
			if tt.wantHeld == "" {
				if err != nil || paused {
					t.Errorf("paused %v, readiness %v: want pulled", paused, err)
				}
			} else if !paused || err == nil || !strings.Contains(err.Error(), tt.wantHeld) {
				t.Errorf("paused %v, readiness %v: want paused, %q", paused, err, tt.wantHeld)
			}
			wantMetric := 0.0
			if len(tt.wantLog) > 0 || strings.Contains(tt.wantHeld, "(") {
				wantMetric = 1
			}
			if got := testutil.ToFloat64(g.disagree.WithLabelValues("research")); got != wantMetric {
				t.Errorf("stowline_forwarder_deidentify_key_disagreement %v, want %v", got, wantMetric)
			}
			for _, part := range tt.wantLog {
				if !strings.Contains(logs.String(), part) {
					t.Errorf("log lacks %s:\n%s", part, logs.String())
				}
			}
			// A destination without de-identification is never held.
			if g.paused("archive")() {
				t.Error("archive (not de-identified) paused")
			}
		})
	}
}

// Once the other key is gone (its forwarder stopped, or restarted with
// this one's), the studies are pulled again, and that is said once.
func TestKeyGuardAgreesAgain(t *testing.T) {
	const mine, other = "1111111111111111", "2222222222222222"
	g, logs := newTestKeyGuard(t, mine)
	self := status.Snapshot{Host: "fwd-0", KeyFingerprints: map[string]string{"research": mine}}
	peer := status.Snapshot{Host: "fwd-1", KeyFingerprints: map[string]string{"research": other}}
	for range 3 {
		g.compare([]status.Snapshot{self, peer}, true)
	}
	if n := strings.Count(logs.String(), "another de-identification key"); n != 1 {
		t.Errorf("the disagreement logged %d times, want once", n)
	}
	peer.KeyFingerprints["research"] = mine
	g.compare([]status.Snapshot{self, peer}, true)
	if g.paused("research")() {
		t.Error("still paused once the keys agree")
	}
	if !strings.Contains(logs.String(), `"msg":"the forwarders serving the destination agree on its de-identification key again`) {
		t.Errorf("agreement not logged:\n%s", logs.String())
	}
	if got := testutil.ToFloat64(g.disagree.WithLabelValues("research")); got != 0 {
		t.Errorf("disagreement metric %v after agreeing", got)
	}
}
