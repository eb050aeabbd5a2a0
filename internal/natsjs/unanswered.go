package natsjs

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Unanswered reports a JetStream request that got no answer, as during a
// leader election ("no response from stream", a time-out, a 503), rather
// than a refusal: asked again a moment later it may pass. A full store,
// a permissions violation or a refused value is no such failure: waiting
// does not change it.
func Unanswered(err error) bool {
	if err == nil || errors.Is(err, ErrStorageFull) {
		return false
	}
	if api, ok := errors.AsType[*jetstream.APIError](err); ok {
		return api.Code == 503 // JetStream system temporarily unavailable
	}
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}
