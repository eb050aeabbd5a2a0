package natsjs

import (
	"context"
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
