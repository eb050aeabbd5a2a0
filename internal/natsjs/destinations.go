package natsjs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
)

// RequestTimeout bounds one JetStream request made under a context that
// must not bound it (a work context, or a deadline for many tries): the
// timeout nats.go gives a request only when its context has no deadline.
const RequestTimeout = 5 * time.Second

// ListDestinations names the destinations that have a consumer on the
// event stream, sorted: what the commands that read a deployment without
// its forwarders' configuration (the audit, the status page) go by.
func ListDestinations(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	stream, err := OpenStream(ctx, js, EventStream)
	if err != nil {
		return nil, err
	}
	var out []string
	names := stream.ConsumerNames(ctx)
	for name := range names.Name() {
		if d, ok := DestinationOfConsumer(name); ok {
			out = append(out, d)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of stream %s: %w", EventStream, err)
	}
	slices.Sort(out)
	return out, nil
}

// AnyLaneConsumer reports whether the event stream has any lane consumer
// (routine, stat or low) of any destination. None means no forwarder has
// started yet: the first ones' consumers will take what the stream holds.
// It is not EnsureLanes' test, which ignores a destination's own
// consumers and those made at the same first start; it errs the other
// way, so the audit checks that its repairs are taken rather than take a
// leftover consumer for a first start.
func AnyLaneConsumer(ctx context.Context, js jetstream.JetStream) (bool, error) {
	stream, err := OpenStream(ctx, js, EventStream)
	if errors.Is(err, ErrNotProvisioned) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	names := stream.ConsumerNames(ctx)
	found := false
	for name := range names.Name() {
		if _, _, ok := LaneOfConsumer(name); ok {
			found = true
		}
	}
	if err := names.Err(); err != nil {
		return false, fmt.Errorf("list consumers of stream %s: %w", EventStream, err)
	}
	return found, nil
}

// OldestHeld is the stream time of the oldest event destination's lane
// consumers hold not acknowledged (OldestUnacked, the oldest over its
// lanes); zero when they hold none. A lane without a consumer holds
// none. Each read waits consumerReadTimeout for an answer, and all of
// them together consumerReadsTimeout: a consumer that does not answer
// costs that once, not nats.go's 5 s a request.
func OldestHeld(ctx context.Context, js jetstream.JetStream, destination string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, consumerReadsTimeout)
	defer cancel()
	s, err := OpenStream(ctx, js, EventStream)
	if err != nil {
		return time.Time{}, err
	}
	var oldest time.Time
	for _, lane := range events.Priorities {
		name := LaneConsumerName(destination, lane)
		info, err := readConsumer(ctx, s, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("consumer %s of stream %s cannot be read: %w", name, EventStream, err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			continue
		}
		rctx, rcancel := context.WithTimeout(ctx, consumerReadTimeout)
		t, err := OldestUnacked(rctx, s, info)
		rcancel()
		if err != nil {
			return time.Time{}, err
		}
		if !t.IsZero() && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	return oldest, nil
}

// StudyKey names a study of a source: its Orthanc study ID.
type StudyKey struct{ Source, OrthancStudyID string }

// HeldAlone reads the events for destination alone (LaneSubject with a
// destination: backfills, replays, re-forwards and the audit's repairs
// queued for it) that its lane consumers hold not acknowledged: the
// newest LastUpdate held of each study. Those above a lane's ack floor
// count, acknowledged out of order or not; a lane without a consumer
// holds none, nor one whose filters do not take those subjects
// (aloneSubjects), and an event that does not decode names no study.
// Events for every destination are not read: the live stream may hold
// many. The stream is read event by event (the reads OldestHeld makes,
// no consumer made), each read waiting consumerReadTimeout at most and
// tried again after a timeout, no responders or a leader election
// (retryRead): one such moment failed the destination's whole read.
func HeldAlone(ctx context.Context, js jetstream.JetStream, destination string) (map[StudyKey]string, error) {
	s, err := OpenStream(ctx, js, EventStream)
	if err != nil {
		return nil, err
	}
	// Events stored after this read are not waited for.
	last := s.CachedInfo().State.LastSeq
	held := map[StudyKey]string{}
	for _, lane := range events.Priorities {
		name := LaneConsumerName(destination, lane)
		rctx, cancel := context.WithTimeout(ctx, consumerReadsTimeout)
		info, err := readConsumer(rctx, s, name)
		cancel()
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s of stream %s cannot be read: %w", name, EventStream, err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			continue
		}
		for _, filter := range aloneSubjects(info, aloneFilter(destination, lane)) {
			for seq := info.AckFloor.Stream + 1; seq <= last; {
				m, err := retryRead(ctx, readRetryWait, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
					return s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
				})
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("events for destination %s alone, from stream sequence %d: %w", destination, seq, err)
				}
				if m.Sequence > last {
					break
				}
				if ev, err := events.Decode(m.Data); err == nil {
					k := StudyKey{ev.Source, ev.OrthancStudyID}
					held[k] = max(held[k], ev.LastUpdate)
				}
				seq = m.Sequence + 1
			}
		}
	}
	return held, nil
}

// aloneSubjects are the subjects of alone, a lane's subject for its
// destination alone, that the lane consumer of info takes: alone itself
// when one of its filters covers it (no filter takes every subject),
// else those of its filters within alone, none when it takes none (a
// consumer made by hand, or before its lane took alone): the events it
// does not take are not held by it.
func aloneSubjects(info *jetstream.ConsumerInfo, alone string) []string {
	var within []string
	for _, f := range consumerFilters(info) {
		if server.SubjectMatchesFilter(alone, f) {
			return []string{alone}
		}
		if server.SubjectMatchesFilter(f, alone) {
			within = append(within, f)
		}
	}
	return within
}

// readAttempts is how many times retryRead asks before it gives up, and
// readRetryWait its first wait between two asks (doubled each time, 3.5 s
// in all): a leader election, or a server lost, lasts seconds. A read
// that fails throughout costs 11.5 s at most, once a run: the first
// failed read ends HeldAlone.
const (
	readAttempts  = 4
	readRetryWait = 500 * time.Millisecond
)

// retryRead calls read, each call waiting consumerReadTimeout at most,
// until it answers, or fails otherwise than by a transient error
// (transientRead), or readAttempts calls have failed; wait is the first
// wait between two calls.
func retryRead[T any](ctx context.Context, wait time.Duration, read func(context.Context) (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, consumerReadTimeout)
		v, err := read(rctx)
		cancel()
		if err == nil || attempt == readAttempts || ctx.Err() != nil || !transientRead(err) {
			if err != nil && attempt > 1 {
				err = fmt.Errorf("%d attempts: %w", attempt, err)
			}
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// transientRead tells whether a JetStream request's err may pass if asked
// again a moment later: no answer in time, no server answering the
// subject (a stream moving between servers), or a leader election.
func transientRead(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || leaderless(err)
}
