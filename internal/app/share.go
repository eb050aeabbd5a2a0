package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/status"
)

// shareRequestLimits splits each destination's STOW_PARALLEL_REQUESTS
// between the forwarder processes serving it, so that K replicas do not
// keep K times the ceiling in flight: every interval it counts the live
// processes in the status bucket whose snapshot lists the destination
// (this one included) and sets each forwarder's share. Reading the bucket
// may fail; the last share then stays.
func shareRequestLimits(ctx context.Context, s *statusWiring, fws map[string]*forward.Forwarder, interval time.Duration, log *slog.Logger) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, interval)
		snaps, err := s.forwarders(rctx)
		cancel()
		// The list always holds this process's own snapshot: only a
		// complete read counts the others.
		if err == nil {
			replicas := replicasByDestination(snaps)
			for name, fw := range fws {
				fw.SetReplicas(max(replicas[name], 1))
			}
		} else if ctx.Err() == nil {
			log.Debug("cannot count the replicas serving each destination; their share of STOW_PARALLEL_REQUESTS stays", "err", err)
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
		for _, t := range s.Tokens {
			n[t.Destination]++
		}
	}
	return n
}
