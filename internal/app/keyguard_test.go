package app

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testharness"
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
		ownListed bool
		wantHeld  string // in the readiness error; "": pulled
		wantLog   []string
	}{
		{name: "alone", ownListed: true},
		{name: "own snapshot not in the bucket yet", ownListed: false, wantHeld: "not yet compared"},
		{name: "same key", ownListed: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": mine}}}},
		{name: "older release: unknown", ownListed: true, peers: []status.Snapshot{{Host: "fwd-1"}}},
		{name: "peer serving another destination", ownListed: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"archive": status.NoKey}}}},
		{name: "another key", ownListed: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": mine}},
			{Host: "fwd-2", KeyFingerprints: map[string]string{"research": other}}},
			wantHeld: "have 1 other de-identification key(s);",
			wantLog:  []string{`"level":"ERROR"`, `"destination":"research"`, `"key_fingerprint":"` + mine + `"`, `"other_key_fingerprints":["` + other + ` (fwd-2)"]`}},
		{name: "another key before this snapshot is shared", ownListed: false, peers: []status.Snapshot{
			{Host: "fwd-2", KeyFingerprints: map[string]string{"research": other}}},
			wantHeld: "have 1 other de-identification key(s);"},
		{name: "peer sending identifiable copies", ownListed: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": status.NoKey}}},
			wantHeld: "have no key (sending the originals);"},
		{name: "another key and a peer sending identifiable copies", ownListed: true, peers: []status.Snapshot{
			{Host: "fwd-1", KeyFingerprints: map[string]string{"research": status.NoKey}},
			{Host: "fwd-2", KeyFingerprints: map[string]string{"research": other}}},
			wantHeld: "have 1 other de-identification key(s) and no key (sending the originals);"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, logs := newTestKeyGuard(t, mine)
			g.compare(append([]status.Snapshot{self}, tt.peers...), tt.ownListed)
			err := g.check("research")(t.Context())
			paused := g.paused("research")()
			if tt.wantHeld == "" {
				if err != nil || paused {
					t.Errorf("paused %v, readiness %v: want pulled", paused, err)
				}
			} else if !paused || err == nil || !strings.Contains(err.Error(), tt.wantHeld) {
				t.Errorf("paused %v, readiness %v: want paused, %q", paused, err, tt.wantHeld)
			}
			// /readyz answers anyone: no fingerprint, no host.
			if err != nil && (strings.Contains(err.Error(), mine) || strings.Contains(err.Error(), other) || strings.Contains(err.Error(), "fwd-")) {
				t.Errorf("readiness names a key fingerprint or a host: %v", err)
			}
			wantMetric := 0.0
			if strings.Contains(tt.wantHeld, "have ") {
				wantMetric = 1
			}
			if got := testutil.ToFloat64(g.disagree.WithLabelValues("research")); got != wantMetric {
				t.Errorf("stowline_forwarder_deidentify_key_disagreement %v, want %v", got, wantMetric)
			}
			wantReason := map[string]string{"": "", "not yet compared": forward.PausedNotCompared}[tt.wantHeld]
			if wantMetric == 1 {
				wantReason = forward.PausedKeysDiffer
			}
			if got := g.reason("research")(); got != wantReason {
				t.Errorf("pause reason %q, want %q", got, wantReason)
			}
			for _, reason := range []string{forward.PausedKeysDiffer, forward.PausedNotCompared} {
				want := 0.0
				if reason == wantReason {
					want = 1
				}
				if got := testutil.ToFloat64(g.pausedBy.WithLabelValues("research", reason)); got != want {
					t.Errorf("stowline_forwarder_deidentify_paused{reason=%q} %v, want %v", reason, got, want)
				}
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
	clock := time.Now()
	g.now = func() time.Time { return clock }
	g.compare([]status.Snapshot{self, peer}, true)
	clock = clock.Add(agreeSettle)
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

// Whether this process's snapshot is in the bucket is decided per read:
// a bucket lost or recreated (a restarted NATS server keeps it in memory
// only; `nats kv del`) lacks it until the next put, and a read then sees
// no other key either. Such a read pulls nothing: before, a flag set at
// the first put let forwarders with different keys all pull again.
func TestKeyGuardOwnSnapshotMissing(t *testing.T) {
	const mine, other = "1111111111111111", "2222222222222222"
	self := status.Snapshot{Host: "fwd-0", KeyFingerprints: map[string]string{"research": mine}}
	peer := status.Snapshot{Host: "fwd-1", KeyFingerprints: map[string]string{"research": other}}
	tests := []struct {
		name     string
		before   []status.Snapshot // compared first, with the own snapshot listed
		wantHeld string
	}{
		{name: "pulled, then a read without it", before: []status.Snapshot{self}, wantHeld: "not yet compared"},
		{name: "held for another key, then a read without either", before: []status.Snapshot{self, peer}, wantHeld: "have 1 other de-identification key(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, logs := newTestKeyGuard(t, mine)
			g.compare(tt.before, true)
			g.compare([]status.Snapshot{self}, false)
			err := g.check("research")(t.Context())
			if !g.paused("research")() || err == nil || !strings.Contains(err.Error(), tt.wantHeld) {
				t.Errorf("paused %v, readiness %v: want paused, %q", g.paused("research")(), err, tt.wantHeld)
			}
			if strings.Contains(logs.String(), "agree on its de-identification key again") {
				t.Errorf("agreement logged:\n%s", logs.String())
			}
			clock := time.Now()
			g.now = func() time.Time { return clock }
			g.compare([]status.Snapshot{self}, true)
			clock = clock.Add(agreeSettle)
			g.compare([]status.Snapshot{self}, true)
			if g.paused("research")() {
				t.Error("still paused once the reads list this snapshot and no other key for agreeSettle")
			}
		})
	}
}

// A disagreement ends only when the reads listing this process's own
// snapshot and no other key went on for agreeSettle. Before, the first
// such read ended it: after the bucket was lost during a disagreement,
// the forwarder that put its snapshot back first saw no other key and
// pulled, maybe under the wrong key, until the other's was back.
func TestKeyGuardAgreesAfterSettle(t *testing.T) {
	const mine, other = "1111111111111111", "2222222222222222"
	self := status.Snapshot{Host: "fwd-0", KeyFingerprints: map[string]string{"research": mine}}
	peer := status.Snapshot{Host: "fwd-1", KeyFingerprints: map[string]string{"research": other}}
	type read struct {
		after      time.Duration // since the read before
		peerListed bool
		ownListed  bool
		wantPaused bool
		failed     bool // the read fails: compare is not called
	}
	tests := []struct {
		name      string
		reads     []read // after one that found the other key
		wantAgree bool   // "agree again" logged
	}{
		{name: "bucket lost, own snapshot back first, the other's a put later", reads: []read{
			{after: time.Second, wantPaused: true},
			{after: time.Second, ownListed: true, wantPaused: true},
			{after: status.ShareInterval, ownListed: true, peerListed: true, wantPaused: true},
			{after: agreeSettle, ownListed: true, peerListed: true, wantPaused: true},
		}},
		{name: "other forwarder gone", wantAgree: true, reads: []read{
			{after: time.Second, ownListed: true, wantPaused: true},
			{after: status.ShareInterval, ownListed: true, wantPaused: true},
			{after: agreeSettle - status.ShareInterval, ownListed: true},
			{after: time.Second, ownListed: true},
		}},
		{name: "a read without the own snapshot starts the wait again", wantAgree: true, reads: []read{
			{after: time.Second, ownListed: true, wantPaused: true},
			{after: status.ShareInterval, wantPaused: true},
			{after: status.ShareInterval, ownListed: true, wantPaused: true},
			{after: agreeSettle - time.Second, ownListed: true, wantPaused: true},
			{after: time.Second, ownListed: true},
		}},
		{name: "the other key seen again starts the wait again", reads: []read{
			{after: time.Second, ownListed: true, wantPaused: true},
			{after: status.ShareInterval, ownListed: true, peerListed: true, wantPaused: true},
			{after: agreeSettle - time.Second, ownListed: true, wantPaused: true},
		}},
		{name: "a failed read starts the wait again", wantAgree: true, reads: []read{
			{after: time.Second, ownListed: true, wantPaused: true},
			{after: status.ShareInterval, failed: true, wantPaused: true},
			{after: agreeSettle, ownListed: true, wantPaused: true},
			{after: agreeSettle - time.Second, ownListed: true, wantPaused: true},
			{after: time.Second, ownListed: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, logs := newTestKeyGuard(t, mine)
			clock := time.Now()
			g.now = func() time.Time { return clock }
			g.compare([]status.Snapshot{self, peer}, true)
			for i, r := range tt.reads {
				clock = clock.Add(r.after)
				snaps := []status.Snapshot{self}
				if r.peerListed {
					snaps = append(snaps, peer)
				}
				if r.failed {
					g.readFailed(errors.New("nats: timeout"))
				} else {
					g.compare(snaps, r.ownListed)
				}
				if got := g.paused("research")(); got != r.wantPaused {
					t.Fatalf("read %d: paused %v, want %v", i, got, r.wantPaused)
				}
			}
			if got := strings.Count(logs.String(), "agree on its de-identification key again"); got != map[bool]int{true: 1}[tt.wantAgree] {
				t.Errorf("agreement logged %d times, want agreed %v:\n%s", got, tt.wantAgree, logs.String())
			}
		})
	}
}

// Two forwarders with different keys both stop; the status bucket's
// entries deleted, neither pulls: not while the bucket lacks its
// snapshot, nor when it has put its own back before the other's is
// (a disagreement ends only after agreeSettle of reads finding no other
// key).
func TestKeyGuardStatusBucketLost(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	ctx, g := runGroup(t)
	replicas, err := newReplicasGauge(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var guards []*keyGuard
	for _, fp := range []string{"1111111111111111", "2222222222222222"} {
		keys := map[string]string{"archive": fp}
		s := trackArchiveWithKeys(t, ctx, g, conn, keys, quiet)
		guard, err := newKeyGuard(keys, prometheus.NewRegistry(), quiet)
		if err != nil {
			t.Fatal(err)
		}
		guards = append(guards, guard)
		g.Go(func() error {
			return shareLimits(ctx, s, map[string][]replicaLimit{"archive": nil}, replicas, guard, 100*time.Millisecond, quiet)
		})
	}
	disagree := func() bool {
		for _, guard := range guards {
			if testutil.ToFloat64(guard.disagree.WithLabelValues("archive")) != 1 {
				return false
			}
		}
		return true
	}
	waitFor(t, "both forwarders see the other key", disagree)
	kv, err := conn.JS.KeyValue(ctx, natsjs.StatusBucket)
	if err != nil {
		t.Fatal(err)
	}
	listed := func() int {
		keys, _ := kv.Keys(ctx) // none: an error
		return len(keys)
	}
	if n := listed(); n != 2 {
		t.Fatalf("%d snapshots in the bucket, want 2", n)
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := kv.Purge(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Each puts its snapshot again within status.ShareInterval; the
	// reads every 100 ms in between find the bucket without it. Checked
	// until a second of reads after both are back.
	var back time.Time
	for deadline := time.Now().Add(20 * time.Second); back.IsZero() || time.Since(back) < time.Second; {
		if time.Now().After(deadline) {
			t.Fatal("the snapshots are not put in the bucket again within 20 s")
		}
		if back.IsZero() && listed() == 2 {
			back = time.Now()
		}
		for i, guard := range guards {
			if !guard.paused("archive")() {
				t.Fatalf("forwarder %d pulls after the bucket's entries were deleted, the other having another key", i)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A NATS user that may not read the status bucket, or put this process's
// snapshot in it, leaves a de-identifying destination's key never
// compared: no study of it is pulled. /readyz names the error, the
// warnings say that the destination pulls nothing, and the metric
// stowline_forwarder_deidentify_paused says so with reason not_compared
// (the disagreement gauge, 0, was all an alert had), as does the status.
func TestKeyGuardWithoutTheStatusBucket(t *testing.T) {
	tests := []struct {
		name    string
		deny    string
		wantErr string // in the readiness error
		wantLog string // in a warning
	}{
		{name: "no read", deny: "$JS.API.CONSUMER.*.KV_stowline_forwarders.>", wantErr: "read key-value bucket",
			wantLog: "cannot count the replicas serving each destination"},
		{name: "no put", deny: "$KV.stowline_forwarders.>", wantErr: "this forwarder's snapshot is not in it: put ",
			wantLog: "cannot share this forwarder's state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "authz", Port: -1,
				Configure: func(o *server.Options) {
					o.Users = []*server.User{{Username: "forwarder", Password: "forwarder-password", Permissions: &server.Permissions{
						Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{tt.deny}},
					}}}
				}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Shutdown)
			conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL(), Auth: []nats.Option{nats.UserInfo("forwarder", "forwarder-password")}},
				slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(conn.Close)
			logs := &testharness.LogBuffer{}
			log := slog.New(slog.NewTextHandler(logs, nil))
			ctx, g := runGroup(t)
			keys := map[string]string{"archive": "1111111111111111"}
			s := trackArchiveWithKeys(t, ctx, g, conn, keys, log)
			reg := prometheus.NewRegistry()
			guard, err := newKeyGuard(keys, reg, log)
			if err != nil {
				t.Fatal(err)
			}
			replicas, err := newReplicasGauge(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			g.Go(func() error {
				return shareLimits(ctx, s, map[string][]replicaLimit{"archive": nil}, replicas, guard, 200*time.Millisecond, log)
			})
			warned := func() bool {
				for line := range strings.Lines(logs.String()) {
					if strings.Contains(line, "level=WARN") && strings.Contains(line, tt.wantLog) &&
						strings.Contains(line, "de-identifying destinations pull nothing") {
						return true
					}
				}
				return false
			}
			var ready error
			waitFor(t, "readiness naming the error, and the warning", func() bool {
				ready = guard.check("archive")(ctx)
				return ready != nil && strings.Contains(ready.Error(), tt.wantErr) && warned()
			})
			if !guard.paused("archive")() {
				t.Error("the destination's studies are pulled")
			}
			if got := guard.reason("archive")(); got != forward.PausedNotCompared {
				t.Errorf("pause reason %q, want %q", got, forward.PausedNotCompared)
			}
			want := `
# HELP stowline_forwarder_deidentify_paused 1 while this process pulls none of the de-identifying destination's studies, for reason: keys_differ (another live forwarder's key) or not_compared (its key not yet compared: the status bucket not read, or lacking this process's entry).
# TYPE stowline_forwarder_deidentify_paused gauge
stowline_forwarder_deidentify_paused{destination="archive",reason="keys_differ"} 0
stowline_forwarder_deidentify_paused{destination="archive",reason="not_compared"} 1
`
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "stowline_forwarder_deidentify_paused"); err != nil {
				t.Error(err)
			}
			if testing.Verbose() {
				t.Logf("readiness: %v\nlog:\n%s", ready, logs.String())
			}
		})
	}
}
