// Package status says what a stowline deployment is doing now: each
// destination's queue and dead letters read from JetStream, what each
// forwarder process is sending (Tracker, shared through a key-value
// bucket), the recent forwards from the destinations' ledgers and each
// destination's token status. The /metrics collectors and the status page
// (internal/web) read it.
package status

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
)

// Queue is the state of the event queue, as JetStream reports it: the
// totals over every destination, and each destination's part.
type Queue struct {
	// Pending events are stored but not yet delivered to the forwarders
	// of a destination (summed over the destinations: an event waiting
	// for two destinations counts twice).
	Pending uint64
	// AckPending events were delivered and not yet acknowledged: being
	// sent now, or waiting for their retry delay.
	AckPending uint64
	// Redelivered counts the ack-pending events delivered more than once.
	Redelivered uint64
	// ConsumerExists is false before any forwarder created a
	// destination's consumer: which destinations there will be is not
	// known yet, and Pending counts every event in the stream, since the
	// consumers of a new deployment start at the first one.
	ConsumerExists bool
	// DeadLetters is the number of studies in the dead-letter stream.
	DeadLetters uint64
	// Destinations holds each destination that has a consumer or dead
	// letters, sorted by name.
	Destinations []DestinationQueue
	// UnreadErr says which lane consumers were named but could not be
	// read (nil when every one was): the numbers above leave them out.
	UnreadErr error
}

// DestinationQueue is one destination's part of the queue.
type DestinationQueue struct {
	Destination string
	// ConsumerExists is false for a destination known only from its dead
	// letters (its consumer was removed); its queue numbers are then 0.
	ConsumerExists                            bool
	Pending, AckPending, Redelivered, Waiting uint64
	DeadLetters                               uint64
	// Lanes holds each priority lane's part of Pending and AckPending
	// (the fields above sum the destination's lane consumers that were
	// read).
	Lanes map[events.Priority]LaneQueue
	// Unread names its lane consumers that exist but could not be read,
	// sorted: its queue numbers are then not known, only a part.
	Unread []string
}

// LaneSummary says how many events wait in each lane, highest first
// ("stat 1 · routine 3 · low 40"), when any waits outside the routine
// lane; "" otherwise (the status page then shows the total alone).
func (d DestinationQueue) LaneSummary() string {
	if d.Lanes[events.PriorityStat].Pending == 0 && d.Lanes[events.PriorityLow].Pending == 0 {
		return ""
	}
	var parts []string
	for _, lane := range events.Priorities {
		if n := d.Lanes[lane].Pending; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", lane, n))
		}
	}
	return strings.Join(parts, " · ")
}

// LaneQueue is one lane's part of a destination's queue.
type LaneQueue struct {
	Pending, AckPending uint64
}

// Depth is what the destination still has to do: events waiting and
// events delivered but not acknowledged.
func (d DestinationQueue) Depth() uint64 { return d.Pending + d.AckPending }

// Destination returns the queue of one destination, and false if it has
// neither a consumer nor dead letters.
func (q Queue) Destination(name string) (DestinationQueue, bool) {
	i := slices.IndexFunc(q.Destinations, func(d DestinationQueue) bool { return d.Destination == name })
	if i < 0 {
		return DestinationQueue{}, false
	}
	return q.Destinations[i], true
}

// ReadQueue asks JetStream for every destination's lane consumers (the
// event stream's consumers named as natsjs.ConsumerName names them, each
// read by itself: natsjs.LaneConsumers) and counts the dead letters of
// each destination. A consumer named but not readable in time (on a
// cluster, its servers offline or electing a leader) does not fail it:
// it is in its destination's Unread and in UnreadErr, and left out of the
// sums. Bound ctx: such a read is asked again until ctx ends.
func ReadQueue(ctx context.Context, js jetstream.JetStream) (Queue, error) {
	var q Queue
	byName := map[string]*DestinationQueue{}
	row := func(name string) *DestinationQueue {
		if d := byName[name]; d != nil {
			return d
		}
		d := &DestinationQueue{Destination: name}
		byName[name] = d
		return d
	}

	stream, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		return q, fmt.Errorf("stream %s: %w", natsjs.EventStream, err)
	}
	// The dead letters alongside: an unreadable consumer's reads take
	// all of ctx, which must not fail the dead-letter count after them.
	var (
		dead    map[string]uint64
		deadErr error
		wg      sync.WaitGroup
	)
	wg.Go(func() { dead, deadErr = deadLettersByDestination(ctx, js) })
	// Not CONSUMER.LIST: on a cluster it leaves out a consumer whose
	// leader does not answer in time, and nats.go asks for the same page
	// again until ctx ends (see natsjs.LaneConsumers).
	infos, unread, err := natsjs.LaneConsumers(ctx, stream)
	wg.Wait()
	if err != nil {
		return q, err
	}
	if deadErr != nil {
		return q, deadErr
	}
	for _, info := range infos {
		name, lane, _ := natsjs.LaneOfConsumer(info.Name)
		d := row(name)
		d.ConsumerExists = true
		ackPending := uint64(max(info.NumAckPending, 0))
		d.Pending += info.NumPending
		d.AckPending += ackPending
		d.Redelivered += uint64(max(info.NumRedelivered, 0))
		d.Waiting += uint64(max(info.NumWaiting, 0))
		if d.Lanes == nil {
			d.Lanes = map[events.Priority]LaneQueue{}
		}
		d.Lanes[lane] = LaneQueue{Pending: info.NumPending, AckPending: ackPending}
	}
	errs := make([]error, 0, len(unread))
	for _, consumer := range slices.Sorted(maps.Keys(unread)) {
		name, _, _ := natsjs.LaneOfConsumer(consumer)
		d := row(name)
		d.ConsumerExists = true
		d.Unread = append(d.Unread, consumer)
		errs = append(errs, unread[consumer])
	}
	q.UnreadErr = errors.Join(errs...)
	for name, n := range dead {
		row(name).DeadLetters = n
	}

	for _, d := range byName {
		q.ConsumerExists = q.ConsumerExists || d.ConsumerExists
		q.Pending += d.Pending
		q.AckPending += d.AckPending
		q.Redelivered += d.Redelivered
		q.DeadLetters += d.DeadLetters
		q.Destinations = append(q.Destinations, *d)
	}
	slices.SortFunc(q.Destinations, func(a, b DestinationQueue) int { return strings.Compare(a.Destination, b.Destination) })
	if !q.ConsumerExists {
		q.Pending = stream.CachedInfo().State.Msgs
	}
	return q, nil
}

// deadLettersByDestination counts the dead letters of each destination
// from the dead-letter stream's per-subject counts
// (stowline.deadletter.<destination>.<source>), without reading a letter.
func deadLettersByDestination(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	dl, err := js.Stream(ctx, natsjs.DeadLetterStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil // no forwarder ran yet: no dead letters
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", natsjs.DeadLetterStream, err)
	}
	if dl.CachedInfo().State.Msgs == 0 {
		return nil, nil
	}
	info, err := dl.Info(ctx, jetstream.WithSubjectFilter(natsjs.DeadLetterSubjectPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("stream %s: subjects: %w", natsjs.DeadLetterStream, err)
	}
	out := map[string]uint64{}
	for subject, n := range info.State.Subjects {
		if d, ok := natsjs.DestinationOfDeadLetterSubject(subject); ok {
			out[d] += n
		}
	}
	return out, nil
}
