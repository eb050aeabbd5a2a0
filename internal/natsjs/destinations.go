package natsjs

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// ListDestinations names the destinations that have a consumer on the
// event stream, sorted: what the commands that read a deployment without
// its forwarders' configuration (the audit, the status page) go by.
func ListDestinations(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	stream, err := OpenStream(ctx, js, EventStream)
	if err != nil {
		return nil, err
	}
	var out []string
	names := stream.ConsumerNames(ctx)
	for name := range names.Name() {
		if d, ok := DestinationOfConsumer(name); ok {
			out = append(out, d)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of stream %s: %w", EventStream, err)
	}
	slices.Sort(out)
	return out, nil
}

// AnyLaneConsumer reports whether the event stream has a lane consumer
// (routine, stat or low) of any destination: EnsureLanes then takes the
// deployment as running, and a new destination's consumers start with new
// events, not with what the stream holds.
func AnyLaneConsumer(ctx context.Context, js jetstream.JetStream) (bool, error) {
	stream, err := OpenStream(ctx, js, EventStream)
	if errors.Is(err, ErrNotProvisioned) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	names := stream.ConsumerNames(ctx)
	found := false
	for name := range names.Name() {
		if _, _, ok := LaneOfConsumer(name); ok {
			found = true
		}
	}
	if err := names.Err(); err != nil {
		return false, fmt.Errorf("list consumers of stream %s: %w", EventStream, err)
	}
	return found, nil
}
