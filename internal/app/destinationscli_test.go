package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestDestinationsCommand: list shows each destination's consumer; remove
// needs --yes, deletes only that destination's lane consumers (the other
// destination's, its dead letters and ledger stay), and names a missing
// one.
func TestDestinationsCommand(t *testing.T) {
	ns := testnats.Start(t)
	ctx := replayCtx(t)
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureConsumers(ctx, ns.JS, []string{natsjs.DefaultDestination, "ai"}); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureDeadLetters(ctx, ns.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureLedger(ctx, ns.JS, "ai"); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		err := runDestinations(ctx, ns.JS, args, &out)
		return out.String(), err
	}

	out, err := run()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DESTINATION", natsjs.ConsumerName("ai"), natsjs.ForwarderConsumer, "stowline-stat-ai", "stowline-low-default"} {
		if !strings.Contains(out, want) {
			t.Errorf("list does not show %q:\n%s", want, out)
		}
	}

	tests := []struct {
		name  string
		args  []string
		usage bool
		want  string
	}{
		{"no name", []string{"remove"}, true, "name is required"},
		{"no --yes", []string{"remove", "ai"}, true, "--yes is required"},
		{"bad name", []string{"remove", "a i", "--yes"}, true, "not a destination name"},
		{"unknown command", []string{"drop", "ai"}, true, "unknown command"},
		{"unknown destination", []string{"remove", "research", "--yes"}, false, "has no consumer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := run(tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) || errors.Is(err, ErrUsage) != tt.usage {
				t.Errorf("%v: err %v, want one containing %q (usage error: %v)", tt.args, err, tt.want, tt.usage)
			}
		})
	}
	if _, err := ns.JS.Consumer(ctx, natsjs.EventStream, natsjs.ConsumerName("ai")); err != nil {
		t.Fatalf("a refused remove deleted the consumer: %v", err)
	}

	// Three events not forwarded to ai, one of them pulled and not
	// acknowledged: remove says what it dropped.
	for _, lastUpdate := range []string{"20261126T101500", "20261126T101600", "20261126T101700"} {
		ev, err := events.NewStudyStable("main", "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", "1.2.3", lastUpdate)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := ns.JS.Consumer(ctx, natsjs.EventStream, natsjs.ConsumerName("ai"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	out, err = run("remove", "ai", "--yes")
	if err != nil || !strings.Contains(out, "removed") {
		t.Fatalf("remove ai: %q, %v", out, err)
	}
	if want := "2 events not yet given to it and 1 given and not acknowledged (being sent, or waiting for a retry) were dropped for it"; !strings.Contains(out, want) {
		t.Errorf("remove ai said %q, want it to say %q", out, want)
	}
	for _, c := range []string{natsjs.ConsumerName("ai"), natsjs.StatConsumerPrefix + "ai", natsjs.LowConsumerPrefix + "ai"} {
		if _, err := ns.JS.Consumer(ctx, natsjs.EventStream, c); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("ai's consumer %s after remove: %v, want not found", c, err)
		}
	}
	for _, lane := range events.Priorities {
		c := natsjs.LaneConsumerName(natsjs.DefaultDestination, lane)
		if _, err := ns.JS.Consumer(ctx, natsjs.EventStream, c); err != nil {
			t.Errorf("the default destination's %s lane consumer %s went too: %v", lane, c, err)
		}
	}
	// Its dead letters and ledger stay, as the usage says.
	if _, err := ns.JS.Stream(ctx, natsjs.DeadLetterStream); err != nil {
		t.Errorf("the dead-letter stream after remove: %v", err)
	}
	if _, err := ns.JS.KeyValue(ctx, natsjs.LedgerBucketOf("ai")); err != nil {
		t.Errorf("ai's ledger bucket after remove: %v", err)
	}
	if out, _ := run("list"); strings.Contains(out, natsjs.ConsumerName("ai")) {
		t.Errorf("list still shows ai:\n%s", out)
	}
}

// failingDelete is a JetStream whose deletion of one consumer fails.
type failingDelete struct {
	jetstream.JetStream
	consumer string
}

func (f failingDelete) DeleteConsumer(ctx context.Context, stream, consumer string) error {
	if consumer == f.consumer {
		return errors.New("nats: timeout")
	}
	return f.JetStream.DeleteConsumer(ctx, stream, consumer)
}

// TestDestinationsRemoveRetries: when deleting one of a destination's
// consumers fails, running remove again deletes the rest, whichever
// failed; and the lanes an earlier remove left without their routine
// consumer are deleted too.
func TestDestinationsRemoveRetries(t *testing.T) {
	all := []string{natsjs.ConsumerName("ai"), natsjs.StatConsumerPrefix + "ai", natsjs.LowConsumerPrefix + "ai"}
	tests := []struct {
		name string
		// fails is the consumer whose deletion fails the first time;
		// gone one deleted before the first run.
		fails, gone string
	}{
		{"routine consumer fails", natsjs.ConsumerName("ai"), ""},
		{"stat lane fails", natsjs.StatConsumerPrefix + "ai", ""},
		{"low lane fails", natsjs.LowConsumerPrefix + "ai", ""},
		{"routine consumer already gone", "", natsjs.ConsumerName("ai")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			ctx := replayCtx(t)
			if _, err := natsjs.DefaultTopology().EnsureConsumers(ctx, ns.JS, []string{"ai"}); err != nil {
				t.Fatal(err)
			}
			if tt.gone != "" {
				if err := ns.JS.DeleteConsumer(ctx, natsjs.EventStream, tt.gone); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			if tt.fails != "" {
				err := runDestinations(ctx, failingDelete{ns.JS, tt.fails}, []string{"remove", "ai", "--yes"}, &out)
				if err == nil || !strings.Contains(err.Error(), tt.fails) {
					t.Fatalf("first remove: err %v, want one naming %s", err, tt.fails)
				}
			}
			if err := runDestinations(ctx, ns.JS, []string{"remove", "ai", "--yes"}, &out); err != nil {
				t.Fatalf("remove again: %v", err)
			}
			for _, c := range all {
				if _, err := ns.JS.Consumer(ctx, natsjs.EventStream, c); !errors.Is(err, jetstream.ErrConsumerNotFound) {
					t.Errorf("consumer %s after remove again: %v, want not found", c, err)
				}
			}
			if err := runDestinations(ctx, ns.JS, []string{"remove", "ai", "--yes"}, &out); err == nil || !strings.Contains(err.Error(), "has no consumer") {
				t.Errorf("remove once all are gone: err %v, want has no consumer", err)
			}
		})
	}
}

// TestLanesPresent: the readiness check passes while a destination's
// lane consumers exist, names the one deleted while the forwarder ran,
// and says the event stream is gone once it is.
func TestLanesPresent(t *testing.T) {
	ns := testnats.Start(t)
	ctx := replayCtx(t)
	cons, err := natsjs.DefaultTopology().EnsureLanes(ctx, ns.JS, []string{"ai"})
	if err != nil {
		t.Fatal(err)
	}
	var lanes []forward.Lane
	for _, p := range events.Priorities {
		lanes = append(lanes, forward.Lane{Priority: p, Consumer: cons["ai"][p]})
	}
	check := lanesPresent("ai", lanes)
	if err := check(ctx); err != nil {
		t.Fatalf("every lane present: %v", err)
	}
	if err := ns.JS.DeleteConsumer(ctx, natsjs.EventStream, "stowline-low-ai"); err != nil {
		t.Fatal(err)
	}
	err = check(ctx)
	if err == nil || !strings.Contains(err.Error(), "destination ai: consumer stowline-low-ai deleted") {
		t.Fatalf("low lane deleted: err = %v", err)
	}
	// The stream gone (a NATS server restarted on an empty store) took
	// every lane with it: that, not a lost consumer leader, is reported.
	if err := ns.JS.DeleteStream(ctx, natsjs.EventStream); err != nil {
		t.Fatal(err)
	}
	err = check(ctx)
	if err == nil || !strings.Contains(err.Error(), "JetStream has no event stream "+natsjs.EventStream) || strings.Contains(err.Error(), "leader") {
		t.Fatalf("stream deleted: err = %v", err)
	}
}

// TestDestinationsListConsumerLeftOutOfTheListing: on a cluster,
// CONSUMER.LIST leaves out a consumer whose leader did not answer the
// server in time (a node lost, an election) and nats.go's listing asks
// for the same page again until its context ends: `destinations list`
// hung, then failed without a row. It reads the names and each consumer
// by itself: one left out of the listing is shown; one that cannot be
// read either is shown with unknown numbers, and the command fails
// naming it.
func TestDestinationsListConsumerLeftOutOfTheListing(t *testing.T) {
	aiLow := natsjs.LaneConsumerName("ai", events.PriorityLow)
	for _, tc := range []struct {
		name    string
		unread  bool
		wantRow string // ai's low lane
		// The unreadable consumer takes all of it: shorter than the
		// command's own bound there; generous where all six answer.
		timeout time.Duration
	}{
		{"readable", false, "ai low " + aiLow + " 0 0 0", 10 * time.Second},
		{"unreadable", true, "ai low " + aiLow + " ? ? ?", 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testnats.Start(t)
			if _, err := natsjs.DefaultTopology().EnsureConsumers(replayCtx(t), ns.JS, []string{natsjs.DefaultDestination, "ai"}); err != nil {
				t.Fatal(err)
			}
			js := &testnats.PartialListing{JetStream: ns.JS, Hidden: map[string]bool{aiLow: true}, Unread: tc.unread}
			ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
			defer cancel()
			var out bytes.Buffer
			err := runDestinations(ctx, js, []string{"list"}, &out)
			switch {
			case tc.unread && (err == nil || !strings.Contains(err.Error(), aiLow)):
				t.Errorf("err %v; want one naming %s", err, aiLow)
			case !tc.unread && err != nil:
				t.Errorf("err %v", err)
			}
			var rows []string
			for line := range strings.Lines(out.String()) {
				rows = append(rows, strings.Join(strings.Fields(line), " "))
			}
			if len(rows) != 7 || !slices.Contains(rows, tc.wantRow) {
				t.Errorf("list:\n%s\nwant 6 consumers, among them %q", out.String(), tc.wantRow)
			}
		})
	}
}

// runDestinations runs one command line (without the leading
// "destinations") against js, as RunDestinations does once connected.
func runDestinations(ctx context.Context, js jetstream.JetStream, args []string, stdout io.Writer) error {
	remove, err := parseDestinations(args)
	if err != nil {
		return err
	}
	return destinations(ctx, js, remove, stdout)
}
