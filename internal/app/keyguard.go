package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/web"
)

// keyGuard stops pulling a de-identifying destination's studies while the
// live forwarders serving it (their snapshots in the status bucket) do
// not agree on its key: forwarders with two keys would send one study and
// one patient as two pseudonymous ones. Neither side knows which key is
// right, so every forwarder of the destination stops, until the others
// are gone or restarted with its key. A destination's pulls also wait for
// a comparison made on a read that found this process's own snapshot in
// the bucket, so of two forwarders starting together (or after the bucket
// was lost) at least one sees the other before it pulls anything. A peer
// publishing no fingerprint (an older release) is unknown, not a
// disagreement; one sending the destination identifiable copies
// (status.NoKey) is one.
type keyGuard struct {
	own      map[string]string // by destination: this process's fingerprint
	log      *slog.Logger
	disagree *prometheus.GaugeVec
	// pausedBy is, by destination and reason (forward.PausedKeysDiffer,
	// PausedNotCompared), 1 while held for it: a key never compared
	// (the status bucket unreadable) pulls nothing either, with
	// disagree at 0.
	pausedBy *prometheus.GaugeVec
	now      func() time.Time

	mu sync.Mutex
	// held is, by destination, why its studies are not pulled; "" while
	// they are.
	held map[string]string
	// peers is, by destination, the disagreement last logged.
	peers map[string]string
	// agreeing is, by destination held for another key, the time of the
	// first of the reads in a row since that listed this process's
	// snapshot and no other key (see agreeSettle); a failed read breaks
	// the row.
	agreeing map[string]time.Time
	// failed is why the last read of the bucket counted no comparison:
	// the read's error, or that of the put of this process's snapshot
	// when the read lacked it; nil if none.
	failed error
}

// keyNotCompared is why a destination's studies wait until a read of the
// bucket finds this process's own snapshot.
const keyNotCompared = "its de-identification key is not yet compared with the other forwarders serving it (status bucket " + natsjs.StatusBucket + ", read every 5 s)"

// agreeSettle is how long the reads finding no other key must go on
// before a disagreement ends: two put intervals, so that after a bucket
// lost or recreated every live forwarder has put its snapshot again
// (one put late under load included). Without it, the first forwarder to
// put its own back saw no other key and pulled, maybe under the wrong
// key, until the others' were back.
const agreeSettle = 2 * status.ShareInterval

// newKeyGuard returns the guard of the destinations in fingerprints that
// de-identify (not status.NoKey), with its metric registered in reg.
func newKeyGuard(fingerprints map[string]string, reg prometheus.Registerer, log *slog.Logger) (*keyGuard, error) {
	g := &keyGuard{own: map[string]string{}, log: log, now: time.Now, held: map[string]string{}, peers: map[string]string{}, agreeing: map[string]time.Time{}}
	g.disagree = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stowline_forwarder_deidentify_key_disagreement",
		Help: "1 while live forwarders serving the de-identifying destination publish different key fingerprints (or one sends identifiable copies): this process pulls none of its studies until they agree.",
	}, []string{"destination"})
	g.pausedBy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stowline_forwarder_deidentify_paused",
		Help: "1 while this process pulls none of the de-identifying destination's studies, for reason: keys_differ (another live forwarder's key) or not_compared (its key not yet compared: the status bucket not read, or lacking this process's entry).",
	}, []string{"destination", "reason"})
	for d, fp := range fingerprints {
		if fp != status.NoKey {
			g.own[d] = fp
			g.hold(d, keyNotCompared)
		}
	}
	if err := reg.Register(g.disagree); err != nil {
		return nil, fmt.Errorf("key guard: %w", err)
	}
	if err := reg.Register(g.pausedBy); err != nil {
		return nil, fmt.Errorf("key guard: %w", err)
	}
	return g, nil
}

// hold sets why destination d's studies are not pulled ("": they are)
// and its gauges: stowline_forwarder_deidentify_paused by reason, and
// the disagreement, 1 while held for keys that differ; g.mu held, or g
// not yet shared.
func (g *keyGuard) hold(d, why string) {
	g.held[d] = why
	r := pauseReason(why)
	disagree := 0.0
	if r == forward.PausedKeysDiffer {
		disagree = 1
	}
	g.disagree.WithLabelValues(d).Set(disagree)
	for _, reason := range []string{forward.PausedKeysDiffer, forward.PausedNotCompared} {
		v := 0.0
		if reason == r {
			v = 1
		}
		g.pausedBy.WithLabelValues(d, reason).Set(v)
	}
}

// pauseReason is the forward.Paused* reason of held text why; "" for "".
func pauseReason(why string) string {
	switch why {
	case "":
		return ""
	case keyNotCompared:
		return forward.PausedNotCompared
	}
	return forward.PausedKeysDiffer
}

// reason is forward.Options.PauseReason of destination d.
func (g *keyGuard) reason(d string) func() string {
	return func() string {
		g.mu.Lock()
		defer g.mu.Unlock()
		return pauseReason(g.held[d])
	}
}

// paused is forward.Options.Paused of destination d.
func (g *keyGuard) paused(d string) func() bool {
	return func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.held[d] != ""
	}
}

// check is destination d's readiness check: failing while its studies
// are not pulled.
func (g *keyGuard) check(d string) web.Check {
	return func(context.Context) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		why := g.held[d]
		if why == keyNotCompared && g.failed != nil {
			return fmt.Errorf("destination %s: no study is pulled: its de-identification key cannot be compared with the other forwarders serving it (status bucket %s, docs/nats-permissions.md): %w",
				d, natsjs.StatusBucket, g.failed)
		}
		if why != "" {
			return errors.New("destination " + d + ": no study is pulled: " + why)
		}
		return nil
	}
}

// noted records why the last read of the bucket counted no comparison
// (nil: it did), for the readiness check.
func (g *keyGuard) noted(err error) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failed = err
}

// readFailed records a read of the bucket that failed with err. It also
// starts the settle of every disagreement again: the reads after it must
// find no other key for agreeSettle on their own, or a start from before
// a run of failures (a NATS restart losing the bucket) would end a
// disagreement at the first read after it, before the others put their
// snapshots again.
func (g *keyGuard) readFailed(err error) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failed = err
	clear(g.agreeing)
}

// deidentifies reports whether a destination it guards is served.
func (g *keyGuard) deidentifies() bool { return g != nil && len(g.own) > 0 }

// compare reads the key fingerprints in snaps, a complete read of the
// status bucket with this process's own snapshot; ownListed tells whether
// the read found that snapshot in the bucket. It is decided per read, not
// once: a bucket lost or recreated (a restarted NATS server keeps none of
// it in memory, `nats kv del`) holds no entry for a while, and a read of
// it, seeing no other key, must not let forwarders with different keys
// all pull again. A disagreement ends only after such reads went on for
// agreeSettle.
func (g *keyGuard) compare(snaps []status.Snapshot, ownListed bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for _, d := range slices.Sorted(maps.Keys(g.own)) {
		mine := g.own[d]
		hosts := map[string][]string{mine: nil}
		for _, s := range snaps {
			if fp := s.KeyFingerprints[d]; fp != "" {
				hosts[fp] = append(hosts[fp], s.Host)
			}
		}
		if len(hosts) > 1 || !ownListed {
			delete(g.agreeing, d)
		}
		if len(hosts) == 1 {
			if !ownListed {
				// The others may not have seen this one: its pulls wait.
				// A disagreement already found stays until a comparison.
				if g.held[d] == "" {
					g.hold(d, keyNotCompared)
					g.log.Warn("this forwarder's snapshot is missing from the status bucket (lost or recreated, or not yet put): the de-identifying destination's studies are not pulled until its key is compared with the other forwarders' again",
						"destination", d, "bucket", natsjs.StatusBucket, "key_fingerprint", mine)
				}
				continue
			}
			if g.held[d] != "" && g.held[d] != keyNotCompared {
				// Another forwarder may not have put its snapshot
				// again yet (the bucket lost): wait for it.
				first, ok := g.agreeing[d]
				if !ok {
					g.agreeing[d] = now
				}
				if !ok || now.Sub(first) < agreeSettle {
					continue
				}
				delete(g.agreeing, d)
				g.log.Info("the forwarders serving the destination agree on its de-identification key again: its studies are pulled",
					"destination", d, "key_fingerprint", mine)
			}
			g.hold(d, "")
			g.peers[d] = ""
			continue
		}
		var others []string
		for _, fp := range slices.Sorted(maps.Keys(hosts)) {
			if fp != mine {
				others = append(others, fp+" ("+strings.Join(hosts[fp], ", ")+")")
			}
		}
		peers := strings.Join(others, "; ")
		// Neither fingerprints nor hosts: /readyz answers anyone who
		// reaches the port, and a fingerprint is a fast check of a
		// guessed key. The log names them.
		g.hold(d, heldForKeys(len(hosts)-1, hosts[status.NoKey] != nil && mine != status.NoKey))
		if g.peers[d] != peers {
			g.peers[d] = peers
			g.log.Error("other live forwarders serving the destination have another de-identification key: no study of it is pulled until every forwarder serving it has the same key (stop those with the wrong one, docs/deidentification.md, Rotation); studies in hand go on",
				"destination", d, "key_fingerprint", mine, "other_key_fingerprints", others)
		}
	}
}

// heldForKeys is the readiness text of a destination held because the
// live forwarders serving it have n keys other than this one's, one of
// them none (a forwarder sending the originals) if noKey.
func heldForKeys(n int, noKey bool) string {
	var have []string
	if noKey {
		n--
	}
	if n > 0 {
		have = append(have, fmt.Sprintf("%d other de-identification key(s)", n))
	}
	if noKey {
		have = append(have, "no key (sending the originals)")
	}
	return "live forwarders serving it have " + strings.Join(have, " and ") + "; this forwarder's log names their fingerprints and hosts (\"other live forwarders serving the destination have another de-identification key\"); " +
		"every forwarder of the destination stops until they agree (docs/deidentification.md, Rotation)"
}
