package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/natsjs"
)

func usagef(format string, args ...any) error { return &usageError{fmt.Errorf(format, args...)} }

// replayUsage is the command's help text.
const replayUsage = `Usage: forwarder replay COMMAND [flags]

Commands:
  list     [filters] [--json]          list dead-lettered studies (all if no filter)
  show     SEQ [--json]                show one dead letter
  run      filters|--all [--priority P] [--dry-run]
                                       put dead-lettered studies back in the queue,
                                       in the low lane (--priority routine or stat
                                       to go first: a replayed stat study)
  purge    filters|--all [--dry-run]   delete dead letters for good
  reforward --since T [--until T] [--destination NAME] [--priority P] [--dry-run]
                                       queue again every event received in a window
                                       (for a destination that lost data), for one
                                       destination or all, in the low lane (--priority
                                       routine or stat to go first)

A dead letter goes back to the destination it failed at only.

Filters:
  --destination D  the letters of one destination
  --source S       the letters of one source Orthanc's studies (ORTHANC_SOURCES)
  --seq N          one dead letter
  --study UID      by StudyInstanceUID
  --orthanc-id ID  by Orthanc study ID
  --class C        transient, partial, permanent, source-missing, crash or conflict
  --reason TEXT    reason contains TEXT (case-insensitive)
  --since T        dead-lettered at or after T (e.g. 2026-11-01T00:00Z, or 24h ago)
  --all            every dead letter (run and purge need a filter or --all)

T is a time with its zone (2026-11-01T00:00Z, 2026-11-01T00:00-05:00), a
date or a time without a zone, read as UTC (2026-11-01: the UTC day), or
a duration back from now (24h).

Connects to NATS_URL (see forwarder -h); on a single host, with NATS_URL
empty and stowline stopped, opens its store, NATS_STORE_DIR. Exit status: 0 done, 1 failed, 2 bad arguments.
`

// replayCLI runs the replay commands against JetStream.
type replayCLI struct {
	Store  *deadletter.Store
	JS     jetstream.JetStream
	Stdout io.Writer
	Log    *slog.Logger // to stderr; nil logs nothing
}

// replayCommand is a parsed command line, run once connected.
type replayCommand func(ctx context.Context, c *replayCLI) error

// parseReplay reads one command line (without the leading "replay"), so
// that a mistake in it is told before the command connects to NATS or,
// on a single host, opens a store only a stopped stowline lets it open.
func parseReplay(args []string) (replayCommand, error) {
	if len(args) == 0 {
		return nil, usagef("a command is required\n\n%s", replayUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "list":
		return parseList(rest)
	case "show":
		return parseShow(rest)
	case "run", "purge":
		return parseMutate(cmd, rest)
	case "reforward":
		return parseReforward(rest)
	case "help", "-h", "--help":
		return func(_ context.Context, c *replayCLI) error {
			fmt.Fprint(c.Stdout, replayUsage)
			return nil
		}, nil
	}
	return nil, usagef("unknown command %q\n\n%s", cmd, replayUsage)
}

func replayFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("replay "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func filterFlags(fs *flag.FlagSet, a *deadletter.FilterArgs) {
	fs.StringVar(&a.Destination, "destination", "", "destination")
	fs.StringVar(&a.Source, "source", "", "source Orthanc")
	fs.StringVar(&a.Seq, "seq", "", "dead-letter sequence number")
	fs.StringVar(&a.Study, "study", "", "StudyInstanceUID")
	fs.StringVar(&a.OrthancStudyID, "orthanc-id", "", "Orthanc study ID")
	fs.StringVar(&a.Class, "class", "", "failure class")
	fs.StringVar(&a.Reason, "reason", "", "reason contains")
	fs.StringVar(&a.Since, "since", "", "dead-lettered at or after")
	fs.BoolVar(&a.All, "all", false, "every dead letter")
}

func parseReplayFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usagef("%s: %v\n\n%s", fs.Name(), err, replayUsage)
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// blankFlags names the flags the command line gave an empty value
// (--study "$UID" with $UID unset), for FilterArgs.Blank.
func blankFlags(fs *flag.FlagSet) []string {
	var blank []string
	fs.Visit(func(f *flag.Flag) {
		if f.Value.String() == "" {
			blank = append(blank, "--"+f.Name)
		}
	})
	return blank
}

func parseList(args []string) (replayCommand, error) {
	fs := replayFlags("list")
	var a deadletter.FilterArgs
	filterFlags(fs, &a)
	asJSON := fs.Bool("json", false, "JSON output")
	if err := parseReplayFlags(fs, args); err != nil {
		return nil, err
	}
	a.Blank = blankFlags(fs)
	f, err := a.Filter()
	if err != nil {
		return nil, usagef("list: %w", err)
	}
	if f.Empty() {
		f.All = true
	}
	return func(ctx context.Context, c *replayCLI) error {
		out := newLetterPrinter(c.Stdout, *asJSON, "")
		err := c.Store.Each(ctx, f, func(e *deadletter.Entry) error { out.print(e); return nil })
		if perr := out.close(); err == nil {
			err = perr
		}
		if *asJSON {
			fmt.Fprintln(c.Stdout)
		}
		return err
	}, nil
}

func parseShow(args []string) (replayCommand, error) {
	fs := replayFlags("show")
	asJSON := fs.Bool("json", false, "JSON output")
	// Accept the sequence before or after the flags.
	var seqArg string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		seqArg, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return nil, usagef("show: %v", err)
	}
	if seqArg == "" && fs.NArg() > 0 {
		seqArg = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return nil, usagef("show: unexpected argument %q", fs.Arg(0))
	}
	seq, err := strconv.ParseUint(seqArg, 10, 64)
	if err != nil || seq == 0 {
		return nil, usagef("show: want a dead-letter sequence number, got %q", seqArg)
	}
	return func(ctx context.Context, c *replayCLI) error { return c.show(ctx, seq, *asJSON) }, nil
}

// show prints dead letter seq.
func (c *replayCLI) show(ctx context.Context, seq uint64, asJSON bool) error {
	e, err := c.Store.Get(ctx, seq)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(c.Stdout, e)
	}
	w := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "seq\t%d\n", e.Seq)
	fmt.Fprintf(w, "destination\t%s\n", deadletter.DestinationOf(&e.DeadLetter))
	fmt.Fprintf(w, "source\t%s\n", e.Event.Source)
	fmt.Fprintf(w, "orthanc study\t%s\n", e.Event.OrthancStudyID)
	fmt.Fprintf(w, "study UID\t%s\n", oneLine(e.Event.StudyInstanceUID))
	fmt.Fprintf(w, "last update\t%s\n", oneLine(e.Event.LastUpdate))
	fmt.Fprintf(w, "class\t%s\n", e.Class)
	fmt.Fprintf(w, "reason\t%s\n", oneLine(e.Reason))
	fmt.Fprintf(w, "attempts\t%d\n", e.Attempts)
	fmt.Fprintf(w, "first failure\t%s\n", stamp(e.FirstFailure))
	fmt.Fprintf(w, "last failure\t%s\n", stamp(e.LastFailure))
	fmt.Fprintf(w, "dead-lettered\t%s\n", stamp(e.DeadLetteredAt))
	for _, fi := range e.Failures {
		fmt.Fprintf(w, "failed instance\t%s (0x%04X %s)\n", oneLine(fi.SOPInstanceUID), fi.FailureReason, oneLine(fi.Text))
	}
	if e.MoreFailures > 0 {
		fmt.Fprintf(w, "failed instance\tand %d more, not named in the letter\n", e.MoreFailures)
	}
	if e.LastResponse != "" {
		fmt.Fprintf(w, "last response\t%s\n", oneLine(e.LastResponse))
	}
	return w.Flush()
}

func parseMutate(name string, args []string) (replayCommand, error) {
	fs := replayFlags(name)
	var a deadletter.FilterArgs
	filterFlags(fs, &a)
	dryRun := fs.Bool("dry-run", false, "only say what would be done")
	asJSON := fs.Bool("json", false, "JSON output")
	lane := &laneFlagValue{lane: events.PriorityLow}
	if name == "run" {
		lane = laneFlag(fs)
	}
	if err := parseReplayFlags(fs, args); err != nil {
		return nil, err
	}
	if lane.s != nil {
		if err := lane.parse(); err != nil {
			return nil, usagef("%s: %w", name, err)
		}
	}
	a.Blank = blankFlags(fs)
	f, err := a.Filter()
	if err != nil {
		return nil, usagef("%s: %w", name, err)
	}
	if f.Empty() {
		return nil, usagef("%s: give a filter (--destination, --source, --seq, --study, --orthanc-id, --class, --reason, --since) or --all", name)
	}
	return func(ctx context.Context, c *replayCLI) error {
		return c.mutate(ctx, name, f, lane.lane, *dryRun, *asJSON)
	}, nil
}

// stamp formats a letter's time, "-" when it has none (a letter this
// build cannot decode has no failure times).
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// mutate replays (name run, into lane) or purges the dead letters f
// selects.
func (c *replayCLI) mutate(ctx context.Context, name string, f deadletter.Filter, lane events.Priority, dryRun, asJSON bool) error {
	op := func(ctx context.Context, f deadletter.Filter, dryRun bool, done func(*deadletter.Entry)) (int, error) {
		return c.Store.ReplayIn(ctx, f, lane, dryRun, done)
	}
	verb := "replayed"
	if name == "purge" {
		op, verb = c.Store.Purge, "purged"
	}
	if dryRun {
		verb = "would be " + verb
	}
	if asJSON {
		fmt.Fprintf(c.Stdout, "{\n  \"dryRun\": %t,\n  \"entries\": ", dryRun)
	}
	// Printed as the store reads them, a page at a time: thousands of
	// letters of up to 512 KB each are never all in memory. The table
	// is written out a block of rows at a time, as it goes: a run cut
	// off (a lost ssh session's SIGHUP) leaves the rows of most letters
	// it took, and a long one shows its progress.
	out := newLetterPrinter(c.Stdout, asJSON, "  ")
	done := out.print
	if !dryRun && c.Log != nil {
		// Each letter by name, as the admin API logs it: a purge is for
		// good, and the log, on stderr (the journal, a syslog), is what
		// says which studies it took, or sent again, when the table is
		// lost (stdout not kept, the run killed).
		msg := "dead letter " + verb + " by forwarder replay " + name
		done = func(e *deadletter.Entry) {
			c.Log.Info(msg, "dead_letter_seq", e.Seq, "destination", deadletter.DestinationOf(&e.DeadLetter),
				"source", e.Event.Source, "orthanc_study_id", e.Event.OrthancStudyID, "study_instance_uid", e.Event.StudyInstanceUID, "class", e.Class)
			out.print(e)
		}
	}
	n, err := op(ctx, f, dryRun, done)
	if perr := out.close(); perr != nil {
		return errors.Join(err, perr)
	}
	if asJSON {
		fmt.Fprintln(c.Stdout, "\n}")
	} else {
		fmt.Fprintf(c.Stdout, "%d dead letters %s\n", n, verb)
	}
	return err
}

func parseReforward(args []string) (replayCommand, error) {
	fs := replayFlags("reforward")
	since := fs.String("since", "", "start of the window")
	until := fs.String("until", "", "end of the window (default now)")
	destination := fs.String("destination", "", "the one destination to queue them for (default all)")
	lane := laneFlag(fs)
	dryRun := fs.Bool("dry-run", false, "only say what would be done")
	if err := parseReplayFlags(fs, args); err != nil {
		return nil, err
	}
	if blank := blankFlags(fs); len(blank) > 0 {
		// --destination "$D" with $D unset would re-forward to every
		// destination.
		return nil, usagef("reforward: %s: empty: give a value or leave the flag out", strings.Join(blank, ", "))
	}
	if err := lane.parse(); err != nil {
		return nil, usagef("reforward: %w", err)
	}
	if *since == "" {
		return nil, usagef("reforward: --since is required")
	}
	from, err := deadletter.ParseTime(*since)
	if err != nil {
		return nil, usagef("reforward: since: %w", err)
	}
	var to time.Time
	if *until != "" {
		if to, err = deadletter.ParseTime(*until); err != nil {
			return nil, usagef("reforward: until: %w", err)
		}
		if !to.After(from) {
			return nil, usagef("reforward: --until must be after --since")
		}
	}
	return func(ctx context.Context, c *replayCLI) error {
		return c.reforward(ctx, *destination, lane.lane, from, to, *dryRun)
	}, nil
}

// reforward queues again the events received from from to to (zero: now),
// for destination (empty: all) in lane.
func (c *replayCLI) reforward(ctx context.Context, destination string, lane events.Priority, from, to time.Time, dryRun bool) error {
	if destination != "" {
		if err := requireDestination(ctx, c.JS, destination, lane); err != nil {
			return operatorsMistake(fmt.Errorf("reforward: %w", err))
		}
	}
	evs, unreadable, err := deadletter.ReforwardIn(ctx, c.JS, destination, lane, from, to, dryRun)
	verb := "queued again"
	if dryRun {
		verb = "would be queued again"
	}
	w := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SOURCE\tORTHANC STUDY\tSTUDY UID\tRECEIVED")
	for _, ev := range evs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", ev.Source, ev.OrthancStudyID, ev.StudyInstanceUID, ev.ReceivedAt.Format(time.RFC3339))
	}
	w.Flush()
	fmt.Fprintf(c.Stdout, "%d events %s\n", len(evs), verb)
	unreadableNote(unreadable, c.Stdout)
	streamWindowNote(ctx, c.JS, from, to, c.Stdout)
	return err
}

// letterPrinter prints dead letters one at a time, as a table written
// out a block of rows at a time (its columns aligned within a block) or
// as an indented JSON array.
type letterPrinter struct {
	out    io.Writer
	table  *blockTable // nil: JSON
	indent string      // of the JSON array's brackets
	n      int
	err    error
}

func newLetterPrinter(out io.Writer, asJSON bool, indent string) *letterPrinter {
	p := &letterPrinter{out: out, indent: indent}
	if !asJSON {
		p.table = newBlockTable(out, "SEQ\tDEAD-LETTERED\tDESTINATION\tCLASS\tATTEMPTS\tSOURCE\tORTHANC STUDY\tSTUDY UID\tREASON")
	}
	return p
}

func (p *letterPrinter) print(e *deadletter.Entry) {
	if p.err != nil {
		return
	}
	p.n++
	if p.table != nil {
		p.err = p.table.row("%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s", e.Seq, e.DeadLetteredAt.Format(time.RFC3339),
			deadletter.DestinationOf(&e.DeadLetter), e.Class, e.Attempts, e.Event.Source, e.Event.OrthancStudyID, oneLine(e.Event.StudyInstanceUID), ellipsis.Truncate(oneLine(e.Reason), 80))
		return
	}
	b, err := json.MarshalIndent(e, p.indent+"  ", "  ")
	if err != nil {
		p.err = err
		return
	}
	sep := ",\n"
	if p.n == 1 {
		sep = "[\n"
	}
	_, p.err = fmt.Fprintf(p.out, "%s%s  %s", sep, p.indent, b)
}

// close ends the output; the error is the first one printing met.
func (p *letterPrinter) close() error {
	switch {
	case p.table != nil:
		if err := p.table.flush(); p.err == nil {
			p.err = err
		}
	case p.n == 0:
		_, _ = io.WriteString(p.out, "[]")
	default:
		_, _ = fmt.Fprintf(p.out, "\n%s]", p.indent)
	}
	return p.err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// oneLine collapses s's whitespace, newlines included, to single spaces.
// Other control characters (an escape sequence in a UID a modality sent,
// or in a server's answer quoted in a reason) are shown as '?': written
// as they are, they would drive the operator's terminal.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, strings.Join(strings.Fields(s), " "))
}

// requireDestination checks that a consumer of destination takes what is
// queued for it in lane: events queued without one would reach nobody
// (the lane's consumer, not only the routine one: a removal that stopped
// part-way, or a lane consumer deleted by hand, leaves the others).
func requireDestination(ctx context.Context, js jetstream.JetStream, destination string, lane events.Priority) error {
	if !natsjs.ValidDestination(destination) {
		return fmt.Errorf("destination %q: %w", destination, errNotDestinationName)
	}
	// The lanes' filters take every source: any one stands for them.
	return deadletter.Taken(ctx, js, destination, lane, natsjs.LaneSubject(lane, destination, "any-source"))
}

var errNotDestinationName = errors.New("not a destination name")

// operatorsMistake makes err, from requireDestination, a usage error
// (exit 2) when the operator named no destination's name, or one without
// a consumer; JetStream not answering stays a failure (exit 1), for a
// script to retry rather than take for a typo.
func operatorsMistake(err error) error {
	if errors.Is(err, deadletter.ErrNoConsumer) || errors.Is(err, errNotDestinationName) {
		return &usageError{err}
	}
	return err
}
