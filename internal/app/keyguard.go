package app

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

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
// the first comparison made after this process's own snapshot was put in
// the bucket, so of two forwarders starting together at least one sees
// the other before it pulls anything. A peer publishing no fingerprint
// (an older release) is unknown, not a disagreement; one sending the
// destination identifiable copies (status.NoKey) is one.
type keyGuard struct {
	own      map[string]string // by destination: this process's fingerprint
	log      *slog.Logger
	disagree *prometheus.GaugeVec

	mu sync.Mutex
	// held is, by destination, why its studies are not pulled; "" while
	// they are.
	held map[string]string
	// peers is, by destination, the disagreement last logged.
	peers map[string]string
}

// keyNotCompared is why a destination's studies wait before its first
// comparison.
const keyNotCompared = "its de-identification key is not yet compared with the other forwarders serving it (status bucket " + natsjs.StatusBucket + ", read every 5 s)"

// newKeyGuard returns the guard of the destinations in fingerprints that
// de-identify (not status.NoKey), with its metric registered in reg.
func newKeyGuard(fingerprints map[string]string, reg prometheus.Registerer, log *slog.Logger) (*keyGuard, error) {
	g := &keyGuard{own: map[string]string{}, log: log, held: map[string]string{}, peers: map[string]string{}}
	for d, fp := range fingerprints {
		if fp != status.NoKey {
			g.own[d], g.held[d] = fp, keyNotCompared
		}
	}
	g.disagree = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stowline_forwarder_deidentify_key_disagreement",
		Help: "1 while live forwarders serving the de-identifying destination publish different key fingerprints (or one sends identifiable copies): this process pulls none of its studies until they agree.",
	}, []string{"destination"})
	for d := range g.own {
		g.disagree.WithLabelValues(d).Set(0)
	}
	return g, reg.Register(g.disagree)
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
		if why := g.held[d]; why != "" {
			return errors.New("destination " + d + ": no study is pulled: " + why)
		}
		return nil
	}
}

// compare reads the key fingerprints in snaps, a complete read of the
// status bucket with this process's own snapshot; published tells whether
// that snapshot was in the bucket before the read (read before it).
func (g *keyGuard) compare(snaps []status.Snapshot, published bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range slices.Sorted(maps.Keys(g.own)) {
		mine := g.own[d]
		hosts := map[string][]string{mine: nil}
		for _, s := range snaps {
			if fp := s.KeyFingerprints[d]; fp != "" {
				hosts[fp] = append(hosts[fp], s.Host)
			}
		}
		if len(hosts) == 1 {
			if !published {
				continue // the others may not have seen this one yet
			}
			if g.held[d] != "" && g.held[d] != keyNotCompared {
				g.log.Info("the forwarders serving the destination agree on its de-identification key again: its studies are pulled",
					"destination", d, "key_fingerprint", mine)
			}
			g.held[d], g.peers[d] = "", ""
			g.disagree.WithLabelValues(d).Set(0)
			continue
		}
		var others []string
		for _, fp := range slices.Sorted(maps.Keys(hosts)) {
			if fp != mine {
				others = append(others, fp+" ("+strings.Join(hosts[fp], ", ")+")")
			}
		}
		peers := strings.Join(others, "; ")
		g.held[d] = "live forwarders serving it have other de-identification keys: " + peers + ", this one " + mine +
			"; every forwarder of the destination stops until they agree (docs/deidentification.md, Rotation)"
		g.disagree.WithLabelValues(d).Set(1)
		if g.peers[d] != peers {
			g.peers[d] = peers
			g.log.Error("other live forwarders serving the destination have another de-identification key: no study of it is pulled until every forwarder serving it has the same key (stop those with the wrong one, docs/deidentification.md, Rotation); studies in hand go on",
				"destination", d, "key_fingerprint", mine, "other_key_fingerprints", others)
		}
	}
}
