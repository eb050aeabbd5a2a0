package main

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/testharness"
)

// A destination added to a running deployment starts with the studies
// that arrive after it; `forwarder backfill` queues older ones for it
// alone. Study 0 is in Orthanc before stowline ever runs (with the
// reconciler off, it has no event); study 1 arrives when the archive is
// the only destination; "new" is added, and study 2 goes to both.
// backfill --since 1h from the stream gives new study 1; --from source
// also study 0, which the event stream never held. The archive gets no
// request from either. On one Orthanc release (the audit and backfill
// tests in cmd/forwarder cover the source listing on both).
func TestBackfillNewDestination(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{destinations: []string{"archive", "new"}, nats: true})
	archive, added := s.destination(t, "archive"), s.destination(t, "new")
	s.env["RECONCILE_ENABLED"] = "false"
	s.env["DESTINATIONS"] = "archive"
	src := s.sources["main"]

	st0 := newStudies(t, 1, 2)[0]
	send(t, src, st0.files...)
	src.WaitStable(t, 30*time.Second)

	stop := s.start(t)
	st1 := newStudies(t, 1, 3)[0]
	send(t, src, st1.files...)
	archive.waitHolds(t, st1.uids, time.Minute)
	s.waitIdle(t, 30*time.Second, "archive")
	stop()

	s.env["DESTINATIONS"] = "archive,new"
	s.start(t)
	st2 := newStudies(t, 1, 2)[0]
	send(t, src, st2.files...)
	archive.waitHolds(t, st2.uids, time.Minute)
	added.waitHolds(t, st2.uids, time.Minute)
	s.waitIdle(t, 30*time.Second, "archive", "new")
	if got := added.uids(t); len(got) != len(st2.uids) {
		t.Fatalf("new holds %d instances, want only study 2's %d: it took studies from before it was added", len(got), len(st2.uids))
	}
	archiveRequests := archive.proxy.STOWRequests()

	backfill := func(wantStudies int, args ...string) {
		t.Helper()
		out := s.command(t, app.RunBackfill, append([]string{"--destination", "new", "--since", "1h"}, args...)...)
		if want := strconv.Itoa(wantStudies) + " studies queued for new"; !strings.Contains(out, want) {
			t.Fatalf("backfill %q: want %q in\n%s", args, want, out)
		}
	}
	// From the stream: the events of studies 1 and 2.
	backfill(2)
	added.waitHolds(t, append(slices.Clone(st1.uids), st2.uids...), time.Minute)
	s.waitIdle(t, 30*time.Second, "archive", "new")
	if have := added.uids(t); have[st0.uids[0]] {
		t.Error("backfill from the stream sent study 0, which has no event")
	}
	// From the source: every study, study 0 included.
	backfill(3, "--from", "source")
	added.waitHolds(t, st0.uids, time.Minute)
	s.waitRecorded(t, 3, 30*time.Second, "new")
	s.waitIdle(t, 30*time.Second, "archive")
	// The same backfill again, within the dedupe window: nothing is queued
	// twice, and the output says so instead of claiming three.
	again := s.command(t, app.RunBackfill, "--destination", "new", "--since", "1h", "--from", "source")
	if !strings.Contains(again, "0 studies queued for new") || !strings.Contains(again, "3 studies not queued again") {
		t.Errorf("backfill again: want 0 queued and 3 not queued again in\n%s", again)
	}

	if n := archive.proxy.STOWRequests(); n != archiveRequests {
		t.Errorf("the archive got %d STOW requests from the backfills for new", n-archiveRequests)
	}
	all := src.InstanceMD5s(t)
	added.checkHolds(t, all)
	archive.checkHolds(t, subset(all, st1.uids, st2.uids))
}
