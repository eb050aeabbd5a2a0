package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/inorder"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// backfillUsage heads `forwarder backfill -h`.
const backfillUsage = `Usage: forwarder backfill --destination NAME --since T [--until T] [--from stream|source] [--priority P] [--dry-run]

Queues older studies for one destination only, for example a destination
added to a running deployment (which starts with the studies that arrive
after it). --from stream (the default) takes the events the event stream
received in the window (it keeps EVENTS_RETENTION); --from source takes
the stable studies of each Orthanc source whose last update is in the
window, however old. T is a time with its zone (2026-11-01T08:00Z,
2026-11-01T08:00-05:00), a date or a time without a zone, read as UTC
(2026-11-01: the UTC day, not the site's), or a duration back from now
(72h). The other destinations get nothing. The studies go in the
low lane, after live studies (--priority routine or stat to change it;
docs/priority-lanes.md). Logs go to stderr.

`

// RunBackfill runs `forwarder backfill ARGS`.
func RunBackfill(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	const program = "forwarder backfill"
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	destination := fs.String("destination", "", "the destination to queue the studies for (required)")
	since := fs.String("since", "", "start of the window (required)")
	until := fs.String("until", "", "end of the window (default now)")
	from := fs.String("from", "stream", "stream (the events received in the window) or source (the studies in Orthanc)")
	lane := laneFlag(fs)
	dryRun := fs.Bool("dry-run", false, "only list what would be queued")
	var cfg config.Audit
	if done, err := parseCommand(fs, backfillUsage, args, getenv, stdout, stderr, &cfg); done || err != nil {
		return err
	}
	if blank := blankFlags(fs); len(blank) > 0 {
		// --until "$T" with $T unset would widen the window to now.
		return &usageError{fmt.Errorf("%s: %s: empty: give a value or leave the flag out", program, strings.Join(blank, ", "))}
	}
	if *destination == "" || *since == "" {
		return &usageError{fmt.Errorf("%s: --destination and --since are required", program)}
	}
	start, err := deadletter.ParseTime(*since)
	if err != nil {
		return &usageError{fmt.Errorf("%s: --since: %w", program, err)}
	}
	var end time.Time
	if *until != "" {
		if end, err = deadletter.ParseTime(*until); err != nil {
			return &usageError{fmt.Errorf("%s: --until: %w", program, err)}
		}
		if !end.After(start) {
			return &usageError{fmt.Errorf("%s: --until must be after --since", program)}
		}
	}
	if err := lane.parse(); err != nil {
		return &usageError{fmt.Errorf("%s: %w", program, err)}
	}
	if *from != "stream" && *from != "source" {
		return &usageError{fmt.Errorf("%s: --from %q: want stream or source", program, *from)}
	}
	log := newLogger(stderr, cfg.Log)
	conn, err := connectTool(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := requireDestination(ctx, conn.JS, *destination, lane.lane); err != nil {
		return operatorsMistake(fmt.Errorf("%s: %w", program, err))
	}
	// Rows are written as the studies are queued, a block at a time, so
	// that a backfill of a whole archive holds no list in memory and
	// shows its progress.
	w := newBlockTable(stdout, "SOURCE\tORTHANC STUDY\tSTUDY UID\tLAST UPDATE\tNOTE")
	invalid := 0
	emit := func(ev *events.StudyStable, duplicate bool, invalidErr error) {
		note := "-"
		switch {
		case invalidErr != nil:
			invalid++
			note = "not queued: invalid event (" + invalidErr.Error() + ")"
		case duplicate:
			note = "not queued again (duplicate)"
		}
		// One line each: an invalid study's fields are as Orthanc has
		// them, a tab or an escape sequence included.
		_ = w.row("%s\t%s\t%s\t%s\t%s", oneLine(ev.Source), oneLine(ev.OrthancStudyID), oneLine(ev.StudyInstanceUID), oneLine(ev.LastUpdate), oneLine(note))
	}
	dups, unreadable := 0, 0
	if *from == "stream" {
		var evs []events.StudyStable
		evs, unreadable, err = deadletter.ReforwardIn(ctx, conn.JS, *destination, lane.lane, start, end, *dryRun)
		for i := range evs {
			emit(&evs[i], false, nil)
		}
	} else {
		dups, err = backfillFromSources(ctx, conn, &cfg.Orthanc, *destination, lane.lane, start, end, *dryRun, emit)
	}
	_ = w.flush()
	verb := "queued for"
	if *dryRun {
		verb = "would be queued for"
	}
	fmt.Fprintf(stdout, "%d studies %s %s\n", w.rows-dups-invalid, verb, *destination)
	if invalid > 0 {
		fmt.Fprintf(stdout, "%d studies not queued: their event would be invalid (the NOTE says why; the error names them)\n", invalid)
	}
	if *from == "stream" {
		unreadableNote(unreadable, stdout)
		streamWindowNote(ctx, conn.JS, start, end, stdout)
	}
	if dups > 0 {
		fmt.Fprintf(stdout, "%d studies not queued again: a backfill queued them within the event stream's duplicate window%s; a dead-lettered one is sent again with `forwarder replay`\n",
			dups, streamDuplicateWindow(ctx, conn.JS))
	}
	return err
}

// laneFlagValue is --priority, the lane of what a command queues: low by
// default, after the live studies (docs/priority-lanes.md).
type laneFlagValue struct {
	s    *string
	lane events.Priority
}

// laneFlag defines --priority on fs; parse reads it once fs is parsed.
func laneFlag(fs *flag.FlagSet) *laneFlagValue {
	return &laneFlagValue{s: fs.String("priority", string(events.PriorityLow), "the lane: low, routine or stat")}
}

func (v *laneFlagValue) parse() error {
	lane, err := events.ParsePriority(*v.s)
	if err != nil {
		return fmt.Errorf("--priority: %w", err)
	}
	v.lane = lane
	return nil
}

// sourcePage is how many studies backfill reads from Orthanc at a time.
const sourcePage = 500

// backfillFromSources queues for destination the stable studies of every
// source whose LastUpdate falls in [start, end) (end zero: up to now),
// giving each to emit once queued (or, dry, found), with whether JetStream
// dropped it as queued by a backfill before, within the dedupe window;
// dups counts those. Orthanc writes LastUpdate in UTC. A source that cannot be
// read does not keep the others' studies from being queued: the error
// names each source not read to its end. Nor does a study whose event
// would be invalid (a malformed UID Orthanc stored) keep its source's
// later studies from being queued, as it did when it ended the walk: it
// is given to emit, in its place, with why (its fields as Orthanc lists
// them), not queued, and the error names it.
func backfillFromSources(ctx context.Context, conn *natsjs.Conn, oc *config.Orthanc, destination string, lane events.Priority, start, end time.Time, dryRun bool, emit func(ev *events.StudyStable, duplicate bool, invalid error)) (dups int, err error) {
	sources, err := newSources(oc)
	if err != nil {
		return 0, err
	}
	from, to := start.UTC().Format(orthancapi.TimeLayout), ""
	if !end.IsZero() {
		to = end.UTC().Format(orthancapi.TimeLayout)
	}
	var errs []error
	for _, src := range sources.List() {
		name := src.Name
		if name == "" {
			sys, err := src.Client.System(ctx)
			if err != nil {
				errs = append(errs, fmt.Errorf("orthanc: learn the source name: %w", err))
				continue
			}
			name = events.DefaultSourceName(sys.Name)
		}
		subject := natsjs.LaneSubject(lane, destination, name)
		// Up to natsjs.PublishWindow events at a time, each ended in the
		// order read: emit lists them and dups counts them as one at a
		// time would, and a failure or a cancelled ctx stops the walk
		// (those in flight are ended). The next page is read while the
		// last one's acks are awaited.
		p := inorder.New(natsjs.PublishWindow)
		var invalid []string // the Orthanc IDs of the studies not queued
		err := orthancapi.EachStudy(ctx, src.Client, sourcePage, func(st orthancapi.Study) error {
			if !st.IsStable || st.LastUpdate < from || (to != "" && st.LastUpdate >= to) {
				return nil
			}
			ev, invalidErr := events.NewStudyStable(name, st.ID, st.StudyInstanceUID, st.LastUpdate)
			skip := func() {
				invalid = append(invalid, st.ID)
				emit(ev, false, invalidErr)
			}
			if dryRun {
				if invalidErr != nil {
					skip()
				} else {
					emit(ev, false, nil)
				}
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if invalidErr != nil {
				// Listed after the publishes in flight: in Orthanc's order.
				return p.Run(func() error { return nil }, func(error) error { skip(); return nil })
			}
			var ack *jetstream.PubAck
			return p.Run(func() (err error) {
				// Not cancelled with the run: a publish cut off may be
				// stored all the same, unlisted and uncounted. Each is
				// bounded by the JetStream context's time-out.
				ack, err = natsjs.PublishTo(context.WithoutCancel(ctx), conn.JS, subject, ev, backfillMsgID(ev, destination, lane))
				return err
			}, func(err error) error {
				if err != nil {
					return err
				}
				if ack.Duplicate {
					dups++
				}
				emit(ev, ack.Duplicate, nil)
				return nil
			})
		})
		// A failed publish is the error even when the walk went on to fail
		// later (inorder.ErrStopped, a page, a study read after it): one
		// at a time, it had stopped at that publish.
		if perr := p.Wait(); perr != nil {
			err = perr
		}
		if err != nil {
			err = fmt.Errorf("source %s: %w", name, err)
		}
		if len(invalid) > 0 {
			err = errors.Join(err, fmt.Errorf("source %s: %d studies not queued, their event would be invalid (the table's NOTE says why): %s", name, len(invalid), someIDs(invalid)))
		}
		if err != nil {
			if ctx.Err() != nil {
				return dups, err
			}
			errs = append(errs, err)
		}
	}
	return dups, errors.Join(errs...)
}

// maxNamedIDs bounds the Orthanc IDs an error names: a source could
// hold thousands of studies not queued, each in the table already.
const maxNamedIDs = 20

// someIDs lists ids, up to maxNamedIDs of them, and how many more.
func someIDs(ids []string) string {
	if len(ids) <= maxNamedIDs {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:maxNamedIDs], ", "), len(ids)-maxNamedIDs)
}

// backfillMsgID is the dedupe ID of a backfill's event: one a study
// state, destination and lane, so that a rerun in another lane (--priority
// routine after a low-lane backfill held by FORWARD_WINDOWS) is queued,
// not dropped as a duplicate. The low lane, the default, keeps the ID it
// had before lanes were part of it: a rerun across an upgrade is still
// recognised as queued.
func backfillMsgID(ev *events.StudyStable, destination string, lane events.Priority) string {
	id := ev.MsgID() + "/backfill/" + destination
	if lane = lane.Lane(); lane != events.PriorityLow {
		id += "/" + string(lane)
	}
	return id
}

// unreadableNote writes deadletter.UnreadableNote's note for n messages
// a re-forward could not read, if any.
func unreadableNote(n int, w io.Writer) {
	if n > 0 {
		fmt.Fprintln(w, deadletter.UnreadableNote(n))
	}
}

// streamWindowNote writes deadletter.WindowNote's note, if any.
func streamWindowNote(ctx context.Context, js jetstream.JetStream, since, until time.Time, w io.Writer) {
	if note := deadletter.WindowNote(ctx, js, since, until); note != "" {
		fmt.Fprintln(w, note)
	}
}
