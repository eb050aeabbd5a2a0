package events

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Publish stores ev in the event stream and returns JetStream's
// acknowledgement. PubAck.Duplicate is true when JetStream dropped it as a
// repeat of an event still inside the dedupe window.
func Publish(ctx context.Context, js jetstream.JetStream, ev *StudyStable) (*jetstream.PubAck, error) {
	return PublishAs(ctx, js, ev, ev.MsgID())
}

// PublishAs publishes ev with the given dedupe ID; replays use it to queue
// an event again inside the dedupe window.
func PublishAs(ctx context.Context, js jetstream.JetStream, ev *StudyStable, msgID string) (*jetstream.PubAck, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(StreamName))
	if err != nil {
		return nil, fmt.Errorf("publish event %s: %w", msgID, err)
	}
	return ack, nil
}

// Decode parses and validates an event read from the stream.
func Decode(data []byte) (*StudyStable, error) {
	var ev StudyStable
	if err := json.Unmarshal(data, &ev); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return &ev, nil
}
