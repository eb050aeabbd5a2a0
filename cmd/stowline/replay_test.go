package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
)

// A study dead-lettered at one destination only goes back to that one:
// ai refuses study X for good (415) while the archive stores it, and the
// archive refuses study Z while ai stores it. `forwarder replay run
// --destination ai --since 24h` sends X to ai and nothing to the archive,
// whose letter stays; replaying the archive's sends Z to the archive and
// nothing to ai. Every instance reaches each destination once. On one
// Orthanc release: the faults are at the destinations.
func TestReplayGoesToItsDestinationOnly(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{destinations: []string{"archive", "ai"}, nats: true})
	archive, ai := s.destination(t, "archive"), s.destination(t, "ai")
	s.start(t)
	src := s.sources["main"]
	store, err := deadletter.Open(t.Context(), s.js)
	if err != nil {
		t.Fatal(err)
	}

	// refuse sends a study while refusing destination bad, which
	// dead-letters it there at once; good stores it.
	refuse := func(bad, good *siteDest) genStudy {
		t.Helper()
		bad.proxy.SetStatus(http.StatusUnsupportedMediaType, "unsupported media type from the test proxy")
		st := newStudies(t, 1, 3)[0]
		send(t, src, st.files...)
		good.waitHolds(t, st.uids, time.Minute)
		testharness.WaitFor(t, "the study is dead-lettered at "+bad.name, time.Minute, func() bool {
			return len(letters(t, store, bad.name)) == 1
		})
		s.waitIdle(t, 30*time.Second, "archive", "ai")
		bad.proxy.SetStatus(0, "")
		return st
	}
	x := refuse(ai, archive)
	z := refuse(archive, ai)
	for _, c := range []struct {
		dest *siteDest
		st   genStudy
	}{{ai, x}, {archive, z}} {
		l := letters(t, store, c.dest.name)[0]
		if l.Class != forward.Permanent || !strings.Contains(l.Reason, "415") {
			t.Errorf("dead letter at %s: %+v", c.dest.name, l)
		}
	}

	// Replay ai's letters: X goes to ai, nothing to the archive.
	archiveRequests := archive.proxy.STOWRequests()
	out := s.command(t, app.RunReplay, "run", "--destination", "ai", "--since", "24h")
	if !strings.Contains(out, "1 dead letters replayed") {
		t.Fatalf("replay run --destination ai:\n%s", out)
	}
	ai.waitHolds(t, x.uids, time.Minute)
	s.waitIdle(t, 30*time.Second, "archive", "ai")
	if n := archive.proxy.STOWRequests(); n != archiveRequests {
		t.Errorf("the archive got %d STOW requests during ai's replay", n-archiveRequests)
	}
	if n := len(letters(t, store, "archive")); n != 1 {
		t.Errorf("the archive has %d dead letters after ai's replay, want its 1", n)
	}
	if n := len(letters(t, store, "ai")); n != 0 {
		t.Errorf("ai has %d dead letters after its replay", n)
	}

	// Replay the archive's: Z goes to the archive, nothing to ai.
	aiRequests := ai.proxy.STOWRequests()
	if out := s.command(t, app.RunReplay, "run", "--destination", "archive", "--all"); !strings.Contains(out, "1 dead letters replayed") {
		t.Fatalf("replay run --destination archive:\n%s", out)
	}
	archive.waitHolds(t, z.uids, time.Minute)
	s.waitRecorded(t, 2, 30*time.Second, "archive", "ai")
	if n := ai.proxy.STOWRequests(); n != aiRequests {
		t.Errorf("ai got %d STOW requests during the archive's replay", n-aiRequests)
	}

	want := src.InstanceMD5s(t)
	for _, d := range []*siteDest{archive, ai} {
		d.checkHolds(t, want)
		for uid, n := range d.proxy.Sends() {
			if n != 1 {
				t.Errorf("instance %s reached %s %d times", uid, d.name, n)
			}
		}
	}
}

// letters lists the dead letters of a destination.
func letters(t *testing.T, store *deadletter.Store, destination string) []deadletter.Entry {
	t.Helper()
	entries, err := store.List(t.Context(), deadletter.Filter{Destination: destination})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}
