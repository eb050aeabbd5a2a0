package deadletter_test

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// withUnreadable stores good letters of the default destination around
// two this build cannot decode: one of a newer build whose attempts
// became a string (a rollback), stored by the default destination, and
// a message published by hand on the archive destination's subject.
// It returns the good letters' sequences and the unreadable ones'.
func withUnreadable(t *testing.T) (*deadletter.Store, *testnats.Server, []uint64, []uint64) {
	t.Helper()
	s, ns := newStore(t)
	good := add(t, s, letter(1, forward.Permanent, "HTTP 415", time.Now()))
	var bad []uint64
	for _, m := range []struct{ destination, data string }{
		{natsjs.DefaultDestination, `{"event":{"source":"src"},"class":"permanent","reason":"HTTP 400","attempts":"three"}`},
		{"archive", "not a letter"},
	} {
		ack, err := ns.JS.Publish(testCtx(t), natsjs.DeadLetterSubject(m.destination, "src"), []byte(m.data))
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, ack.Sequence)
	}
	good = append(good, add(t, s, letter(2, forward.Transient, "timeout", time.Now()))...)
	return s, ns, good, bad
}

// TestUnreadableLetterListedAndSelected: a letter this build cannot
// decode is listed and read as an UnreadableLetter entry, selected only
// by what is known of it. List, Get and Newest failed with "decode dead
// letter 2: ..." for every letter.
func TestUnreadableLetterListedAndSelected(t *testing.T) {
	s, _, good, bad := withUnreadable(t)
	all, err := s.List(testCtx(t), deadletter.Filter{All: true})
	if err != nil {
		t.Errorf("List: %v", err)
	}
	if want := []uint64{good[0], bad[0], bad[1], good[1]}; !slices.Equal(seqsOf(all), want) {
		t.Errorf("List = %v, want %v", seqsOf(all), want)
	}
	for i, wantDest := range []string{natsjs.DefaultDestination, "archive"} {
		e, err := s.Get(testCtx(t), bad[i])
		if err != nil {
			t.Errorf("Get(%d): %v", bad[i], err)
			continue
		}
		if e.Class != deadletter.UnreadableLetter || e.Destination != wantDest || e.Event.Source != "" ||
			!strings.Contains(e.Reason, "cannot decode") || e.DeadLetteredAt.IsZero() || time.Since(e.DeadLetteredAt) > time.Minute {
			t.Errorf("Get(%d) = %+v; want an unreadable letter of %s, stored now", bad[i], e, wantDest)
		}
	}

	since := time.Now().Add(-time.Minute)
	for _, tt := range []struct {
		name string
		f    deadletter.Filter
		want []uint64
	}{
		{"seq", deadletter.Filter{Seq: bad[1]}, bad[1:]},
		{"destination from the subject", deadletter.Filter{Destination: "archive"}, bad[1:]},
		{"default destination", deadletter.Filter{Destination: natsjs.DefaultDestination}, []uint64{good[0], bad[0], good[1]}},
		{"since", deadletter.Filter{Since: since}, []uint64{good[0], bad[0], bad[1], good[1]}},
		{"class", deadletter.Filter{Class: forward.Permanent}, good[:1]},
		{"class as listed", deadletter.Filter{Class: deadletter.UnreadableLetter}, bad},
		{"reason of the decode error", deadletter.Filter{ReasonContains: "decode"}, []uint64{}},
		{"reason of undecodable events", deadletter.Filter{ReasonContains: "undecodable"}, []uint64{}},
		{"source", deadletter.Filter{Source: "src"}, good},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.List(testCtx(t), tt.f)
			if err != nil || !slices.Equal(seqsOf(got), tt.want) {
				t.Errorf("List(%+v) = %v, %v; want %v", tt.f, seqsOf(got), err, tt.want)
			}
		})
	}

	newest, err := s.Newest(testCtx(t), 50)
	if err != nil {
		t.Errorf("Newest: %v", err)
	}
	var seqs []uint64
	for _, sum := range newest {
		seqs = append(seqs, sum.Seq)
		if slices.Contains(bad, sum.Seq) && sum.Class != deadletter.UnreadableLetter {
			t.Errorf("Newest's summary of %d = %+v; want class %s", sum.Seq, sum, deadletter.UnreadableLetter)
		}
	}
	if want := []uint64{good[1], bad[1], bad[0], good[0]}; !slices.Equal(seqs, want) {
		t.Errorf("Newest = %v, want %v", seqs, want)
	}
}

// TestUnreadableLetterPurgedAndPassedOverByReplay: a replay of every
// letter replays the good ones and names the unreadable ones, which a
// purge by sequence or of every letter deletes. Each failed on the
// unreadable letter, doing nothing.
func TestUnreadableLetterPurgedAndPassedOverByReplay(t *testing.T) {
	s, ns, good, bad := withUnreadable(t)
	done, err := replay(testCtx(t), s, deadletter.Filter{All: true}, false)
	if !errors.Is(err, deadletter.ErrUnreadableLetters) || !slices.Equal(seqsOf(done), good) {
		t.Errorf("Replay = %v, %v; want %v replayed and an error wrapping ErrUnreadableLetters", seqsOf(done), err, good)
	}
	for _, seq := range bad {
		if err != nil && !strings.Contains(err.Error(), " "+strconv.FormatUint(seq, 10)) {
			t.Errorf("the replay's error does not name letter %d: %v", seq, err)
		}
	}
	if n := len(eventStream(t, ns.JS)); n != len(good) {
		t.Errorf("%d events queued, want %d", n, len(good))
	}

	purged, err := purge(testCtx(t), s, deadletter.Filter{Seq: bad[0]}, false)
	if err != nil || !slices.Equal(seqsOf(purged), bad[:1]) {
		t.Errorf("Purge(seq %d) = %v, %v", bad[0], seqsOf(purged), err)
	}
	purged, err = purge(testCtx(t), s, deadletter.Filter{All: true}, false)
	if err != nil || !slices.Equal(seqsOf(purged), bad[1:]) {
		t.Errorf("Purge(all) = %v, %v; want %v", seqsOf(purged), err, bad[1:])
	}
	if left, err := s.List(testCtx(t), deadletter.Filter{All: true}); err != nil || len(left) != 0 {
		t.Errorf("after the purge the stream holds %v, %v", seqsOf(left), err)
	}
}

// TestReforwardUnreadableEvents: a re-forward counts the messages of its
// window that are no event this build reads, and fails over an event of
// a newer ingest, naming it, once it queued the others. It skipped both
// silently: run from an older forwarder in a rollback, it left out
// studies newer forwarders had forwarded and reported success.
func TestReforwardUnreadableEvents(t *testing.T) {
	newer := fmt.Sprintf(`{"type":%q,"version":%d,"source":"src","orthancStudyId":"x"}`, events.TypeStudyStable, events.Version+1)
	for _, tt := range []struct {
		name       string
		raw        []string
		newer      bool
		unreadable int
	}{
		{"not an event", []string{"not an event"}, false, 1},
		{"a newer ingest's event", []string{newer, "not an event"}, true, 1},
	} {
		for _, dryRun := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, dry run %v", tt.name, dryRun), func(t *testing.T) {
				_, ns := newStore(t)
				ev := event("src", 1)
				if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(testCtx(t), &ev); err != nil {
					t.Fatal(err)
				}
				for _, data := range tt.raw {
					if _, err := ns.JS.Publish(testCtx(t), natsjs.EventSubject("src"), []byte(data)); err != nil {
						t.Fatal(err)
					}
				}
				stored := func() uint64 {
					t.Helper()
					s, err := ns.JS.Stream(testCtx(t), natsjs.EventStream)
					if err != nil {
						t.Fatal(err)
					}
					return s.CachedInfo().State.Msgs
				}
				before := stored()
				got, unreadable, err := deadletter.Reforward(testCtx(t), ns.JS, "", time.Now().Add(-time.Hour), time.Time{}, dryRun)
				if unreadable != tt.unreadable {
					t.Errorf("unreadable = %d, want %d", unreadable, tt.unreadable)
				}
				queued := stored() - before
				if tt.newer != errors.Is(err, events.ErrNewerVersion) || !tt.newer && err != nil {
					t.Errorf("Reforward = %v; want an error matching events.ErrNewerVersion: %v", err, tt.newer)
				}
				// The event this build reads is queued all the same.
				if len(got) != 1 || !dryRun && queued != 1 || dryRun && queued != 0 {
					t.Errorf("Reforward reported %d events, queued %d; want the one event", len(got), queued)
				}
			})
		}
	}
}
