package natsjs

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
)

// MaxDeliverReached is JetStream's advisory for an event a consumer
// stopped delivering because it reached the consumer's MaxDeliver.
type MaxDeliverReached struct {
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// WatchMaxDeliver calls fn for each event of the event stream that the
// consumer named stops delivering. The forwarders dead-letter a study
// long before, so such an event means its dead letter could not be stored;
// without this it would leave the queue unnoticed. Replicas share a queue
// group, so one of them hears each advisory. stop ends the watch.
func WatchMaxDeliver(nc *nats.Conn, consumer string, fn func(MaxDeliverReached)) (stop func(), err error) {
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + EventStream + "." + consumer
	sub, err := nc.QueueSubscribe(subject, consumer+"-advisories", func(m *nats.Msg) {
		var a MaxDeliverReached
		if json.Unmarshal(m.Data, &a) == nil {
			fn(a)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
