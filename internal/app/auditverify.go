package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
)

// verifyAuditArgs are the flags of `forwarder audit --verify`.
type verifyAuditArgs struct {
	cfg         config.Audit
	getenv      func(string) string
	destination string
	since       time.Duration
	enqueue     bool
	lane        events.Priority
	asJSON      bool
}

// runVerifyAudit checks the studies forwarded to one destination against
// what it lists over QIDO-RS.
func runVerifyAudit(ctx context.Context, a verifyAuditArgs, stdout, stderr io.Writer) error {
	const program = "forwarder audit --verify"
	// The destination's settings, read as the forwarder reads them.
	var dc config.CheckCommand
	if err := config.Load(a.getenv, &dc); err != nil {
		return &usageError{fmt.Errorf("%s: invalid destination configuration:\n%w", program, err)}
	}
	var dest *config.NamedDestination
	for _, d := range dc.DestinationList() {
		if d.Name == a.destination {
			dest = &d
			break
		}
	}
	if dest == nil || dest.DICOMwebURL == "" {
		return destinationNotFound(program, &dc.Forwarder, a.destination)
	}
	log := newLogger(stderr, a.cfg.Log)
	ctx, cancel := context.WithCancel(ctx) // stops background token refreshes on return
	defer cancel()
	sources, err := newSources(&a.cfg.Orthanc)
	if err != nil {
		return err
	}
	tp, stopTracing, err := startTracing(ctx, program, "stowline-audit", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	client, err := newDestination(ctx, dest, nil, tp, log.With("destination", dest.Name))
	if err != nil {
		return err
	}
	rt, err := newRoute(*dest, sources)
	if err != nil {
		return err
	}
	js, err := connectTool(ctx, a.cfg.NATS, log)
	if err != nil {
		return err
	}
	defer js.Close()
	l, err := ledger.Open(ctx, js.JS, dest.Name)
	if errors.Is(err, ledger.ErrNoBucket) {
		return fmt.Errorf("%s: no completed forward is recorded for destination %s", program, dest.Name)
	}
	if err != nil {
		return err
	}
	if a.enqueue {
		if err := requireDestination(ctx, js.JS, dest.Name, a.lane); err != nil {
			return operatorsMistake(fmt.Errorf("%s: --enqueue: %w", program, err))
		}
	}
	opts := ledger.VerifyOptions{
		Destination: dest.Name,
		Ledger:      l,
		Since:       time.Now().Add(-a.since),
		SourceFor: func(source string) (ledger.VerifySource, error) {
			return sources.Lookup(source)
		},
		Listed: client.STOW.StudyInstanceUIDs,
		Publish: func(ctx context.Context, ev *events.StudyStable, msgID string) (*jetstream.PubAck, error) {
			// In --priority's lane, as the plain audit's repairs.
			queued := *ev
			queued.Priority = a.lane
			return publishTraced(ctx, tp, "audit enqueue", "audit", dest.Name, &queued, msgID, func(ctx context.Context) (*jetstream.PubAck, error) {
				return natsjs.PublishTo(ctx, js.JS, natsjs.LaneSubject(a.lane, dest.Name, ev.Source), &queued, msgID)
			})
		},
		Logger: log.With("component", "audit"),
	}
	if rt != nil {
		opts.Select = rt.Select
	}
	if dest.Deidentifies() {
		// The destination holds keyed UIDs; the original UIDs must
		// not reach it (nor its access logs).
		k, err := keyer(dest)
		if err != nil {
			return &usageError{fmt.Errorf("%s: %w", program, err)}
		}
		opts.Keyed = k.UID
	}

	report, flush := verifyReporter(stdout, a.asJSON)
	sum, err := ledger.Verify(ctx, opts, a.enqueue, report)
	if ferr := flush(); err == nil {
		err = ferr
	}
	// The summary comes first even after an error: a study or a source
	// that could not be checked does not stop the others', and the
	// operator needs to see how many were.
	fmt.Fprintf(stderr, "audit --verify: %d studies forwarded to %s since %s, %d held in full, %d with %d missing instances, %d no longer in the source, %d changed since",
		sum.Studies, dest.Name, opts.Since.UTC().Format(time.RFC3339), sum.Verified, sum.Findings, sum.MissingInstances, sum.Gone, sum.Changed)
	if a.enqueue {
		fmt.Fprintf(stderr, ", %d enqueued", sum.Enqueued)
	}
	if sum.OtherKey > 0 {
		fmt.Fprintf(stderr, "; %d forwarded under an earlier de-identification key, checked by their number of instances, %d with fewer listed (never re-forwarded: see the log)",
			sum.OtherKey, sum.OtherKeyShort)
	}
	if sum.Capped > 0 {
		fmt.Fprintf(stderr, "; %d not verifiable in full, a series beyond the destination's search cap (not missing, never enqueued: see the log)", sum.Capped)
	}
	if sum.NotVerified > 0 {
		fmt.Fprintf(stderr, "; %d not verified (see the log and the error below)", sum.NotVerified)
	}
	fmt.Fprintln(stderr)
	if sum.NotEnqueued > 0 {
		err = errors.Join(err, fmt.Errorf("%d studies could not be enqueued (see the log)", sum.NotEnqueued))
	}
	if err != nil {
		return err
	}
	if sum.Findings > 0 && !a.enqueue {
		return fmt.Errorf("%d studies with %d instances %w (--enqueue re-forwards them)", sum.Findings, sum.MissingInstances, ErrMissing)
	}
	if sum.OtherKeyShort > 0 {
		// --enqueue cannot repair them: their pseudonyms are the old key's.
		return fmt.Errorf("%d studies forwarded under an earlier de-identification key have instances %w (see the log)", sum.OtherKeyShort, ErrMissing)
	}
	return nil
}

// parseSince reads a look-back window: a Go duration (36h) or whole days
// (7d).
func parseSince(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("%q: want e.g. 7d or 36h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want e.g. 7d or 36h", s)
	}
	return d, nil
}

// verifyReporter writes the verifying audit's findings to stdout: one
// JSON object a line, or a table of the missing instances (a row each)
// written a block at a time. flush writes what is left.
func verifyReporter(stdout io.Writer, asJSON bool) (report func(ledger.VerifyFinding) error, flush func() error) {
	if asJSON {
		enc := json.NewEncoder(stdout)
		return func(f ledger.VerifyFinding) error { return enc.Encode(f) }, func() error { return nil }
	}
	t := newBlockTable(stdout, "DESTINATION\tSOURCE\tORTHANC STUDY ID\tSTUDY INSTANCE UID\tORTHANC INSTANCE ID\tSOP INSTANCE UID\tENQUEUED")
	report = func(f ledger.VerifyFinding) error {
		enq := "-"
		switch {
		case f.Enqueued:
			enq = "yes"
		case f.Problem != "":
			enq = "failed: " + f.Problem
		}
		for _, m := range f.Missing {
			if err := t.row("%s\t%s\t%s\t%s\t%s\t%s\t%s", f.Destination, f.Source, f.OrthancStudyID, f.StudyInstanceUID,
				m.OrthancInstanceID, m.SOPInstanceUID, enq); err != nil {
				return err
			}
		}
		return nil
	}
	return report, t.flush
}
