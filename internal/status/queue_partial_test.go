package status_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testnats"
)

// TestReadQueueConsumerLeftOutOfTheListing: on a cluster, CONSUMER.LIST
// leaves out a consumer whose leader did not answer the server in time
// (a node lost, an election) and nats.go's listing asks for the same page
// again until its context ends: every scrape and the status page failed
// ("JetStream did not answer") for as long as it lasted. The queue is
// read by names and one consumer at a time: one left out of the listing
// is still counted; one that cannot be read either is named, its
// destination's totals left out, the rest reported.
func TestReadQueueConsumerLeftOutOfTheListing(t *testing.T) {
	aiStat := natsjs.LaneConsumerName("ai", events.PriorityStat)
	for _, tc := range []struct {
		name   string
		unread bool
	}{
		{"left out of the listing, readable", false},
		{"left out of the listing, unreadable", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := twoDestinations(t)
			js := &testnats.PartialListing{JetStream: ns.JS, Hidden: map[string]bool{aiStat: true}, Unread: tc.unread}
			// A scrape's time: an unreadable consumer takes all of it.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			q, err := status.ReadQueue(ctx, js)
			if err != nil {
				t.Fatalf("ReadQueue: %v", err)
			}
			ai, _ := q.Destination("ai")
			def, _ := q.Destination(natsjs.DefaultDestination)
			if def.Pending != 3 || def.AckPending != 2 || def.DeadLetters != 2 || len(def.Unread) != 0 {
				t.Errorf("default = %+v; want 3 pending, 2 ack pending, 2 dead letters", def)
			}
			if !ai.ConsumerExists || ai.Pending != 4 || ai.DeadLetters != 1 {
				t.Errorf("ai = %+v; want its consumers, 4 pending (stat lane empty), 1 dead letter", ai)
			}
			if _, read := ai.Lanes[events.PriorityStat]; read == tc.unread {
				t.Errorf("ai's stat lane reported: %v; want %v", read, !tc.unread)
			}
			if tc.unread {
				if !slices.Equal(ai.Unread, []string{aiStat}) || q.UnreadErr == nil || !strings.Contains(q.UnreadErr.Error(), aiStat) {
					t.Errorf("ai unread %v, queue's error %v; want %s named", ai.Unread, q.UnreadErr, aiStat)
				}
			} else if len(ai.Unread) != 0 || q.UnreadErr != nil {
				t.Errorf("ai unread %v, queue's error %v; want none", ai.Unread, q.UnreadErr)
			}
		})
	}
}

// TestQueueCollectorUnreadableConsumer: a lane consumer that cannot be
// read leaves its destination's totals out of the scrape (a sum of the
// other lanes would look like a drained backlog) and is counted; the
// other destinations, the readable lanes and the dead letters are
// reported, and the scrape is a success.
func TestQueueCollectorUnreadableConsumer(t *testing.T) {
	ns := twoDestinations(t)
	aiStat := natsjs.LaneConsumerName("ai", events.PriorityStat)
	reg := prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(&testnats.PartialListing{JetStream: ns.JS, Hidden: map[string]bool{aiStat: true}, Unread: true}, 2*time.Second, nil))
	want := `
# HELP stowline_deadletter_studies Studies of the destination in the dead-letter stream, waiting for an operator to replay or purge them.
# TYPE stowline_deadletter_studies gauge
stowline_deadletter_studies{destination="ai"} 1
stowline_deadletter_studies{destination="default"} 2
# HELP stowline_jetstream_info_success 1 if JetStream answered this scrape's queue queries in time, else 0 (and the queue metrics are absent).
# TYPE stowline_jetstream_info_success gauge
stowline_jetstream_info_success 1
# HELP stowline_queue_pending_events Events stored in JetStream and not yet delivered to the destination's forwarders (consumer num_pending).
# TYPE stowline_queue_pending_events gauge
stowline_queue_pending_events{destination="default"} 3
# HELP stowline_queue_lane_pending_events Events not yet delivered to the destination's forwarders, by priority lane (stat, routine, low): the num_pending of each lane's consumer.
# TYPE stowline_queue_lane_pending_events gauge
stowline_queue_lane_pending_events{destination="ai",lane="low"} 0
stowline_queue_lane_pending_events{destination="ai",lane="routine"} 4
stowline_queue_lane_pending_events{destination="default",lane="low"} 0
stowline_queue_lane_pending_events{destination="default",lane="routine"} 3
stowline_queue_lane_pending_events{destination="default",lane="stat"} 0
# HELP stowline_queue_unreadable_consumers Lane consumers of the destination that exist but JetStream did not answer for in this scrape (on a cluster: their servers offline or electing a leader); while above 0 the destination's queue totals are absent and only its readable lanes are reported.
# TYPE stowline_queue_unreadable_consumers gauge
stowline_queue_unreadable_consumers{destination="ai"} 1
stowline_queue_unreadable_consumers{destination="default"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "stowline_deadletter_studies", "stowline_jetstream_info_success",
		"stowline_queue_pending_events", "stowline_queue_lane_pending_events", "stowline_queue_unreadable_consumers"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}
