package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/bandwidth"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/web"
)

// forwarderRole is the workers that send studies to the destinations it
// serves (FORWARDER_DESTINATIONS), with their health, metrics and admin
// API on FORWARDER_ADDR. Each destination has its own consumer, workers,
// credentials and HTTP transport, so one that is down delays no other.
type forwarderRole struct {
	cfg     *config.Forwarder
	sources *Sources
	// sharedWithIngest: the process's ingest reads Orthanc through
	// sources too (the single host's reconciler, PRIORITY_RULE), and the
	// destinations leave it a slot of ORTHANC_MAX_CONNECTIONS.
	sharedWithIngest bool
	// limiters are the bandwidth caps of the destinations served that
	// have one (STOW_MAX_BYTES_PER_SECOND), by name.
	limiters map[string]*bandwidth.Limiter
	// keys are the key fingerprints of the destinations served, by name
	// (status.NoKey: not de-identified), for the key guard.
	keys map[string]string
}

func (r *forwarderRole) start(ctx context.Context, g *errgroup.Group, p *process) error {
	fc := r.cfg
	log := p.log.With("component", "forwarder")
	reg := newRegistry()
	if err := errors.Join(p.status.registerQueue(reg), reg.Register(r.sources.collector())); err != nil {
		return err
	}
	all, served := fc.DestinationList(), fc.Served()
	names := make([]string, len(all))
	for i, d := range all {
		names[i] = d.Name
	}
	servedNames := make([]string, len(served))
	for i, d := range served {
		servedNames[i] = d.Name
	}

	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	// Before EnsureLanesServing makes the consumers of a renamed one.
	if err := checkRenamedDestinations(pctx, p.conn.JS, names, log); err != nil {
		return err
	}
	// Only the served destinations' lanes are used (lanes[d] below): an
	// unserved one's unreadable consumer is left out, not a failed start.
	lanes, err := p.topo.EnsureLanesServing(pctx, p.conn.JS, names, servedNames)
	if err != nil {
		return err
	}
	// A lane's oldest event not acknowledged is read from the event
	// stream, for its age (forward.Options.Stream).
	eventStream, err := natsjs.OpenStream(pctx, p.conn.JS, natsjs.EventStream)
	if err != nil {
		return err
	}
	dlStream, err := p.topo.EnsureDeadLetters(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	failureKV, err := p.topo.EnsureFailureLog(pctx, p.conn.JS)
	if err != nil {
		return err
	}
	dls := deadletter.NewStore(p.conn.JS, dlStream)
	if ignored := fc.IgnoredPlatformVariables(); len(ignored) > 0 {
		log.Warn("set, but ignored: DESTINATIONS names the destinations, and each reads only its DESTINATION_<NAME>_ variables; "+
			"these, which platforms set on their own, are not refused: set the DESTINATION_<NAME>_ form where one was meant for a destination", "variables", ignored)
	}
	if fc.DeleteFromSource {
		log.Warn("buffer mode: forwarded instances are deleted from the source Orthanc once every destination that selected them stored them (FORWARDER_DELETE_FROM_SOURCE=true)")
	}

	checks := map[string]web.Check{
		"jetstream": p.conn.Ready,
		"orthanc":   r.sources.Ready,
	}
	if len(r.sources.List()) > 1 {
		// Studies of a source that does not answer are parked, and the
		// others' go on: one Orthanc down is reported, and does not take
		// the forwarder out of service (a rollout waiting for ready
		// pods would stall for the outage); none answering does.
		checks["orthanc"] = r.sources.AnyReady
		checks["orthanc_sources"] = web.Advisory(r.sources.Ready)
	}
	// Every destination's rules and ledger, served here or not: buffer
	// mode deletes an instance only once all that select it stored it.
	routes := map[string]*route{}
	ledgers := map[string]*ledger.Ledger{}
	for _, d := range all {
		if routes[d.Name], err = newRoute(d, r.sources); err != nil {
			return err
		}
		ledgerKV, err := p.topo.EnsureLedger(pctx, p.conn.JS, d.Name)
		if err != nil {
			return err
		}
		ledgers[d.Name] = ledger.New(p.conn.JS, ledgerKV, ledger.WithLogger(log.With("destination", d.Name)))
	}
	// Studies go on sending for up to ShutdownGrace after shutdown starts:
	// until the forwarders have drained, their tokens are still renewed,
	// and this process stays counted in the replicas' shares of the
	// request and bandwidth limits (and on the status page). start holds
	// running until the forwarders run, or it failed.
	var running sync.WaitGroup
	running.Add(1)
	defer running.Done()
	drained := whenDrained(ctx, &running)

	// A destination whose requests stall (it stopped reading the STOW-RS
	// bodies Orthanc's file streams feed) must not hold every slot of
	// ORTHANC_MAX_CONNECTIONS: each leaves one to each other, and to the
	// ingest of the process.
	unowned := 0
	if r.sharedWithIngest {
		unowned = 1
	}
	for _, src := range r.sources.List() {
		src.Client.ShareSlots(servedNames, unowned)
	}

	var forwarders []*forward.Forwarder
	var tokens []*status.TokenWatch
	var opts []*forward.Options
	for _, d := range served {
		o, tw, err := r.destination(drained, p, d, reg, log, checks)
		if err != nil {
			return err
		}
		for _, prio := range events.Priorities {
			o.Lanes = append(o.Lanes, forward.Lane{Priority: prio, Consumer: lanes[d.Name][prio]})
		}
		checks[checkName("destination_queue", d)] = lanesPresent(d.Name, o.Lanes)
		o.StatWorkers = fc.StatWorkers
		if len(fc.Windows) > 0 {
			o.Windows = laneWindows(fc.Windows)
		}
		o.Stream = eventStream
		// The stream's, not this process's EVENTS_RETENTION: another
		// process's start may have set another (the probe reads it again).
		o.EventsRetention = eventStream.CachedInfo().Config.MaxAge
		if len(d.StowTransferSyntaxes) > 0 {
			log.Info("instances in other transfer syntaxes are converted by Orthanc", "destination", d.Name, "transfer_syntaxes", []string(d.StowTransferSyntaxes))
		}
		if rt := routes[d.Name]; rt != nil {
			o.Router = rt
			log.Info("routing rules", "destination", d.Name, "match", d.Match != "", "instance_match", d.InstanceMatch != "")
		}
		o.DeadLetters = dls
		o.Failures = deadletter.NewFailureLog(failureKV, d.Name)
		l := ledgers[d.Name].WithPseudonyms(forward.StudyPseudonym(o.Destination))
		o.Completed = func(ctx context.Context, ev *events.StudyStable, c forward.Completion) error {
			err := l.Completed(ctx, ev, ledger.Outcome{NotSelected: c.NotSelected, Selected: c.Selected, Kept: c.Kept, Replaced: c.Replaced, StoredAsSent: c.StoredAsSent})
			if errors.Is(err, ledger.ErrForwardedBefore) {
				return fmt.Errorf("%w: %w", forward.ErrForwardedBefore, err)
			}
			return err
		}
		if fc.DeleteFromSource {
			o.CleanerFor = r.cleanerFor
			o.Unconfigured = unconfiguredFunc(p.conn.JS, all)
			o.Forwarded = forwardedFunc(ledgers[d.Name])
			if len(all) == 1 {
				o.KeptBefore = keptBeforeFunc(ledgers[d.Name])
			}
			if len(all) > 1 {
				o.Select = selectFunc(all, routes, ledgers)
				o.CountsUnselected = d.Name == unselectedCounter(all)
				if routes[d.Name] != nil {
					o.RecordedNotSelected = recordedNotSelectedFunc(ledgers[d.Name], rulesDigest(d))
				}
			}
		}
		opts = append(opts, o)
		tokens = append(tokens, tw)
	}
	if len(fc.Windows) > 0 {
		log.Info("lanes are pulled only in their hours (FORWARD_WINDOWS), in the process's local time", "windows", fc.Windows.String(), "zone", time.Now().Format("MST -07:00"))
		if err := fc.RetentionWarning(p.topo.Retention); err != nil {
			log.Warn("a failing study of a lane with forwarding windows may outlive the event stream's retention before its dead letter", "err", err)
		}
	}
	keys, err := newKeyGuard(r.keys, reg, log)
	if err != nil {
		return err
	}
	tracker, err := p.status.track(drained, g, p.topo, (fc.Concurrency+fc.StatWorkers)*len(served), tokens, r.keys, log)
	if err != nil {
		return err
	}
	for i, o := range opts {
		if _, ok := keys.own[o.DestinationName]; ok {
			o.Paused, o.PauseReason = keys.paused(o.DestinationName), keys.reason(o.DestinationName)
			checks[checkName("destination_deidentify_key", served[i])] = keys.check(o.DestinationName)
		}
		o.Observer = tracker
		fw, err := forward.New(*o)
		if err != nil {
			return err
		}
		tracker.WatchDestination(fw.Status)
		forwarders = append(forwarders, fw)
		if err := watchMaxDeliver(ctx, p, o.DestinationName, reg, log); err != nil {
			return err
		}
	}

	// The listener serves on until the forwarders have drained (below):
	// meanwhile the process is not ready, so that what routes by
	// readiness leaves it.
	checks["shutdown"] = func(context.Context) error {
		if ctx.Err() != nil {
			return errors.New("stopping: the studies in hand finish or go back to the queue")
		}
		return nil
	}
	router := newRouter()
	web.MountHealth(router, reg, checks)
	if p.status.adminToken != "" {
		(&web.AdminAPI{Store: dls, JS: p.conn.JS, Token: p.status.adminToken, Destinations: names,
			TrustedProxies: r.cfg.TrustedProxies, Log: p.log.With("component", "admin")}).Mount(router)
	} else {
		log.Info("ADMIN_TOKEN is empty: the admin API (dead letters, replay) is disabled")
		mountDisabled(router, "/admin", "the admin API is disabled: ADMIN_TOKEN is not set on this forwarder; set ADMIN_TOKEN (or ADMIN_TOKEN_FILE), its bearer token, and restart")
	}
	// Served until the studies in hand are handed back, not closed at the
	// stop: the Service keeps routing to a stopping pod
	// (publishNotReadyAddresses, for the admin API), whose requests were
	// refused, and its last /metrics went unscraped. Then only a short
	// grace, within the stop timeout (forwarderHTTPStopGrace).
	if err := serveHTTP(drained, g, p.starting, "forwarder", "FORWARDER_ADDR", fc.Addr, router, p.serverTLS, forwarderHTTPStopGrace, log, nil); err != nil {
		return err
	}
	replicas, err := newReplicasGauge(reg)
	if err != nil {
		return err
	}
	limits := map[string][]replicaLimit{}
	for i, fw := range forwarders {
		name := opts[i].DestinationName
		limits[name] = append(limits[name], fw)
		if l := r.limiters[name]; l != nil {
			limits[name] = append(limits[name], bandwidthShare{limiter: l, destination: name, log: log})
		}
		running.Add(1)
		g.Go(named("forwarder "+name, func() error {
			defer running.Done()
			return fw.Run(ctx)
		}))
	}
	g.Go(named("replica shares", func() error {
		return shareLimits(drained, p.status, limits, replicas, keys, status.ShareInterval, log)
	}))
	return nil
}

// destination builds what one destination's workers need from its
// settings: credentials, HTTP transport and STOW-RS client, routing rules,
// limits; and adds its readiness check.
func (r *forwarderRole) destination(ctx context.Context, p *process, d config.NamedDestination, reg prometheus.Registerer,
	log *slog.Logger, checks map[string]web.Check) (*forward.Options, *status.TokenWatch, error) {
	fc := r.cfg
	tokenHost, oauth := tokenEndpointHost(&d)
	tw, err := status.NewTokenWatch(d.Name, urlHost(d.DICOMwebURL), tokenHost, oauth, reg)
	if err != nil {
		return nil, nil, err
	}
	// The provider, its credentials, TLS: destination.go. ctx outlives
	// every token refresh.
	client, err := newDestination(ctx, &d, tw.Observe, p.tracer, log.With("destination", d.Name))
	if err != nil {
		return nil, nil, err
	}
	if client.Tokens != nil {
		checks[checkName("destination_token", d)] = tokenCheck(d.Name, client.Tokens)
		// Refused credentials are said at start, not at the first study,
		// which on a quiet host may come hours later; the token source
		// then keeps trying in the background.
		go func() {
			if _, err := client.Tokens.TokenContext(ctx); err != nil && ctx.Err() == nil {
				log.Warn("no OAuth2 token for the destination at start: its studies fail until one comes; tried again in the background",
					"destination", d.Name, "err", err)
			}
		}()
	}
	if client.Bandwidth.Limited() {
		if r.limiters == nil {
			r.limiters = map[string]*bandwidth.Limiter{}
		}
		r.limiters[d.Name] = client.Bandwidth
		log.Info("bandwidth cap: STOW-RS request bodies share it with every replica serving the destination", "destination", d.Name,
			"variable", d.VarName("STOW_MAX_BYTES_PER_SECOND"), "bytes_per_second", int64(d.StowMaxBytesPerSecond))
	}
	o := &forward.Options{
		DestinationName: d.Name,
		SourceFor:       r.sourceFor,
		SourceProbe:     r.sourceProbe,
		MaxParked:       r.maxParked(p.topo.MaxAckPending),
		// As parked studies: a quarter of the window at most, the rest
		// left to the studies of the sources it knows.
		MaxUnknownSource:      max(1, p.topo.MaxAckPending/4),
		Destination:           client.STOW,
		Concurrency:           fc.Concurrency,
		MaxInstances:          d.StowMaxInstances,
		MaxBytes:              int64(d.StowMaxBytes),
		RequestConcurrency:    d.StowParallel,
		MinRequestConcurrency: d.StowParallelMin,
		TransferSyntaxes:      transferSyntaxes(&d),
		// The variable as this destination spells it, for dead-letter
		// reasons that name the fix.
		TransferSyntaxesVar: d.VarName("STOW_TRANSFER_SYNTAXES"),
		MaxBytesVar:         d.VarName("STOW_MAX_BYTES"),
		ExactLength:         d.Provider == config.ProviderAWS,
		AckWait:             fc.AckWait,
		Connected:           p.conn.NC.IsConnected,
		RetryDelay:          fc.RetryDelay,
		RetryMaxDelay:       fc.RetryMaxDelay,
		MaxDeliveries:       fc.MaxDeliveries,
		InstanceRetries:     fc.InstanceRetries,
		ShutdownGrace:       fc.ShutdownGrace,
		Logger:              log,
		Registerer:          reg,
		TracerProvider:      p.tracer,
		Conflicts:           conflictPolicy(&d),
		Breaker: forward.BreakerOptions{
			Failures:         d.StowBreakerFailures,
			ProbeInterval:    d.StowBreakerProbeInterval,
			MaxProbeInterval: d.StowBreakerMaxProbeInterval,
			Prober:           client.STOW,
		},
	}
	fp, err := deidentify(o, &d, log)
	if err != nil {
		return nil, nil, err
	}
	if r.keys == nil {
		r.keys = map[string]string{}
	}
	r.keys[d.Name] = fp
	prof := d.Profile()
	log.Info("destination profile", "destination", d.Name, "profile", prof.Name, "on_conflict", d.StowOnConflict,
		"conflict_reasons", config.ConflictRules(prof.ConflictReasons).String(), "replace_method", prof.ReplaceMethod, "source", prof.Source)
	if d.Verifies() {
		o.Verifier = client.STOW
		log.Info("forwarded studies are verified at the destination over QIDO-RS", "destination", d.Name, "variable", d.VarName("STOW_VERIFY"))
	} else if fc.DeleteFromSource {
		log.Warn("buffer mode without verification: instances are deleted from the source on the strength of the destination's STOW-RS answer alone; set "+
			d.VarName("STOW_VERIFY")+"=qido to delete only instances the destination lists (docs/verification.md)", "destination", d.Name)
	}
	return o, tw, nil
}

// transferSyntaxes is the destination's STOW_TRANSFER_SYNTAXES, or its
// profile's accepted syntaxes when that is unset (none for orthanc and
// generic: any).
func transferSyntaxes(d *config.NamedDestination) []string {
	if len(d.StowTransferSyntaxes) > 0 {
		return d.StowTransferSyntaxes
	}
	return d.Profile().TransferSyntaxes()
}

// conflictPolicy is the destination's STOW_ON_CONFLICT with its profile's
// conflict answers and replace method.
func conflictPolicy(d *config.NamedDestination) forward.ConflictPolicy {
	prof := d.Profile()
	c := forward.ConflictPolicy{Action: d.StowOnConflict, Rules: prof.ConflictReasons, Setting: d.VarName("STOW_ON_CONFLICT")}
	if d.StowOnConflict == config.OnConflictReplace {
		c.Method = prof.ReplaceMethod
	}
	return c
}

// sourceFor returns the Orthanc of the event's source. An unknown source
// is an error matching forward.ErrUnknownSource, classified permanent: the
// forwarder gives the event back for a forwarder that knows the source
// (one being added), and dead-letters it once that has lasted; it can be
// replayed once the source is configured.
func (r *forwarderRole) sourceFor(name string) (forward.Source, error) {
	c, err := r.sources.Lookup(name)
	if err != nil {
		return nil, &forward.Error{Class: forward.Permanent, Err: err}
	}
	return c, nil
}

// sourceProbe asks the source Orthanc an event names for /system:
// whether it answers at all. Its studies are held (one source) or parked
// (several) while it does not.
func (r *forwarderRole) sourceProbe(ctx context.Context, source string) error {
	c, err := r.sources.Lookup(source)
	if err != nil {
		return err
	}
	_, err = c.System(ctx)
	return err
}

// maxParked is forward.Options.MaxParked: with several sources, a
// quarter of the consumer's MaxAckPending may be parked over the replicas
// serving the destination while a source is unavailable; with one, its
// studies hold their workers: nothing else is to be done meanwhile.
func (r *forwarderRole) maxParked(maxAckPending int) int {
	if len(r.sources.List()) < 2 {
		return 0
	}
	return max(1, maxAckPending/4)
}

// cleanerFor returns the Orthanc of the event's source for buffer mode.
func (r *forwarderRole) cleanerFor(name string) (forward.SourceCleaner, error) {
	return r.sources.Lookup(name)
}

// newDestinationTransport is tuned for a few long uploads to one host:
// connections are reused, HTTP/2 is used where offered, and a server that
// never answers is noticed.
func newDestinationTransport() *http.Transport {
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 32,
		// Below the common 60 s idle time-out of load balancers (AWS ALB,
		// nginx's 75 s), not below Orthanc's 1 s: closing idle
		// connections first costs cloud archives a TLS handshake. A POST
		// on a connection the far end is closing fails before any answer
		// and net/http does not send it again; the STOW client does, once,
		// on a new connection, within the attempt (dicomweb's send).
		IdleConnTimeout:       50 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A STOW-RS response comes after the whole body is stored; a
		// large request can take minutes, so no ResponseHeaderTimeout.

		// A connection a load balancer or NAT dropped silently would
		// stall every request multiplexed on it until the STOW client's
		// 5-minute watch, each counted a time-out against the request
		// limit and the breaker: pinged when quiet, it is closed in
		// under a minute.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second, WriteByteTimeout: time.Minute},
	}
}

// urlHost is the host of a configured URL: a bounded label value that
// holds no path, query or credentials.
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return u.Host
}

// watchMaxDeliver counts and logs, until ctx ends, the events JetStream
// stops delivering to a destination's forwarders (the consumer's
// MaxDeliver): an event that left the queue without a dead letter.
func watchMaxDeliver(ctx context.Context, p *process, destination string, reg prometheus.Registerer, log *slog.Logger) error {
	reached := prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "stowline_forwarder_max_deliver_reached_total",
		Help:        "Events JetStream stopped delivering to the forwarders after the consumer's MaxDeliver, without a dead letter; `forwarder audit` lists their studies.",
		ConstLabels: prometheus.Labels{"destination": destination},
	})
	if err := reg.Register(reached); err != nil {
		return err
	}
	for _, lane := range events.Priorities {
		stop, err := natsjs.WatchMaxDeliver(p.conn.NC, natsjs.LaneConsumerName(destination, lane), func(a natsjs.MaxDeliverReached) {
			reached.Inc()
			log.Error("JetStream stopped delivering an event after the consumer's MaxDeliver, without a dead letter: run `forwarder audit --destination <destination> --enqueue` to queue its study again for this destination (without --destination, the audit's copy would be dropped as a duplicate within EVENTS_DEDUPE_WINDOW)",
				"destination", destination, "lane", lane, "stream_seq", a.StreamSeq, "deliveries", a.Deliveries)
		})
		if err != nil {
			return err
		}
		context.AfterFunc(ctx, stop)
	}
	return nil
}

// laneWindows is FORWARD_WINDOWS as the forwarders ask it.
type laneWindows config.ForwardWindows

func (w laneWindows) Open(lane events.Priority, now time.Time) bool {
	return config.ForwardWindows(w).Open(string(lane), now)
}

// lanesPresent is a readiness check failing once the event stream or a
// lane's consumer was deleted while this forwarder ran (it takes none of
// that lane's events until restarted), or while a consumer does not
// answer: on a cluster, its leader's server was lost and no other has
// taken over yet, and nothing can be pulled from it. The jetstream check
// reads only the event stream, whose leader may be another server. The
// lanes are read at once, so one that does not answer leaves the others
// their time.
func lanesPresent(destination string, lanes []forward.Lane) web.Check {
	return func(ctx context.Context) error {
		errs := make([]error, len(lanes))
		var wg sync.WaitGroup
		for i, l := range lanes {
			wg.Go(func() { _, errs[i] = l.Consumer.Info(ctx) })
		}
		wg.Wait()
		var gone, silent []string
		for i, err := range errs {
			name := lanes[i].Consumer.CachedInfo().Name
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound):
				// Every consumer went with it: no leader to wait for.
				return fmt.Errorf("destination %s: JetStream has no event stream %s, its queues went with it (a NATS server restarted without its store?); "+
					"the process stops if it stays missing, and its next start creates them again", destination, natsjs.EventStream)
			case errors.Is(err, jetstream.ErrConsumerNotFound):
				gone = append(gone, name)
			case err != nil:
				silent = append(silent, "consumer "+name+": "+err.Error())
			}
		}
		if len(gone) > 0 {
			return fmt.Errorf("destination %s: consumer %s deleted while this forwarder ran; restart it to create it again, or take the destination out of FORWARDER_DESTINATIONS", destination, strings.Join(gone, ", "))
		}
		if len(silent) > 0 {
			return fmt.Errorf("destination %s: its queue does not answer, nothing can be pulled (on a cluster: a consumer's leader was lost and no other server has taken over yet): %s", destination, strings.Join(silent, "; "))
		}
		return nil
	}
}

// forwarderHTTPStopGrace is what the forwarder's HTTP server gives its
// requests in flight once the forwarders have drained: they ran through
// the shutdown grace already, and the stop's budget after it (the chart's
// terminationGracePeriodSeconds check: grace + 15 s) has no room for
// HTTPShutdownGrace. It runs alongside the removal of the status key
// (2 s at most).
const forwarderHTTPStopGrace = 2 * time.Second

// whenDrained returns a context that ends once ctx has ended and running
// is done.
func whenDrained(ctx context.Context, running *sync.WaitGroup) context.Context {
	drained, cancel := context.WithCancel(context.WithoutCancel(ctx))
	context.AfterFunc(ctx, func() {
		running.Wait()
		cancel()
	})
	return drained
}

// checkName is the name of a destination's readiness check: base alone
// for the default destination, base_<name> with DESTINATIONS.
func checkName(base string, d config.NamedDestination) string {
	if d.Var == "" {
		return base
	}
	return base + "_" + d.Name
}

// tokenCheck is a destination's readiness check: a token is at hand. It
// reports the token source's state without asking the identity provider
// itself: a probe every few seconds would otherwise send refused
// credentials that often, past the background retry's backoff.
func tokenCheck(destination string, tokens *auth.TokenSource) web.Check {
	return func(ctx context.Context) error {
		if err := tokens.Ready(ctx); err != nil {
			return fmt.Errorf("destination %s token: %w", destination, err)
		}
		return nil
	}
}
