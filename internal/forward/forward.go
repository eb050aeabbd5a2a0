// Package forward moves stable studies from an Orthanc source to a
// DICOMweb destination. Forwarders pull events from the durable JetStream
// consumer all replicas share, send each study's instances in STOW-RS
// requests, and ack an event only once every instance is stored.
//
// One concern a file:
//
//	consume.go   the pull loop, progress signals, shutdown, poison studies
//	lanes.go     priority lanes: which lane a free worker pulls from, when
//	policy.go    what a finished attempt means: ack, retry (backoff) or
//	             dead-letter; pure, tested without NATS
//	settle.go    carries the decision out on the message and the stores
//	breaker.go   the destination's circuit breaker: an outage holds
//	             studies instead of spending their deliveries
//	transfer.go  reads the study from Orthanc and writes STOW-RS requests
//	verify.go    STOW_VERIFY=qido: asks the destination what it lists
//	buffer.go    buffer mode: deletes forwarded instances from the source
//	failure.go   the failure classes every error and Failure Reason maps to
//	observer.go  what the forwarder reports as it works (the status page)
//	tracing.go   the spans of a delivery (OpenTelemetry)
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// Source is the Orthanc a study is read from.
type Source interface {
	StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error)
	OpenInstanceFile(ctx context.Context, instanceID string) (io.ReadCloser, int64, error)
}

// Destination stores instances with STOW-RS.
type Destination interface {
	Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error)
}

// SourceCleaner deletes forwarded instances from a source (buffer mode).
type SourceCleaner interface {
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
	// Instance and InstanceMetadata read the instances to delete when
	// the study's LastUpdate moved (Orthanc 1.12.1 and later move it on a
	// delete too): their file, and when they were received.
	Instance(ctx context.Context, instanceID string) (orthancapi.Instance, error)
	InstanceMetadata(ctx context.Context, instanceID string) (orthancapi.InstanceMetadata, error)
	DeleteInstance(ctx context.Context, instanceID string) error
}

// Selection is what the destinations' rules select of one listing of a
// study (Options.Select): buffer mode decides on it both what no
// destination selects and what it deletes. It applies each destination's
// rules when first needed, and at most once, reading the study from
// Orthanc for as long as that takes (ctx is the work context). A failure
// to apply them (the source unreadable, a rule failing) wraps ErrRules,
// and orthancapi.ErrNotFound for a study gone. One goroutine uses it.
type Selection interface {
	// Unselected returns the listed instances no destination's rules
	// select, applying the rules not applied yet.
	Unselected(ctx context.Context) ([]orthancapi.Instance, error)
	// Release returns the listed instances to delete now: those every
	// destination whose rules select them has stored. It goes
	// destination by destination, applying each one's rules when it gets
	// there, and stops at the first that selects some of the study and
	// has not stored it. It reads the destinations' ledgers, bounding
	// each JetStream request itself; one unanswered is asked again
	// (Forwarder.whileUnanswered), the rules already applied not again.
	Release(ctx context.Context) ([]orthancapi.Instance, error)
}

// ErrRules is wrapped by a Selection's failure to apply a destination's
// rules, to tell it from its ledgers' failures.
var ErrRules = errors.New("routing rules not applied")

// DeadLetterStore keeps studies that could not be forwarded. Add is
// idempotent per event: duplicate reports a letter an earlier delivery
// stored (its event's termination lost), seq being that letter's.
type DeadLetterStore interface {
	Add(ctx context.Context, l *DeadLetter) (seq uint64, duplicate bool, err error)
}

// FailureLog remembers when an event first and last failed, and which
// instances of a study earlier attempts sent.
type FailureLog interface {
	Record(ctx context.Context, seq uint64, now time.Time) (FailureTimes, error)
	Forget(ctx context.Context, seq uint64) error
	// RememberSent adds to the instances of the event's study (its source
	// and Study Instance UID) that attempts got stored as sent, each
	// named by an ID that changes with what was sent (sentID), and Sent
	// reports them: a later attempt's "already exists" for one of them
	// is the destination holding what stowline sent, not other content.
	RememberSent(ctx context.Context, ev *events.StudyStable, sentIDs []string) error
	Sent(ctx context.Context, ev *events.StudyStable) (func(sentID string) bool, error)
}

// Router picks what of a study goes to the destination (its routing
// rules): the instances to send, none when the study is not for it. A
// rule that cannot be evaluated for the study is an *Error of class
// Permanent.
type Router interface {
	Select(ctx context.Context, source, studyID string, instances []orthancapi.Instance) ([]orthancapi.Instance, error)
}

// Options configures a Forwarder: the workers of one destination.
type Options struct {
	// DestinationName names the destination in logs, metrics, dead
	// letters and the failure log.
	DestinationName string
	// Lanes are the destination's consumers by priority, highest first
	// (lanes.go), each shared by all replicas that serve it: a free
	// worker pulls from the highest that holds an event, and the low lane
	// takes at most Concurrency-1 workers.
	Lanes []Lane
	// StatWorkers are workers, beyond Concurrency, that pull only the
	// stat lane, so a stat study never waits for a worker.
	StatWorkers int
	// Windows, if set, closes lanes outside their hours; Now is its clock
	// (time.Now when nil).
	Windows Windows
	Now     func() time.Time
	// Paused, if set, is asked before each pull: while it reports true
	// no event is pulled, nor a circuit breaker's trial; studies already
	// in hand go on. The de-identification key guard sets it (app,
	// keyguard.go): no study is sent under two keys.
	Paused func() bool
	// PauseReason, if set, says why Paused reports true (PausedKeysDiffer
	// or PausedNotCompared), for Status: the status page names it.
	PauseReason func() string
	// Stream, if set, is the event stream the lanes' consumers read: how
	// old the oldest event a lane has not acknowledged is, is read from
	// it (lanes.go, probeLane); nil: only whether it holds any.
	Stream jetstream.Stream
	// EventsRetention is how long JetStream keeps an event, forwarded or
	// not: the event stream's MaxAge at start (0: not known). With
	// Stream set, the lane probe reads it again from the stream, which
	// any process's start may have changed (watchLanes). One pulled past
	// three quarters of it is warned about (lanes.go, queueAge).
	EventsRetention time.Duration
	// SourceFor returns the Orthanc that an event's source names.
	SourceFor func(source string) (Source, error)
	// SourceProbe asks the source an event names whether it answers (a
	// cheap request: Orthanc's /system); nil: studies are not held while
	// their source is unreachable (holdForSource).
	SourceProbe func(ctx context.Context, source string) error
	// MaxParked, where several sources feed the forwarder, is the most
	// studies parked while their source is unavailable (sourcepark.go),
	// freeing their workers for the other sources, over the replicas
	// serving the destination (SetReplicas shares it); 0: such a study
	// holds its worker (one source).
	MaxParked int
	// MaxUnknownSource is the most events of a source the forwarder does
	// not know that it gives back at once, for a forwarder that knows it,
	// over the replicas serving the destination (SetReplicas shares it):
	// each holds a place of the consumer's MaxAckPending until it is
	// offered again. Past it such an event is dead-lettered at once. 0:
	// no bound.
	MaxUnknownSource int
	Destination      Destination
	// Router, if set, selects what of each study goes to the destination;
	// without it every instance of every study does.
	Router Router
	// Concurrency is the number of studies this process sends at once.
	Concurrency int
	// MaxInstances and MaxBytes bound one STOW-RS request; MaxBytesVar
	// names MaxBytes's variable in messages (STOW_MAX_BYTES if empty).
	MaxInstances int
	MaxBytes     int64
	MaxBytesVar  string
	// TransferSyntaxes, if set, are the transfer syntax UIDs the
	// destination accepts: an instance in another syntax is read from the
	// source converted to the first lossless one (transcode.go), and an
	// instance the destination refuses with 0xC122 is converted and sent
	// again. TransferSyntaxesVar names the variable in messages.
	// TransferSyntaxesImplied: the list is the forwarder's own (a
	// de-identifying destination's, the variable unset), so a refusal
	// advises setting the variable, not editing a list nobody wrote.
	TransferSyntaxes        []string
	TransferSyntaxesVar     string
	TransferSyntaxesImplied bool
	// ExactLength: the destination needs every request's length up front
	// (AWS Signature V4), so converted instances are counted first.
	ExactLength bool
	// RequestConcurrency is the most STOW-RS requests this process has in
	// flight to the destination, over all its studies (0 or 1: one after
	// the other); MinRequestConcurrency (0: 1) the fewest it adapts down
	// to. Between them the limit adapts to the destination (limit.go,
	// internal/flow); equal, it is fixed.
	RequestConcurrency, MinRequestConcurrency int
	// AckWait is the consumer's ack wait; progress is signalled every
	// third of it while a study uploads.
	AckWait time.Duration
	// Connected reports the NATS connection up (nil: not checked). While
	// it reconnects the client buffers in-progress signals and NAKs and
	// reports them sent; the logs must not say a study was handed back.
	Connected func() bool
	// RetryDelay is the first retry delay, doubled each attempt up to
	// RetryMaxDelay, jittered within [d/2, d].
	RetryDelay, RetryMaxDelay time.Duration
	// DeadLetters receives the studies that failed for good or ran out of
	// deliveries. Without it, such studies are retried forever.
	DeadLetters DeadLetterStore
	// Failures, if set, remembers first and last failure times across
	// deliveries and replicas, for the dead letter.
	Failures FailureLog
	// MaxDeliveries is how many times an event is tried before it is
	// dead-lettered (0: no limit). A delivery past it, which only happens
	// when the deliveries before it never finished (a crash, an OOM
	// kill), is dead-lettered before any work.
	MaxDeliveries int
	// InstanceRetries is how many extra rounds, within one delivery,
	// re-send only the instances a destination refused transiently
	// (FailedSOPSequence with e.g. A7xx or 0110), or read again alone
	// those the source answered with its own 500 (unreadError).
	InstanceRetries int
	// InstanceRetryDelay is the pause before the first such round
	// (doubling each round).
	InstanceRetryDelay time.Duration
	// Verifier, if set, is asked after the STOW-RS answers of a study
	// which instances the destination holds (STOW_VERIFY=qido); an
	// instance it does not list is sent again within InstanceRetries
	// rounds, then the study fails transiently. Buffer mode thus deletes
	// only instances the destination listed.
	Verifier Verifier
	// Completed, if set, is called after a study was stored and its event
	// acked, to record the completed forward (the audit and buffer mode
	// read it). An error is logged; the study stays forwarded. It returns
	// an error wrapping ErrForwardedBefore when c is not selected and
	// the record of that state is a forward, kept.
	Completed func(ctx context.Context, ev *events.StudyStable, c Completion) error
	// CleanerFor, if set, turns on buffer mode: once a study is stored,
	// acked and recorded (Completed, then required), the instances that
	// were forwarded are deleted from its source, unless the study
	// changed since its event.
	CleanerFor func(source string) (SourceCleaner, error)
	// Select, if set, is buffer mode with several destinations: the
	// destinations' rules over a study's listing, applied as the
	// Selection needs them. Its Release narrows the deletes to the
	// instances every destination whose rules select them has stored.
	Select func(ev *events.StudyStable, listed []orthancapi.Instance) Selection
	// CountsUnselected: these forwarders count as kept_unselected what
	// Select's selection leaves out (set on the forwarders of one
	// destination only, so that each study counts once). Without Select
	// (one destination) every forwarder counts those its own rules leave
	// out.
	CountsUnselected bool
	// Unconfigured, if set, names the destinations that have a queue in
	// JetStream but are not in this process's configuration: a rollout
	// adding one, whose forwarders already take events while this one
	// does not know it, or one removed without `forwarder destinations
	// remove`. Buffer mode deletes nothing while there are any: they may
	// still need what they were not given yet.
	Unconfigured func(ctx context.Context) ([]string, error)
	// Forwarded, if set (buffer mode), reports whether the destination's
	// ledger records ev's state of the study, or a newer one, as forwarded.
	// A study no longer in the source is then one that buffer mode
	// deleted once stored (an older event of it came last, as after an
	// outage): its event is done, not a source-missing dead letter.
	Forwarded func(ctx context.Context, ev *events.StudyStable) (bool, error)
	// KeptBefore, if set (buffer mode, one destination: with several,
	// Release reads the ledgers), reports the SOP Instance UIDs the
	// destination's ledger records as kept for ev's state of the study
	// (Completion.Kept; every one when that list was too long to record):
	// a later delivery of that state (an ack not confirmed, a backfill)
	// may get them answered stored without a warning.
	KeptBefore func(ctx context.Context, ev *events.StudyStable) (func(sopInstanceUID string) bool, error)
	// RecordedNotSelected, if set (buffer mode, several destinations),
	// reports whether the destination's ledger records ev's state of the
	// study, or a newer one, as not selected by its rules: Release
	// records that for such a destination before it deletes the study.
	// A study no longer in the source is then done for this destination
	// (its event waited while its forwarders were down or behind), not a
	// source-missing dead letter.
	RecordedNotSelected func(ctx context.Context, ev *events.StudyStable) (bool, error)
	// Conflicts says what an "already holds it with other content" answer
	// is and what to do with it (conflict.go); the zero value skips.
	Conflicts ConflictPolicy
	// Breaker configures the destination's circuit breaker (breaker.go).
	Breaker BreakerOptions
	// Observer, if set, is told of every attempt as it progresses.
	Observer Observer
	// TracerProvider, if set, traces every delivery in the trace its
	// message's traceparent names (tracing.go); nil: no tracing, at no
	// cost.
	TracerProvider trace.TracerProvider
	// ShutdownGrace is how long in-flight studies may go on after
	// shutdown starts before they are returned to the queue.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// DefaultShutdownGrace is ShutdownGrace when unset. An orchestrator's
// stop timeout must exceed it, with room to return the studies to the
// queue (deploy/compose_test.go checks docker-compose.yml).
const DefaultShutdownGrace = 30 * time.Second

// Forwarder runs the workers.
type Forwarder struct {
	opts   Options
	policy policy
	obs    Observer
	// tracer is nil when tracing is off.
	tracer trace.Tracer
	log    *slog.Logger
	m      *metrics
	plan   *lanePlan
	// syntaxHint logs once that the destination needs a transfer syntax
	// list.
	syntaxHint sync.Once
	// breaker is nil without one.
	breaker *breaker
	// limit bounds the STOW-RS requests in flight over all studies;
	// sending counts the studies splitting requests or with requests to
	// send now (transfer's sendAll), which share it (requestsAtOnce).
	limit   *flow.Limiter
	sending atomic.Int32
	// inHand holds the stream sequences of the events this process works
	// on, to recognise one delivered again meanwhile.
	inHandMu sync.Mutex
	inHand   map[uint64]bool
	// sendingStudy holds, by studyKey, the studies this process sends
	// now (takeStudy), and whether each is held.
	sendingStudy map[string]*studyTurn
	// stopping is closed when shutdown starts: studies held for their
	// source go back to the queue at once.
	stopping     chan struct{}
	stoppingOnce sync.Once
	// hardStop ends settleAfterGrace past the grace (Run, stopHard):
	// the settling contexts (settleContext) end with it.
	hardStop context.Context
	stopHard context.CancelFunc
	// parking is nil unless MaxParked is set.
	parking *sourceParking
	// unknown is nil unless MaxUnknownSource is set.
	unknown *givenBack
	// retention is the event stream's MaxAge as last read
	// (setRetention), in nanoseconds; 0: not known.
	retention atomic.Int64
	// unansweredFor bounds how long JetStream is asked again while it
	// does not answer (whileUnanswered): settleTimeout, past a
	// leader election; tests shorten it. askTimeout bounds one
	// Unconfigured attempt, so a lost reply costs one try, not the bound.
	unansweredFor, askTimeout time.Duration
	// measureStall gives up counting a part's size (measure) once its
	// source gave no byte for it: dicomweb.StallTimeout; tests shorten it.
	measureStall time.Duration
	// pendingAge: pendingCopyAge; tests shorten it.
	pendingAge time.Duration
}

// New validates opts and returns a Forwarder.
func New(opts Options) (*Forwarder, error) {
	var errs []error
	if opts.DestinationName == "" {
		errs = append(errs, errors.New("a destination name is required"))
	}
	if opts.SourceFor == nil {
		errs = append(errs, errors.New("a source is required"))
	}
	if opts.Destination == nil {
		errs = append(errs, errors.New("a destination is required"))
	}
	if opts.Concurrency < 1 {
		errs = append(errs, errors.New("concurrency must be at least 1"))
	}
	if opts.MaxInstances < 1 || opts.MaxBytes < 1 {
		errs = append(errs, errors.New("request limits must be positive"))
	}
	if opts.AckWait <= 0 {
		errs = append(errs, errors.New("ack wait must be positive"))
	}
	if opts.RetryDelay <= 0 || opts.RetryMaxDelay < opts.RetryDelay {
		errs = append(errs, errors.New("retry delays must satisfy 0 < delay <= max delay"))
	}
	if opts.StatWorkers < 0 {
		errs = append(errs, errors.New("stat workers must not be negative"))
	}
	if opts.MinRequestConcurrency > max(opts.RequestConcurrency, 1) {
		errs = append(errs, errors.New("the request concurrency floor must not exceed its ceiling"))
	}
	if opts.MaxDeliveries < 0 || opts.InstanceRetries < 0 || opts.MaxParked < 0 || opts.MaxUnknownSource < 0 {
		errs = append(errs, errors.New("max deliveries, instance retries and max parked must not be negative"))
	}
	if opts.CleanerFor != nil && opts.Completed == nil {
		// Buffer mode deletes only what the ledger records forwarded.
		errs = append(errs, errors.New("buffer mode needs the ledger's Completed"))
	}
	if err := opts.Conflicts.check(opts.Destination); err != nil {
		errs = append(errs, err)
	}
	if err := opts.Breaker.check(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = DefaultShutdownGrace
	}
	if opts.InstanceRetryDelay <= 0 {
		opts.InstanceRetryDelay = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("destination", opts.DestinationName)
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg, opts.DestinationName)
	if err != nil {
		return nil, err
	}
	limit, err := newLimiter(&opts, reg, log)
	if err != nil {
		return nil, err
	}
	obs := opts.Observer
	if obs == nil {
		obs = noObserver{}
	}
	p := policy{
		maxDeliveries: uint64(opts.MaxDeliveries),
		retryDelay:    opts.RetryDelay,
		retryMaxDelay: opts.RetryMaxDelay,
		canDeadLetter: opts.DeadLetters != nil,
	}
	if c := opts.Conflicts; c.Action == ConflictReplace && c.Method == ReplaceDelete {
		p.replacesByDelete = c.setting()
	}
	fw := &Forwarder{opts: opts, policy: p, obs: obs, log: log, m: m, plan: newLanePlan(&opts), limit: limit, inHand: map[uint64]bool{},
		sendingStudy: map[string]*studyTurn{}, stopping: make(chan struct{}), unansweredFor: settleTimeout, askTimeout: natsjs.RequestTimeout,
		measureStall: dicomweb.StallTimeout, pendingAge: pendingCopyAge}
	fw.hardStop, fw.stopHard = context.WithCancel(context.Background())
	m.laneAge.setClock(fw.plan.now)
	fw.retention.Store(int64(opts.EventsRetention))
	m.retention.Set(opts.EventsRetention.Seconds())
	if opts.MaxUnknownSource > 0 {
		fw.unknown = &givenBack{limit: opts.MaxUnknownSource, replicas: 1}
	}
	if opts.MaxParked > 0 && opts.SourceProbe != nil {
		fw.parking = &sourceParking{limit: opts.MaxParked, replicas: 1, sources: map[string][]*parkedStudy{}}
	}
	if err := fw.plan.registerOpen(reg, opts.DestinationName); err != nil {
		return nil, err
	}
	if b := opts.Breaker; b.Failures > 0 {
		failures := b.Failures
		if p.canDeadLetter && p.maxDeliveries > 0 && uint64(failures) > p.maxDeliveries {
			// Else a study could run out of deliveries in an outage
			// before the breaker opens.
			failures = int(p.maxDeliveries)
			log.Info("the circuit breaker opens after FORWARDER_MAX_DELIVERIES failures, fewer than its setting", "failures", failures, "configured", b.Failures)
		}
		fw.breaker = newBreaker(breakerConfig{failures: failures, interval: b.ProbeInterval, maxInterval: max(b.MaxProbeInterval, b.ProbeInterval)},
			pseudonymProber(b.Prober, opts.Destination), fw.breakerChanged)
	}
	if opts.TracerProvider != nil {
		fw.tracer = opts.TracerProvider.Tracer("github.com/stowline/stowline/internal/forward")
	}
	fw.warnConversionTarget()
	return fw, nil
}
