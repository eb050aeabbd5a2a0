package deadletter

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
)

// Reforward is ReforwardIn in the low lane, as the commands' default.
func Reforward(ctx context.Context, js jetstream.JetStream, destination string, since, until time.Time, dryRun bool) (evs []events.StudyStable, unreadable int, err error) {
	return ReforwardIn(ctx, js, destination, events.PriorityLow, since, until, dryRun)
}
