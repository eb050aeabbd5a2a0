package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

func replayCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// replayRig is the replay command on a real embedded JetStream with the
// event and dead-letter streams.
type replayRig struct {
	ns    *testnats.Server
	store *deadletter.Store
	cli   *replayCLI
	out   *bytes.Buffer
}

func newReplayRig(t *testing.T) *replayRig {
	t.Helper()
	ns := testnats.Start(t)
	dl, err := natsjs.DefaultTopology().EnsureDeadLetters(replayCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	// The default destination's consumer, as its forwarders make it:
	// replays and reforwards go to destinations that have one.
	if _, err := natsjs.DefaultTopology().EnsureConsumer(replayCtx(t), ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	r := &replayRig{ns: ns, store: deadletter.NewStore(ns.JS, dl), out: &bytes.Buffer{}}
	r.cli = &replayCLI{Store: r.store, JS: ns.JS, Stdout: r.out}
	return r
}

// run runs one command line and returns what it printed.
func (r *replayRig) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	r.out.Reset()
	err := r.cli.Run(replayCtx(t), args)
	return r.out.String(), err
}

// mustRun is run for a command that must succeed.
func (r *replayRig) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := r.run(t, args...)
	if err != nil {
		t.Fatalf("replay %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// events is the number of messages in the event stream.
func (r *replayRig) events(t *testing.T) uint64 {
	t.Helper()
	s, err := r.ns.JS.Stream(replayCtx(t), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

// deadLetter stores the event of study i, as the ingest does, and a dead
// letter for it, as a forwarder does; it returns the letter's sequence.
func (r *replayRig) deadLetter(t *testing.T, i int, class forward.Class, reason string) (uint64, events.StudyStable) {
	t.Helper()
	ev := events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID:   fmt.Sprintf("%08x-%08x-%08x-%08x-%08x", i, i, i, i, i),
		StudyInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.2.1143.%d", i),
		LastUpdate:       "20260101T120000", ReceivedAt: time.Now().UTC(),
	}
	ack, err := (natsjs.Publisher{JS: r.ns.JS}).Publish(replayCtx(t), &ev)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	seq, _, err := r.store.Add(replayCtx(t), &forward.DeadLetter{
		Event: ev, Class: class, Reason: reason, Attempts: 2,
		Failures:     []forward.Instance{{SOPInstanceUID: "1.2.826.0.1.3680043.2.1143.99", FailureReason: 0xC000, Text: "cannot understand"}},
		FirstFailure: now.Add(-time.Minute), LastFailure: now, DeadLetteredAt: now,
		LastResponse: "<html>\n  unsupported\n  media type\n</html>", OriginalSeq: ack.Sequence,
	})
	if err != nil {
		t.Fatal(err)
	}
	return seq, ev
}

// Bad arguments are usage errors (exit status 2) that say what to fix,
// and change nothing.
func TestReplayArgumentErrors(t *testing.T) {
	r := newReplayRig(t)
	seq, _ := r.deadLetter(t, 1, forward.Permanent, "HTTP 415")
	tests := []struct {
		args []string
		want string
	}{
		{nil, "a command is required"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"list", "--bogus"}, "bogus"},
		{[]string{"list", "stray"}, `unexpected argument "stray"`},
		{[]string{"list", "--seq", "x"}, "seq:"},
		{[]string{"list", "--all", "--class", "permanent"}, "all: cannot be combined"},
		{[]string{"list", "--class", "fatal"}, "class:"},
		{[]string{"show"}, "want a dead-letter sequence number"},
		{[]string{"show", "abc"}, `got "abc"`},
		{[]string{"show", "0"}, `got "0"`},
		{[]string{"show", "1", "2"}, `unexpected argument "2"`},
		{[]string{"show", "--bogus", "1"}, "bogus"},
		{[]string{"run"}, "give a filter"},
		{[]string{"run", "--dry-run"}, "give a filter"},
		{[]string{"run", "--study", "not a uid"}, "study:"},
		{[]string{"purge"}, "give a filter"},
		{[]string{"run", "--all", "--priority", "urgent"}, `--priority: priority "urgent"`},
		// A purge queues nothing: it has no lane.
		{[]string{"purge", "--all", "--priority", "stat"}, "priority"},
		{[]string{"purge", "--since", "soon"}, "since:"},
		// An unset $UID must not widen the purge to the destination's
		// every dead letter.
		{[]string{"purge", "--destination", natsjs.DefaultDestination, "--study", ""}, "--study: empty"},
		{[]string{"purge", "--destination=", "--class", "permanent"}, "--destination: empty"},
		{[]string{"run", "--source", "", "--all"}, "--source: empty"},
		{[]string{"list", "--orthanc-id", ""}, "--orthanc-id: empty"},
		{[]string{"reforward"}, "--since is required"},
		{[]string{"reforward", "--since", "yesterday"}, "since:"},
		{[]string{"reforward", "--since", "2026-01-01", "--until", "later"}, "until:"},
		{[]string{"reforward", "--since", "2026-01-02", "--until", "2026-01-01"}, "--until must be after --since"},
		{[]string{"reforward", "--since", "2026-01-01", "--until", "2026-01-01T00:00Z"}, "--until must be after --since"},
		{[]string{"reforward", "--since", "2026-01-01", "extra"}, `unexpected argument "extra"`},
		{[]string{"reforward", "--since", "2026-01-01", "--priority", "urgent"}, `--priority: priority "urgent"`},
		{[]string{"reforward", "--since", "2026-01-01", "--destination", ""}, "--destination: empty"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"replay"}, tt.args...), " "), func(t *testing.T) {
			_, err := r.run(t, tt.args...)
			if !errors.Is(err, ErrUsage) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
	if _, err := r.store.Get(replayCtx(t), seq); err != nil {
		t.Errorf("the dead letter is gone after bad commands: %v", err)
	}
	if n := r.events(t); n != 1 {
		t.Errorf("bad commands queued events: the stream holds %d, want 1", n)
	}
}

// A replay goes to the destination's low lane, or to the one --priority
// names: a replayed stat study waited behind the backfills and for the
// low lane's FORWARD_WINDOWS.
func TestReplayRunInALane(t *testing.T) {
	r := newReplayRig(t)
	for i, tt := range []struct {
		lane events.Priority
		args []string
	}{{events.PriorityLow, nil}, {events.PriorityStat, []string{"--priority", "stat"}}, {events.PriorityRoutine, []string{"--priority", "routine"}}} {
		seq, _ := r.deadLetter(t, i+1, forward.Permanent, "HTTP 400")
		r.mustRun(t, append([]string{"run", "--seq", strconv.FormatUint(seq, 10)}, tt.args...)...)
		s, err := r.ns.JS.Stream(replayCtx(t), natsjs.EventStream)
		if err != nil {
			t.Fatal(err)
		}
		last, err := s.GetLastMsgForSubject(replayCtx(t), ">")
		if err != nil {
			t.Fatal(err)
		}
		if want := natsjs.LaneSubject(tt.lane, natsjs.DefaultDestination, "orthanc-a"); last.Subject != want {
			t.Errorf("replay run %v queued on %s, want %s", tt.args, last.Subject, want)
		}
		// A lane's replay has a dedupe ID of its own: the same letter
		// replayed in the low lane, and again in another, is queued
		// again, not dropped as a repeat.
		id := last.Header.Get(jetstream.MsgIDHeader)
		if low := tt.lane == events.PriorityLow; low != !strings.HasSuffix(id, "/"+string(tt.lane)) || !strings.Contains(id, "/replay/") {
			t.Errorf("replay run %v queued with dedupe ID %q", tt.args, id)
		}
	}
}

func TestReplayHelp(t *testing.T) {
	r := newReplayRig(t)
	for _, arg := range []string{"help", "-h", "--help"} {
		t.Run(arg, func(t *testing.T) {
			out := r.mustRun(t, arg)
			if !strings.HasPrefix(out, "Usage: forwarder replay COMMAND") {
				t.Errorf("help starts with %q, want the usage line", strings.SplitN(out, "\n", 2)[0])
			}
			for _, cmd := range []string{"list", "show", "run", "purge", "reforward", "--dry-run"} {
				if !strings.Contains(out, cmd) {
					t.Errorf("help does not mention %s", cmd)
				}
			}
			// --class takes every class a letter can have.
			for _, c := range forward.Classes {
				if !strings.Contains(out, string(c)) {
					t.Errorf("help does not list the class %s", c)
				}
			}
		})
	}
}

// An operator's session: list and show the dead letters, replay one
// (dry run first), purge the other, and re-forward a window.
func TestReplayCommands(t *testing.T) {
	r := newReplayRig(t)
	since := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano)
	seq1, ev1 := r.deadLetter(t, 1, forward.Permanent, "HTTP 415 Unsupported Media Type")
	seq2, ev2 := r.deadLetter(t, 2, forward.Transient, "timeout")
	s1, s2 := strconv.FormatUint(seq1, 10), strconv.FormatUint(seq2, 10)

	listJSON := func(args ...string) []deadletter.Entry {
		t.Helper()
		out := r.mustRun(t, append([]string{"list", "--json"}, args...)...)
		var entries []deadletter.Entry
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatalf("list --json: %v\n%s", err, out)
		}
		return entries
	}

	t.Run("list", func(t *testing.T) {
		out := r.mustRun(t, "list")
		for _, want := range []string{"SEQ", "CLASS", ev1.OrthancStudyID, ev2.OrthancStudyID, "permanent", "transient", "HTTP 415"} {
			if !strings.Contains(out, want) {
				t.Errorf("list does not show %q:\n%s", want, out)
			}
		}
		if got := listJSON("--class", "permanent"); len(got) != 1 || got[0].Seq != seq1 || got[0].Event.StudyInstanceUID != ev1.StudyInstanceUID {
			t.Errorf("list --class permanent = %+v, want letter %d", got, seq1)
		}
		if got := listJSON("--source", ev2.Source); len(got) != 2 {
			t.Errorf("list --source %s = %d letters, want both", ev2.Source, len(got))
		}
		if out := r.mustRun(t, "list", "--json", "--source", "cardio"); strings.TrimSpace(out) != "[]" {
			t.Errorf("list --source of another source printed %q, want []", out)
		}
		if out := r.mustRun(t, "list", "--json", "--class", "crash"); strings.TrimSpace(out) != "[]" {
			t.Errorf("list --json with no match printed %q, want []", out)
		}
	})

	t.Run("show", func(t *testing.T) {
		out := r.mustRun(t, "show", s1)
		for _, want := range []string{ev1.OrthancStudyID, ev1.StudyInstanceUID, "permanent", "HTTP 415 Unsupported Media Type",
			"failed instance", "0xC000", "<html> unsupported media type </html>"} {
			if !strings.Contains(out, want) {
				t.Errorf("show does not show %q:\n%s", want, out)
			}
		}
		// The sequence goes before or after the flags.
		for _, args := range [][]string{{"show", s2, "--json"}, {"show", "--json", s2}} {
			var e deadletter.Entry
			if err := json.Unmarshal([]byte(r.mustRun(t, args...)), &e); err != nil || e.Seq != seq2 || e.Class != forward.Transient {
				t.Errorf("%s = %+v (%v), want letter %d", strings.Join(args, " "), e, err, seq2)
			}
		}
		if _, err := r.run(t, "show", "999"); !errors.Is(err, deadletter.ErrNotFound) || errors.Is(err, ErrUsage) {
			t.Errorf("show of a missing letter: err = %v, want ErrNotFound (not a usage error)", err)
		}
	})

	t.Run("run", func(t *testing.T) {
		if out := r.mustRun(t, "run", "--seq", s1, "--dry-run"); !strings.Contains(out, "1 dead letters would be replayed") {
			t.Errorf("run --dry-run printed:\n%s", out)
		}
		if n := r.events(t); n != 2 {
			t.Errorf("a dry run queued events: the stream holds %d, want 2", n)
		}
		if out := r.mustRun(t, "run", "--seq", s1); !strings.Contains(out, "1 dead letters replayed") || !strings.Contains(out, ev1.OrthancStudyID) {
			t.Errorf("run printed:\n%s", out)
		}
		if n := r.events(t); n != 3 {
			t.Errorf("the event stream holds %d events after the replay, want 3", n)
		}
		if got := listJSON("--all"); len(got) != 1 || got[0].Seq != seq2 {
			t.Errorf("after the replay the letters are %+v, want only %d", got, seq2)
		}
	})

	t.Run("purge", func(t *testing.T) {
		var dry struct {
			DryRun  bool               `json:"dryRun"`
			Entries []deadletter.Entry `json:"entries"`
		}
		out := r.mustRun(t, "purge", "--all", "--dry-run", "--json")
		if err := json.Unmarshal([]byte(out), &dry); err != nil || !dry.DryRun || len(dry.Entries) != 1 || dry.Entries[0].Seq != seq2 {
			t.Errorf("purge --all --dry-run --json = %s (%v)", out, err)
		}
		if out := r.mustRun(t, "purge", "--all"); !strings.Contains(out, "1 dead letters purged") {
			t.Errorf("purge printed:\n%s", out)
		}
		if got := listJSON(); len(got) != 0 {
			t.Errorf("letters left after purge --all: %+v", got)
		}
		if n := r.events(t); n != 3 {
			t.Errorf("purge changed the event stream: %d events, want 3", n)
		}
	})

	// The re-forward takes the events Orthanc announced, not the replay
	// above, which was one of them queued again for its destination only.
	t.Run("reforward", func(t *testing.T) {
		out := r.mustRun(t, "reforward", "--since", since, "--dry-run")
		if !strings.Contains(out, "2 events would be queued again") || !strings.Contains(out, ev2.OrthancStudyID) {
			t.Errorf("reforward --dry-run printed:\n%s", out)
		}
		if n := r.events(t); n != 3 {
			t.Errorf("a dry run queued events: the stream holds %d, want 3", n)
		}
		if out := r.mustRun(t, "reforward", "--since", since); !strings.Contains(out, "2 events queued again") {
			t.Errorf("reforward printed:\n%s", out)
		}
		if n := r.events(t); n != 5 {
			t.Errorf("the event stream holds %d events after the re-forward, want 5", n)
		}
	})
}

// RunReplay reads its configuration and connects to the deployment's
// NATS server before running the command.
func TestRunReplay(t *testing.T) {
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), Port: server.RANDOM_PORT}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	env := map[string]string{"NATS_URL": srv.ClientURL()}
	replay := func(env map[string]string, args ...string) (string, string, error) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		err := RunReplay(replayCtx(t), args, func(k string) string { return env[k] }, &stdout, &stderr)
		return stdout.String(), stderr.String(), err
	}

	if out, _, err := replay(nil, "-h"); err != nil || !strings.Contains(out, "forwarder replay COMMAND") {
		t.Errorf("replay -h = %v:\n%s", err, out)
	}
	if _, _, err := replay(nil, "list"); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "NATS_URL") {
		t.Errorf("replay without NATS_URL: err = %v, want a usage error naming NATS_URL", err)
	}
	// Nothing has run yet: the command creates no stream.
	if _, _, err := replay(env, "list"); !errors.Is(err, natsjs.ErrNotProvisioned) {
		t.Errorf("replay list before any forwarder ran: err = %v, want ErrNotProvisioned", err)
	}

	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsjs.DefaultTopology().EnsureDeadLetters(replayCtx(t), js); err != nil {
		t.Fatal(err)
	}
	out, _, err := replay(env, "list", "--json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("replay list --json = %v, stdout %q; want [] alone on stdout", err, out)
	}
	if _, _, err := replay(env, "run"); !errors.Is(err, ErrUsage) {
		t.Errorf("replay run without a filter: err = %v, want a usage error", err)
	}
}

// A re-forward to one destination needs the consumer of the lane it
// queues in: with the low lane's gone (a removal that stopped part-way, a
// consumer deleted by hand) its events would reach nobody, even though
// the routine consumer is there.
func TestReforwardNeedsTheLanesConsumer(t *testing.T) {
	r := newReplayRig(t)
	low := natsjs.LaneConsumerName(natsjs.DefaultDestination, events.PriorityLow)
	if err := r.ns.JS.DeleteConsumer(replayCtx(t), natsjs.EventStream, low); err != nil {
		t.Fatal(err)
	}
	_, err := r.run(t, "reforward", "--since", "2026-01-01", "--destination", natsjs.DefaultDestination)
	if !errors.Is(err, deadletter.ErrNoConsumer) || !strings.Contains(err.Error(), low) {
		t.Errorf("reforward to the low lane without its consumer: err = %v, want it refused naming %s", err, low)
	}
	if _, err := r.run(t, "reforward", "--since", "2026-01-01", "--destination", natsjs.DefaultDestination, "--priority", "routine", "--dry-run"); err != nil {
		t.Errorf("reforward to the routine lane, whose consumer is there: %v", err)
	}
}

// A destination without a consumer, or not a destination name, is the
// operator's mistake (a usage error, exit 2); JetStream not answering is
// not: it was a usage error too, so a script took a time-out for a typo.
func TestReforwardUsageErrorOnlyForTheOperatorsMistakes(t *testing.T) {
	r := newReplayRig(t)
	canceled, cancel := context.WithCancel(replayCtx(t))
	cancel()
	since := time.Now().Add(-time.Hour)
	for _, tt := range []struct {
		name        string
		ctx         context.Context
		destination string
		usage       bool
	}{
		{"consumer there", replayCtx(t), natsjs.DefaultDestination, false},
		{"no consumer", replayCtx(t), "research", true},
		{"not a name", replayCtx(t), "a i", true},
		{"JetStream not answering", canceled, natsjs.DefaultDestination, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := r.cli.reforward(tt.ctx, tt.destination, events.PriorityLow, since, time.Time{}, true)
			if errors.Is(err, ErrUsage) != tt.usage || (tt.name == "consumer there") != (err == nil) {
				t.Errorf("reforward = %v, want a usage error: %v", err, tt.usage)
			}
		})
	}
}

// TestToolCommandLineCheckedFirst: `forwarder replay` and `forwarder
// destinations` read their command line before they open JetStream. On a
// single host, whose store only a stopped stowline lets them open, a typo
// was answered "store directory in use: stop stowline first"; once
// stowline was stopped for it, "unknown command". (With NATS down, it was
// a connection error.)
func TestToolCommandLineCheckedFirst(t *testing.T) {
	// The store of a running single host: its embedded server holds it.
	dir := t.TempDir()
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: dir, ServerName: "running"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	getenv := func(k string) string { return map[string]string{"NATS_STORE_DIR": dir, "LOG_LEVEL": "error"}[k] }
	for _, tc := range []struct {
		run  func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error
		args []string
		want string
	}{
		{RunReplay, []string{"shwo", "5"}, `unknown command "shwo"`},
		{RunReplay, []string{"show", "abc"}, `want a dead-letter sequence number, got "abc"`},
		{RunReplay, []string{"purge"}, "give a filter"},
		{RunReplay, []string{"list", "--since", "yesterday"}, `"yesterday" is not a time`},
		{RunReplay, []string{"reforward", "--destination", "ai"}, "--since is required"},
		{RunDestinations, []string{"remove", "ai"}, "--yes is required"},
		{RunDestinations, []string{"rm", "ai"}, `unknown command "rm"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := tc.run(replayCtx(t), tc.args, getenv, io.Discard, io.Discard)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want a usage error with %q", err, tc.want)
			}
		})
	}
	// A good command line still opens the store, and is told it is held.
	if err := RunReplay(replayCtx(t), []string{"list"}, getenv, io.Discard, io.Discard); !errors.Is(err, natsjs.ErrStoreInUse) {
		t.Errorf("replay list = %v, want the store in use", err)
	}
}

// `replay reforward` prints how many messages of its window it could not
// read (not queued): it skipped them without a word. And `replay list`
// lists a letter this build cannot decode among the others, which `purge
// --seq` deletes: both failed on it.
func TestReplayToolsOverWhatTheyCannotRead(t *testing.T) {
	r := newReplayRig(t)
	if _, err := r.ns.JS.Publish(replayCtx(t), natsjs.EventSubject("orthanc-a"), []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	out := r.mustRun(t, "reforward", "--since", "1h", "--dry-run")
	if !strings.Contains(out, "0 events would be queued again") || !strings.Contains(out, "1 messages in the window are no event this build reads") {
		t.Errorf("reforward printed:\n%s\nwant the one unreadable message counted", out)
	}

	ack, err := r.ns.JS.Publish(replayCtx(t), natsjs.DeadLetterSubject(natsjs.DefaultDestination, "orthanc-a"), []byte("not a letter"))
	if err != nil {
		t.Fatal(err)
	}
	out = r.mustRun(t, "list")
	if !strings.Contains(out, string(deadletter.UnreadableLetter)) {
		t.Errorf("replay list printed:\n%s\nwant the unreadable letter", out)
	}
	// Its failure times are unknown: shown as such, not as year 1.
	out = r.mustRun(t, "show", strconv.FormatUint(ack.Sequence, 10))
	if !strings.Contains(out, "first failure  -\n") || strings.Contains(out, "0001-01-01") || !strings.Contains(out, "dead-lettered  "+time.Now().UTC().Format("2006-01-02")) {
		t.Errorf("replay show printed:\n%s\nwant no failure times and the time NATS stored it", out)
	}
	r.mustRun(t, "purge", "--seq", strconv.FormatUint(ack.Sequence, 10))
	if out := r.mustRun(t, "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("after the purge replay list --json printed %s", out)
	}
}

// TestOneLineKeepsTheTerminalSafe: what replay list and show print of a
// letter's free text (a UID a modality sent, a server's answer quoted in
// a reason) is one line without control characters: an escape sequence
// written as it was would drive the operator's terminal, and a newline
// forge a line of show's table.
func TestOneLineKeepsTheTerminalSafe(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"stored  as\tsent\n", "stored as sent"},
		{"1.2.3\x1b]0;owned\x07", "1.2.3?]0;owned?"},
		{"reason\nattempts\t99", "reason attempts 99"},
		{"Prüfung 0xC000 ✓", "Prüfung 0xC000 ✓"},
		{"\x00\x7f\u200b", "???"},
	} {
		if got := oneLine(tc.in); got != tc.want {
			t.Errorf("oneLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// timeline records, in order, the writes to several writers (the
// command's stdout and its log), one event a write.
type timeline struct {
	mu     sync.Mutex
	events []timelineEvent
}

type timelineEvent struct {
	writer string
	data   string
}

// writer is a writer whose writes the timeline records as name's.
func (tl *timeline) writer(name string) io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		tl.events = append(tl.events, timelineEvent{name, string(b)})
		return len(b), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestReplayPurgeWritesAsItGoes: `replay purge` (and run, and list) held
// its whole table in a tabwriter until the end, and logged no letter: a
// purge killed part-way (a lost ssh session's SIGHUP) left no record of
// the letters it had deleted for good. The rows are written out a block
// at a time as the letters are purged or replayed, and each such letter
// is logged (to stderr) as the admin API logs it; a dry run logs none.
func TestReplayPurgeWritesAsItGoes(t *testing.T) {
	const letters = tableBlock + 100
	for _, tt := range []struct{ command, verb string }{{"purge", "purged"}, {"run", "replayed"}} {
		r := newReplayRig(t)
		want := map[uint64]events.StudyStable{}
		for i := range letters {
			seq, ev := r.deadLetter(t, i+1, forward.Permanent, "HTTP 415")
			want[seq] = ev
		}
		for _, dryRun := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s dry run %v", tt.command, dryRun), func(t *testing.T) {
				var tl timeline
				r.cli.Stdout, r.cli.Log = tl.writer("stdout"), slog.New(slog.NewJSONHandler(tl.writer("log"), nil))
				args := []string{tt.command, "--all"}
				if dryRun {
					args = append(args, "--dry-run")
				}
				if err := r.cli.Run(replayCtx(t), args); err != nil {
					t.Fatal(err)
				}
				var out strings.Builder
				logged := map[uint64]bool{}
				loggedBeforeRows := -1 // letters logged before the first rows reached stdout
				for _, e := range tl.events {
					if e.writer == "stdout" {
						if loggedBeforeRows < 0 {
							loggedBeforeRows = len(logged)
						}
						out.WriteString(e.data)
						continue
					}
					var line struct {
						Msg              string `json:"msg"`
						Seq              uint64 `json:"dead_letter_seq"`
						Destination      string `json:"destination"`
						Source           string `json:"source"`
						OrthancStudyID   string `json:"orthanc_study_id"`
						StudyInstanceUID string `json:"study_instance_uid"`
					}
					if err := json.Unmarshal([]byte(e.data), &line); err != nil {
						t.Fatalf("log line %q: %v", e.data, err)
					}
					ev, ok := want[line.Seq]
					if !ok || line.Msg != "dead letter "+tt.verb+" by forwarder replay "+tt.command || line.Destination != natsjs.DefaultDestination ||
						line.Source != ev.Source || line.OrthancStudyID != ev.OrthancStudyID || line.StudyInstanceUID != ev.StudyInstanceUID {
						t.Fatalf("log line %q does not name a purged letter", e.data)
					}
					logged[line.Seq] = true
				}
				if rows := strings.Count(out.String(), "HTTP 415"); rows != letters {
					t.Errorf("%d rows written, want %d", rows, letters)
				}
				if dryRun {
					if len(logged) > 0 {
						t.Errorf("a dry run logged %d letters as %s", len(logged), tt.verb)
					}
					return
				}
				if !strings.Contains(out.String(), fmt.Sprintf("%d dead letters %s", letters, tt.verb)) {
					t.Errorf("output lacks the count:\n%s", out.String())
				}
				if len(logged) != letters {
					t.Errorf("%d %s letters logged, want %d", len(logged), tt.verb, letters)
				}
				if loggedBeforeRows > tableBlock {
					t.Errorf("%d letters %s before the first rows reached stdout, want at most a block (%d)", loggedBeforeRows, tt.verb, tableBlock)
				}
			})
		}
	}
}

// Run executes one command line (without the leading "replay"), as
// RunReplay does once connected.
func (c *replayCLI) Run(ctx context.Context, args []string) error {
	cmd, err := parseReplay(args)
	if err != nil {
		return err
	}
	return cmd(ctx, c)
}
