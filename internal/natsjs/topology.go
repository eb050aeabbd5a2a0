package natsjs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
)

// Names of the streams, subjects and buckets. Operators meet them in the
// nats CLI and in NATS permissions (docs/nats-permissions.md): they do not
// change.
const (
	// EventStream keeps every event, acked or not, for the retention
	// window, so that a time window can be re-forwarded later.
	EventStream        = "STOWLINE_EVENTS"
	EventSubjectPrefix = "stowline.study.stable."
	// DestinationSubjectPrefix takes events meant for one destination
	// only (a replay or backfill): stowline.dest.<destination>.<source>.
	DestinationSubjectPrefix = "stowline.dest."
	// ForwarderConsumer is the durable pull consumer of the default
	// destination; each other destination has its own (ConsumerName).
	ForwarderConsumer = "stowline-forwarder"

	// DeadLetterStream keeps the studies that could not be forwarded.
	DeadLetterStream        = "STOWLINE_DEADLETTER"
	DeadLetterSubjectPrefix = "stowline.deadletter."

	// FailureBucket remembers when each queued event first and last
	// failed, across deliveries and replicas (key "seq<stream seq>").
	FailureBucket = "stowline_failures"
	// LedgerBucket records the default destination's completed forwards
	// ("<source>.<study id>"); each other destination has its own
	// (LedgerBucketOf).
	LedgerBucket = "stowline_forwarded"
	// ReconcileBucket holds the reconciler's cursor and lease per source.
	ReconcileBucket = "stowline_reconcile"
	// StatusBucket holds each live forwarder's snapshot for the status
	// page; entries expire when a forwarder stops writing.
	StatusBucket = "stowline_forwarders"
)

// DefaultDestination is the name of the one destination of a deployment
// that names none (DESTINATIONS unset).
const DefaultDestination = "default"

// MaxDestinationName bounds a destination's name: it becomes part of a
// consumer's name, a bucket's name, subjects and metric labels.
const MaxDestinationName = 32

// ValidDestination reports whether name can name a destination: 1 to
// MaxDestinationName characters of A-Z a-z 0-9 _ -, which every one of
// those accepts.
func ValidDestination(name string) bool {
	if name == "" || len(name) > MaxDestinationName {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// EventSubject is the subject of a source's events: one per source, so
// that consumers and operators can filter by source. Every destination's
// consumer takes them.
func EventSubject(source string) string { return EventSubjectPrefix + source }

// DestinationSubject is the subject of a source's events meant for one
// destination only.
func DestinationSubject(destination, source string) string {
	return DestinationSubjectPrefix + destination + "." + source
}

// SourceOfEventSubject is the source of an event stored on subject, an
// EventSubject, a DestinationSubject or one of their lanes (LaneSubject,
// TriageSubject); false for any other subject.
func SourceOfEventSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, EventSubjectPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(subject, DestinationSubjectPrefix); !ok {
			return "", false
		}
		if _, rest, ok = strings.Cut(rest, "."); !ok {
			return "", false
		}
	}
	source, _, _ := strings.Cut(rest, ".")
	return source, events.ValidSource(source)
}

// ConsumerName is the durable consumer of a destination. The default
// destination keeps the name of the one consumer deployments had before
// destinations, so an upgrade keeps its queue.
func ConsumerName(destination string) string {
	if destination == DefaultDestination {
		return ForwarderConsumer
	}
	return ForwarderConsumer + "-" + destination
}

// DestinationOfConsumer is the inverse of ConsumerName: the destination
// whose durable consumer is named name, or false for any other consumer
// of the event stream (the ordered consumers of audit and replay).
func DestinationOfConsumer(name string) (string, bool) {
	if name == ForwarderConsumer {
		return DefaultDestination, true
	}
	d, ok := strings.CutPrefix(name, ForwarderConsumer+"-")
	return d, ok && ValidDestination(d)
}

// LedgerBucketOf is the bucket of a destination's completed forwards.
func LedgerBucketOf(destination string) string {
	if destination == DefaultDestination {
		return LedgerBucket
	}
	return LedgerBucket + "_" + destination
}

// DestinationOfLedgerBucket is the inverse of LedgerBucketOf, false for
// any other bucket.
func DestinationOfLedgerBucket(bucket string) (string, bool) {
	if bucket == LedgerBucket {
		return DefaultDestination, true
	}
	d, ok := strings.CutPrefix(bucket, LedgerBucket+"_")
	return d, ok && ValidDestination(d)
}

// DeadLetterSubject is the subject of a dead letter of one destination.
func DeadLetterSubject(destination, source string) string {
	return DeadLetterSubjectPrefix + destination + "." + source
}

// DestinationOfDeadLetterSubject is the destination of the dead letters
// stored on subject, false for a subject that is not a dead letter's.
// Letters from before destinations, on stowline.deadletter.<source>,
// were the default destination's.
func DestinationOfDeadLetterSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, DeadLetterSubjectPrefix)
	if !ok || rest == "" {
		return "", false
	}
	d, source, ok := strings.Cut(rest, ".")
	if !ok {
		return DefaultDestination, true
	}
	return d, ValidDestination(d) && source != "" && !strings.Contains(source, ".")
}

// DefaultMaxDeliver bounds the forwarders' deliveries of one event when
// FORWARDER_MAX_DELIVERIES sets no limit: about the default retention at
// the longest retry delay. With a limit, the consumer allows twice it. The
// forwarders dead-letter a study long before; this backstop only ends the
// loop of an event whose delivery kills every forwarder before it can be
// dead-lettered (the event stays in the stream for `forwarder audit` and
// `replay reforward`).
const DefaultMaxDeliver = 1000

// Topology holds the tunables of the streams, the consumer and the buckets.
type Topology struct {
	// Retention is how long events stay in the stream, acked or not.
	Retention time.Duration
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id.
	DedupeWindow time.Duration
	// Replicas is 1 on a single server, 3 on a JetStream cluster.
	Replicas int
	// AckWait is how long a delivered event may go without an ack or an
	// in-progress signal before JetStream redelivers it.
	AckWait time.Duration
	// MaxAckPending bounds the events in flight across all forwarders.
	MaxAckPending int
	// MaxDeliver bounds the deliveries of one event (see DefaultMaxDeliver).
	MaxDeliver int
	// DeadLetterRetention is how long dead letters are kept for replay.
	DeadLetterRetention time.Duration
	// StoredRetention is how long the record of what a study's deliveries
	// got stored outlives its last write (EnsureFailureLog).
	StoredRetention time.Duration
	// StatusTTL is how long a forwarder's shared snapshot outlives its
	// last write.
	StatusTTL time.Duration
	// KeepDedupeWindow is set for a process that takes no webhooks (a
	// forwarder): its start never lowers the event stream's duplicate
	// window, which the ingest sets (keepDedupeWindow).
	KeepDedupeWindow bool
	// Log takes the warnings of provisioning (nil: none).
	Log *slog.Logger

	// firstStart is how long after another destination's consumers were
	// made a missing consumer may still belong to the same first start
	// (0: defaultFirstStart). Tests shorten it.
	firstStart time.Duration
	// now is this process's clock (nil: time.Now). Tests skew it.
	now func() time.Time
}

// defaultFirstStart bounds a deployment's first start: replicas starting
// together, or one restarted (Kubernetes' crash-loop back-off is at most
// 5 minutes) after it stopped before it made every consumer. A consumer
// missing later was removed, or its destination is new: it starts with
// new events, never with all the stream still holds.
const defaultFirstStart = time.Hour

// DefaultTopology is the topology of the configuration defaults.
func DefaultTopology() Topology {
	return Topology{
		Retention:           7 * 24 * time.Hour,
		DedupeWindow:        24 * time.Hour,
		Replicas:            1,
		AckWait:             60 * time.Second,
		MaxAckPending:       1000,
		MaxDeliver:          DefaultMaxDeliver,
		DeadLetterRetention: 30 * 24 * time.Hour,
		StoredRetention:     365 * 24 * time.Hour,
		StatusTTL:           30 * time.Second,
	}
}

// EventStreamConfig is the event stream's configuration.
func (t Topology) EventStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        EventStream,
		Description: "stowline: stable-study events from Orthanc sources",
		Subjects:    []string{EventSubjectPrefix + ">", DestinationSubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.Retention,
		Duplicates:  t.DedupeWindow,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		// stowline sets no size limit; one an operator or the account sets
		// must refuse new events (the webhook answers 503, the reconciler
		// tries again), never delete queued ones not forwarded yet.
		Discard: jetstream.DiscardNew,
	}
}

// EnsureEvents creates the event stream or updates it to t; every replica
// of every service may call it at startup.
func (t Topology) EnsureEvents(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := t.ensureStream(ctx, js, t.EventStreamConfig())
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", EventStream, err)
	}
	return s, nil
}

// ensureStream creates the stream, or updates it when it differs from cfg
// in what stowline sets. An unchanged stream is left alone: every replica
// of every service makes this call at start, and nats-server (2.15)
// races a stream's update against a consumer being made on it (the race
// detector saw it when forwarder replicas started together).
func (t Topology) ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, cfg.Name)
	scaled := false
	switch {
	case err == nil:
		have := s.CachedInfo().Config
		if err := fixedInPlace("stream", cfg.Name, "nats stream rm "+cfg.Name, have.Storage, cfg.Storage, have.Retention, cfg.Retention); err != nil {
			return nil, err
		}
		cfg.Replicas = t.keepReplicas("stream", cfg.Name, have.Replicas, cfg.Replicas)
		if cfg.Name == EventStream {
			t.keepQueuedEvents(ctx, s, &cfg, have)
			t.keepDedupeWindow(ctx, &cfg, have)
		}
		if sameStream(have, cfg) {
			return s, nil
		}
		scaled = have.Replicas != max(cfg.Replicas, 1)
		cfg = ownedSettings(have, cfg)
		if t.Log != nil {
			// Two processes configured differently change the stream
			// back and forth at each start: each change is on record.
			level, msg := slog.LevelInfo, "stream settings changed to this process's configuration (give every process the same)"
			if cfg.MaxAge > 0 && (have.MaxAge <= 0 || cfg.MaxAge < have.MaxAge) {
				// An ingest restarted with the default while the forwarders
				// were given a longer retention for an outage: JetStream
				// deletes their backlog, forwarded or not, at the shorter.
				v := retentionVariable(cfg.Name)
				level, msg = slog.LevelWarn, "stream retention lowered to this process's "+v+": JetStream deletes what is older at once and from then on (events forwarded or not, dead letters not replayed); "+
					"if other processes run with a longer "+v+", give this one the same and restart it"
			}
			t.Log.Log(ctx, level, msg, "stream", cfg.Name,
				"max_age", have.MaxAge.String()+" -> "+cfg.MaxAge.String(), "variable", retentionVariable(cfg.Name),
				"duplicate_window", have.Duplicates.String()+" -> "+cfg.Duplicates.String(),
				"replicas", fmt.Sprintf("%d -> %d", have.Replicas, max(cfg.Replicas, 1)))
		}
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, err
	}
	s, err = js.CreateOrUpdateStream(ctx, cfg)
	if err != nil || !scaled {
		return s, err
	}
	return s, waitScaled(ctx, js, cfg.Name, cfg.Replicas)
}

// retentionVariable is the setting a stream's retention comes from.
func retentionVariable(stream string) string {
	if stream == DeadLetterStream {
		return "DEADLETTER_RETENTION"
	}
	return "EVENTS_RETENTION"
}

// keepQueuedEvents keeps the event stream's retention when lowering it
// to cfg.MaxAge would delete an event that a destination's consumer has
// not acknowledged yet: JetStream deletes every event past the new age at
// once, forwarded or not, with no dead letter, and an EVENTS_RETENTION
// lowered while a destination was down or a lane closed lost its queue.
// The lower retention applies at the first start after the queue has
// moved past those events. When the queues cannot be read, the retention
// is kept too.
func (t Topology) keepQueuedEvents(ctx context.Context, s jetstream.Stream, cfg *jetstream.StreamConfig, have jetstream.StreamConfig) {
	if cfg.MaxAge <= 0 || have.MaxAge > 0 && cfg.MaxAge >= have.MaxAge {
		return // not lowered
	}
	info := s.CachedInfo()
	now := info.TimeStamp // the server's clock, which ages the events
	if now.IsZero() {
		now = time.Now()
		if t.now != nil {
			now = t.now()
		}
	}
	cut := now.Add(-cfg.MaxAge)
	if info.State.Msgs == 0 || !info.State.FirstTime.Before(cut) {
		return // nothing is that old
	}
	// Bounded: a NATS user without the reads (permission blocks from
	// before them) gets no answer, and this start must not wait for the
	// whole provisioning time.
	qctx, cancel := context.WithTimeout(ctx, queuedCheckTimeout)
	defer cancel()
	consumer, oldest, err := oldestQueued(qctx, s)
	switch {
	case err != nil:
		if t.Log != nil {
			t.Log.Error("EVENTS_RETENTION not lowered: cannot tell whether it would delete events not forwarded yet; kept the stream's (restart to try again; "+
				"a NATS user needs $JS.API.CONSUMER.NAMES.STOWLINE_EVENTS, $JS.API.CONSUMER.INFO.STOWLINE_EVENTS.>, $JS.API.STREAM.MSG.GET.STOWLINE_EVENTS and $JS.API.DIRECT.GET.STOWLINE_EVENTS, docs/nats-permissions.md)",
				"stream", cfg.Name, "max_age", have.MaxAge.String(), "events_retention", cfg.MaxAge.String(), "err", err)
		}
	case consumer != "" && oldest.Before(cut):
		if t.Log != nil {
			t.Log.Error("EVENTS_RETENTION not lowered: JetStream would delete at once events a destination's queue has not forwarded yet, with no dead letter; "+
				"kept the stream's until a start after that queue has moved past them (remove the queue of a destination no forwarder serves: forwarder destinations remove NAME --yes)",
				"stream", cfg.Name, "max_age", have.MaxAge.String(), "events_retention", cfg.MaxAge.String(),
				"consumer", consumer, "oldest_queued", oldest.UTC().Format(time.RFC3339))
		}
	default:
		return
	}
	cfg.MaxAge = have.MaxAge
}

// keepDedupeWindow keeps the event stream's duplicate window when a
// process with t.KeepDedupeWindow (a forwarder) would lower it to its
// own EVENTS_DEDUPE_WINDOW. The ingest refuses to start with a window
// shorter than twice INGEST_HMAC_MAX_SKEW, but a forwarder started after
// it with a shorter one set the stream's below that, unseen, and a signed
// webhook replayed within the skew queued its study again. The ingest's
// start sets the window, lowered or raised, against that check; a
// forwarder's only raises it. A window longer than the retention cfg
// takes is cut to it: JetStream wants the window within the age.
func (t Topology) keepDedupeWindow(ctx context.Context, cfg *jetstream.StreamConfig, have jetstream.StreamConfig) {
	if !t.KeepDedupeWindow || cfg.Duplicates >= have.Duplicates {
		return
	}
	kept := have.Duplicates
	if cfg.MaxAge > 0 {
		kept = min(kept, cfg.MaxAge)
	}
	if kept <= cfg.Duplicates {
		return
	}
	if t.Log != nil {
		t.Log.Warn("EVENTS_DEDUPE_WINDOW not lowered: a forwarder keeps the event stream's duplicate window, which the ingest's start sets (checked against INGEST_HMAC_MAX_SKEW); give every process the same EVENTS_DEDUPE_WINDOW",
			"stream", cfg.Name, "duplicate_window", kept.String(), "events_dedupe_window", cfg.Duplicates.String())
	}
	cfg.Duplicates = kept
}

// queuedCheckTimeout bounds keepQueuedEvents' reads of the queues.
const queuedCheckTimeout = 5 * time.Second

// oldestQueued finds the oldest event of the stream that a destination's
// lane consumer has not acknowledged yet (acknowledged out of order above
// its ack floor counts too), and that consumer's name; "" when every
// consumer has acknowledged everything. A lane consumer that cannot be
// read fails it: what it has not acknowledged is not known.
func oldestQueued(ctx context.Context, s jetstream.Stream) (string, time.Time, error) {
	var (
		name   string
		oldest time.Time
	)
	lanes, unread, err := LaneConsumers(ctx, s)
	if err != nil {
		return "", time.Time{}, err
	}
	if len(unread) > 0 {
		errs := make([]error, 0, len(unread))
		for _, n := range slices.Sorted(maps.Keys(unread)) {
			errs = append(errs, unread[n])
		}
		return "", time.Time{}, errors.Join(errs...)
	}
	for _, info := range lanes {
		if info.NumPending == 0 && info.NumAckPending == 0 {
			continue
		}
		t, err := OldestUnacked(ctx, s, info)
		if err != nil {
			return "", time.Time{}, err
		}
		if !t.IsZero() && (name == "" || t.Before(oldest)) {
			name, oldest = info.Name, t
		}
	}
	return name, oldest, nil
}

// LaneConsumers reads the lane consumers of every destination on the
// event stream s: their names (CONSUMER.NAMES, from the cluster's
// metadata, complete), then each by itself (CONSUMER.INFO), by name in
// infos. Not CONSUMER.LIST: on a cluster its answer leaves out a consumer
// whose leader did not answer the server within its 4 s but counts it in
// its total, and nats.go, paging by what it got, asks for the same page
// again, 4 s each time, until the context ends. A consumer named but not
// readable until ctx ends (its servers offline, no answer in time, no
// permission, not found) is in unread with its error: what it holds is
// not known. One deleted since its name was read is left out. Other consumers (the ordered readers of audit and replay)
// are left out. An unanswered read is asked again until ctx ends:
// callers bound ctx.
func LaneConsumers(ctx context.Context, s jetstream.Stream) (infos map[string]*jetstream.ConsumerInfo, unread map[string]error, err error) {
	var names []string
	list := s.ConsumerNames(ctx)
	for name := range list.Name() {
		if _, _, ok := LaneOfConsumer(name); ok {
			names = append(names, name)
		}
	}
	if err := list.Err(); err != nil {
		return nil, nil, fmt.Errorf("consumer names of stream %s: %w", EventStream, err)
	}
	// Together: a cluster whose servers do not answer costs one request's
	// time limit, not one per consumer.
	read := make([]*jetstream.ConsumerInfo, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			read[i], errs[i] = readConsumer(ctx, s, name)
		})
	}
	wg.Wait()
	infos, unread = map[string]*jetstream.ConsumerInfo{}, map[string]error{}
	for i, name := range names {
		switch {
		case errors.Is(errs[i], errConsumerDeleted):
			// Deleted since the names were read: no queue.
		case errs[i] != nil:
			unread[name] = fmt.Errorf("consumer %s of stream %s cannot be read (on a cluster, its servers may be offline or slow): %w", name, EventStream, errs[i])
		default:
			infos[name] = read[i]
		}
	}
	return infos, unread, nil
}

// readConsumer reads consumer name of stream s (CONSUMER.INFO), asking
// again while no server answers, its servers are electing its leader, or
// it is not found, until ctx ends. On a cluster only a consumer's leader
// answers, and one another replica has just made has none for a moment:
// asked once, the request waited out the whole start and failed it, or
// took a consumer of this first start for a running deployment's. During
// an election its members answer at once "JetStream system temporarily
// unavailable" (10008), which was taken for an unreadable consumer the
// same way. A member assigned the consumer that has not made it yet
// answers "not found" (after 500 ms), as a node that does not know it
// yet does: its name is known (CONSUMER.NAMES, or another replica's
// create), so that is no deletion, and a running deployment's consumer
// taken for deleted left a destination added at that start with the
// whole stream. Still not found when asked again, the names are read
// once more: one no longer named was deleted since (destinations remove,
// nats consumer rm) and is errConsumerDeleted at once, not unreadable for
// the caller's whole bound (a scrape without the destination's totals, a
// start failed).
func readConsumer(ctx context.Context, s jetstream.Stream, name string) (*jetstream.ConsumerInfo, error) {
	notFound := 0
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		rctx, cancel := context.WithTimeout(ctx, consumerReadTimeout)
		c, err := s.Consumer(rctx, name)
		unanswered := rctx.Err() != nil
		cancel()
		switch {
		case err == nil:
			return c.CachedInfo(), nil
		case ctx.Err() != nil:
			return nil, err
		case unanswered:
			// That request waited already.
			continue
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			if notFound++; notFound == 2 && !named(ctx, s, name) {
				return nil, fmt.Errorf("consumer %s of stream %s: %w: %w", name, EventStream, errConsumerDeleted, jetstream.ErrConsumerNotFound)
			}
		case !leaderless(err):
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// errConsumerDeleted is readConsumer's answer for a consumer deleted
// since its name was read; it wraps jetstream.ErrConsumerNotFound too, so
// that callers counting a missing consumer as holding nothing
// (OldestHeld) still do.
var errConsumerDeleted = errors.New("deleted since its name was read")

// named tells whether CONSUMER.NAMES of stream s lists consumer name;
// true when the names cannot be read: not known to be deleted.
func named(ctx context.Context, s jetstream.Stream, name string) bool {
	list := s.ConsumerNames(ctx)
	found := false
	for n := range list.Name() {
		found = found || n == name
	}
	return found || list.Err() != nil
}

// leaderless tells whether err is JetStream's answer for a stream or
// consumer whose servers are electing its leader ("JetStream system
// temporarily unavailable"), which a moment later reads.
func leaderless(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeClusterNotAvail
}

// jsErrCodeClusterNotAvail is nats-server's JSClusterNotAvailErr, which
// nats.go does not name.
const jsErrCodeClusterNotAvail jetstream.ErrorCode = 10008

// consumerReadTimeout is how long readConsumer waits for one answer.
const consumerReadTimeout = 2 * time.Second

// consumerReadsTimeout bounds EnsureLanes' reads of the lane consumers:
// a consumer whose servers do not answer does not hold the start longer.
const consumerReadsTimeout = 10 * time.Second

// OldestUnacked is the stream time of the oldest event of stream s that
// the consumer of info has not acknowledged (acknowledged out of order
// above its ack floor counts too): the first of its filter subjects after
// its ack floor; zero when there is none.
func OldestUnacked(ctx context.Context, s jetstream.Stream, info *jetstream.ConsumerInfo) (time.Time, error) {
	var oldest time.Time
	for _, f := range consumerFilters(info) {
		m, err := s.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(f))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("oldest event of consumer %s: %w", info.Name, err)
		}
		if oldest.IsZero() || m.Time.Before(oldest) {
			oldest = m.Time
		}
	}
	return oldest, nil
}

// consumerFilters are the subjects the consumer of info takes: its
// filters, or every subject (">") when it has none.
func consumerFilters(info *jetstream.ConsumerInfo) []string {
	filters := slices.Clone(info.Config.FilterSubjects)
	if info.Config.FilterSubject != "" {
		filters = append(filters, info.Config.FilterSubject)
	}
	if len(filters) == 0 {
		filters = []string{">"}
	}
	return filters
}

// waitScaled waits for a stream whose replica count was just changed to
// have its new peers and a leader. nats-server answers the update at
// once and scales the stream after it: a consumer updated to the new
// count before then is refused ("consumer config replica count exceeds
// parent stream"), which failed every forwarder's start after
// NATS_REPLICAS was raised, and a bucket has no leader to write to.
func waitScaled(ctx context.Context, js jetstream.JetStream, name string, replicas int) error {
	for {
		s, err := js.Stream(ctx, name)
		if err == nil {
			c := s.CachedInfo().Cluster
			if c == nil || c.Leader != "" && c.Desired == nil && len(c.Replicas)+1 >= replicas {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s: scaling to %d replicas: %w", name, replicas, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// keepReplicas returns the replica count to give a stream, bucket or
// consumer that has have replicas, of which the configuration wants
// want: never fewer than it has. A process started without the
// deployment's NATS_REPLICAS (a forwarder group added later, a copied
// environment) would otherwise scale every stream of a cluster down to
// one copy at its start, silently, and the next lost node would lose
// events. Lowering it is an operator's act, with the nats CLI.
func (t Topology) keepReplicas(kind, name string, have, want int) int {
	if have <= max(want, 1) {
		return want
	}
	if t.Log != nil {
		t.Log.Warn("NATS_REPLICAS is below what JetStream holds: kept the higher count (set the same NATS_REPLICAS on every process; lower it with the nats CLI, docs/nats-cluster.md)",
			"kind", kind, "name", name, "replicas", have, "nats_replicas", want)
	}
	return have
}

// fixedInPlace refuses a stream or bucket that differs from what stowline
// makes it in what JetStream cannot change in place: its storage, or a
// retention policy to or from work queue. One made otherwise (by hand, with
// the nats CLI) got only nats-server's "stream configuration update can
// not change storage type" at every start, which names neither the stream
// nor a way out.
func fixedInPlace(kind, name, remove string, haveStorage, wantStorage jetstream.StorageType, haveRetention, wantRetention jetstream.RetentionPolicy) error {
	var what string
	switch {
	case haveStorage != wantStorage:
		what = fmt.Sprintf("is kept in %s storage, stowline keeps it in %s", haveStorage, wantStorage)
	case haveRetention != wantRetention && (haveRetention == jetstream.WorkQueuePolicy || wantRetention == jetstream.WorkQueuePolicy):
		what = fmt.Sprintf("has the %s retention policy, stowline gives it %s", haveRetention, wantRetention)
	default:
		return nil
	}
	var first string
	_, ledger := DestinationOfLedgerBucket(name)
	switch {
	case name == EventStream:
		first = "let every queue empty (forwarder destinations), then "
	case name == DeadLetterStream:
		first = "replay or purge its dead letters (forwarder replay list): they are the only record of those studies; then "
	case name == FailureBucket:
		first = "let the studies being retried finish (it records what their attempts stored: without it, their next delivery takes those copies for conflicts), then "
	case ledger:
		first = "know that it records what was forwarded (without it the audit finds every earlier study missing, and buffer mode keeps them in Orthanc); then "
	}
	return fmt.Errorf("%s %s %s, which JetStream cannot change in place (was it made by hand?): "+
		"%sdelete it (%s; what it holds goes with it) and start again: stowline makes it as it needs it",
		kind, name, what, first, remove)
}

// ownedSettings is the update of a stream whose configuration is have:
// have with what stowline sets taken from want (the fields sameStream
// compares). An update is a whole configuration: one built from want
// alone lifted at the next start that changed a setting what an operator
// (or the account) set and stowline does not own. A cap with
// --discard-per-subject then deleted a source's oldest events, forwarded
// or not, and DenyDelete, DenyPurge or AllowMsgTTL, which JetStream
// refuses to take back, failed every process's start.
func ownedSettings(have, want jetstream.StreamConfig) jetstream.StreamConfig {
	u := have
	u.Description, u.Subjects, u.Retention = want.Description, want.Subjects, want.Retention
	u.MaxAge, u.Duplicates, u.Storage, u.Replicas, u.Discard = want.MaxAge, want.Duplicates, want.Storage, want.Replicas, want.Discard
	return u
}

// sameStream reports whether have is want in every field stowline sets.
func sameStream(have, want jetstream.StreamConfig) bool {
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Retention == want.Retention && have.MaxAge == want.MaxAge && have.Duplicates == want.Duplicates &&
		have.Storage == want.Storage && have.Replicas == max(want.Replicas, 1) && have.Discard == want.Discard
}

// ownedBucketStream is ownedSettings for a key-value bucket: the update
// of its stream (KV_<bucket>), whose configuration is have, with what
// stowline sets (the fields sameBucket compares) taken from want, as
// nats.go makes a bucket's stream of it. Not nats.go's bucket update: it
// rebuilds the whole stream configuration from the bucket's, which
// carries neither max-msgs nor deny-purge nor allow-msg-ttl, and
// JetStream refuses to take back the last two: every start that
// changed a bucket setting failed.
func ownedBucketStream(have jetstream.StreamConfig, want jetstream.KeyValueConfig) jetstream.StreamConfig {
	u := have
	u.Description, u.MaxMsgsPerSubject, u.MaxAge = want.Description, int64(max(want.History, 1)), want.TTL
	u.Storage, u.Replicas = want.Storage, max(want.Replicas, 1)
	if u.MaxAge > 0 && u.Duplicates > u.MaxAge {
		u.Duplicates = u.MaxAge // JetStream wants the window within the age
	}
	return u
}

// sameBucket reports whether have is want in every field stowline sets.
func sameBucket(have, want jetstream.KeyValueConfig) bool {
	return have.Description == want.Description && have.History == max(want.History, 1) && have.TTL == want.TTL &&
		have.Storage == want.Storage && have.Replicas == max(want.Replicas, 1)
}

// ConsumerConfig is the durable pull consumer of one destination's
// routine lane, shared by every forwarder replica that serves it: the
// routine events of every source, and the routine events meant for this
// destination only (lanes.go). A consumer made for a destination added
// to a running deployment starts with the events that arrive from then
// on (startNew); the consumers of a new deployment take what the stream
// holds.
func (t Topology) ConsumerConfig(destination string, startNew bool) jetstream.ConsumerConfig {
	policy := jetstream.DeliverAllPolicy
	if startNew {
		policy = jetstream.DeliverNewPolicy
	}
	return jetstream.ConsumerConfig{
		Durable:        ConsumerName(destination),
		Description:    "stowline forwarders of destination " + destination + " (shared by all replicas)",
		FilterSubjects: laneFilters(destination, events.PriorityRoutine),
		DeliverPolicy:  policy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        t.AckWait,
		MaxDeliver:     t.MaxDeliver,
		MaxAckPending:  t.MaxAckPending,
		Replicas:       t.Replicas,
	}
}

// EnsureConsumers is EnsureLanes returning each destination's routine
// consumer.
func (t Topology) EnsureConsumers(ctx context.Context, js jetstream.JetStream, destinations []string) (map[string]jetstream.Consumer, error) {
	lanes, err := t.EnsureLanes(ctx, js, destinations)
	if err != nil {
		return nil, err
	}
	out := make(map[string]jetstream.Consumer, len(lanes))
	for d, l := range lanes {
		out[d] = l[events.PriorityRoutine]
	}
	return out, nil
}

// EnsureLanes is EnsureLanesServing with every destination served.
func (t Topology) EnsureLanes(ctx context.Context, js jetstream.JetStream, destinations []string) (map[string]map[events.Priority]jetstream.Consumer, error) {
	return t.EnsureLanesServing(ctx, js, destinations, destinations)
}

// EnsureLanesServing creates the durable consumers of every lane of every
// destination, or updates them to t, and returns them by destination and
// lane; served are those of destinations the caller's forwarders serve.
// Each forwarder makes the consumers of every configured destination,
// whichever it serves, so that a new deployment's destinations start
// together. A destination's AckWait and MaxDeliver are its own
// forwarders' (FORWARDER_ACK_WAIT, FORWARDER_MAX_DELIVERIES): those of an
// unserved destination's consumers are kept, and one made for it takes
// those of its consumers already made (this process's when it has none).
// Set by another group with a lower FORWARDER_MAX_DELIVERIES, JetStream
// dropped the destination's events, with no dead letter, before its own
// forwarders' budget dead-lettered them. A change of a served one's is
// logged. A consumer's start is kept once made; a
// consumer is never deleted here (a destination dropped from the
// configuration keeps its queue until an operator removes it).
//
// Where does a new consumer start? In a new deployment, at the start of
// the stream; for a destination added to a running one, with new events.
// A deployment is a running one for a destination when another
// destination has consumers, unless one of them was made by a
// configuration that named this destination too (its metadata says so):
// then they were made at the same first start, by a replica starting at
// the same time or by one that stopped before it made them all, if they
// were made within the last hour (defaultFirstStart): a destination
// whose consumers were removed and that is configured again later starts
// with new events too, not with every event the stream still holds. A
// destination's own lane consumers never make a deployment a running one.
// (Consumers made by a build that kept no such metadata count as
// running.) A consumer named on the stream that cannot be read (on a
// cluster, its servers offline or electing its leader past the reads'
// bound) counts as running when another destination's. One of a served
// destination's own fails the start, before any consumer is made or
// updated: its start, its configuration and, for an upgraded routine
// consumer, the ack floor the new lanes start after are not known (the
// process restarts and reads it once the cluster has settled). An
// unserved destination with one is left out, none of its consumers made
// or updated (its own forwarders do): failing for it kept a forwarder
// group from starting while another group's R1 consumer was on a lost
// server.
// A stat or low consumer made for a destination whose routine consumer
// exists (an upgrade from a build without lanes, whose one consumer took
// every subject) starts just after the routine consumer's ack floor: the
// routine consumer stops taking the low and stat subjects, and the new
// lanes take every such event it had not acked yet, so nothing queued is
// lost. An event it had acked out of order above its floor is delivered
// once more, and sent again (the destination answers "already stored").
func (t Topology) EnsureLanesServing(ctx context.Context, js jetstream.JetStream, destinations, served []string) (map[string]map[events.Priority]jetstream.Consumer, error) {
	stream, err := js.Stream(ctx, EventStream)
	for wait := 50 * time.Millisecond; errors.Is(err, jetstream.ErrStreamNotFound) && wait <= 3200*time.Millisecond; wait *= 2 {
		// In a cluster, a stream another replica has just made may not be
		// known yet to the node that answers: the caller made sure of it.
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("stream %s: %w", EventStream, ctx.Err())
		case <-t.C:
		}
		stream, err = js.Stream(ctx, EventStream)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", EventStream, err)
	}
	rctx, cancel := context.WithTimeout(ctx, consumerReadsTimeout)
	existing, unread, err := LaneConsumers(rctx, stream)
	cancel()
	if err != nil {
		return nil, err
	}
	// Made or updated as if new, an upgraded routine consumer's stat and
	// low lanes started with new events (what it had not acknowledged
	// went to no queue once it was narrowed) or, alone in the stream,
	// with every event it holds (every stat and low study sent again).
	var own []error
	skip := map[string]bool{}
	for _, d := range destinations {
		for _, lane := range events.Priorities {
			err := unread[LaneConsumerName(d, lane)]
			switch {
			case err == nil:
			case slices.Contains(served, d):
				own = append(own, err)
			default:
				skip[d] = true
			}
		}
	}
	if len(own) > 0 {
		return nil, fmt.Errorf("lane consumers not made or updated (a start retries once the cluster has settled): %w", errors.Join(own...))
	}
	firstStart := t.firstStart
	if firstStart == 0 {
		firstStart = defaultFirstStart
	}
	now := t.now
	if now == nil {
		now = time.Now
	}
	out := make(map[string]map[events.Priority]jetstream.Consumer, len(destinations))
	for _, d := range destinations {
		if skip[d] {
			continue
		}
		out[d] = map[events.Priority]jetstream.Consumer{}
		serving := slices.Contains(served, d)
		// Another destination's consumer means a running deployment, where
		// a new destination starts with new events, unless it was made for
		// this destination's deployment too. This destination's own lane
		// consumers do not: a replica starting at the same time may have
		// made some of them, and its routine consumer must not then start
		// with new events, skipping what the stream holds.
		running, sameStart := false, false
		for name := range unread {
			// Named, not readable: taken for a running deployment's, so a
			// new destination does not get everything the stream holds.
			if other, _, _ := LaneOfConsumer(name); other != d {
				running = true
			}
		}
		for name, info := range existing {
			if other, _, ok := LaneOfConsumer(name); ok && other != d {
				running = true
				// Made at a first start (with what the stream held), lately,
				// by a configuration naming d. One made later, with new
				// events, may name d too, d being added with it: that is
				// no first start.
				sameStart = sameStart || madeWith(info, d) && info.Config.DeliverPolicy == jetstream.DeliverAllPolicy &&
					age(info, now) < firstStart
			}
		}
		running = running && !sameStart
		// Each consumer's info holds its configuration and ack floor.
		routine := existing[ConsumerName(d)]
		// Whose AckWait and MaxDeliver an unserved destination's new
		// consumer takes.
		var sibling *jetstream.ConsumerInfo
		for _, lane := range []events.Priority{events.PriorityRoutine, events.PriorityStat, events.PriorityLow} {
			if sibling == nil {
				sibling = existing[LaneConsumerName(d, lane)]
			}
		}
		// The routine lane last: an upgraded routine consumer stops taking
		// the other lanes' subjects only once they have their consumers.
		for _, lane := range []events.Priority{events.PriorityStat, events.PriorityLow, events.PriorityRoutine} {
			cfg := t.LaneConsumerConfig(d, lane, destinations)
			// As many copies as its stream keeps (a new consumer made by
			// a process with a lower NATS_REPLICAS too), or as it has.
			have := stream.CachedInfo().Config.Replicas
			if made := existing[cfg.Durable]; made != nil {
				have = max(have, made.Config.Replicas)
			}
			cfg.Replicas = t.keepReplicas("consumer", cfg.Durable, have, cfg.Replicas)
			made := existing[cfg.Durable]
			switch {
			case made != nil:
				// The start cannot change once made: keep the consumer's,
				// and the configuration it was made by.
				keepStart(&cfg, made)
			case routine != nil:
				cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, max(routine.AckFloor.Stream+1, 1)
			case running:
				cfg.DeliverPolicy = jetstream.DeliverNewPolicy
			}
			t.keepDeliveries(&cfg, made, sibling, serving)
			var c jetstream.Consumer
			if made != nil {
				c, err = js.CreateOrUpdateConsumer(ctx, EventStream, cfg)
			} else {
				// Made only: one made since the listing fails it (unless
				// made the same), and is read and kept below, not set to
				// this process's configuration.
				c, err = js.CreateConsumer(ctx, EventStream, cfg)
			}
			if err != nil && made == nil {
				// Another replica or group starting at the same time made
				// it since the listing, perhaps with another start or
				// other deliveries: keep those.
				mctx, cancel := context.WithTimeout(ctx, consumerReadsTimeout)
				var merr error
				made, merr = readConsumer(mctx, stream, cfg.Durable)
				cancel()
				if merr == nil {
					keepStart(&cfg, made)
					t.keepDeliveries(&cfg, made, sibling, serving)
					c, err = js.CreateOrUpdateConsumer(ctx, EventStream, cfg)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("create or update consumer %s on stream %s: %w", cfg.Durable, EventStream, err)
			}
			if serving && made != nil {
				t.logDeliveriesChanged(ctx, made, cfg)
			}
			out[d][lane] = c
		}
	}
	return out, nil
}

// keepDeliveries sets cfg's AckWait and MaxDeliver. A served
// destination's are this process's, MaxDeliver never lower than its
// forwarders need (keepMaxDeliver only keeps a higher one). An unserved
// one's are its own forwarders' (another group's FORWARDER_ACK_WAIT and
// FORWARDER_MAX_DELIVERIES): as the consumer has them (made), or for one
// to be made as its destination's other consumer (sibling) has them.
func (t Topology) keepDeliveries(cfg *jetstream.ConsumerConfig, made, sibling *jetstream.ConsumerInfo, serving bool) {
	switch {
	case serving && made != nil:
		cfg.MaxDeliver = t.keepMaxDeliver(made, cfg.MaxDeliver)
	case serving:
	case made != nil:
		cfg.AckWait, cfg.MaxDeliver = made.Config.AckWait, made.Config.MaxDeliver
	case sibling != nil:
		cfg.AckWait, cfg.MaxDeliver = sibling.Config.AckWait, sibling.Config.MaxDeliver
	}
}

// logDeliveriesChanged warns of each change of a served consumer's
// AckWait and MaxDeliver, as a stream's changes are logged: two groups
// serving one destination with different FORWARDER_ACK_WAIT or
// FORWARDER_MAX_DELIVERIES change its consumers back and forth at each
// start, and a lowered MaxDeliver drops events without a dead letter.
func (t Topology) logDeliveriesChanged(ctx context.Context, made *jetstream.ConsumerInfo, cfg jetstream.ConsumerConfig) {
	if t.Log == nil {
		return
	}
	const msg = "consumer setting changed to this process's configuration (give every forwarder serving its destination the same)"
	if have := made.Config.AckWait; cfg.AckWait > 0 && cfg.AckWait != have {
		t.Log.Log(ctx, slog.LevelWarn, msg, "consumer", cfg.Durable, "setting", "AckWait", "from", have.String(), "to", cfg.AckWait.String(), "variable", "FORWARDER_ACK_WAIT")
	}
	// JetStream reports no bound (0 asked) as -1.
	have, want := made.Config.MaxDeliver, cfg.MaxDeliver
	if have <= 0 {
		have = -1
	}
	if want <= 0 {
		want = -1
	}
	if want != have {
		t.Log.Log(ctx, slog.LevelWarn, msg, "consumer", cfg.Durable, "setting", "MaxDeliver", "from", strconv.Itoa(have), "to", strconv.Itoa(want), "variable", "FORWARDER_MAX_DELIVERIES")
	}
}

// keepMaxDeliver returns the MaxDeliver to give an existing consumer:
// want, unless that lowers it while the consumer holds events delivered
// more than once. JetStream drops from the queue, with no dead letter, an
// event already delivered as many times as a lowered MaxDeliver allows
// (FORWARDER_MAX_DELIVERIES lowered during an outage); with the higher
// bound kept, the forwarders get it once more and dead-letter it past
// their limit. A start once those events are settled lowers it.
func (t Topology) keepMaxDeliver(made *jetstream.ConsumerInfo, want int) int {
	have := made.Config.MaxDeliver
	if want <= 0 || have > 0 && want >= have || made.NumRedelivered == 0 {
		return want
	}
	if t.Log != nil {
		t.Log.Info("consumer MaxDeliver not lowered yet: it holds events being retried, which JetStream would drop without a dead letter; the forwarders dead-letter those past FORWARDER_MAX_DELIVERIES, and a later start lowers it",
			"consumer", made.Name, "max_deliver", have, "want", want, "redelivered", made.NumRedelivered)
	}
	return have
}

// age is how long ago the consumer was made, on the NATS server's clock
// when the answer says when it was given (ConsumerInfo.TimeStamp): this
// process's clock may be off by hours (a VM whose hardware clock keeps
// local time), and the first start lasts one.
func age(info *jetstream.ConsumerInfo, now func() time.Time) time.Duration {
	if !info.TimeStamp.IsZero() {
		return info.TimeStamp.Sub(info.Created)
	}
	return now().Sub(info.Created)
}

// keepStart makes cfg keep what an existing consumer cannot change, or
// should not: its start, and the configuration it was made by (metadata;
// the server adds its own keys, which it sets again).
func keepStart(cfg *jetstream.ConsumerConfig, made *jetstream.ConsumerInfo) {
	cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = made.Config.DeliverPolicy, made.Config.OptStartSeq, made.Config.OptStartTime
	cfg.Metadata = made.Config.Metadata
}

// EnsureConsumer is EnsureConsumers for one destination.
func (t Topology) EnsureConsumer(ctx context.Context, js jetstream.JetStream, destination string) (jetstream.Consumer, error) {
	cs, err := t.EnsureConsumers(ctx, js, []string{destination})
	if err != nil {
		return nil, err
	}
	return cs[destination], nil
}

// deadLetterDedupe is how long the dead-letter stream drops a letter
// stored again for the same delivered event (deadletter.Store.Add's ID):
// the event comes back after the ack wait when the letter was stored but
// the event was not terminated (a crash, a lost Term), or after a retry
// delay (up to FORWARDER_RETRY_MAX_DELAY) when the letter's PubAck was
// lost, then is sent again, which may take long for a large study, before
// it is dead-lettered again. No event is legitimately dead-lettered twice
// for one destination, so it is the events' window (EVENTS_DEDUPE_WINDOW,
// a day by default, which an operator lowers where the account caps
// duplicate windows), at least the 2 minutes it was, within the letters'
// retention (JetStream wants the window within MaxAge).
func (t Topology) deadLetterDedupe() time.Duration {
	d := max(t.DedupeWindow, 2*time.Minute)
	if t.DeadLetterRetention > 0 {
		d = min(d, t.DeadLetterRetention)
	}
	return d
}

// EnsureDeadLetters creates or updates the dead-letter stream (letters
// stay for DeadLetterRetention unless replayed or purged).
func (t Topology) EnsureDeadLetters(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := t.ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "stowline: studies that could not be forwarded, with the reason",
		Subjects:    []string{DeadLetterSubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.DeadLetterRetention,
		Duplicates:  t.deadLetterDedupe(),
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		// A letter's event is terminated: a full stream must refuse new
		// letters (the study stays queued), never delete old ones.
		Discard: jetstream.DiscardNew,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", DeadLetterStream, err)
	}
	return s, nil
}

// EnsureFailureLog creates or updates the failure-time bucket. It also
// holds what a study's deliveries got stored, which any later one (a
// late instance, a backfill, an audit's enqueue, a replay) needs to take
// the destination's "already exists" for stowline's own copies, not for
// conflicts: entries expire after StoredRetention, or with the events
// (Retention) or the dead letters when those are kept longer. A start
// never lowers the bucket's TTL (keepFailureTTL).
func (t Topology) EnsureFailureLog(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	return t.ensureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      FailureBucket,
		Description: "stowline: first and last failure time of queued events, and what each study's deliveries got stored",
		TTL:         max(t.Retention, t.DeadLetterRetention, t.StoredRetention),
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
}

// EnsureLedger creates or updates a destination's bucket of completed
// forwards; its records are kept until deleted.
func (t Topology) EnsureLedger(ctx context.Context, js jetstream.JetStream, destination string) (jetstream.KeyValue, error) {
	return t.ensureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      LedgerBucketOf(destination),
		Description: "stowline: completed forwards to destination " + destination + " (source.orthancStudyId -> LastUpdate)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
}

// EnsureReconcile creates or updates the reconciler's bucket.
func (t Topology) EnsureReconcile(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	return t.ensureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      ReconcileBucket,
		Description: "stowline: change-log cursors and leases of the reconciler, per Orthanc source",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
}

// EnsureStatus creates or updates the status bucket, in memory: it only
// holds live state. An account that allows no memory storage (a
// disk-only account, max_mem 0, is legitimate) refused it, and every
// forwarder failed to start: a bucket JetStream refuses to create in
// memory is then made on file, with a warning, and stays there
// (ensureKV).
func (t Topology) EnsureStatus(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:      StatusBucket,
		Description: "stowline: what each live forwarder process is sending (status page)",
		History:     1,
		TTL:         t.StatusTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    t.Replicas,
	}
	kv, err := t.ensureKV(ctx, js, cfg)
	if !memoryRefusedAtCreate(err) {
		return kv, err
	}
	if t.Log != nil {
		t.Log.Warn("JetStream refused memory storage for the status bucket (the account's or the server's memory limit): made it on file storage instead; it stays there until deleted (nats kv del "+StatusBucket+")",
			"bucket", StatusBucket, "err", err)
	}
	cfg.Storage = jetstream.FileStorage
	return t.ensureKV(ctx, js, cfg)
}

// memoryRefusedAtCreate reports whether err is ensureKV's of a bucket
// it was creating that JetStream refused memory storage (10028, on a
// single server and a cluster alike). The refusal of an existing
// bucket's update (a scale-up refused for the cluster's max_ha_assets,
// 10023) is no reason to make it on file: the bucket is in memory, and
// a retry on file would only be refused as made by hand, its own error
// lost.
func memoryRefusedAtCreate(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, errBucketCreate) && errors.As(err, &api) && api.ErrorCode == errCodeMemoryResources
}

// errBucketCreate marks ensureKV's error for a bucket that did not exist.
var errBucketCreate = errors.New("create key-value bucket")

// ensureKV creates the bucket, or updates it when it differs from cfg in
// what stowline sets; an unchanged bucket is left alone, as ensureStream
// leaves its stream (a bucket is a stream).
func (t Topology) ensureKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case err == nil:
		return t.existingKV(ctx, js, kv, cfg)
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("key-value bucket %s: %w", cfg.Bucket, err)
	}
	// A create, not CreateOrUpdateKeyValue (an update first): another
	// group's start may have made it meanwhile, and an update would set
	// this start's configuration over it unread (the failure bucket's
	// TTL lowered). Made with another configuration, it is settled as an
	// existing one.
	kv, err = js.CreateKeyValue(ctx, cfg)
	switch {
	case errors.Is(err, jetstream.ErrBucketExists):
		if kv, err = js.KeyValue(ctx, cfg.Bucket); err != nil {
			return nil, fmt.Errorf("key-value bucket %s: %w", cfg.Bucket, err)
		}
		return t.existingKV(ctx, js, kv, cfg)
	case err != nil:
		return nil, fmt.Errorf("%w %s: %w", errBucketCreate, cfg.Bucket, err)
	}
	return kv, nil
}

// existingKV updates the existing bucket kv to cfg (settleKV).
func (t Topology) existingKV(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if err := t.settleKV(ctx, js, kv, cfg); err != nil {
		return nil, err
	}
	return kv, nil
}

// ttlTries bounds the reads of one start of the failure bucket's TTL
// (settleKV).
const ttlTries = 6

// ttlRecheck is how long settleKV waits to read the failure bucket once
// more after its update was found in place: an update of another
// group's start that read it before, still on its way, lands meanwhile.
const ttlRecheck = 250 * time.Millisecond

// settleKV updates an existing bucket to cfg (updateKV). The failure
// bucket's TTL only rises (keepFailureTTL), but an update is no
// compare-and-set: another group's start that read the bucket before
// this one's update and writes after it set its shorter TTL back. So an
// update of it is followed by a read, and again after ttlRecheck once
// it is in place, and the longest is written again if it changed
// meanwhile, a few times. A write landing later still is raised by the
// longer group's next start.
func (t Topology) settleKV(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, cfg jetstream.KeyValueConfig) error {
	wrote := false
	for try := 1; ; try++ {
		w, err := t.updateKV(ctx, js, kv, cfg)
		if err != nil || cfg.Bucket != FailureBucket || try == ttlTries || (!w && !wrote) {
			return err
		}
		if w {
			wrote = true
			continue
		}
		// In place: once more after a pause.
		wrote = false
		timer := time.NewTimer(ttlRecheck)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("key-value bucket %s: %w", cfg.Bucket, context.Cause(ctx))
		case <-timer.C:
		}
	}
}

// updateKV reads the bucket and updates it when it differs from cfg in
// what stowline sets (wrote).
func (t Topology) updateKV(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, cfg jetstream.KeyValueConfig) (wrote bool, err error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return false, fmt.Errorf("key-value bucket %s: %w", cfg.Bucket, err)
	}
	// The client's only status type (nats.go v1.55): the bucket's
	// configuration and stream are read from it.
	b, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return false, fmt.Errorf("key-value bucket %s: status of type %T holds no bucket configuration", cfg.Bucket, st)
	}
	have := b.Config()
	if have.Storage == jetstream.FileStorage && cfg.Storage == jetstream.MemoryStorage {
		// Memory is asked only for live state (the status bucket),
		// made on file where the account allows no memory: keep it.
		cfg.Storage = have.Storage
	}
	if err := fixedInPlace("key-value bucket", cfg.Bucket, "nats kv del "+cfg.Bucket, have.Storage, cfg.Storage, 0, 0); err != nil {
		return false, err
	}
	cfg.Replicas = t.keepReplicas("key-value bucket", cfg.Bucket, have.Replicas, cfg.Replicas)
	if cfg.Bucket == FailureBucket {
		t.keepFailureTTL(&cfg, have)
	}
	if sameBucket(have, cfg) {
		return false, nil
	}
	if _, err := js.UpdateStream(ctx, ownedBucketStream(b.StreamInfo().Config, cfg)); err != nil {
		return false, fmt.Errorf("update key-value bucket %s: %w", cfg.Bucket, err)
	}
	if have.Replicas != max(cfg.Replicas, 1) {
		// A bucket is the stream KV_<bucket>.
		if err := waitScaled(ctx, js, "KV_"+cfg.Bucket, cfg.Replicas); err != nil {
			return true, fmt.Errorf("key-value bucket %s: %w", cfg.Bucket, err)
		}
	}
	return true, nil
}

// keepFailureTTL keeps the failure bucket's TTL when cfg's is shorter.
// Lowered, JetStream deletes at once every record older than it, and the
// next delivery of those studies takes stowline's own copies at the
// destination for conflicts. The forwarders of several groups, or a
// replica of the previous release restarting mid-upgrade, would set it
// back and forth at each start: the longest stays, and lowering it is an
// operator's decision, by hand.
func (t Topology) keepFailureTTL(cfg *jetstream.KeyValueConfig, have jetstream.KeyValueConfig) {
	switch {
	case cfg.TTL == 0 || have.TTL != 0 && have.TTL <= cfg.TTL:
		return // raised, or kept
	case have.TTL == 0:
		// Kept for ever (set by hand): the longest, nothing to say.
		cfg.TTL = 0
		return
	}
	if t.Log != nil {
		t.Log.Warn("STORED_RECORD_RETENTION not lowered: the bucket keeps its longer TTL (lowering it forgets what studies stored before, and their next delivery takes those copies for conflicts); "+
			"to lower it, stop every forwarder and run nats stream edit KV_"+FailureBucket+" --max-age=<duration>",
			"bucket", cfg.Bucket, "ttl", have.TTL.String(), "wanted_ttl", cfg.TTL.String())
	}
	cfg.TTL = have.TTL
}

// ErrNotProvisioned reports a stream or bucket that no service has created
// yet; the commands that only read (audit, replay, the status page) never
// create one.
var ErrNotProvisioned = errors.New("not created yet (has a forwarder run?)")

// OpenStream returns an existing stream without changing it.
func OpenStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s: %w", name, ErrNotProvisioned)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return s, nil
}

// OpenKV returns an existing key-value bucket without changing it.
func OpenKV(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("key-value bucket %s: %w", bucket, ErrNotProvisioned)
	}
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %s: %w", bucket, err)
	}
	return kv, nil
}
