package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
)

// auditUsage heads `forwarder audit -h`.
const auditUsage = `Usage: forwarder audit [--destination NAME] [--enqueue [--priority P]] [--json]
       forwarder audit --verify --destination NAME [--since 7d] [--enqueue [--priority P]] [--json]
       forwarder audit --kept [--destination NAME] [--since 30d] [--json]

Lists, for each destination (those with a consumer on the event stream, or
the one named), the stable studies present in each Orthanc source that
have no record of a completed forward of their current state
(LastUpdate), and with --enqueue publishes their events for the
destinations that lack them, in the low lane (--priority routine or stat
to change it: docs/priority-lanes.md), so the forwarders send them. It
reads every study: --since is for --verify and --kept only (for a window
of an archive, forwarder backfill --from source --since --until). Studies go to
stdout (a table, or one JSON object a line), the summary and logs to
stderr. Exit status: 0 nothing missing, or all of it queued or already
queued (its event stored within the event stream's duplicate window, or
one for that destination alone held in its lanes: waiting, being
forwarded or dead-lettered; not queued again) or probably
queued (missing at some destinations only, each holding events not
acknowledged as old as the study's forward to the others: its own event
may be among them; a later audit queues it once that one holds none so
old), 3 studies missing and no --enqueue, 1 a failure, 2 a usage or
configuration error.
--destination NAME --enqueue queues a study again for that destination
even if queued already: for a copy known lost (a dead letter goes back
with forwarder replay).

With --verify it asks the destination itself instead: for each study the
destination's ledger records as forwarded within --since, it lists the
study's instances over QIDO-RS and reports those the destination does not
hold (Orthanc IDs and UIDs only); --enqueue then re-forwards those studies
to that destination alone. --verify reads the destination's variables
(DICOMWEB_URL or DESTINATION_<NAME>_URL, OAUTH_*, TLS_*...) as the
forwarder does (docs/verification.md).

With --kept it lists, from each destination's ledger alone (not
Orthanc), the studies recorded as forwarded (within --since, or all)
whose record keeps instances the destination does not hold as sent: a
conflict skipped (STOW_ON_CONFLICT=skip: a correction the archive
refused), a copy stowline cannot prove it stored, one the destination
changed (B000, B006). The plain audit counts them forwarded; buffer mode
keeps those instances in Orthanc. --json gives their SOP Instance UIDs.
Exit status: 0 listed (found or not), 1 a failure, 2 a usage error.

`

// RunAudit runs `forwarder audit ARGS` against the NATS server of a
// running deployment.
func RunAudit(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return runAudit(ctx, args, getenv, stdout, stderr, nil)
}

// runAudit is RunAudit; tune, when set, changes the auditor's options
// before it runs (tests: its clock and clock margin).
func runAudit(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, tune func(*ledger.AuditOptions)) error {
	const program = "forwarder audit"
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	enqueue := fs.Bool("enqueue", false, "publish the events of the studies found (the same the Lua script sends; for the destinations that lack them), so the forwarders send them")
	only := fs.String("destination", "", "audit only this destination")
	asJSON := fs.Bool("json", false, "write one JSON object a line instead of a table")
	verify := fs.Bool("verify", false, "ask the destination (QIDO-RS) whether it holds every instance of the studies forwarded to it within --since; needs --destination")
	since := fs.String("since", "7d", "with --verify: how far back forwards are checked, e.g. 7d, 36h; with --kept: how far back forwards are listed (default: all)")
	kept := fs.Bool("kept", false, "list the studies forwarded whose ledger record keeps instances the destination does not hold as sent (a conflict skipped, an unproven copy, one it changed), from the ledger alone")
	lane := laneFlag(fs)
	var cfg config.Audit
	if done, err := parseCommand(fs, auditUsage, args, getenv, stdout, stderr, &cfg); done || err != nil {
		return err
	}
	if blank := blankFlags(fs); len(blank) > 0 {
		// --destination "$D" with $D unset would audit, and queue for,
		// every destination; --priority "" would be routine.
		return &usageError{fmt.Errorf("%s: %s: empty: give a value or leave the flag out", program, strings.Join(blank, ", "))}
	}
	if !*verify && !*kept && flagSet(fs, "since") {
		// Only --verify and --kept read it: an audit that took it for a
		// window would look at every study all the same.
		return &usageError{fmt.Errorf("%s: --since works only with --verify or --kept (for a window of an archive use forwarder backfill --from source --since --until)", program)}
	}
	if *kept && (*verify || *enqueue) {
		// A listing: what to do about each study is an operator's call.
		return &usageError{fmt.Errorf("%s: --kept lists only: not with --verify or --enqueue", program)}
	}
	if err := lane.parse(); err != nil {
		return &usageError{fmt.Errorf("%s: %w", program, err)}
	}
	if !*enqueue && flagSet(fs, "priority") {
		return &usageError{fmt.Errorf("%s: --priority works only with --enqueue", program)}
	}
	if *kept {
		var window time.Duration
		if flagSet(fs, "since") {
			var err error
			if window, err = parseSince(*since); err != nil {
				return &usageError{fmt.Errorf("%s: --since: %w", program, err)}
			}
		}
		return runKeptAudit(ctx, cfg, *only, window, *asJSON, stdout, stderr)
	}
	if *verify {
		window, err := parseSince(*since)
		if err != nil {
			return &usageError{fmt.Errorf("%s: --since: %w", program, err)}
		}
		if *only == "" {
			return &usageError{fmt.Errorf("%s: --verify needs --destination", program)}
		}
		return runVerifyAudit(ctx, verifyAuditArgs{cfg: cfg, getenv: getenv, destination: *only, since: window, enqueue: *enqueue, lane: lane.lane, asJSON: *asJSON}, stdout, stderr)
	}
	// Logs go to stderr: stdout carries the findings.
	log := newLogger(stderr, cfg.Log)
	sources, err := newSources(&cfg.Orthanc)
	if err != nil {
		return err
	}
	tp, stopTracing, err := startTracing(ctx, program, "stowline-audit", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	js, err := connectTool(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer js.Close()
	dests, firstStart, err := auditDestinations(ctx, js, *only, log)
	if err != nil {
		return err
	}
	var skipped []error
	// Before any forwarder ran no consumer exists, and the first ones
	// take what the stream holds (natsjs.Topology.EnsureLanes): nothing
	// to check.
	if *enqueue && !firstStart {
		var taken []ledger.Destination
		taken, skipped, err = repairsTaken(ctx, js.JS, dests, lane.lane, *only == "")
		if err != nil {
			return err
		}
		if len(skipped) > 0 && *only != "" {
			return &usageError{fmt.Errorf("%s: --enqueue: %w", program, skipped[0])}
		}
		// One half-removed destination must not block the others'
		// repairs: it is left out, named, and the audit exits 1. The
		// event for every destination still suits the others: in this
		// lane it reaches none of those left out.
		for _, e := range skipped {
			log.Error("destination not audited: its repairs would reach nobody", "err", e)
		}
		if len(taken) == 0 {
			return fmt.Errorf("%s: --enqueue: no destination takes the repairs: %w", program, errors.Join(skipped...))
		}
		dests = taken
	}
	var as []ledger.Source
	for _, s := range sources.List() {
		as = append(as, ledger.Source{Name: s.Name, Orthanc: s.Client})
	}
	opts := ledger.AuditOptions{
		Sources:      as,
		Destinations: dests,
		Some:         *only != "",
		Publish:      auditPublish(js.JS, tp, lane.lane, *only != ""),
		Logger:       log.With("component", "audit"),
	}
	if *enqueue && *only == "" {
		// A scheduled audit must not send a study twice to a destination
		// that is merely behind: named, it queues what is missing anyway.
		opts.Held = func(ctx context.Context, destination string) (time.Time, error) {
			return natsjs.OldestHeld(ctx, js.JS, destination)
		}
		// A copy an operator queued for one destination (a backfill, a
		// replay) is newer than the others' forward: only its study tells.
		opts.HeldAlone = func(ctx context.Context, destination string) (map[natsjs.StudyKey]string, error) {
			return natsjs.HeldAlone(ctx, js.JS, destination)
		}
		if opts.EventsMaxAge, opts.Now, err = eventsClock(ctx, js.JS); err != nil {
			return err
		}
	}
	if tune != nil {
		tune(&opts)
	}
	a, err := ledger.NewAuditor(opts)
	if err != nil {
		return err
	}

	report, flush := auditReporter(stdout, *asJSON)
	// A source that could not be read leaves the others audited: the
	// summary and the other errors still follow.
	sum, runErr := a.Run(ctx, *enqueue, report)
	if ferr := flush(); runErr == nil {
		runErr = ferr
	}
	fmt.Fprintf(stderr, "audit: %d studies, %d forwarded to every destination, %d still receiving (skipped), %d missing at a destination (%d findings: a study once per destination)",
		sum.Studies, sum.Forwarded, sum.Unstable, sum.Missing, sum.Findings)
	if *enqueue {
		fmt.Fprintf(stderr, ", %d findings queued, %d already queued, %d probably queued", sum.Enqueued, sum.Duplicates, sum.ProbablyQueued)
	}
	fmt.Fprintln(stderr)
	if sum.Duplicates > 0 {
		// Not a failure: a backlog, an open breaker or a closed lane
		// keeps events waiting, and a scheduled audit must not alert on
		// them nor send them twice.
		fmt.Fprintf(stderr, "audit: %d findings not queued again: the event stream holds their event from within its duplicate window%s, or one queued for their destination alone (a backfill, a replay, an earlier audit's repair) its lanes have not acknowledged: waiting in its lane, being forwarded, or dead-lettered (forwarder replay list; forwarder replay sends a dead letter again). Only for a copy known lost (forwarded and its record lost, its deliveries run out with no dead letter) does forwarder audit --destination NAME --enqueue queue it again for that destination\n",
			sum.Duplicates, streamDuplicateWindow(ctx, js.JS))
	}
	if sum.ProbablyQueued > 0 {
		fmt.Fprintf(stderr, "audit: %d findings not queued: missing at some destinations only, each of which holds events not acknowledged as old as the study's forward to the others, among them perhaps its own (a backlog, an open breaker, a closed lane, a retry); a later audit queues them once that destination holds none so old. Only for a copy known lost does forwarder audit --destination NAME --enqueue queue it now\n",
			sum.ProbablyQueued)
	}
	var errs []error
	if runErr != nil {
		errs = append(errs, runErr)
	}
	if len(skipped) > 0 {
		errs = append(errs, fmt.Errorf("not audited, their repairs would reach nobody (forwarder destinations; finish a removal with forwarder destinations remove): %w", errors.Join(skipped...)))
	}
	if sum.NotEnqueued > 0 {
		errs = append(errs, fmt.Errorf("%d findings could not be enqueued (see the log)", sum.NotEnqueued))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if sum.Missing > 0 && !*enqueue {
		return fmt.Errorf("%d studies %w (--enqueue queues them)", sum.Missing, ErrMissing)
	}
	return nil
}

// runKeptAudit is `forwarder audit --kept`: it lists the studies each
// destination's ledger records as forwarded within window (0: all)
// whose record keeps instances (ledger.ListKept).
func runKeptAudit(ctx context.Context, cfg config.Audit, only string, window time.Duration, asJSON bool, stdout, stderr io.Writer) error {
	log := newLogger(stderr, cfg.Log)
	js, err := connectTool(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer js.Close()
	dests, _, err := auditDestinations(ctx, js, only, log)
	if err != nil {
		return err
	}
	var since time.Time
	if window > 0 {
		since = time.Now().Add(-window)
	}
	report, flush := keptReporter(stdout, asJSON)
	total := 0
	var errs []error
	for _, d := range dests {
		records, ok := d.Records.(ledger.ForwardedRecords)
		if !ok {
			errs = append(errs, fmt.Errorf("destination %s: its ledger cannot be listed", d.Name))
			continue
		}
		n, err := ledger.ListKept(ctx, d.Name, records, since, report)
		total += n
		if err != nil {
			// One destination's ledger unreadable must not hide the
			// others' kept studies.
			errs = append(errs, err)
		}
	}
	if err := flush(); err != nil {
		errs = append(errs, err)
	}
	fmt.Fprintf(stderr, "audit --kept: %d studies forwarded with instances the destination does not hold as sent (a study once per destination)\n", total)
	return errors.Join(errs...)
}

// keptReporter writes audit --kept's studies to stdout: one JSON object a
// line, with every kept SOP Instance UID, or a table naming how many and
// the first. flush writes what is left.
func keptReporter(stdout io.Writer, asJSON bool) (report func(ledger.KeptStudy) error, flush func() error) {
	if asJSON {
		enc := json.NewEncoder(stdout)
		return func(k ledger.KeptStudy) error { return enc.Encode(k) }, func() error { return nil }
	}
	t := newBlockTable(stdout, "DESTINATION\tSOURCE\tORTHANC STUDY ID\tSTUDY INSTANCE UID\tLAST UPDATE\tFORWARDED AT\tKEPT\tFIRST KEPT SOP INSTANCE UID")
	report = func(k ledger.KeptStudy) error {
		n, first := strconv.Itoa(len(k.Kept)), "-"
		if k.KeptAll {
			n = "all"
		} else if len(k.Kept) > 0 {
			first = slices.Min(k.Kept)
		}
		return t.row("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", k.Destination, k.Source, k.OrthancStudyID, k.StudyInstanceUID, k.LastUpdate,
			k.ForwardedAt.UTC().Format(time.RFC3339), n, first)
	}
	return report, t.flush
}

// streamDuplicateWindow says the event stream's duplicate window, " (2m0s)",
// as the stream holds it (the local EVENTS_DEDUPE_WINDOW may differ), or
// nothing if the stream cannot say.
func streamDuplicateWindow(ctx context.Context, js jetstream.JetStream) string {
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		return ""
	}
	return " (" + s.CachedInfo().Config.Duplicates.String() + ")"
}

// flagSet reports whether the command line gave the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// auditPublish queues the audit's repairs in lane, by default the low
// lane (docs/priority-lanes.md): after a first start on an Orthanc that
// holds an archive they are the whole archive, which must not hold up the
// live routine studies. The event for every destination keeps the study's own
// dedupe ID, which does not depend on the lane, so that it and the
// webhook's or the reconciler's copy are stored once. The event for one
// destination has a dedupe ID of its own: fixed, so that a scheduled
// audit run while a destination is down queues a study once, not once a
// run; new each run when the operator named the destination (perRun), so
// that it queues again a copy known lost.
func auditPublish(js jetstream.JetStream, tp trace.TracerProvider, lane events.Priority, perRun bool) func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
	return func(ctx context.Context, destination string, ev *events.StudyStable) (*jetstream.PubAck, error) {
		queued := *ev
		queued.Priority = lane
		subject := natsjs.LaneSubject(lane, destination, ev.Source)
		msgID := ev.MsgID()
		if destination != "" {
			msgID += "/audit/" + destination
			if perRun {
				msgID += "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
			}
		}
		return publishTraced(ctx, tp, "audit enqueue", "audit", destination, &queued, msgID, func(ctx context.Context) (*jetstream.PubAck, error) {
			return natsjs.PublishTo(ctx, js, subject, &queued, msgID)
		})
	}
}

// repairsTaken checks, before the audit queues anything, that each
// destination's lane takes its repairs, as replays and backfills do
// (requireDestination): queued without a consumer they would reach
// nobody. everyOne: the event for every destination may be queued too
// (no --destination), which a destination's forwarders from before lanes
// do not take. taken are the destinations that take them; skipped says
// why each other one does not (ErrNoConsumer); err is a failure to ask.
func repairsTaken(ctx context.Context, js jetstream.JetStream, dests []ledger.Destination, lane events.Priority, everyOne bool) (taken []ledger.Destination, skipped []error, err error) {
	for _, d := range dests {
		err := requireDestination(ctx, js, d.Name, lane)
		if err == nil && everyOne {
			err = deadletter.Taken(ctx, js, d.Name, lane, natsjs.LaneSubject(lane, "", "any-source"))
		}
		switch {
		case err == nil:
			taken = append(taken, d)
		case errors.Is(err, deadletter.ErrNoConsumer):
			skipped = append(skipped, err)
		default:
			return nil, nil, err
		}
	}
	return taken, skipped, nil
}

// eventsClock is the event stream's MaxAge (0: none, or no stream yet,
// when nothing can have expired) and the NATS server's clock, as its
// answer gave it (nil: it gave none): the audit compares the server's
// times, never this host's clock, which may be skewed.
func eventsClock(ctx context.Context, js jetstream.JetStream) (time.Duration, func() time.Time, error) {
	s, err := natsjs.OpenStream(ctx, js, natsjs.EventStream)
	if errors.Is(err, natsjs.ErrNotProvisioned) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	info := s.CachedInfo()
	if info.TimeStamp.IsZero() {
		return info.Config.MaxAge, nil, nil
	}
	// Read at most a round trip late: well within the audit's margin.
	skew := time.Until(info.TimeStamp)
	return info.Config.MaxAge, func() time.Time { return time.Now().Add(skew) }, nil
}

// auditReporter writes the audit's findings to stdout: one JSON object a
// line, or a table written a block at a time. flush writes what is left.
func auditReporter(stdout io.Writer, asJSON bool) (report func(ledger.Finding) error, flush func() error) {
	if asJSON {
		enc := json.NewEncoder(stdout)
		return func(f ledger.Finding) error { return enc.Encode(f) }, func() error { return nil }
	}
	t := newBlockTable(stdout, "DESTINATION\tSOURCE\tORTHANC STUDY ID\tSTUDY INSTANCE UID\tLAST UPDATE\tFORWARDED\tREASON\tENQUEUED")
	report = func(f ledger.Finding) error {
		fwd, enq := f.ForwardedLastUpdate, "-"
		if fwd == "" {
			fwd = "-"
		}
		switch {
		case f.ProbablyQueued:
			enq = "probably queued"
		case f.Duplicate:
			enq = "already queued"
		case f.Enqueued:
			enq = "yes"
		case f.Problem != "":
			enq = "failed: " + f.Problem
		}
		return t.row("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", f.Destination, f.Source, f.OrthancStudyID, f.StudyInstanceUID, f.LastUpdate, fwd, f.Reason, enq)
	}
	return report, t.flush
}

// auditDestinations are the destinations the audit compares Orthanc with:
// those with a consumer on the event stream (or the one named), each with
// its ledger; a destination whose forwarders never completed a forward
// has no ledger yet, and every stable study is reported for it.
// firstStart: no forwarder has run yet (no lane consumer of any kind,
// natsjs.AnyLaneConsumer): the first consumers will take what the stream
// holds. A leftover stat or low consumer is no first start here, though
// EnsureLanes may treat it as one: the audit then checks that its
// repairs are taken, refusing rather than queuing for nobody.
func auditDestinations(ctx context.Context, conn *natsjs.Conn, only string, log *slog.Logger) (dests []ledger.Destination, firstStart bool, err error) {
	names, err := natsjs.ListDestinations(ctx, conn.JS)
	if err != nil && !errors.Is(err, natsjs.ErrNotProvisioned) {
		return nil, false, err
	}
	if only != "" {
		if !slices.Contains(names, only) {
			return nil, false, &usageError{fmt.Errorf("forwarder audit: --destination %q has no consumer on the event stream (known: %s)", only, strings.Join(names, ", "))}
		}
		names = []string{only}
	}
	if len(names) == 0 {
		lanes, err := natsjs.AnyLaneConsumer(ctx, conn.JS)
		if err != nil {
			return nil, false, err
		}
		log.Warn("no destination has a consumer on the event stream: every stable study is reported for the default destination", "first_start", !lanes)
		names, firstStart = []string{natsjs.DefaultDestination}, !lanes
	}
	for _, name := range names {
		var rec ledger.Records
		rec, err := ledger.Open(ctx, conn.JS, name)
		if errors.Is(err, ledger.ErrNoBucket) {
			log.Warn("no completed forward is recorded yet for this destination: every stable study is reported", "destination", name)
			rec = noLedger{}
		} else if err != nil {
			return nil, false, err
		}
		dests = append(dests, ledger.Destination{Name: name, Records: rec})
	}
	return dests, firstStart, nil
}

// noLedger is the ledger before any forwarder created the bucket.
type noLedger struct{}

func (noLedger) Lookup(context.Context, string, string) (ledger.Record, error) {
	return ledger.Record{}, ledger.ErrNotRecorded
}

// Forwarded walks no record: none was written.
func (noLedger) Forwarded(context.Context, time.Time, func(string, string, ledger.Record) error) error {
	return nil
}
