package natsjs

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/tracing"
)

// Publisher stores events in the event stream (events.Publisher).
type Publisher struct{ JS jetstream.JetStream }

// Publish stores ev under its dedupe ID and returns JetStream's
// acknowledgement. PubAck.Duplicate is true when JetStream dropped it as a
// repeat of an event still inside the dedupe window.
func (p Publisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	return PublishAs(ctx, p.JS, ev, ev.MsgID())
}

// PublishAs publishes ev for every destination, in the lane of its
// priority, with the given dedupe ID; replays use it to queue an event
// again inside the dedupe window. The dedupe ID does not depend on the
// lane: the same study announced in two lanes is stored once.
func PublishAs(ctx context.Context, js jetstream.JetStream, ev *events.StudyStable, msgID string) (*jetstream.PubAck, error) {
	return PublishTo(ctx, js, LaneSubject(ev.Priority, "", ev.Source), ev, msgID)
}

// PublishWindow bounds the events a replay, a re-forward or a backfill
// has waiting for their JetStream acks at once. One at a time, each
// waited its 1 to 5 ms: 10,000 studies took up to a minute, long enough
// for a proxy in front of the admin API to give up and stop the run
// part-way.
const PublishWindow = 256

// PublishTo publishes ev on subject (EventSubject, or DestinationSubject
// for one destination only) with the given dedupe ID. When ctx carries a
// span, the message carries its W3C traceparent, so the forwarders
// continue the trace; a duplicate JetStream drops keeps the first one's.
func PublishTo(ctx context.Context, js jetstream.JetStream, subject string, ev *events.StudyStable, msgID string) (*jetstream.PubAck, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	tracing.Inject(ctx, msg.Header)
	return PublishMsgTo(ctx, js, msg, msgID)
}

// PublishMsgTo stores msg, an event as it is, in the event stream under
// the dedupe ID msgID.
func PublishMsgTo(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, msgID string) (*jetstream.PubAck, error) {
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(EventStream))
	if err != nil {
		return nil, fmt.Errorf("publish event %s: %w", msgID, StorageFull(err))
	}
	return ack, nil
}
