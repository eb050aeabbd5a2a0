package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
)

// checkRenamedDestinations looks, before the start makes any consumer,
// at each destination of names against the lane consumers on the event
// stream. Two names written alike but for case, or - for _ (ai, AI,
// Ai; ai-2, ai_2), read the same DESTINATION_<NAME>_ variables, but each
// has its own consumers, ledger and dead letters.
//   - A name with a lane consumer of its own starts as it is; the default
//     destination's name in another case (DEFAULT, which earlier builds
//     accepted and made) with a warning: writing it default now would be
//     a rename.
//   - A name without one, while a name written alike has one, would be a
//     rename nobody meant (DESTINATIONS "tidied" to match the variables'
//     case): a new destination starting with new events and an empty
//     ledger, the other's backlog, retries and dead letters left behind
//     for no forwarder: a usage error.
//   - The default destination's name in another case with no consumer of
//     any such name (a new installation, or an event stream lost and made
//     again at this start) leaves nothing behind: it starts as its own
//     destination, with a warning. Refusing there would stop a deployment
//     that lost its stream at every restart.
func checkRenamedDestinations(ctx context.Context, js jetstream.JetStream, names []string, log *slog.Logger) error {
	consumers, err := laneConsumerNames(ctx, js)
	if err != nil {
		return fmt.Errorf("DESTINATIONS: look for the consumers of names written alike: %w", err)
	}
	for _, name := range names {
		own, other := alikeConsumers(consumers, name)
		miscasedDefault := name != natsjs.DefaultDestination && strings.EqualFold(name, natsjs.DefaultDestination)
		switch {
		case own != "":
			if miscasedDefault {
				log.Warn("DESTINATIONS names the default destination in another case: served as its own destination, which an earlier build made, "+
					"with its own consumers, ledger and dead letters, not default's; keep the name as written (writing it default now would be a rename, docs/routing.md)",
					"destination", name, "consumer", own)
			}
		case other != "":
			d, _, _ := natsjs.LaneOfConsumer(other)
			return &usageError{fmt.Errorf("DESTINATIONS: %q has no consumer on the event stream yet, while %q does (%s): %q would be a new destination, starting with new events and an empty ledger, "+
				"and %q's queue, ledger and dead letters would be left behind; write it %q, or, to rename it on purpose, run `forwarder destinations remove %s --yes` first (docs/routing.md)",
				name, d, other, name, d, d, d)}
		case miscasedDefault:
			log.Warn("DESTINATIONS names the default destination in another case, and no case of default has a consumer on the event stream (a new installation, or a stream made again): "+
				"served as its own destination, with its own consumers, ledger and dead letters, not default's; write it default now if that is what is meant, as later it would be a rename (docs/routing.md)",
				"destination", name)
		}
	}
	return nil
}

// alikeConsumers names, among the lane consumers, one of destination
// (own) and one of another name written alike (other), "" for none.
func alikeConsumers(consumers []string, destination string) (own, other string) {
	key := config.DestinationVarPrefix(destination)
	for _, name := range consumers {
		d, _, ok := natsjs.LaneOfConsumer(name)
		switch {
		case !ok || config.DestinationVarPrefix(d) != key:
		case d == destination:
			own = name
		default:
			other = name
		}
	}
	return own, other
}

// laneConsumerNames lists the consumers of the event stream (none
// without one yet), asked again for a while when it cannot be read (a
// NATS cluster electing a leader).
func laneConsumerNames(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		names, err := listConsumerNames(ctx, js)
		if err == nil {
			return names, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func listConsumerNames(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := js.Stream(rctx, natsjs.EventStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", natsjs.EventStream, err)
	}
	list := s.ConsumerNames(rctx)
	var names []string
	for name := range list.Name() {
		names = append(names, name)
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("consumer names of stream %s: %w", natsjs.EventStream, err)
	}
	return names, nil
}
