package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// checkMiscasedDefault looks, before the start makes any consumer, at
// each name of names that is the default destination's in another case
// (DEFAULT, Default). Such a name reads default's DESTINATION_DEFAULT_
// variables, but its consumers, ledger and dead letters are its own.
//   - With a lane consumer on the event stream it is a destination earlier
//     builds accepted and made, forwarding through it: it starts, with a
//     warning (writing it default now would be a rename).
//   - Without one, while default or another case of it has one, it would
//     be a rename nobody meant, that destination's queue, ledger and dead
//     letters left behind: a usage error.
//   - With no consumer of any case of default (a new installation, or an
//     event stream lost and made again at this start) nothing is left
//     behind: it starts as its own destination, with a warning. Refusing
//     there would stop a deployment that lost its stream at every restart.
func checkMiscasedDefault(ctx context.Context, js jetstream.JetStream, names []string, log *slog.Logger) error {
	for _, name := range names {
		if name == natsjs.DefaultDestination || !strings.EqualFold(name, natsjs.DefaultDestination) {
			continue
		}
		own, other, err := defaultCaseConsumers(ctx, js, name)
		if err != nil {
			return fmt.Errorf("DESTINATIONS: %q: look for the consumers of the default destination's names: %w", name, err)
		}
		switch {
		case own != "":
			log.Warn("DESTINATIONS names the default destination in another case: served as its own destination, which an earlier build made, "+
				"with its own consumers, ledger and dead letters, not default's; keep the name as written (writing it default now would be a rename, docs/routing.md)",
				"destination", name, "consumer", own)
		case other != "":
			d, _, _ := natsjs.LaneOfConsumer(other)
			return &usageError{fmt.Errorf("DESTINATIONS: %q has no consumer on the event stream yet, while %q does (%s): %q would be a new destination, starting with new events and an empty ledger, "+
				"and %q's queue, ledger and dead letters would be left behind; write it %q (docs/routing.md)",
				name, d, other, name, d, d)}
		default:
			log.Warn("DESTINATIONS names the default destination in another case, and no case of default has a consumer on the event stream (a new installation, or a stream made again): "+
				"served as its own destination, with its own consumers, ledger and dead letters, not default's; write it default now if that is what is meant, as later it would be a rename (docs/routing.md)",
				"destination", name)
		}
	}
	return nil
}

// defaultCaseConsumers names a lane consumer of destination on the event
// stream (own) and one of another case of the default destination's name
// (other), "" for none (or no event stream yet). The names are read from
// the stream's list, asked again for a while when it cannot be read (a
// NATS cluster electing a leader).
func defaultCaseConsumers(ctx context.Context, js jetstream.JetStream, destination string) (own, other string, err error) {
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		own, other, err = listDefaultCaseConsumers(ctx, js, destination)
		if err == nil {
			return own, other, nil
		}
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func listDefaultCaseConsumers(ctx context.Context, js jetstream.JetStream, destination string) (own, other string, err error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := js.Stream(rctx, natsjs.EventStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("stream %s: %w", natsjs.EventStream, err)
	}
	list := s.ConsumerNames(rctx)
	for name := range list.Name() {
		d, _, ok := natsjs.LaneOfConsumer(name)
		switch {
		case !ok || !strings.EqualFold(d, natsjs.DefaultDestination):
		case d == destination:
			own = name
		default:
			other = name
		}
	}
	if err := list.Err(); err != nil {
		return "", "", fmt.Errorf("consumer names of stream %s: %w", natsjs.EventStream, err)
	}
	return own, other, nil
}
