package deident

import (
	"context"
	"time"

	"github.com/stowline/stowline/internal/flow"
)

// Defaults of the bound shared by the rewrites of one Deidentifier.
// Real memory is ~1.4 to 1.7 times the charge: 16 STOW-RS requests in
// flight (STOW_PARALLEL_REQUESTS) of which 15 hold the allowance and one
// the whole maxHeld stay under ~800 MB, below the Helm chart's 1 GiB,
// for one de-identifying destination: each further one adds its own.
const (
	// heldAllowance is what a rewrite may hold without a large slot:
	// an ordinary header (a few hundred KB on disk, a few MB charged)
	// never waits.
	heldAllowance = 16 << 20
	// largeSlots is how many rewrites may hold more than heldAllowance
	// (up to maxHeld) at once.
	largeSlots = 1
)

// memory bounds what the rewrites of one Deidentifier hold at once:
// each holds up to allowance freely; beyond it, it takes one of the
// large slots, waiting for one, and gives it back when its held tree is
// released (decoder.release). A slot holder never waits for anything of
// another rewrite, so waiters cannot deadlock it.
type memory struct {
	allowance int64
	large     chan struct{}
}

func newMemory(allowance int64, slots int) *memory {
	return &memory{allowance: allowance, large: make(chan struct{}, slots)}
}

// acquire takes a large slot, or returns ctx's error once ctx is done.
// A wait for the slot is told to ctx's flow.WithWaitReport, and is a
// flow.BoundedWait: the holder gives the slot back as its consumer reads
// it (a slow destination's request), so the rewrites in line behind it
// may yield no byte for minutes, which their request's stall watch must
// not blame on the source.
func (m *memory) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.tryAcquire() {
		return nil
	}
	start := time.Now()
	defer func() { flow.ReportWait(ctx, time.Since(start)) }()
	defer flow.BoundedWait(ctx)()
	select {
	case m.large <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tryAcquire takes a large slot if one is free at once.
func (m *memory) tryAcquire() bool {
	select {
	case m.large <- struct{}{}:
		return true
	default:
		return false
	}
}

func (m *memory) release() { <-m.large }
