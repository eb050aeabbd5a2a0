package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
)

// destinationsUsage is `forwarder destinations -h`.
const destinationsUsage = `Usage: forwarder destinations [list]
       forwarder destinations remove NAME --yes

Each destination has a durable consumer on the event stream, created by
its forwarders and never removed by a restart with a shorter DESTINATIONS
list: a destination left out of the list keeps its place in the stream
until it is removed here.

  list          every destination with a consumer: the events it has not
                been given yet (pending), those given and not yet
                acknowledged (in flight), and the last delivered sequence;
                a consumer that does not answer within 10 s (on a
                cluster, its servers offline or electing a leader) is
                printed with ? and named, and the command exits 1
  remove NAME   delete the destination's consumer (requires --yes): it is
                given no more studies, and the events it had not
                forwarded are dropped for it (counted in the last line).
                The stream keeps every event for the
                other destinations; the destination's dead letters and
                ledger stay (forwarder replay purge --destination NAME).
                Take NAME out of DESTINATIONS first: a forwarder whose
                DESTINATIONS names it, serving it or not, creates a new
                consumer, from new events on
                (from what the stream holds if no other destination has
                a consumer).

Connects to NATS_URL (see forwarder -h); on a single host, with NATS_URL
empty and stowline stopped, opens its store, NATS_STORE_DIR. Exit status: 0 done, 1 failed, 2 bad arguments.
`

// RunDestinations runs `forwarder destinations ARGS`.
func RunDestinations(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, destinationsUsage)
		return nil
	}
	if versionAsked(args) {
		printVersion(stdout, "forwarder destinations")
		return nil
	}
	// The command line first: a typo is told without NATS, and on a
	// single host without stopping stowline for its store.
	remove, err := parseDestinations(args)
	if err != nil {
		return err
	}
	var cfg config.ReplayCommand
	if err := config.Load(getenv, &cfg); err != nil {
		return &usageError{fmt.Errorf("forwarder destinations: invalid configuration:\n%w", err)}
	}
	conn, err := connectTool(ctx, cfg.NATS, newLogger(stderr, cfg.Log))
	if err != nil {
		return err
	}
	defer conn.Close()
	return destinations(ctx, conn.JS, remove, stdout)
}

// destinations runs a parsed command line against js: the list, or the
// removal of the destination remove names.
func destinations(ctx context.Context, js jetstream.JetStream, remove string, stdout io.Writer) error {
	if remove == "" {
		return listDestinations(ctx, js, stdout)
	}
	return removeDestination(ctx, js, remove, stdout)
}

// parseDestinations reads one command line (without the leading
// "destinations"): list (remove empty), or remove the destination named.
func parseDestinations(args []string) (remove string, err error) {
	if len(args) == 0 || args[0] == "list" {
		if len(args) > 1 {
			return "", usagef("forwarder destinations list: unexpected arguments %q", args[1:])
		}
		return "", nil
	}
	if args[0] != "remove" {
		return "", usagef("unknown command %q\n\n%s", args[0], destinationsUsage)
	}
	if len(args) < 2 || args[1] == "" || args[1][0] == '-' {
		return "", usagef("forwarder destinations remove: the destination's name is required\n\n%s", destinationsUsage)
	}
	name := args[1]
	fs := flag.NewFlagSet("forwarder destinations remove", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	yes := fs.Bool("yes", false, "")
	if err := fs.Parse(args[2:]); err != nil || fs.NArg() > 0 {
		return "", usagef("forwarder destinations remove %s: want only --yes\n\n%s", name, destinationsUsage)
	}
	if !natsjs.ValidDestination(name) {
		return "", usagef("forwarder destinations remove: %q is not a destination name", name)
	}
	if !*yes {
		return "", usagef("forwarder destinations remove %s: --yes is required: destination %s will be given no more studies", name, name)
	}
	return name, nil
}

// removeDestination deletes the consumers of destination name.
func removeDestination(ctx context.Context, js jetstream.JetStream, name string, stdout io.Writer) error {
	// Its stat and low lanes first (none for a destination made before
	// lanes), its routine consumer last: should a deletion fail, the
	// command run again still finds the routine consumer and retries.
	var deleted []string
	var dropped dropCount
	for _, lane := range []events.Priority{events.PriorityStat, events.PriorityLow} {
		c := natsjs.LaneConsumerName(name, lane)
		dropped.add(ctx, js, c)
		if err := js.DeleteConsumer(ctx, natsjs.EventStream, c); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("delete consumer %s of destination %s: %w", c, name, err)
		} else if err == nil {
			deleted = append(deleted, c)
		}
	}
	// A routine consumer already gone while lanes were left is no error:
	// an earlier version deleted it first and stopped when a lane failed.
	consumer := natsjs.ConsumerName(name)
	dropped.add(ctx, js, consumer)
	switch err := js.DeleteConsumer(ctx, natsjs.EventStream, consumer); {
	case err == nil:
		deleted = append([]string{consumer}, deleted...)
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return fmt.Errorf("delete consumer %s of destination %s: %w", consumer, name, err)
	case len(deleted) == 0:
		return fmt.Errorf("destination %s has no consumer %s on stream %s", name, consumer, natsjs.EventStream)
	}
	fmt.Fprintf(stdout, "destination %s removed: consumers %s deleted; %s\n", name, strings.Join(deleted, ", "), dropped)
	return nil
}

// dropCount adds up the events a destination's consumers had not
// forwarded when they were deleted: its studies from then on are not
// sent, and the command said only "removed", which hid a destination
// removed with a backlog (or while forwarders still served it).
type dropCount struct {
	pending, inFlight uint64
	unread            []string
}

// add counts consumer c's events, if it exists.
func (d *dropCount) add(ctx context.Context, js jetstream.JetStream, c string) {
	ictx, cancel := context.WithTimeout(ctx, destinationsReadTimeout)
	defer cancel()
	cons, err := js.Consumer(ictx, natsjs.EventStream, c)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	if err != nil {
		d.unread = append(d.unread, c)
		return
	}
	info := cons.CachedInfo()
	d.pending += info.NumPending
	d.inFlight += uint64(info.NumAckPending)
}

// String says what was dropped, for the command's last line.
func (d dropCount) String() string {
	s := fmt.Sprintf("%d events not yet given to it and %d given and not acknowledged (being sent, or waiting for a retry) were dropped for it (the other destinations keep theirs)", d.pending, d.inFlight)
	if len(d.unread) > 0 {
		s += "; not counted: " + strings.Join(d.unread, ", ") + " did not answer"
	}
	if d.inFlight > 0 {
		s += "; a forwarder still sending one of them finishes or gives up that study, and a forwarder whose DESTINATIONS still names it creates its consumer again, from new events on"
	}
	return s
}

// destinationsReadTimeout bounds `destinations list`'s reads of the
// consumers: one whose servers do not answer is asked again until then.
const destinationsReadTimeout = 10 * time.Second

// listDestinations prints every lane consumer of the event stream. Each
// is read by itself (natsjs.LaneConsumers, not CONSUMER.LIST, which on a
// cluster can leave one out and keep nats.go asking until its time ends);
// one that cannot be read is printed with unknown numbers and fails the
// command, named.
func listDestinations(ctx context.Context, js jetstream.JetStream, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, destinationsReadTimeout)
	defer cancel()
	stream, err := natsjs.OpenStream(ctx, js, natsjs.EventStream)
	if err != nil {
		return err
	}
	infos, unread, err := natsjs.LaneConsumers(ctx, stream)
	if err != nil {
		return err
	}
	names := slices.AppendSeq(slices.Collect(maps.Keys(infos)), maps.Keys(unread))
	// By destination, then lane from stat to low.
	key := func(name string) string {
		d, lane, _ := natsjs.LaneOfConsumer(name)
		return d + "\x00" + strconv.Itoa(slices.Index(events.Priorities, lane))
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(key(a), key(b)) })
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DESTINATION\tLANE\tCONSUMER\tPENDING\tIN FLIGHT\tLAST DELIVERED")
	for _, name := range names {
		d, lane, _ := natsjs.LaneOfConsumer(name)
		if info := infos[name]; info != nil {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\n", d, lane, name, info.NumPending, info.NumAckPending, info.Delivered.Stream)
		} else {
			fmt.Fprintf(w, "%s\t%s\t%s\t?\t?\t?\n", d, lane, name)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	errs := make([]error, 0, len(unread))
	for _, name := range slices.Sorted(maps.Keys(unread)) {
		errs = append(errs, unread[name])
	}
	return errors.Join(errs...)
}
