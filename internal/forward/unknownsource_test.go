package forward

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testnats"
)

// Events of a source the forwarder does not know are given back for a
// forwarder that knows it, up to this replica's share of
// MaxUnknownSource waiting at once: each holds a place of the consumer's
// MaxAckPending until it is offered again, and a backlog of them filled
// the window, no other source's study delivered for 30 minutes a window.
// Past the share the event is dead-lettered at once; the places free as
// the events given back are offered again.
func TestUnknownSourceGiveBacksBounded(t *testing.T) {
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", cons, func(o *Options) {
		o.SourceFor = func(s string) (Source, error) { return nil, fmt.Errorf("source %q: %w", s, ErrUnknownSource) }
		o.DeadLetters, o.MaxUnknownSource = dls, 4
	})
	f.SetReplicas(2) // a share of 2
	for i := range 3 {
		ev := testEvent()
		ev.OrthancStudyID = fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i+10)
		f.handle(t.Context(), deliverOne(t, ns, cons, ev), "")
	}
	letters := dls.all()
	if len(letters) != 1 || letters[0].Class != Permanent || !strings.Contains(letters[0].Reason, "2 events of unknown sources wait given back already") ||
		letters[0].Event.OrthancStudyID != fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", 12) {
		t.Fatalf("dead letters %+v; want the third event's, past the share of 2", letters)
	}
}

func TestGivenBackFreesPlacesWhenOfferedAgain(t *testing.T) {
	g := &givenBack{limit: 2, replicas: 1}
	now := time.Now()
	take := func(at time.Time, delay time.Duration) bool {
		ok, _ := g.take(at, delay)
		return ok
	}
	if !take(now, time.Minute) || !take(now, 2*time.Minute) {
		t.Fatal("the share of 2 refused within it")
	}
	if take(now, time.Minute) {
		t.Fatal("a third taken past the share")
	}
	if !take(now.Add(time.Minute), time.Minute) {
		t.Error("the place of the event offered again after a minute not freed")
	}
	if ok, _ := (*givenBack)(nil).take(now, time.Minute); !ok {
		t.Error("no bound refused one")
	}
}
