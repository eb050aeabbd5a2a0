package forward

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// confirmedAck is a delivery whose ack JetStream confirms.
type confirmedAck struct{ jetstream.Msg }

func (confirmedAck) DoubleAck(context.Context) error { return nil }

// ack's result is the attempt's, whatever the study needed: what settle
// counts and tells the observer, with nothing renamed after it.
func TestAckResult(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil)
	for _, tt := range []struct {
		name string
		rep  Report
		want Result
	}{
		{"forwarded", Report{}, ResultForwarded},
		{"rules select none of it", Report{NotSelected: true}, ResultNotSelected},
		{"deleted by buffer mode, not selected", Report{NotSelected: true, deletedNotSelected: true}, ResultNotSelected},
		{"deleted by buffer mode once forwarded", Report{forwardedBefore: true}, ResultAlreadyForwarded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &Attempt{Event: testEvent(), Number: 1, Seq: 1}
			if got, _ := f.ack(t.Context(), confirmedAck{}, a, tt.rep, 0, f.log); got != tt.want {
				t.Errorf("confirmed ack: result %s, want %s", got, tt.want)
			}
			if got, _ := f.ack(t.Context(), unconfirmedAck{}, a, tt.rep, 0, f.log); got != ResultAckFailed {
				t.Errorf("unconfirmed ack: result %s, want %s", got, ResultAckFailed)
			}
		})
	}
}
