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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// publishHookJS calls before with each message published, then publishes
// it on the real server.
type publishHookJS struct {
	jetstream.JetStream
	before func(*nats.Msg)
}

func (j publishHookJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	j.before(msg)
	return j.JetStream.PublishMsg(ctx, msg, opts...)
}

// msgIDCounts counts the events of the event stream by dedupe ID.
func msgIDCounts(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, e := range eventStream(t, js) {
		counts[e.msgID]++
	}
	return counts
}

// Letters are replayed several at a time (more than a page, more than
// natsjs.PublishWindow): each study is queued once under its letter's dedupe ID,
// each letter removed, and every one reported, oldest first. Those whose
// event an earlier run stored before it stopped (a crash between the
// publish and the delete) are not queued twice.
func TestReplayManyLetters(t *testing.T) {
	const n = 300
	s, ns := newStore(t)
	letters := make([]*forward.DeadLetter, n)
	for i := range letters {
		letters[i] = letter(i+1, forward.Permanent, "HTTP 415", time.Now())
		letters[i].Event.Source = []string{"a", "b"}[i%2]
	}
	seqs := add(t, s, letters...)
	entries, err := s.List(testCtx(t), deadletter.Filter{All: true})
	if err != nil || len(entries) != n {
		t.Fatalf("List = %d letters, %v", len(entries), err)
	}
	for _, e := range entries[:50] {
		ev := e.Event
		if _, err := natsjs.PublishTo(testCtx(t), ns.JS, natsjs.DestinationSubject(deadletter.DestinationOf(&e.DeadLetter), ev.Source), &ev, deadletter.ReplayMsgID(&e)); err != nil {
			t.Fatal(err)
		}
	}

	done, err := replay(testCtx(t), s, deadletter.Filter{All: true}, false)
	if err != nil || !slices.Equal(seqsOf(done), seqs) {
		t.Fatalf("Replay = %d letters (%v), %v; want the %d, oldest first", len(done), seqsOf(done), err, n)
	}
	counts := msgIDCounts(t, ns.JS)
	if len(counts) != n {
		t.Errorf("the event stream holds %d dedupe IDs, want %d", len(counts), n)
	}
	for _, e := range entries {
		if c := counts[deadletter.ReplayMsgID(&e)]; c != 1 {
			t.Errorf("letter %d: its event stored %d times, want once", e.Seq, c)
		}
	}
	if left, err := s.List(testCtx(t), deadletter.Filter{All: true}); err != nil || len(left) != 0 {
		t.Errorf("%d letters left (%v), want none", len(left), err)
	}
}

// A replay that fails part-way, refused by the server or cancelled,
// removes exactly the letters whose events were stored, reports those,
// and keeps every other one; run again, it queues each remaining study
// once and none twice.
func TestReplayFailingPartwayKeepsTheLettersNotQueued(t *testing.T) {
	const n = 300
	refused := func(i int) bool { return i >= 100 && i%10 == 0 }
	tests := []struct {
		name string
		// wrap wraps the replay's JetStream; cancel, given how many
		// letters were reported, cancels the run.
		wrap    func(js jetstream.JetStream) jetstream.JetStream
		cancel  func(done int) bool
		wantErr func(err error, firstRefused uint64) bool
	}{
		{
			name: "a destination's events refused",
			wrap: func(js jetstream.JetStream) jetstream.JetStream {
				return testnats.RefusingPublishes{JetStream: js, Refuse: func(m *nats.Msg) bool { return strings.Contains(m.Subject, ".refused.") }}
			},
			wantErr: func(err error, first uint64) bool {
				return err != nil && strings.HasPrefix(err.Error(), fmt.Sprintf("replay dead letter %d: ", first))
			},
		},
		{
			// Cancelled at the 20th letter reported, the run has started
			// at most natsjs.PublishWindow more: some are never started.
			name:    "cancelled",
			cancel:  func(done int) bool { return done == 20 },
			wantErr: func(err error, _ uint64) bool { return errors.Is(err, context.Canceled) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ns := newStore(t)
			if _, err := natsjs.DefaultTopology().EnsureConsumer(testCtx(t), ns.JS, "refused"); err != nil {
				t.Fatal(err)
			}
			letters := make([]*forward.DeadLetter, n)
			for i := range letters {
				letters[i] = letter(i+1, forward.Permanent, "HTTP 415", time.Now())
				if refused(i) {
					letters[i].Destination = "refused"
				}
			}
			seqs := add(t, s, letters...)
			entries, err := s.List(testCtx(t), deadletter.Filter{All: true})
			if err != nil || len(entries) != n {
				t.Fatalf("List = %d letters, %v", len(entries), err)
			}
			run := s
			if tt.wrap != nil {
				if run, err = deadletter.Open(testCtx(t), tt.wrap(ns.JS)); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			var done []uint64
			count, err := run.Replay(ctx, deadletter.Filter{All: true}, false, func(e *deadletter.Entry) {
				done = append(done, e.Seq)
				if tt.cancel != nil && tt.cancel(len(done)) {
					cancel()
				}
			})
			if !tt.wantErr(err, seqs[100]) {
				t.Errorf("Replay err = %v", err)
			}
			if count != len(done) || len(done) == 0 || len(done) == n || !slices.IsSorted(done) {
				t.Fatalf("Replay = %d, reported %d letters %v; want a part of them, each once, oldest first", count, len(done), done)
			}
			left, err := s.List(testCtx(t), deadletter.Filter{All: true})
			if err != nil {
				t.Fatal(err)
			}
			// Every letter either reported and removed, or kept.
			if got := slices.Sorted(slices.Values(append(seqsOf(left), done...))); !slices.Equal(got, seqs) {
				t.Errorf("letters reported %v and kept %v; want every letter once in either", done, seqsOf(left))
			}
			counts := msgIDCounts(t, ns.JS)
			for i, e := range entries {
				c := counts[deadletter.ReplayMsgID(&e)]
				switch {
				case slices.Contains(done, e.Seq) && c != 1:
					t.Errorf("letter %d reported replayed: its event stored %d times", e.Seq, c)
				case tt.wrap != nil && refused(i) && c != 0:
					t.Errorf("letter %d: its refused event stored %d times", e.Seq, c)
				case tt.cancel != nil && !slices.Contains(done, e.Seq) && c != 0:
					// A publish cut off by the cancellation, stored all the
					// same: past the dedupe window a rerun queues it twice.
					t.Errorf("letter %d kept and not reported, but its event stored %d times", e.Seq, c)
				case c > 1:
					t.Errorf("letter %d: its event stored %d times", e.Seq, c)
				}
			}

			// Run again, refused no more: every study queued, once.
			again, err := replay(testCtx(t), s, deadletter.Filter{All: true}, false)
			if err != nil || !slices.Equal(seqsOf(again), seqsOf(left)) {
				t.Fatalf("Replay again = %v, %v; want the %d letters kept", seqsOf(again), err, len(left))
			}
			counts = msgIDCounts(t, ns.JS)
			for _, e := range entries {
				if c := counts[deadletter.ReplayMsgID(&e)]; c != 1 {
					t.Errorf("letter %d: its event stored %d times after both runs, want once", e.Seq, c)
				}
			}
			if len(counts) != n {
				t.Errorf("the event stream holds %d dedupe IDs, want %d", len(counts), n)
			}
		})
	}
}

// A re-forward of more events than natsjs.PublishWindow queues a copy of each,
// once; refused part-way, it returns exactly the events whose copies
// were stored, and the error names the first one refused; cancelled
// part-way, it returns exactly those stored and the cancellation.
func TestReforwardManyEvents(t *testing.T) {
	const n = 300
	for _, mode := range []string{"all", "refused", "cancelled"} {
		t.Run(mode, func(t *testing.T) {
			refuse, cancel := mode == "refused", mode == "cancelled"
			_, ns := newStore(t)
			since := time.Now().Add(-time.Hour)
			originals := map[string]events.StudyStable{}
			var firstRefused string
			for i := range n {
				ev := event("a", i+1)
				if i >= 100 && i%10 == 0 {
					// Refused events are of source b.
					ev.Source = "b"
					if firstRefused == "" {
						firstRefused = ev.MsgID()
					}
				}
				if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(testCtx(t), &ev); err != nil {
					t.Fatal(err)
				}
				originals[ev.MsgID()] = ev
			}
			var js jetstream.JetStream = ns.JS
			ctx, stop := context.WithCancel(testCtx(t))
			defer stop()
			switch {
			case refuse:
				js = testnats.RefusingPublishes{JetStream: ns.JS, Refuse: func(m *nats.Msg) bool {
					return strings.Contains(m.Header.Get(jetstream.MsgIDHeader), "/reforward/") && strings.HasSuffix(m.Subject, ".b.low")
				}}
			case cancel:
				// Cancelled at the 50th copy sent, with others in flight:
				// those stored are returned, and only those.
				var sent atomic.Int32
				js = publishHookJS{JetStream: ns.JS, before: func(m *nats.Msg) {
					if strings.Contains(m.Header.Get(jetstream.MsgIDHeader), "/reforward/") && sent.Add(1) == 50 {
						stop()
					}
				}}
			}
			got, _, err := deadletter.Reforward(ctx, js, "", since, time.Time{}, false)
			// Copies stored, by their original's dedupe ID.
			copies := map[string]int{}
			for _, e := range eventStream(t, ns.JS) {
				if id, _, ok := strings.Cut(e.msgID, "/reforward/"); ok {
					copies[id]++
				}
			}
			switch {
			case cancel:
				if !errors.Is(err, context.Canceled) || len(got) == 0 || len(got) == n {
					t.Errorf("Reforward = %d events, %v; want part of them and the run's cancellation", len(got), err)
				}
			case !refuse:
				if err != nil || len(got) != n {
					t.Fatalf("Reforward = %d events, %v; want %d", len(got), err, n)
				}
			default:
				// The first refused event's stream sequence is the 101st.
				if err == nil || !strings.HasPrefix(err.Error(), "reforward event 101: ") {
					t.Errorf("Reforward err = %v; want it to name event 101 (%s)", err, firstRefused)
				}
				if len(got) == 0 || len(got) == n {
					t.Errorf("Reforward returned %d events; want part of them", len(got))
				}
			}
			returned := map[string]bool{}
			for _, ev := range got {
				id := ev.MsgID()
				if returned[id] || ev != originals[id] {
					t.Errorf("returned %+v twice, or unlike its original", ev)
				}
				returned[id] = true
				if copies[id] != 1 {
					t.Errorf("event %s returned as queued: %d copies stored", id, copies[id])
				}
			}
			for id, c := range copies {
				if !returned[id] || c != 1 {
					t.Errorf("event %s: %d copies stored, returned %v; want one copy for each event returned", id, c, returned[id])
				}
			}
		})
	}
}

// inFlightJS counts the publishes in flight and keeps the most at once;
// each takes at least delay, as over a slow link to NATS, so that a
// replay's window fills.
type inFlightJS struct {
	jetstream.JetStream
	delay     time.Duration
	now, most *atomic.Int32
}

func (j inFlightJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	n := j.now.Add(1)
	defer j.now.Add(-1)
	for m := j.most.Load(); n > m && !j.most.CompareAndSwap(m, n); m = j.most.Load() {
	}
	time.Sleep(j.delay)
	return j.JetStream.PublishMsg(ctx, msg, opts...)
}

// A replay of large letters holds at most about 16 MiB of them in flight
// (the forwarder's admin API runs it beside the forwarding): 256 letters
// of up to 512 KiB at once were 128 MiB.
func TestReplayOfLargeLettersBoundsWhatItHolds(t *testing.T) {
	const n, failures = 120, 1000 // about 340 KB a letter
	_, ns := newStore(t)
	dl, err := natsjs.DefaultTopology().EnsureDeadLetters(testCtx(t), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	var now, most atomic.Int32
	s := deadletter.NewStore(inFlightJS{JetStream: ns.JS, delay: 5 * time.Millisecond, now: &now, most: &most}, dl)
	var size int
	for i := range n {
		l := letter(i+1, forward.Partial, "1000 of 1000 instances cannot be stored", time.Now())
		for j := range failures {
			l.Failures = append(l.Failures, forward.Instance{SOPInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.8.498.%d", j), Text: strings.Repeat("x", 300)})
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		size = len(b)
		if _, _, err := s.Add(testCtx(t), l); err != nil {
			t.Fatal(err)
		}
	}
	done, err := replay(testCtx(t), s, deadletter.Filter{All: true}, false)
	if err != nil || len(done) != n {
		t.Fatalf("Replay = %d letters, %v; want %d", len(done), err, n)
	}
	bound := int32(16<<20/size + 1)
	t.Logf("letters of %d bytes: %d published at once at most (bound %d)", size, most.Load(), bound)
	if most.Load() > bound {
		t.Errorf("%d letters of %d bytes were published at once, want at most %d (16 MiB)", most.Load(), size, bound)
	}
}
