package natsjs

import (
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
)

// Priority lanes (docs/priority-lanes.md). Each destination has one
// durable consumer per lane, and a lane is a set of subjects, so that
// JetStream keeps each lane's queue apart (a stat study is never behind
// a backfill in a consumer's order) and reports each lane's pending
// count. Routine keeps the subjects and the consumer deployments had
// before lanes:
//
//	lane     every destination                   one destination
//	stat     stowline.study.stable.<source>.stat  stowline.dest.<d>.<source>.stat
//	routine  stowline.study.stable.<source>       stowline.dest.<d>.<source>.routine
//	low      stowline.study.stable.<source>.low   stowline.dest.<d>.<source>
//
// Events for one destination (backfills, replays, re-forwards, the
// audit's repairs) are low unless they ask for more. Webhook events that
// wait for PRIORITY_RULE are on stowline.study.stable.<source>.triage,
// which no lane takes (TriageSubject).
const (
	// StatConsumerPrefix and LowConsumerPrefix name the stat and low
	// consumers of a destination: stowline-stat-<destination>. They
	// differ from the routine consumer's prefix, so a destination named
	// "stat" cannot be mistaken for a lane.
	StatConsumerPrefix = "stowline-stat-"
	LowConsumerPrefix  = "stowline-low-"
)

// LaneSubject is the subject of a source's event in a lane, for every
// destination (destination empty) or for one.
func LaneSubject(lane events.Priority, destination, source string) string {
	lane = lane.Lane()
	if destination == "" {
		if lane == events.PriorityRoutine {
			return EventSubject(source)
		}
		return EventSubject(source) + "." + string(lane)
	}
	if lane == events.PriorityLow {
		return DestinationSubject(destination, source)
	}
	return DestinationSubject(destination, source) + "." + string(lane)
}

// TriageSubject is where the ingest stores a webhook event that waits for
// PRIORITY_RULE to pick its lane: no lane takes it (internal/app's
// webhookPublisher stores it again in its lane).
func TriageSubject(source string) string { return EventSubject(source) + ".triage" }

// LaneSubjectFilters are the subjects of every lane for every
// destination: the events the forwarders take, without those waiting for
// triage.
func LaneSubjectFilters() []string {
	return []string{EventSubjectPrefix + "*", EventSubjectPrefix + "*.stat", EventSubjectPrefix + "*.low"}
}

// LaneConsumerName is the durable consumer of a destination's lane; the
// routine lane's is ConsumerName.
func LaneConsumerName(destination string, lane events.Priority) string {
	switch lane.Lane() {
	case events.PriorityStat:
		return StatConsumerPrefix + destination
	case events.PriorityLow:
		return LowConsumerPrefix + destination
	}
	return ConsumerName(destination)
}

// LaneOfConsumer is the inverse of LaneConsumerName, false for any other
// consumer of the event stream.
func LaneOfConsumer(name string) (destination string, lane events.Priority, ok bool) {
	for _, l := range []struct {
		prefix string
		lane   events.Priority
	}{{StatConsumerPrefix, events.PriorityStat}, {LowConsumerPrefix, events.PriorityLow}} {
		if d, found := strings.CutPrefix(name, l.prefix); found {
			return d, l.lane, ValidDestination(d)
		}
	}
	d, ok := DestinationOfConsumer(name)
	return d, events.PriorityRoutine, ok
}

// laneFilters are the subjects a destination's lane takes.
func laneFilters(destination string, lane events.Priority) []string {
	one := aloneFilter(destination, lane)
	switch lane.Lane() {
	case events.PriorityStat:
		return []string{EventSubjectPrefix + "*.stat", one}
	case events.PriorityLow:
		return []string{EventSubjectPrefix + "*.low", one}
	}
	return []string{EventSubjectPrefix + "*", one}
}

// aloneFilter is the subject of a destination's lane that takes the
// events for that destination alone (LaneSubject's, of every source).
func aloneFilter(destination string, lane events.Priority) string {
	return LaneSubject(lane, destination, "*")
}

// LaneConsumerConfig is the durable pull consumer of one lane of a
// destination, taking what the stream holds (EnsureLanes sets the start
// of a consumer made for a running deployment). configured are the
// destinations of the configuration that makes it, kept in its metadata
// (configuredKey) so that another replica can tell a destination of the
// same first start from one added later.
func (t Topology) LaneConsumerConfig(destination string, lane events.Priority, configured []string) jetstream.ConsumerConfig {
	cfg := t.ConsumerConfig(destination, false)
	cfg.Durable = LaneConsumerName(destination, lane)
	cfg.FilterSubjects = laneFilters(destination, lane)
	if lane.Lane() != events.PriorityRoutine {
		cfg.Description = "stowline forwarders of destination " + destination + ", " + string(lane) + " lane (shared by all replicas)"
	}
	if len(configured) > 0 {
		cfg.Metadata = map[string]string{configuredKey: strings.Join(configured, ",")}
	}
	return cfg
}

// configuredKey is the consumer metadata listing the destinations
// configured when the consumer was made. Destination names hold no comma
// (ValidDestination).
const configuredKey = "stowline.destinations"

// madeWith reports whether a consumer was made by a configuration that
// named destination.
func madeWith(info *jetstream.ConsumerInfo, destination string) bool {
	return slices.Contains(strings.Split(info.Config.Metadata[configuredKey], ","), destination)
}
