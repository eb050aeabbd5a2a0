package deadletter

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// subjectsCtx bounds a test's JetStream calls.
func subjectsCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// storeOnOwnConn is a dead-letter store on a connection of its own, whose
// statistics count what its reads took from the server.
func storeOnOwnConn(t *testing.T) (*Store, *nats.Conn, *testnats.Server) {
	t.Helper()
	ns := testnats.Start(t)
	if _, err := natsjs.DefaultTopology().EnsureDeadLetters(subjectsCtx(t), ns.JS); err != nil {
		t.Fatal(err)
	}
	nc, err := ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(subjectsCtx(t), js)
	if err != nil {
		t.Fatal(err)
	}
	return s, nc, ns
}

// subjectsLetter is a letter of study i of source src at destination d
// ("" as letters from before destinations).
func subjectsLetter(d, src string, i int, at time.Time) *forward.DeadLetter {
	return &forward.DeadLetter{
		Destination: d,
		Event: events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: src,
			OrthancStudyID:   fmt.Sprintf("%08x-%08x-%08x-%08x-%08x", i, i, i, i, i),
			StudyInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.2.1143.%d", i), LastUpdate: "20260101T120000"},
		Class: forward.Permanent, Reason: "HTTP 415", Attempts: 3, OriginalSeq: uint64(i), DeadLetteredAt: at,
	}
}

// publishLetter stores data on subject as it is, as an older build or a
// hand would.
func publishLetter(t *testing.T, ns *testnats.Server, subject string, data any) {
	t.Helper()
	b, ok := data.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(data); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ns.JS.Publish(subjectsCtx(t), subject, b); err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
}

// TestFilteredReadsSelectAsMatch: whatever subjects a read of a filter
// takes, it lists what reading every letter and keeping those match
// selects: letters of several destinations and sources, letters from
// before destinations (stowline.deadletter.<source>), and messages on
// subjects no build stores letters on, unreadable (most listed as the
// default destination's) or decoding to a letter of another destination
// than the subject names; then with a message on a subject holding a
// wildcard too.
func TestFilteredReadsSelectAsMatch(t *testing.T) {
	s, _, ns := storeOnOwnConn(t)
	at := time.Now().UTC().Add(-time.Hour)
	i := 0
	for _, d := range []string{"", natsjs.DefaultDestination, "archive", "ai"} {
		for _, src := range []string{"src", "other"} {
			i++
			if _, _, err := s.Add(subjectsCtx(t), subjectsLetter(d, src, i, at)); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := natsjs.DeadLetterSubjectPrefix
	for _, src := range []string{"src", "other"} {
		i++
		publishLetter(t, ns, p+src, subjectsLetter("", src, i, at)) // before destinations
	}
	for _, m := range []struct{ subject, destination, source string }{
		{"x.y.z", "archive", "src"},
		{"bad!.other", "", "other"},
		{"ai.bad!", "archive", "other"},
	} {
		i++
		publishLetter(t, ns, p+m.subject, subjectsLetter(m.destination, m.source, i, at))
	}
	for _, subject := range []string{"archive.src", "src", "bad!.src", "archive.bad!", "a.b.c"} {
		publishLetter(t, ns, p+subject, []byte("not a letter"))
	}
	// Not every filter selects nothing: the default destination's
	// listing holds its letters of every kind, the unreadable ones on
	// stowline.deadletter.src, .bad!.src and .a.b.c.
	if got, _ := s.List(subjectsCtx(t), Filter{Destination: natsjs.DefaultDestination}); len(got) != 4+2+1+3 {
		t.Errorf("the default destination lists %d letters, want 4 stored by Add, 2 from before destinations, 1 decoded on an odd subject and 3 unreadable", len(got))
	}

	since := time.Now().Add(-time.Minute)
	filters := []struct {
		name string
		f    Filter
	}{
		{"default destination", Filter{Destination: natsjs.DefaultDestination}},
		{"destination", Filter{Destination: "archive"}},
		{"another destination", Filter{Destination: "ai"}},
		{"destination without letters", Filter{Destination: "none"}},
		{"source", Filter{Source: "src"}},
		{"another source", Filter{Source: "other"}},
		{"source without letters", Filter{Source: "none"}},
		{"default destination and source", Filter{Destination: natsjs.DefaultDestination, Source: "src"}},
		{"destination and source", Filter{Destination: "archive", Source: "other"}},
		{"destination and class", Filter{Destination: "archive", Class: UnreadableLetter}},
		{"default destination since", Filter{Destination: natsjs.DefaultDestination, Since: since}},
		{"no destination's name", Filter{Destination: "a.b"}},
		{"a wildcard", Filter{Destination: "*"}},
		{"a source's wildcard", Filter{Source: ">"}},
		{"every letter", Filter{All: true}},
	}
	for _, wildcard := range []bool{false, true} {
		suffix := ""
		if wildcard {
			// As a filter, this subject would overlap the others.
			i++
			publishLetter(t, ns, p+">", subjectsLetter("archive", "src", i, at))
			suffix = ", a wildcard subject stored"
		}
		all, err := s.List(subjectsCtx(t), Filter{All: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range filters {
			t.Run(tt.name+suffix, func(t *testing.T) {
				want := []uint64{}
				for i := range all {
					if tt.f.match(&all[i]) {
						want = append(want, all[i].Seq)
					}
				}
				got, err := s.List(subjectsCtx(t), tt.f)
				if err != nil || !slices.Equal(entrySeqs(got), want) {
					t.Errorf("List(%+v) = %v, %v; want %v", tt.f, entrySeqs(got), err, want)
				}
				// A page at a time, as Replay and Purge read.
				each := []uint64{}
				for after := uint64(0); ; {
					page, more, err := s.Page(subjectsCtx(t), tt.f, after, 2, 0)
					if err != nil {
						t.Fatalf("Page(%+v, after %d): %v", tt.f, after, err)
					}
					each = append(each, entrySeqs(page)...)
					if !more {
						break
					}
					after = page[len(page)-1].Seq
				}
				if !slices.Equal(each, want) {
					t.Errorf("pages of %+v = %v; want %v", tt.f, each, want)
				}
			})
		}
	}
}

// TestFilteredReadsSkipOtherLetters: a listing of one destination's or
// one source's letters reads those, not the other destinations' or
// sources': the store's connection receives fewer messages than the
// others' letters. Each read every letter of the stream and dropped
// those of others.
func TestFilteredReadsSkipOtherLetters(t *testing.T) {
	s, nc, _ := storeOnOwnConn(t)
	const others = 40
	at := time.Now().UTC()
	for i := range others {
		if _, _, err := s.Add(subjectsCtx(t), subjectsLetter("archive", "src", i+1, at)); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range []string{"ai", "ai", ""} {
		if _, _, err := s.Add(subjectsCtx(t), subjectsLetter(d, "few", others+i+1, at)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name string
		f    Filter
		want int
	}{
		{"destination", Filter{Destination: "ai"}, 2},
		{"default destination", Filter{Destination: natsjs.DefaultDestination}, 1},
		{"source", Filter{Source: "few"}, 3},
		{"destination without letters", Filter{Destination: "research"}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := nc.Stats().InMsgs
			got, err := s.List(subjectsCtx(t), tt.f)
			if err != nil || len(got) != tt.want {
				t.Fatalf("List(%+v) = %d letters, %v; want %d", tt.f, len(got), err, tt.want)
			}
			n := nc.Stats().InMsgs - before
			if n >= others {
				t.Errorf("List(%+v) received %d messages, as many as the other letters (%d): it read them", tt.f, n, others)
			}
			// No letter to read: the stream's subject counts answer, and
			// no consumer is created, whose empty fetch would be waited out.
			if tt.want == 0 && n > 2 {
				t.Errorf("List(%+v) received %d messages, want only the stream info's (2): no consumer", tt.f, n)
			}
		})
	}
}

func entrySeqs(entries []Entry) []uint64 {
	out := make([]uint64, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Seq)
	}
	return out
}

// A read that finds nothing to deliver ends without an empty fetch to
// wait out: a page asked past the last letter (known from the stream's
// last sequence), or one whose consumer counts nothing from its start (a
// Since after the last letter), on a stream of one replica, where that
// count is the leader's.
func TestReadPastTheLastLetterFetchesNothing(t *testing.T) {
	s, nc, _ := storeOnOwnConn(t)
	var last uint64
	for i := range 3 {
		seq, _, err := s.Add(subjectsCtx(t), subjectsLetter("archive", "src", i+1, time.Now().UTC()))
		if err != nil {
			t.Fatal(err)
		}
		last = seq
	}
	for _, tt := range []struct {
		name  string
		f     Filter
		after uint64
	}{
		{"page after the last letter", Filter{All: true}, last},
		{"since after the last letter", Filter{All: true, Since: time.Now().Add(time.Hour)}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := nc.Stats().InMsgs
			got, more, err := s.Page(subjectsCtx(t), tt.f, tt.after, 0, 0)
			if err != nil || len(got) != 0 || more {
				t.Fatalf("Page = %d letters, more %v, %v; want none", len(got), more, err)
			}
			if n := nc.Stats().InMsgs - before; n > 3 {
				t.Errorf("Page received %d messages, want at most 3 (stream info, consumer created and deleted): no fetch", n)
			}
		})
	}
}

// On a clustered stream, only a consumer on the stream's leader counts
// every message the stream acknowledged.
func TestCountedByLeader(t *testing.T) {
	stream := func(replicas int, leader string) *jetstream.StreamInfo {
		si := &jetstream.StreamInfo{Config: jetstream.StreamConfig{Replicas: replicas}}
		if leader != "" {
			si.Cluster = &jetstream.ClusterInfo{Leader: leader}
		}
		return si
	}
	consumer := func(leader string) *jetstream.ConsumerInfo {
		ci := &jetstream.ConsumerInfo{}
		if leader != "" {
			ci.Cluster = &jetstream.ClusterInfo{Leader: leader}
		}
		return ci
	}
	for _, tt := range []struct {
		name   string
		stream *jetstream.StreamInfo
		cons   *jetstream.ConsumerInfo
		want   bool
	}{
		{"one replica", stream(1, "n1"), consumer("n2"), true},
		{"one replica, no cluster", stream(1, ""), consumer(""), true},
		{"consumer on the leader", stream(3, "n1"), consumer("n1"), true},
		{"consumer on a follower", stream(3, "n1"), consumer("n2"), false},
		{"leader unknown", stream(3, ""), consumer("n1"), false},
		{"consumer's server unknown", stream(3, "n1"), consumer(""), false},
	} {
		if got := countedByLeader(tt.stream, tt.cons); got != tt.want {
			t.Errorf("%s: countedByLeader = %v, want %v", tt.name, got, tt.want)
		}
	}
}
