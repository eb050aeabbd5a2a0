package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JetStream names. The stream keeps every event (acked ones too) for the
// retention window, so a time window can be re-forwarded later.
const (
	StreamName    = "STOWLINE_EVENTS"
	SubjectPrefix = "stowline.study.stable."
	// SubjectAll matches the events of every source.
	SubjectAll   = SubjectPrefix + ">"
	ConsumerName = "stowline-forwarder"
)

// Topology holds the tunables of the stream and the forwarder's consumer.
type Topology struct {
	// Retention is how long events stay in the stream, acked or not.
	Retention time.Duration
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id.
	DedupeWindow time.Duration
	// Replicas is 1 on a single host, 3 on a JetStream cluster.
	Replicas int
	// AckWait is how long a delivered event may go without an ack or an
	// in-progress signal before JetStream redelivers it.
	AckWait time.Duration
	// MaxAckPending bounds the events in flight across all forwarders.
	MaxAckPending int
}

// DefaultTopology is what single-host mode uses.
func DefaultTopology() Topology {
	return Topology{
		Retention:     7 * 24 * time.Hour,
		DedupeWindow:  24 * time.Hour,
		Replicas:      1,
		AckWait:       60 * time.Second,
		MaxAckPending: 1000,
	}
}

// Validate reports a tunable out of its range.
func (t Topology) Validate() error {
	var errs []error
	if t.Retention <= 0 {
		errs = append(errs, errors.New("retention must be positive"))
	}
	if t.DedupeWindow <= 0 || t.DedupeWindow > t.Retention {
		errs = append(errs, errors.New("dedupe window must be positive and not longer than the retention"))
	}
	if t.Replicas < 1 || t.Replicas > 5 {
		errs = append(errs, errors.New("replicas must be between 1 and 5"))
	}
	if t.AckWait < time.Second {
		errs = append(errs, errors.New("ack wait must be at least 1s"))
	}
	if t.MaxAckPending < 1 {
		errs = append(errs, errors.New("max ack pending must be at least 1"))
	}
	return errors.Join(errs...)
}

// StreamConfig is the event stream's configuration.
func (t Topology) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "stowline: stable-study events from Orthanc sources",
		Subjects:    []string{SubjectAll},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.Retention,
		Duplicates:  t.DedupeWindow,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Discard:     jetstream.DiscardOld,
	}
}

// ConsumerConfig is the durable pull consumer all forwarder replicas share.
func (t Topology) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "stowline forwarders (shared by all replicas)",
		FilterSubject: SubjectAll,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: t.MaxAckPending,
		Replicas:      t.Replicas,
	}
}

// EnsureStream creates the event stream or updates it to t; calling it from
// every replica at startup is safe.
func EnsureStream(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, t.StreamConfig())
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", StreamName, err)
	}
	return s, nil
}

// EnsureConsumer creates the forwarders' durable consumer or updates it to t.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, StreamName, t.ConsumerConfig())
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s on stream %s: %w", ConsumerName, StreamName, err)
	}
	return c, nil
}
