package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
)

// checkMiscasedDefault looks, before the start makes any consumer, at
// each name of names that is the default destination's in another case
// (DEFAULT, Default). Such a name reads default's DESTINATION_DEFAULT_
// variables, but its consumers, ledger and dead letters are its own. One
// with a lane consumer on the event stream is a destination earlier
// builds accepted and made, forwarding through it: it starts, with a
// warning (writing it default now would be a rename, its queue, ledger
// and dead letters left behind). One without would be a new destination,
// default's queue, ledger and dead letters left behind by a rename nobody
// meant: a usage error.
func checkMiscasedDefault(ctx context.Context, js jetstream.JetStream, names []string, log *slog.Logger) error {
	for _, name := range names {
		if name == natsjs.DefaultDestination || !strings.EqualFold(name, natsjs.DefaultDestination) {
			continue
		}
		consumer, err := anyLaneConsumer(ctx, js, name)
		if err != nil {
			return fmt.Errorf("DESTINATIONS: %q: look for its consumer: %w", name, err)
		}
		if consumer == "" {
			return &usageError{fmt.Errorf("DESTINATIONS: %q: write it %q, in lower case: the default destination's queue, ledger and dead letters are found by that name; "+
				"%q has no consumer on the event stream yet, so it would be a new destination, starting with new events and an empty ledger (docs/routing.md)",
				name, natsjs.DefaultDestination, name)}
		}
		log.Warn("DESTINATIONS names the default destination in another case: served as its own destination, which an earlier build made, "+
			"with its own consumers, ledger and dead letters, not default's; keep the name as written (writing it default now would be a rename, docs/routing.md)",
			"destination", name, "consumer", consumer)
	}
	return nil
}

// anyLaneConsumer names a lane consumer of destination on the event
// stream, or "" when it has none (or there is no event stream yet).
func anyLaneConsumer(ctx context.Context, js jetstream.JetStream, destination string) (string, error) {
	for _, lane := range events.Priorities {
		name := natsjs.LaneConsumerName(destination, lane)
		_, err := js.Consumer(ctx, natsjs.EventStream, name)
		switch {
		case err == nil:
			return name, nil
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return "", nil
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			return "", fmt.Errorf("consumer %s: %w", name, err)
		}
	}
	return "", nil
}
