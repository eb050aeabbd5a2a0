package testnats

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// RefusingPublishes publishes the messages Refuse picks so that the real
// server refuses them (expecting another stream than the event stream):
// nothing of them is stored, as when a lane's subject is refused.
type RefusingPublishes struct {
	jetstream.JetStream
	Refuse func(*nats.Msg) bool
}

// PublishMsg publishes msg, refused by the server if Refuse picks it.
func (j RefusingPublishes) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if j.Refuse(msg) {
		opts = append(opts, jetstream.WithExpectStream("NOT-"+natsjs.EventStream))
	}
	return j.JetStream.PublishMsg(ctx, msg, opts...)
}
