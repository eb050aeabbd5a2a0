// Package status says what a stowline deployment is doing now: the queue
// depth and dead letters read from JetStream, what each forwarder process
// is sending (Tracker, shared through a key-value bucket), the recent
// forwards and the destination's token status. The /metrics collectors and
// the status page (internal/web) read it.
package status

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// Queue is the state of the event queue, as JetStream reports it.
type Queue struct {
	// Pending events are stored but not yet delivered to any forwarder.
	Pending uint64
	// AckPending events were delivered and not yet acknowledged: being
	// sent now, or waiting for their retry delay.
	AckPending uint64
	// Redelivered counts the ack-pending events delivered more than once.
	Redelivered uint64
	// Waiting is the number of pull requests forwarder workers have
	// open: idle workers waiting for an event.
	Waiting uint64
	// ConsumerExists is false before any forwarder created the consumer;
	// Pending then counts every event in the stream, since a new
	// consumer starts at the first one.
	ConsumerExists bool
	// DeadLetters is the number of studies in the dead-letter stream.
	DeadLetters uint64
}

// ReadQueue asks JetStream for the forwarders' consumer and the
// dead-letter stream.
func ReadQueue(ctx context.Context, js jetstream.JetStream) (Queue, error) {
	var q Queue
	cons, err := js.Consumer(ctx, natsjs.EventStream, natsjs.ForwarderConsumer)
	switch {
	case err == nil:
		info, err := cons.Info(ctx)
		if err != nil {
			return q, fmt.Errorf("consumer %s: %w", natsjs.ForwarderConsumer, err)
		}
		q.ConsumerExists = true
		q.Pending = info.NumPending
		q.AckPending = uint64(max(info.NumAckPending, 0))
		q.Redelivered = uint64(max(info.NumRedelivered, 0))
		q.Waiting = uint64(max(info.NumWaiting, 0))
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		s, err := js.Stream(ctx, natsjs.EventStream)
		if err != nil {
			return q, fmt.Errorf("stream %s: %w", natsjs.EventStream, err)
		}
		q.Pending = s.CachedInfo().State.Msgs
	default:
		return q, fmt.Errorf("consumer %s: %w", natsjs.ForwarderConsumer, err)
	}
	dl, err := js.Stream(ctx, natsjs.DeadLetterStream)
	switch {
	case err == nil:
		q.DeadLetters = dl.CachedInfo().State.Msgs
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// No forwarder ran yet: no dead letters.
	default:
		return q, fmt.Errorf("stream %s: %w", natsjs.DeadLetterStream, err)
	}
	return q, nil
}
