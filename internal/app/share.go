package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/bandwidth"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/status"
)

// replicaLimit is a destination's limit that the forwarder processes
// serving it share: its STOW_PARALLEL_REQUESTS (forward.Forwarder), its
// STOW_MAX_BYTES_PER_SECOND (bandwidthShare).
type replicaLimit interface{ SetReplicas(n int) }

// shareFailuresWarned is how many reads of the status bucket in a row
// fail before it is warned about: one or two fail while a NATS cluster
// elects the bucket's leader.
const shareFailuresWarned = 3

// newReplicasGauge is stowline_forwarder_replicas, registered in reg.
func newReplicasGauge(reg prometheus.Registerer) (*prometheus.GaugeVec, error) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stowline_forwarder_replicas",
		Help: "Forwarder processes serving the destination, this one included, as this process last counted them in the status bucket; it takes 1/this of STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND.",
	}, []string{"destination"})
	return g, reg.Register(g)
}

// shareLimits splits each destination's shared limits between the
// forwarder processes serving it, so that K replicas do not take K times
// the ceiling or the bandwidth cap: every interval it counts the live
// processes in the status bucket whose snapshot lists the destination
// (this one included) and sets each limit's share, and replicas. Reading
// the bucket may fail; the last share then stays (the whole limit until a
// first count), so a run of failures is warned about. Each complete read
// also goes to keys (nil: none), which compares the replicas' key
// fingerprints.
func shareLimits(ctx context.Context, s *statusWiring, limits map[string][]replicaLimit, replicas *prometheus.GaugeVec, keys *keyGuard,
	interval time.Duration, log *slog.Logger) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// failed spaces the warnings, which start at the shareFailuresWarned
	// read in a row: a NATS that comes and goes is told once a minute, not
	// at each outage.
	failed := &repeatlog.Failures{Every: time.Minute}
	inARow := 0 // failed reads
	// unlisted: complete reads in a row without this process's snapshot,
	// its put failing. The others then do not count it, and take its
	// share too, while it counts them: warned about at the
	// shareFailuresWarned read, then once an hour.
	unlisted, unlistedInARow := &repeatlog.Failures{Every: time.Hour}, 0
	for name := range limits {
		replicas.WithLabelValues(name).Set(1)
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, interval)
		snaps, ownListed, err := s.read(rctx)
		cancel()
		// The list always holds this process's own snapshot: only a
		// complete read counts the others.
		switch {
		case err == nil:
			if failed.Succeeded() > 0 {
				log.Info("status: the replicas serving each destination are counted again; their shares of the limits are set", "bucket", natsjs.StatusBucket, "failed_reads", inARow)
			}
			inARow = 0
			keys.compare(snaps, ownListed)
			var missing error
			if perr := s.lastPutError(); !ownListed && perr != nil {
				missing = fmt.Errorf("this forwarder's snapshot is not in it: %w", perr)
			}
			keys.noted(missing)
			if missing != nil {
				if unlistedInARow++; unlistedInARow >= shareFailuresWarned {
					if _, warn := unlisted.Failed(); warn {
						log.Warn("status: this forwarder's snapshot is not in the status bucket, so other replicas serving its destinations do not count it: together they may exceed STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND; if it lasts, the likely cause is a NATS permission block without $KV.stowline_forwarders.> (docs/nats-permissions.md) or JetStream's memory storage full",
							"bucket", natsjs.StatusBucket, "failed_reads", unlistedInARow, "err", missing)
					}
				}
			} else if ownListed {
				unlistedInARow = 0
				if unlisted.Succeeded() > 0 {
					log.Info("status: this forwarder's snapshot is in the status bucket again; the other replicas count it", "bucket", natsjs.StatusBucket)
				}
			}
			counted := replicasByDestination(snaps)
			for name, ls := range limits {
				n := max(counted[name], 1)
				replicas.WithLabelValues(name).Set(float64(n))
				for _, l := range ls {
					l.SetReplicas(n)
				}
			}
		case ctx.Err() == nil:
			keys.readFailed(err)
			inARow++
			n, warn := inARow, false
			if n >= shareFailuresWarned {
				_, warn = failed.Failed()
			}
			if !warn {
				log.Debug("status: cannot count the replicas serving each destination; the last share of the limits stays", "err", err)
				break
			}
			kept := "status: cannot count the replicas serving each destination in the status bucket, so this forwarder keeps its last share of STOW_PARALLEL_REQUESTS and STOW_MAX_BYTES_PER_SECOND (the whole of each before a first count) and the replicas together may exceed them"
			if keys.deidentifies() {
				kept += ", and de-identifying destinations pull nothing (their key is not compared with the other forwarders')"
			}
			// A refused read only times out, like one while the client
			// reconnects: the permission is the likely cause only while
			// connected.
			if st := s.conn.NC.Status(); st != nats.CONNECTED && !errors.Is(err, nats.ErrPermissionViolation) {
				log.Warn(kept+"; NATS is unreachable (the client reconnects every second)",
					"bucket", natsjs.StatusBucket, "failed_reads", n, "nats_status", strings.ToLower(st.String()), "err", err)
				break
			}
			log.Warn(kept+"; if it lasts, the likely cause is a NATS permission block without $JS.API.CONSUMER.CREATE, DELETE and MSG.NEXT of KV_stowline_forwarders.> (docs/nats-permissions.md)",
				"bucket", natsjs.StatusBucket, "failed_reads", n, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// replicasByDestination counts the forwarder processes serving each
// destination: each snapshot lists the destinations it serves in Tokens.
func replicasByDestination(snaps []status.Snapshot) map[string]int {
	n := map[string]int{}
	for _, s := range snaps {
		seen := map[string]bool{}
		for _, t := range s.Tokens {
			if !seen[t.Destination] {
				seen[t.Destination] = true
				n[t.Destination]++
			}
		}
	}
	return n
}

// bandwidthShare is a destination's bandwidth cap as shared by the
// replicas; its new share is logged.
type bandwidthShare struct {
	limiter     *bandwidth.Limiter
	destination string
	log         *slog.Logger
}

func (b bandwidthShare) SetReplicas(n int) {
	before := b.limiter.Rate()
	b.limiter.SetReplicas(n)
	if b.limiter.Rate() != before {
		b.log.Info("bandwidth share changed", "destination", b.destination, "replicas", n, "bytes_per_second", b.limiter.Rate())
	}
}
