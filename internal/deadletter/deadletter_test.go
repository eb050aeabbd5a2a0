package deadletter_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// testCtx bounds a test's JetStream calls.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newStore starts a real embedded JetStream with the event and dead-letter
// streams and the default destination's consumer, and returns the
// dead-letter store on it.
func newStore(t *testing.T) (*deadletter.Store, *testnats.Server) {
	t.Helper()
	ns := testnats.Start(t)
	dl, err := natsjs.DefaultTopology().EnsureDeadLetters(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsjs.DefaultTopology().EnsureConsumer(testCtx(t), ns.JS, natsjs.DefaultDestination); err != nil {
		t.Fatal(err)
	}
	return deadletter.NewStore(ns.JS, dl), ns
}

// A letter of a destination without a consumer (removed from
// DESTINATIONS, or renamed) is not replayed: nobody would take its event,
// and the letter would be gone. It stays, and the error says why.
func TestReplayKeepsLettersOfADestinationWithoutConsumer(t *testing.T) {
	store, ns := newStore(t)
	l := letter(1, forward.Permanent, "HTTP 415", time.Now().UTC())
	l.Destination = "gone"
	add(t, store, l)
	// The dry run says so too: it said the letter would be replayed.
	for _, dry := range []bool{true, false} {
		done, err := replay(testCtx(t), store, deadletter.Filter{All: true}, dry)
		if !errors.Is(err, deadletter.ErrNoConsumer) || !strings.Contains(err.Error(), `destination "gone" has no consumer`) || len(done) != 0 {
			t.Fatalf("Replay (dry run %v) = %v, %v; want nothing done and an error naming the destination without a consumer", dry, seqsOf(done), err)
		}
	}
	left, err := store.List(testCtx(t), deadletter.Filter{All: true})
	if err != nil || len(left) != 1 {
		t.Fatalf("letters after the refused replay = %d (%v), want the one kept", len(left), err)
	}
	if got := eventStream(t, ns.JS); len(got) != 0 {
		t.Errorf("%d events published for a destination without a consumer", len(got))
	}
}

// A replay goes to the destination's low lane: without that lane's
// consumer (a removal of the destination that stopped after deleting its
// lanes, a low consumer deleted by hand) nobody would take the event and
// the letter would be gone, even though the routine consumer is there.
// A consumer from before lanes, which takes every subject of its
// destination, still takes replays.
func TestReplayNeedsTheConsumerThatTakesIt(t *testing.T) {
	store, ns := newStore(t)
	low := natsjs.LaneConsumerName(natsjs.DefaultDestination, events.PriorityLow)
	if err := ns.JS.DeleteConsumer(testCtx(t), natsjs.EventStream, low); err != nil {
		t.Fatal(err)
	}
	seq := add(t, store, letter(1, forward.Permanent, "HTTP 415", time.Now().UTC()))[0]
	_, err := replay(testCtx(t), store, deadletter.Filter{All: true}, false)
	if err == nil || !strings.Contains(err.Error(), `destination "default" has no consumer `+low) {
		t.Fatalf("Replay err = %v, want it to name the missing low-lane consumer", err)
	}
	if _, err := store.Get(testCtx(t), seq); err != nil {
		t.Errorf("the letter is gone: %v", err)
	}
	if got := eventStream(t, ns.JS); len(got) != 0 {
		t.Errorf("%d events published that no consumer takes", len(got))
	}

	// The one consumer of a deployment from before lanes.
	for _, lane := range []events.Priority{events.PriorityStat, events.PriorityRoutine} {
		if err := ns.JS.DeleteConsumer(testCtx(t), natsjs.EventStream, natsjs.LaneConsumerName(natsjs.DefaultDestination, lane)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ns.JS.CreateConsumer(testCtx(t), natsjs.EventStream, jetstream.ConsumerConfig{
		Durable:        natsjs.ConsumerName(natsjs.DefaultDestination),
		FilterSubjects: []string{natsjs.EventSubjectPrefix + ">", natsjs.DestinationSubjectPrefix + natsjs.DefaultDestination + ".>"},
		AckPolicy:      jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	if done, err := replay(testCtx(t), store, deadletter.Filter{All: true}, false); err != nil || !slices.Equal(seqsOf(done), []uint64{seq}) {
		t.Fatalf("Replay with a consumer from before lanes = %v, %v; want %d replayed", seqsOf(done), err, seq)
	}
}

// event returns a valid event for study i of source src.
func event(src string, i int) events.StudyStable {
	return events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: src,
		OrthancStudyID:   fmt.Sprintf("%08x-%08x-%08x-%08x-%08x", i, i, i, i, i),
		StudyInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.2.1143.%d", i),
		LastUpdate:       "20260101T120000",
	}
}

// letter is a dead letter for study i, originally at event sequence i.
func letter(i int, class forward.Class, reason string, at time.Time) *forward.DeadLetter {
	return &forward.DeadLetter{
		Event: event("src", i), Class: class, Reason: reason, Attempts: 3,
		FirstFailure: at.Add(-time.Minute), LastFailure: at, OriginalSeq: uint64(i), DeadLetteredAt: at,
	}
}

// add stores letters and returns their dead-letter sequences.
func add(t *testing.T, s *deadletter.Store, letters ...*forward.DeadLetter) []uint64 {
	t.Helper()
	seqs := make([]uint64, 0, len(letters))
	for _, l := range letters {
		seq, _, err := s.Add(testCtx(t), l)
		if err != nil {
			t.Fatalf("Add: %v", err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func seqsOf(entries []deadletter.Entry) []uint64 {
	out := make([]uint64, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Seq)
	}
	return out
}

// storedEvent is one message of the event stream.
type storedEvent struct {
	msgID string
	ev    *events.StudyStable
	at    time.Time
}

// eventStream reads every message of the event stream, oldest first.
func eventStream(t *testing.T, js jetstream.JetStream) []storedEvent {
	t.Helper()
	ctx := testCtx(t)
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []storedEvent
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		ev, err := events.Decode(m.Data)
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		out = append(out, storedEvent{msgID: m.Header.Get(jetstream.MsgIDHeader), ev: ev, at: m.Time})
	}
	return out
}

// A forwarder that dies between Add and terminating the original event
// adds the same letter again on the next delivery: it must stay one.
func TestAddIsIdempotentPerOriginalSeq(t *testing.T) {
	s, _ := newStore(t)
	now := time.Now().UTC()
	first := add(t, s, letter(7, forward.Permanent, "HTTP 415", now))[0]
	again := add(t, s, letter(7, forward.Permanent, "HTTP 415 (second delivery)", now))[0]
	if again != first {
		t.Errorf("the same original event dead-lettered twice got sequences %d and %d, want one letter", first, again)
	}
	other := letter(8, forward.Permanent, "HTTP 415", now)
	other.Event = event("src", 7) // same study, another original event
	if seq := add(t, s, other)[0]; seq == first {
		t.Errorf("another original event of the same study got the first letter's sequence %d", seq)
	}
	all, err := s.List(testCtx(t), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Errorf("%d letters stored, want 2", len(all))
	}
}

// The destination's answer kept with a letter is bounded.
func TestAddTruncatesTheLastResponse(t *testing.T) {
	s, _ := newStore(t)
	l := letter(1, forward.Permanent, "HTTP 400", time.Now())
	l.LastResponse = strings.Repeat("x", 3*deadletter.MaxResponseBytes)
	seq := add(t, s, l)[0]
	got, err := s.Get(testCtx(t), seq)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("x", deadletter.MaxResponseBytes) + "…"; got.LastResponse != want {
		t.Errorf("kept a response of %d bytes, want the first %d and an ellipsis", len(got.LastResponse), deadletter.MaxResponseBytes)
	}
}

// TestAddBoundsTheFailedInstances: a letter names at most
// MaxLetterFailures failed instances, each text cut to MaxFailureText,
// and counts the rest. A study whose thousands of instances all failed (a
// CT in lossy JPEG for a destination that takes lossless syntaxes only:
// 3,000 refusals of 230 characters each) made a letter over JetStream's
// 1 MB message: it was never stored, the study was sent again at every
// delivery for FORWARDER_MAX_DELIVERIES, then dead-lettered as a crash.
func TestAddBoundsTheFailedInstances(t *testing.T) {
	s, _ := newStore(t)
	text := "instance is in lossy JPEG Baseline (Process 1), which the destination's DESTINATION_ARCHIVE_STOW_TRANSFER_SYNTAXES does not list; converting it would pass lossy pixel data off as lossless: add 1.2.840.10008.1.2.4.50 to DESTINATION_ARCHIVE_STOW_TRANSFER_SYNTAXES if the destination accepts it"
	for _, tt := range []struct {
		name      string
		instances int
		text      string
	}{
		{"a few", 3, "out of resources"},
		// Orthanc's failed conversion, whose end names the plugin to add.
		{"a few long texts", 4, strings.Repeat("the source Orthanc could not convert the instance ", 10) + "install the GDCM plugin"},
		{"a lossy CT of 3,000 instances", 3000, text},
		{"every instance of a 20,000-instance study, long texts", 20000, strings.Repeat("x", 2000)},
		// JSON writes each at 6 bytes (\u003c).
		{"texts of characters JSON escapes", 1000, strings.Repeat("<", 2000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := letter(tt.instances, forward.Partial, fmt.Sprintf("%d of %d instances cannot be stored", tt.instances, tt.instances), time.Now())
			for i := range tt.instances {
				l.Failures = append(l.Failures, forward.Instance{SOPInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.8.498.%d", i), Text: tt.text})
			}
			given := slices.Clone(l.Failures)
			seq, _, err := s.Add(testCtx(t), l)
			if err != nil {
				t.Fatalf("letter of %d failed instances not stored: %v", tt.instances, err)
			}
			got, err := s.Get(testCtx(t), seq)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(got.Failures) + got.MoreFailures; n != tt.instances || len(got.Failures) == 0 || len(got.Failures) > deadletter.MaxLetterFailures ||
				len(got.Failures) < min(tt.instances, deadletter.MaxLetterFailures) && !strings.HasPrefix(tt.text, "<") {
				t.Fatalf("letter names %d failed instances and %d more, want %d in all, at most %d named", len(got.Failures), got.MoreFailures, tt.instances, deadletter.MaxLetterFailures)
			}
			// Texts are cut only when the letter would be too large: a
			// few failures keep theirs whole (their end says what to do).
			cut := tt.instances*len(tt.text) > 256<<10
			for i, fi := range got.Failures {
				if fi.SOPInstanceUID != given[i].SOPInstanceUID || !strings.HasPrefix(given[i].Text, strings.TrimSuffix(fi.Text, "…")) ||
					cut && utf8.RuneCountInString(fi.Text) > deadletter.MaxFailureText || !cut && fi.Text != given[i].Text {
					t.Fatalf("failed instance %d kept as %+v, want %s with its text whole, or cut to %d characters in a large letter (%v)", i, fi, given[i].SOPInstanceUID, deadletter.MaxFailureText, cut)
				}
			}
		})
	}
}

func TestGet(t *testing.T) {
	s, _ := newStore(t)
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	l := letter(3, forward.Partial, "2 of 5 instances failed", at)
	l.Failures = []forward.Instance{{SOPInstanceUID: "1.2.3.4", FailureReason: 0xA700, Text: "out of resources"}}
	seq := add(t, s, l)[0]

	got, err := s.Get(testCtx(t), seq)
	if err != nil {
		t.Fatalf("Get(%d): %v", seq, err)
	}
	if got.Seq != seq || got.Event != l.Event || got.Class != l.Class || got.Reason != l.Reason ||
		!got.DeadLetteredAt.Equal(at) || !slices.Equal(got.Failures, l.Failures) || got.OriginalSeq != 3 {
		t.Errorf("Get = %+v, want %+v at sequence %d", got, l, seq)
	}
	if _, err := s.Get(testCtx(t), seq+100); !errors.Is(err, deadletter.ErrNotFound) {
		t.Errorf("Get of a sequence with no letter: err = %v, want ErrNotFound", err)
	}
}

// TestListSinceToleratesClockSkew: a letter whose forwarder's clock ran
// ahead of NATS's (DeadLetteredAt after the time NATS stored it) is listed
// by a Since between the two.
func TestListSinceToleratesClockSkew(t *testing.T) {
	s, _ := newStore(t)
	ahead := time.Now().UTC().Add(2 * time.Minute)
	seqs := add(t, s, letter(1, forward.Transient, "connection refused", ahead))
	got, err := s.List(testCtx(t), deadletter.Filter{Since: ahead.Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seqsOf(got), seqs) {
		t.Errorf("List since a minute before the letter's time = %v, want %v", seqsOf(got), seqs)
	}
}

func TestListFilters(t *testing.T) {
	s, _ := newStore(t)

	// An empty stream lists as an empty, non-nil list (JSON []).
	empty, err := s.List(testCtx(t), deadletter.Filter{All: true})
	if err != nil || empty == nil || len(empty) != 0 {
		t.Fatalf("List of an empty stream = %#v, %v; want an empty non-nil list", empty, err)
	}

	// The stream stores them now; DeadLetteredAt says when they failed.
	t0 := time.Now().UTC().Add(-3 * time.Hour)
	seqs := add(t, s,
		letter(1, forward.Permanent, "HTTP 415 Unsupported Media Type", t0),
		letter(2, forward.Transient, "connection refused", t0.Add(time.Hour)),
		letter(3, forward.Partial, "2 of 5 instances failed (0xA700)", t0.Add(2*time.Hour)),
	)
	one, two, three := seqs[0], seqs[1], seqs[2]
	// The same study at another source Orthanc (ORTHANC_SOURCES).
	cardio := letter(3, forward.Permanent, "HTTP 415 Unsupported Media Type", t0.Add(2*time.Hour))
	cardio.Event.Source = "cardio"
	four := add(t, s, cardio)[0]

	tests := []struct {
		name   string
		filter deadletter.Filter
		want   []uint64
	}{
		{"all", deadletter.Filter{All: true}, []uint64{one, two, three, four}},
		{"seq", deadletter.Filter{Seq: two}, []uint64{two}},
		{"seq without a letter", deadletter.Filter{Seq: three + 10}, []uint64{}},
		{"seq and another class", deadletter.Filter{Seq: two, Class: forward.Permanent}, []uint64{}},
		{"study UID", deadletter.Filter{StudyInstanceUID: event("src", 3).StudyInstanceUID}, []uint64{three, four}},
		{"source", deadletter.Filter{Source: "cardio"}, []uint64{four}},
		{"study UID at one source", deadletter.Filter{StudyInstanceUID: event("src", 3).StudyInstanceUID, Source: "src"}, []uint64{three}},
		{"Orthanc ID", deadletter.Filter{OrthancStudyID: event("src", 1).OrthancStudyID}, []uint64{one}},
		{"class", deadletter.Filter{Class: forward.Transient}, []uint64{two}},
		{"reason, case-insensitive", deadletter.Filter{ReasonContains: "UNSUPPORTED media"}, []uint64{one, four}},
		{"reason matches none", deadletter.Filter{ReasonContains: "certificate"}, []uint64{}},
		{"dead-lettered since", deadletter.Filter{Since: t0.Add(30 * time.Minute)}, []uint64{two, three, four}},
		{"since and class", deadletter.Filter{Since: t0.Add(30 * time.Minute), Class: forward.Partial}, []uint64{three}},
		{"since after every letter was stored", deadletter.Filter{Since: time.Now().Add(time.Hour)}, []uint64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.List(testCtx(t), tt.filter)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if got == nil {
				t.Fatal("List returned nil; want a non-nil list")
			}
			if !slices.Equal(seqsOf(got), tt.want) {
				t.Errorf("List = %v, want %v", seqsOf(got), tt.want)
			}
		})
	}
	none, err := s.List(testCtx(t), deadletter.Filter{Class: forward.Crash})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := json.Marshal(none); err != nil || string(b) != "[]" {
		t.Errorf("no match encodes as %s (%v), want []", b, err)
	}
}

func TestReplay(t *testing.T) {
	t.Run("queues the event again with a fresh dedupe ID, then removes the letter", func(t *testing.T) {
		s, ns := newStore(t)
		// The original event, as the ingest stored it.
		ev := event("src", 1)
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(testCtx(t), &ev); err != nil {
			t.Fatal(err)
		}
		seqs := add(t, s, letter(1, forward.Permanent, "HTTP 415", time.Now()), letter(2, forward.Permanent, "HTTP 415", time.Now()))

		dry, err := replay(testCtx(t), s, deadletter.Filter{Seq: seqs[0]}, true)
		if err != nil || !slices.Equal(seqsOf(dry), seqs[:1]) {
			t.Fatalf("dry run = %v, %v; want %v", seqsOf(dry), err, seqs[:1])
		}
		if n := len(eventStream(t, ns.JS)); n != 1 {
			t.Errorf("a dry run queued events: the stream holds %d, want 1", n)
		}

		done, err := replay(testCtx(t), s, deadletter.Filter{Seq: seqs[0]}, false)
		if err != nil || !slices.Equal(seqsOf(done), seqs[:1]) {
			t.Fatalf("Replay = %v, %v; want %v", seqsOf(done), err, seqs[:1])
		}
		stored := eventStream(t, ns.JS)
		if len(stored) != 2 {
			t.Fatalf("the event stream holds %d events, want the original and the replayed one", len(stored))
		}
		replayed := stored[1]
		if *replayed.ev != ev {
			t.Errorf("replayed event = %+v, want %+v", replayed.ev, ev)
		}
		if replayed.msgID != deadletter.ReplayMsgID(&done[0]) || replayed.msgID == ev.MsgID() {
			t.Errorf("replayed with dedupe ID %q; want the fresh %q", replayed.msgID, deadletter.ReplayMsgID(&done[0]))
		}
		if _, err := s.Get(testCtx(t), seqs[0]); !errors.Is(err, deadletter.ErrNotFound) {
			t.Errorf("the replayed letter is still there (err %v)", err)
		}
		if _, err := s.Get(testCtx(t), seqs[1]); err != nil {
			t.Errorf("the letter that was not selected is gone: %v", err)
		}
	})

	t.Run("keeps the letter when the event cannot be stored", func(t *testing.T) {
		s, ns := newStore(t)
		seq := add(t, s, letter(1, forward.Permanent, "HTTP 415", time.Now()))[0]
		if err := ns.JS.DeleteStream(testCtx(t), natsjs.EventStream); err != nil {
			t.Fatal(err)
		}
		done, err := replay(testCtx(t), s, deadletter.Filter{All: true}, false)
		if err == nil {
			t.Fatal("Replay with no event stream succeeded")
		}
		if len(done) != 0 {
			t.Errorf("Replay reports %v replayed", seqsOf(done))
		}
		if _, err := s.Get(testCtx(t), seq); err != nil {
			t.Errorf("the letter was removed although its event was not stored: %v", err)
		}
	})

	t.Run("needs a filter", func(t *testing.T) {
		s, ns := newStore(t)
		add(t, s, letter(1, forward.Permanent, "HTTP 415", time.Now()))
		if _, err := replay(testCtx(t), s, deadletter.Filter{}, false); err == nil {
			t.Error("Replay with an empty filter succeeded; want an error asking for All")
		}
		if n := len(eventStream(t, ns.JS)); n != 0 {
			t.Errorf("an empty filter queued %d events", n)
		}
	})
}

var errListingCut = errors.New("connection lost")

// oneListingJS fails every read of a stream past the first.
type oneListingJS struct {
	jetstream.JetStream
	reads int
}

func (j *oneListingJS) OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	if j.reads++; j.reads > 1 {
		return nil, errListingCut
	}
	return j.JetStream.OrderedConsumer(ctx, stream, cfg)
}

// A listing that fails part-way replays and purges nothing, and says so:
// the letters read before the failure were reported as replayed (the
// command printed "N dead letters replayed") although their studies were
// never queued again, nor their letters purged.
func TestReplayAndPurgeReportNothingDoneWhenTheListingFails(t *testing.T) {
	s, ns := newStore(t)
	// More letters than a page: the listing fails once it has read the
	// first page, when it starts reading the second.
	var seq uint64
	for i := range 257 {
		seq = add(t, s, letter(i+1, forward.Permanent, "HTTP 415", time.Now()))[0]
	}
	for name, op := range map[string]func(context.Context, *deadletter.Store, deadletter.Filter, bool) ([]deadletter.Entry, error){"Replay": replay, "Purge": purge} {
		for _, dry := range []bool{false, true} {
			cut, err := deadletter.Open(testCtx(t), &oneListingJS{JetStream: ns.JS})
			if err != nil {
				t.Fatal(err)
			}
			done, err := op(testCtx(t), cut, deadletter.Filter{All: true}, dry)
			if !errors.Is(err, errListingCut) {
				t.Errorf("%s (dry run %v) = %v over a listing that failed", name, dry, err)
			}
			if len(done) != 0 {
				t.Errorf("%s (dry run %v) reports %v done although it did nothing", name, dry, seqsOf(done))
			}
		}
	}
	if _, err := s.Get(testCtx(t), seq); err != nil {
		t.Errorf("the letter is gone: %v", err)
	}
	if n := len(eventStream(t, ns.JS)); n != 0 {
		t.Errorf("%d events queued", n)
	}
}

func TestPurge(t *testing.T) {
	s, _ := newStore(t)
	now := time.Now()
	seqs := add(t, s,
		letter(1, forward.Permanent, "HTTP 415", now),
		letter(2, forward.Transient, "timeout", now),
		letter(3, forward.Permanent, "HTTP 400", now),
	)
	list := func() []uint64 {
		t.Helper()
		all, err := s.List(testCtx(t), deadletter.Filter{All: true})
		if err != nil {
			t.Fatal(err)
		}
		return seqsOf(all)
	}

	if _, err := purge(testCtx(t), s, deadletter.Filter{}, false); err == nil {
		t.Error("Purge with an empty filter succeeded; want an error asking for All")
	}
	dry, err := purge(testCtx(t), s, deadletter.Filter{Class: forward.Permanent}, true)
	if err != nil || !slices.Equal(seqsOf(dry), []uint64{seqs[0], seqs[2]}) {
		t.Fatalf("dry run = %v, %v", seqsOf(dry), err)
	}
	if got := list(); !slices.Equal(got, seqs) {
		t.Errorf("after a dry run the stream holds %v, want %v", got, seqs)
	}
	done, err := purge(testCtx(t), s, deadletter.Filter{Class: forward.Permanent}, false)
	if err != nil || !slices.Equal(seqsOf(done), []uint64{seqs[0], seqs[2]}) {
		t.Fatalf("Purge = %v, %v", seqsOf(done), err)
	}
	if got := list(); !slices.Equal(got, seqs[1:2]) {
		t.Errorf("after the purge the stream holds %v, want %v", got, seqs[1:2])
	}
	if again, err := purge(testCtx(t), s, deadletter.Filter{Class: forward.Permanent}, false); err != nil || len(again) != 0 {
		t.Errorf("purging again = %v, %v; want nothing and no error", seqsOf(again), err)
	}
}

// A letter another operator's purge deletes while a replay or purge runs
// (after it read the letter) stops neither: the server answers its
// delete with a generic failure ("no message found", err_code 10057),
// which stopped them. A purge does not count or report it; a replay
// does, having queued its event.
func TestLetterPurgedMeanwhile(t *testing.T) {
	for _, tt := range []struct {
		op   string
		want int
	}{{"purge", 1}, {"replay", 2}} {
		t.Run(tt.op, func(t *testing.T) {
			s, ns := newStore(t)
			now := time.Now()
			seqs := add(t, s, letter(1, forward.Permanent, "HTTP 415", now), letter(2, forward.Permanent, "HTTP 415", now))
			stream, err := ns.JS.Stream(testCtx(t), natsjs.DeadLetterStream)
			if err != nil {
				t.Fatal(err)
			}
			purgeSecond := func() {
				if err := stream.DeleteMsg(testCtx(t), seqs[1]); err != nil {
					t.Error(err)
				}
			}
			run := s.Purge
			var done []uint64
			each := func(e *deadletter.Entry) {
				if e.Seq == seqs[0] {
					purgeSecond()
				}
			}
			if tt.op == "replay" {
				// A replay removes letters several at a time: the second
				// is purged as its event is stored, before the replay's
				// delete.
				ev := event("src", 2)
				second := ev.MsgID() + "/replay/"
				hooked, err := deadletter.Open(testCtx(t), publishHookJS{JetStream: ns.JS, before: func(m *nats.Msg) {
					if strings.HasPrefix(m.Header.Get(jetstream.MsgIDHeader), second) {
						purgeSecond()
					}
				}})
				if err != nil {
					t.Fatal(err)
				}
				run, each = hooked.Replay, func(*deadletter.Entry) {}
			}
			n, err := run(testCtx(t), deadletter.Filter{All: true}, false, func(e *deadletter.Entry) {
				done = append(done, e.Seq)
				each(e)
			})
			if err != nil || n != tt.want || len(done) != tt.want {
				t.Errorf("%s = %d %v, %v; want %d letters done", tt.op, n, done, err, tt.want)
			}
		})
	}
}

// Replay and Purge read the letters a page at a time (a letter may hold
// half a megabyte; thousands after an outage would not fit in memory at
// once): every selected letter is done however many pages they fill, and
// a letter stored meanwhile, as by a replayed study failing again at
// once, waits for the next replay instead of being taken by this one
// (with "all", over and over while the destination refuses the study).
func TestReplayAndPurgeWorkPageByPage(t *testing.T) {
	const n = 300 // more than one page
	for _, op := range []string{"replay", "purge"} {
		t.Run(op, func(t *testing.T) {
			s, ns := newStore(t)
			letters := make([]*forward.DeadLetter, n)
			for i := range letters {
				letters[i] = letter(i+1, forward.Permanent, "HTTP 415", time.Now())
			}
			seqs := add(t, s, letters...)
			var late uint64
			done := 0
			each := func(e *deadletter.Entry) {
				if done++; done == 1 {
					late = add(t, s, letter(n+1, forward.Permanent, "HTTP 415", time.Now()))[0]
				}
			}
			run := s.Replay
			if op == "purge" {
				run = s.Purge
			}
			count, err := run(testCtx(t), deadletter.Filter{All: true}, false, each)
			if err != nil || count != n || done != n {
				t.Fatalf("%s = %d (%d reported), %v; want the %d letters there at the start", op, count, done, err, n)
			}
			left, err := s.List(testCtx(t), deadletter.Filter{All: true})
			if err != nil || !slices.Equal(seqsOf(left), []uint64{late}) {
				t.Errorf("left after the %s: %v (%v); want only the letter stored meanwhile, %d (first was %d)", op, seqsOf(left), err, late, seqs[0])
			}
			if op == "replay" {
				if got := len(eventStream(t, ns.JS)); got != n {
					t.Errorf("%d events queued, want %d", got, n)
				}
			}
		})
	}
}

func TestReforward(t *testing.T) {
	_, ns := newStore(t)
	pub := natsjs.Publisher{JS: ns.JS}
	publish := func(ev events.StudyStable) {
		t.Helper()
		if _, err := pub.Publish(testCtx(t), &ev); err != nil {
			t.Fatal(err)
		}
	}
	// The window is on ReceivedAt, which the ingest sets as it takes an
	// event: the test's events are received as they are published.
	received := time.Now().UTC()

	// Stored before the window: never re-queued.
	before := event("src", 1)
	before.ReceivedAt = received
	publish(before)
	since := eventStream(t, ns.JS)[0].at.Add(time.Nanosecond)
	// The window starts at a stream timestamp: wait until the clock is past
	// it, so the next events are stored inside it.
	for !time.Now().After(since) {
		time.Sleep(time.Millisecond)
	}
	received = time.Now().UTC()
	inside, late := event("src", 2), event("other", 3)
	inside.ReceivedAt, late.ReceivedAt = received, received.Add(time.Hour)
	publish(inside)
	publish(late)

	keys := func(evs []events.StudyStable) []string {
		var out []string
		for _, ev := range evs {
			out = append(out, ev.MsgID())
		}
		return out
	}
	tests := []struct {
		name  string
		until time.Time
		want  []string
	}{
		{"up to now", time.Time{}, []string{inside.MsgID(), late.MsgID()}},
		{"until excludes what was received at or after it", received.Add(time.Hour), []string{inside.MsgID()}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" (dry run)", func(t *testing.T) {
			got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", since, tt.until, true)
			if err != nil || !slices.Equal(keys(got), tt.want) {
				t.Errorf("Reforward = %v, %v; want %v", keys(got), err, tt.want)
			}
			if n := len(eventStream(t, ns.JS)); n != 3 {
				t.Errorf("a dry run changed the stream: %d events, want 3", n)
			}
		})
	}

	got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", since, received.Add(time.Hour), false)
	if err != nil || !slices.Equal(keys(got), []string{inside.MsgID()}) {
		t.Fatalf("Reforward = %v, %v", keys(got), err)
	}
	stored := eventStream(t, ns.JS)
	if len(stored) != 4 {
		t.Fatalf("the event stream holds %d events, want 4 (3 and the re-queued one)", len(stored))
	}
	// A fresh dedupe ID, or JetStream would drop it inside the window.
	if last := stored[3]; *last.ev != inside || !strings.HasPrefix(last.msgID, inside.MsgID()+"/reforward/") {
		t.Errorf("re-queued %+v with dedupe ID %q, want %+v under a fresh ID", last.ev, last.msgID, inside)
	}
	// Run again (after a failure, or over an overlapping window): the
	// copy is read back with the original, and the study is queued once
	// more, not once for each.
	for run, want := range []int{5, 6} {
		if got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", since, received.Add(time.Hour), false); err != nil || len(got) != 1 {
			t.Fatalf("run %d: Reforward = %v, %v; want the one study", run+2, keys(got), err)
		}
		if n := len(eventStream(t, ns.JS)); n != want {
			t.Fatalf("run %d: the event stream holds %d events, want %d", run+2, n, want)
		}
	}

	// For a destination no consumer takes (a lane consumer deleted by
	// hand, a removal stopped part-way), nothing is queued: the admin
	// API's re-forward queued events for nobody and reported them queued.
	for _, dryRun := range []bool{true, false} {
		got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "archive", since, time.Time{}, dryRun)
		if !errors.Is(err, deadletter.ErrNoConsumer) || len(got) > 0 {
			t.Errorf("dry run %v: Reforward for a destination without a consumer = %v, %v; want ErrNoConsumer", dryRun, keys(got), err)
		}
	}
	if n := len(eventStream(t, ns.JS)); n != 6 {
		t.Errorf("the event stream holds %d events, want 6: nothing queued for a destination without a consumer", n)
	}

	for _, bad := range []struct {
		name         string
		since, until time.Time
	}{
		{"no start", time.Time{}, time.Time{}},
		{"end before start", since, since.Add(-time.Minute)},
		{"end at start", since, since},
	} {
		if _, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", bad.since, bad.until, false); err == nil {
			t.Errorf("%s: Reforward succeeded", bad.name)
		}
	}
}

func TestFailureLog(t *testing.T) {
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureFailureLog(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	log := deadletter.NewFailureLog(kv, "default")
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	record := func(seq uint64, at time.Time) forward.FailureTimes {
		t.Helper()
		ft, err := log.Record(testCtx(t), seq, at)
		if err != nil {
			t.Fatalf("Record(%d): %v", seq, err)
		}
		return ft
	}
	check := func(what string, got forward.FailureTimes, first, last time.Time) {
		t.Helper()
		if !got.First.Equal(first) || !got.Last.Equal(last) {
			t.Errorf("%s: times = %v..%v, want %v..%v", what, got.First, got.Last, first, last)
		}
	}

	check("first failure", record(5, t0), t0, t0)
	check("second failure keeps the first", record(5, t0.Add(time.Minute)), t0, t0.Add(time.Minute))
	check("another event is separate", record(6, t0.Add(2*time.Minute)), t0.Add(2*time.Minute), t0.Add(2*time.Minute))
	if err := log.Forget(testCtx(t), 5); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	check("after Forget it starts again", record(5, t0.Add(time.Hour)), t0.Add(time.Hour), t0.Add(time.Hour))
	check("Forget leaves other events", record(6, t0.Add(time.Hour)), t0.Add(2*time.Minute), t0.Add(time.Hour))
	if err := log.Forget(testCtx(t), 999); err != nil {
		t.Errorf("Forget of an event with no record: %v", err)
	}
}

// countingKV counts the reads of a bucket.
type countingKV struct {
	jetstream.KeyValue
	gets atomic.Int32
}

func (c *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	c.gets.Add(1)
	return c.KeyValue.Get(ctx, key)
}

// An attempt adds to its study's record as each request is answered: a
// write after this process's own last one does not read the record back
// (one JetStream round trip of two). A record another process wrote
// since is read, and what both stored is kept.
func TestFailureLogWritesWithoutReadingBack(t *testing.T) {
	ns := testnats.Start(t)
	bucket, err := natsjs.DefaultTopology().EnsureFailureLog(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	kv := &countingKV{KeyValue: bucket}
	log, other := deadletter.NewFailureLog(kv, "default"), deadletter.NewFailureLog(bucket, "default")
	ev := &events.StudyStable{Source: "orthanc-a", StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.8", LastUpdate: "20261205T071500"}
	remember := func(log *deadletter.FailureLog, ids ...string) {
		t.Helper()
		if err := log.RememberSent(testCtx(t), ev, ids); err != nil {
			t.Fatalf("RememberSent: %v", err)
		}
	}
	for i := range 5 {
		remember(log, fmt.Sprint("1.2.3.", i))
	}
	if n := kv.gets.Load(); n != 1 {
		t.Errorf("%d reads for 5 writes, want the first only", n)
	}
	remember(other, "1.2.3.100") // another replica's attempt
	remember(log, "1.2.3.5")
	if n := kv.gets.Load(); n != 2 {
		t.Errorf("%d reads, want one more after another process wrote", n)
	}
	sent, err := other.Sent(testCtx(t), ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1.2.3.0", "1.2.3.4", "1.2.3.5", "1.2.3.100"} {
		if !sent(id) {
			t.Errorf("%s is not remembered", id)
		}
	}
	// The record gone since (expired, purged): the write starts it again.
	keys, err := bucket.ListKeys(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		if err := bucket.Purge(testCtx(t), k); err != nil {
			t.Fatal(err)
		}
	}
	remember(log, "1.2.3.6")
	if sent, err = other.Sent(testCtx(t), ev); err != nil {
		t.Fatal(err)
	}
	if !sent("1.2.3.6") || sent("1.2.3.0") {
		t.Errorf("after the record was purged: 1.2.3.6 remembered %v, 1.2.3.0 %v; want the new one only", sent("1.2.3.6"), sent("1.2.3.0"))
	}
}

// A large study's record (past 64 KiB, 8,192 instances) is not read back
// either: each of a 20,000-instance study's 200 writes read its whole
// record first, 13 MB of reads for a 160 KB record.
func TestFailureLogLargeRecordNotReadBack(t *testing.T) {
	ns := testnats.Start(t)
	bucket, err := natsjs.DefaultTopology().EnsureFailureLog(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	kv := &countingKV{KeyValue: bucket}
	log := deadletter.NewFailureLog(kv, "default")
	ev := &events.StudyStable{Source: "orthanc-a", StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.9", LastUpdate: "20261207T091500"}
	ids := make([]string, 100)
	for req := range 200 {
		for i := range ids {
			ids[i] = fmt.Sprintf("1.2.3.%d.%d", req, i)
		}
		if err := log.RememberSent(testCtx(t), ev, ids); err != nil {
			t.Fatalf("request %d: RememberSent: %v", req, err)
		}
	}
	if n := kv.gets.Load(); n != 1 {
		t.Errorf("%d reads for 200 writes, want the first only", n)
	}
	sent, err := deadletter.NewFailureLog(bucket, "default").Sent(testCtx(t), ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1.2.3.0.0", "1.2.3.199.99"} {
		if !sent(id) {
			t.Errorf("%s is not remembered", id)
		}
	}
}

func TestFailureLogStoredInstances(t *testing.T) {
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureFailureLog(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	log := deadletter.NewFailureLog(kv, "default")
	ev := &events.StudyStable{Source: "orthanc-a", StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.7", LastUpdate: "20261203T101500"}
	sent := func(log *deadletter.FailureLog, ev *events.StudyStable) func(string) bool {
		t.Helper()
		s, err := log.Sent(testCtx(t), ev)
		if err != nil {
			t.Fatalf("Sent: %v", err)
		}
		return s
	}
	if sent(log, ev)("1.2.3.1") {
		t.Error("an instance is stored before anything was remembered")
	}
	// A study of 100,000 instances fits, remembered over two attempts.
	uids := make([]string, 100_000)
	for i := range uids {
		uids[i] = fmt.Sprintf("%s.%d", ev.StudyInstanceUID, i)
	}
	for _, part := range [][]string{uids[:60_000], uids[40_000:]} {
		if err := log.RememberSent(testCtx(t), ev, part); err != nil {
			t.Fatalf("RememberSent: %v", err)
		}
	}
	s := sent(log, ev)
	for _, i := range []int{0, 59_999, 60_000, 99_999} {
		if !s(uids[i]) {
			t.Errorf("instance %d not remembered", i)
		}
	}
	if s(ev.StudyInstanceUID + ".100000") {
		t.Error("an instance never sent is remembered")
	}
	// The study sent again (re-forwarded): what it already held counts
	// once, and nothing is dropped for room.
	if err := log.RememberSent(testCtx(t), ev, uids[:60_000]); err != nil {
		t.Fatalf("RememberSent again: %v", err)
	}
	if !sent(log, ev)(uids[99_999]) {
		t.Error("remembering instances already remembered dropped the others for room")
	}
	// Another version of the study (it gained an instance in Orthanc)
	// shares the record: the IDs forward gives tell the files apart.
	newer, elsewhere := *ev, *ev
	newer.LastUpdate, elsewhere.Source = "20261203T111500", "orthanc-b"
	if !sent(log, &newer)(uids[0]) {
		t.Error("a newer version of the study does not share the record")
	}
	// The same study in another source, another destination: nothing
	// shared.
	for what, s := range map[string]func(string) bool{
		"the study in another source": sent(log, &elsewhere),
		"another destination":         sent(deadletter.NewFailureLog(kv, "ai"), ev),
	} {
		if s(uids[0]) {
			t.Errorf("%s shares the record", what)
		}
	}
	// A version that would outgrow a JetStream message keeps what it
	// sent, and drops the instances written longest ago for room (the
	// record holds 60,000..99,999, then 0..59,999 written again): the
	// 10,000 from 60,000 on.
	more := make([]string, 30_000)
	for i := range more {
		more[i] = fmt.Sprintf("%s.v2.%d", ev.StudyInstanceUID, i)
	}
	if err := log.RememberSent(testCtx(t), &newer, more); err != nil {
		t.Fatalf("RememberSent past the bound: %v", err)
	}
	s = sent(log, &newer)
	for _, tt := range []struct {
		id   string
		want bool
	}{{more[0], true}, {more[len(more)-1], true}, {uids[0], true}, {uids[59_999], true}, {uids[60_000], false}, {uids[69_999], false}, {uids[70_000], true}} {
		if s(tt.id) != tt.want {
			t.Errorf("past the bound: %s recorded %v, want %v", tt.id, s(tt.id), tt.want)
		}
	}
}

// Attempts of one study version that fail at the same moment (two
// deliveries of it at once, or two events of it) each remember what they
// stored: neither overwrites the other's. An instance forgotten this way
// is taken, on the next attempt, for a conflict (kept in the source in
// buffer mode, dead-lettered with STOW_ON_CONFLICT=deadletter).
func TestFailureLogRemembersConcurrentAttempts(t *testing.T) {
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureFailureLog(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events.StudyStable{Source: "orthanc-a", StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.8", LastUpdate: "20261203T101500"}
	const attempts = 8
	uids := make([]string, attempts)
	errs := make(chan error, attempts)
	for i := range uids {
		uids[i] = fmt.Sprintf("%s.%d", ev.StudyInstanceUID, i)
		go func() {
			// A log each, as two forwarder replicas have.
			errs <- deadletter.NewFailureLog(kv, "default").RememberSent(testCtx(t), ev, uids[i:i+1])
		}()
	}
	for range uids {
		if err := <-errs; err != nil {
			t.Errorf("RememberSent: %v", err)
		}
	}
	sent, err := deadletter.NewFailureLog(kv, "default").Sent(testCtx(t), ev)
	if err != nil {
		t.Fatal(err)
	}
	var lost []int
	for i, uid := range uids {
		if !sent(uid) {
			lost = append(lost, i)
		}
	}
	if len(lost) > 0 {
		t.Errorf("instances %v of %d remembered at once were forgotten", lost, attempts)
	}
}

// The window is on the time the ingest received each event. A copy an
// earlier re-forward for every destination stored (on the lane subjects
// read here, with the original's ReceivedAt) is stored inside a later
// window but was received before it: it is not queued again. An event
// received inside the window but stored a moment before its start (a
// NATS clock behind the ingest's) is queued.
func TestReforwardWindowIsWhenReceived(t *testing.T) {
	_, ns := newStore(t)
	pub := natsjs.Publisher{JS: ns.JS}
	publish := func(ev events.StudyStable) time.Time {
		t.Helper()
		if _, err := pub.Publish(testCtx(t), &ev); err != nil {
			t.Fatal(err)
		}
		stored := eventStream(t, ns.JS)
		return stored[len(stored)-1].at
	}
	afterClock := func(at time.Time) time.Time {
		t.Helper()
		since := at.Add(time.Nanosecond)
		for !time.Now().After(since) {
			time.Sleep(time.Millisecond)
		}
		return since
	}

	// Received and stored before the window, then re-forwarded to every
	// destination inside it: the copy is stored after the window starts.
	old := event("src", 1)
	old.ReceivedAt = time.Now().UTC()
	before := old.ReceivedAt.Add(-time.Minute)
	window := afterClock(publish(old))
	if got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", before, window, false); err != nil || len(got) != 1 {
		t.Fatalf("first Reforward = %d events, %v; want the one", len(got), err)
	}

	// Received inside the window, stored just before its start on the
	// NATS server's clock.
	early := event("src", 2)
	early.ReceivedAt = time.Now().UTC().Add(time.Minute)
	publish(early)
	lateStart := early.ReceivedAt.Add(-time.Nanosecond)

	tests := []struct {
		name  string
		since time.Time
		want  []string
	}{
		{"a copy of an event received before the window", window, []string{early.MsgID()}},
		{"an event received inside the window, stored before it", lateStart, []string{early.MsgID()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := deadletter.Reforward(testCtx(t), ns.JS, "", tt.since, time.Time{}, true)
			var ids []string
			for _, ev := range got {
				ids = append(ids, ev.MsgID())
			}
			if err != nil || !slices.Equal(ids, tt.want) {
				t.Errorf("Reforward since %s = %v, %v; want %v", tt.since.Format(time.RFC3339Nano), ids, err, tt.want)
			}
		})
	}
}

// cutJS is JetStream whose ordered consumers lose the connection after
// their first fetch.
type cutJS struct{ jetstream.JetStream }

func (c cutJS) OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	cons, err := c.JetStream.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, err
	}
	return &cutConsumer{Consumer: cons}, nil
}

type cutConsumer struct {
	jetstream.Consumer
	fetches int
}

func (c *cutConsumer) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	if c.fetches++; c.fetches > 1 {
		return nil, errors.New("connection lost")
	}
	return c.Consumer.Fetch(n, opts...)
}

// TestReforwardReadCutShort: a re-forward whose read of the stream fails
// part-way queues nothing and reports nothing queued. It returned the
// events read so far, which `replay reforward` printed as "N events queued
// again": an operator who then moved the window past them never had them
// queued. A dry run still lists what it read, with the error.
func TestReforwardReadCutShort(t *testing.T) {
	_, ns := newStore(t)
	pub := natsjs.Publisher{JS: ns.JS}
	const n = 300 // more than one fetch
	for i := range n {
		ev := event("src", i+1)
		if _, err := pub.Publish(testCtx(t), &ev); err != nil {
			t.Fatal(err)
		}
	}
	since := time.Now().Add(-time.Hour)
	for _, tt := range []struct {
		name   string
		dryRun bool
		listed bool
	}{
		{"dry run", true, true},
		{"run", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := deadletter.Reforward(testCtx(t), cutJS{ns.JS}, "", since, time.Time{}, tt.dryRun)
			if err == nil {
				t.Fatal("Reforward with its read cut short succeeded")
			}
			if listed := len(got) > 0; listed != tt.listed {
				t.Errorf("Reforward returned %d events with %v; want them returned: %v", len(got), err, tt.listed)
			}
			if stored := len(eventStream(t, ns.JS)); stored != n {
				t.Errorf("the event stream holds %d events, want %d: nothing queued again", stored, n)
			}
		})
	}
}

// replay and purge run Store.Replay and Store.Purge and return the
// letters they reported done.
func replay(ctx context.Context, s *deadletter.Store, f deadletter.Filter, dryRun bool) ([]deadletter.Entry, error) {
	return collect(s.Replay, ctx, f, dryRun)
}

func purge(ctx context.Context, s *deadletter.Store, f deadletter.Filter, dryRun bool) ([]deadletter.Entry, error) {
	return collect(s.Purge, ctx, f, dryRun)
}

func collect(op func(context.Context, deadletter.Filter, bool, func(*deadletter.Entry)) (int, error),
	ctx context.Context, f deadletter.Filter, dryRun bool) ([]deadletter.Entry, error) {
	done := []deadletter.Entry{}
	n, err := op(ctx, f, dryRun, func(e *deadletter.Entry) { done = append(done, *e) })
	if n != len(done) {
		return done, fmt.Errorf("reported %d letters done, counted %d", len(done), n)
	}
	return done, err
}

// A recreated dead-letter stream numbers from 1 again: a letter of the
// same study state at a number replayed before within the dedupe window
// was dropped by JetStream as that replay's repeat, and its letter
// deleted. Letters written at other times get other dedupe IDs; the
// same letter keeps its own.
func TestReplayMsgIDNamesTheLetter(t *testing.T) {
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500"}
	letter := func(at time.Time) *deadletter.Entry {
		return &deadletter.Entry{Seq: 1, DeadLetter: forward.DeadLetter{Event: ev, DeadLetteredAt: at}}
	}
	first, again := letter(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)), letter(time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC))
	if deadletter.ReplayMsgID(first) == deadletter.ReplayMsgID(again) {
		t.Errorf("two letters numbered 1 written at other times share the dedupe ID %q", deadletter.ReplayMsgID(first))
	}
	if deadletter.ReplayMsgID(first) != deadletter.ReplayMsgID(letter(first.DeadLetteredAt)) {
		t.Error("the same letter gets two dedupe IDs: replayed twice, it would be queued twice")
	}
}

// Pages read by bytes walk letters of near the size bound one by one: a
// fetch bounded below a letter's size is never answered, and the walk
// stalled at it.
func TestPagesOfLargeLettersWalkThemAll(t *testing.T) {
	s, _ := newStore(t)
	const letters = 4
	for n := range letters {
		l := letter(n+1, forward.Partial, "1000 of 1000 instances cannot be stored", time.Now())
		for i := range 1000 {
			l.Failures = append(l.Failures, forward.Instance{SOPInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.8.498.%d", i), Text: strings.Repeat("x", 300)})
		}
		if _, _, err := s.Add(testCtx(t), l); err != nil {
			t.Fatal(err)
		}
	}
	var seen int
	for after := uint64(0); ; {
		page, more, err := s.Page(testCtx(t), deadletter.Filter{All: true}, after, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(page)
		if !more {
			break
		}
		after = page[len(page)-1].Seq
	}
	if seen != letters {
		t.Errorf("pages of at most 1 byte listed %d letters, want %d", seen, letters)
	}
}
