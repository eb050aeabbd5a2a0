// Package reconcile makes sure no stable study is missed when Orthanc's
// Lua webhook is lost (ingest down, network blip, Orthanc restarted before
// the study became stable). It polls each Orthanc source's change log
// (GET /changes) and publishes the same StudyStable event, with the same
// JetStream de-duplication ID, as the Lua path: a study announced by both
// is stored once.
//
// The cursor of each source lives in a JetStream key-value bucket, so the
// ingest replicas that run the reconciler stay stateless; a lease in the
// same bucket (compare-and-set) lets one replica poll a source at a time,
// and another take over when it stops renewing. The cursor advances past a
// change only once the event it calls for is stored.
package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// Orthanc is what the reconciler reads from one source.
type Orthanc interface {
	System(ctx context.Context) (orthancapi.System, error)
	Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error)
	LastChange(ctx context.Context) (int64, error)
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
	SeriesStudy(ctx context.Context, seriesID string) (orthancapi.Study, error)
	InstanceStudy(ctx context.Context, instanceID string) (orthancapi.Study, error)
	// Now is Orthanc's clock, the one its LastUpdate is read from.
	Now(ctx context.Context) (time.Time, error)
	// Exists tells whether Orthanc holds a resource of a level
	// ("Patient", "Study", "Series", "Instance").
	Exists(ctx context.Context, level, id string) (bool, error)
}

// Source is one Orthanc to reconcile.
type Source struct {
	// Name is the source name of its events. Empty means the name
	// Orthanc's Lua script uses by default: Orthanc's "Name"
	// (events.DefaultSourceName), read from GET /system.
	Name    string
	Orthanc Orthanc
}

// CursorAdoption is RECONCILE_ADOPT_CURSOR_FROM (To:From), which the
// configuration checks at startup: the configured source To, served
// under the name From before its name changed, carries that name's
// cursor over when it has none, if it points into its Orthanc's change
// log. No other source does: another source of this reconciler, whose
// change at the cursor is gone too, would take it.
type CursorAdoption struct{ To, From string }

// Options configures a Reconciler. Zero durations get the defaults.
type Options struct {
	Sources []Source
	// KV is the bucket of cursors and leases (natsjs.Topology.EnsureReconcile).
	KV        jetstream.KeyValue
	Publisher events.Publisher
	// Events is the event stream (natsjs.EventStream), read when a
	// source has no cursor: if it holds events of the source, the cursor
	// was lost, which is no first start (cursorLost). Nil: not read.
	Events jetstream.Stream
	// PollInterval is the pause between polls once the change log is read
	// to its end (default 10 s).
	PollInterval time.Duration
	// LeaseTTL is how long a lease holder may go without renewing before
	// another replica takes the source over (default 15 s). The holder
	// renews every third of it.
	LeaseTTL time.Duration
	// MaxBackoff bounds the delay between polls while Orthanc or JetStream
	// fails (default 30 s, at least PollInterval).
	MaxBackoff time.Duration
	// PageSize is how many changes one GET /changes reads (default 200).
	PageSize int
	// PublishTimeout bounds one publish (default 10 s).
	PublishTimeout time.Duration
	// AdoptCursor: the one configured source that carries another
	// name's cursor over; the zero value: none does (another deployment
	// sharing the NATS may own a cursor that matches: an Orthanc
	// restored from its backup). A source without a configured name
	// follows Orthanc's Name and carries over the cursor its change log
	// has under any other name, as before.
	AdoptCursor CursorAdoption
	// Holder names this replica in the leases (default host:pid:random).
	Holder     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// TracerProvider, if set, starts a trace per event the reconciler
	// publishes (the forwarders continue it); nil: no tracing.
	TracerProvider trace.TracerProvider
}

// Reconciler polls the sources. Create it with New, then Run it.
type Reconciler struct {
	opts    Options
	tracer  trace.Tracer
	log     *slog.Logger
	m       *metrics
	sources []*sourceRunner
}

// New validates opts and returns a Reconciler.
func New(opts Options) (*Reconciler, error) {
	var errs []error
	if len(opts.Sources) == 0 {
		errs = append(errs, errors.New("at least one source is required"))
	}
	if opts.KV == nil {
		errs = append(errs, errors.New("a key-value bucket is required"))
	}
	if opts.Publisher == nil {
		errs = append(errs, errors.New("a publisher is required"))
	}
	names := map[string]bool{}
	for i, s := range opts.Sources {
		if s.Orthanc == nil {
			errs = append(errs, fmt.Errorf("source %d (%q) has no Orthanc client", i, s.Name))
		}
		if s.Name != "" && !events.ValidSource(s.Name) {
			errs = append(errs, fmt.Errorf("source name %q is invalid", s.Name))
		}
		if names[s.Name] {
			errs = append(errs, fmt.Errorf("source %q is listed twice", s.Name))
		}
		names[s.Name] = true
	}
	if opts.PollInterval < 0 || opts.LeaseTTL < 0 || opts.MaxBackoff < 0 || opts.PageSize < 0 || opts.PublishTimeout < 0 {
		errs = append(errs, errors.New("durations and page size must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 10 * time.Second
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 15 * time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.PollInterval)
	if opts.PageSize == 0 {
		opts.PageSize = 200
	}
	if opts.PublishTimeout == 0 {
		opts.PublishTimeout = 10 * time.Second
	}
	if opts.Holder == "" {
		opts.Holder = defaultHolder()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	m.interval.Set(opts.PollInterval.Seconds())
	r := &Reconciler{opts: opts, log: log, m: m,
		tracer: tracing.Tracer(opts.TracerProvider, "github.com/stowline/stowline/internal/reconcile")}
	for _, s := range opts.Sources {
		r.sources = append(r.sources, &sourceRunner{r: r, configured: s.Name, orthanc: s.Orthanc, existsRetry: existsRetry, maxPending: maxPending})
	}
	return r, nil
}

func defaultHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b)
}

// Run polls every source until ctx ends, then releases the leases it
// holds so another replica takes over at once. It returns nil: failures
// are retried, logged and reported by the checks.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, s := range r.sources {
		wg.Go(func() { s.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Names returns the source names the reconciler publishes under now: a
// configured one from the start, an unnamed source's once Orthanc told
// its Name (and its new one after a rename). The webhook compares its
// events' source with them.
func (r *Reconciler) Names() []string {
	var out []string
	for _, s := range r.sources {
		if s.configured != "" {
			out = append(out, s.configured)
		} else if n := s.shared.Load(); n != nil {
			out = append(out, *n)
		}
	}
	return out
}

// Checks returns a readiness check per source, named "reconcile_<name>"
// ("reconcile" for the one source without a configured name). A check
// fails while polling that source fails (Orthanc unreachable, for
// example); a replica that does not hold the source's lease is ready.
func (r *Reconciler) Checks() map[string]func(context.Context) error {
	out := make(map[string]func(context.Context) error, len(r.sources))
	for _, s := range r.sources {
		name := "reconcile"
		if s.configured != "" {
			name += "_" + s.configured
		}
		out[name] = s.check
	}
	return out
}
