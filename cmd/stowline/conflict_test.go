package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
)

// A study resent to a destination that answers Google's conflict (409,
// FailureReason 272: it holds the instance with other content) is
// dead-lettered at once under DESTINATION_<NAME>_STOW_ON_CONFLICT=deadletter:
// one STOW request, class conflict, the instance and the setting named.
// Before STOW_ON_CONFLICT, 272 was retried as transient for hours. The
// study is resent because an instance was added to it; the proxy gives
// the answer Orthanc cannot, for both instances: the one forwarded before,
// from the same Orthanc file, is stowline's own copy and counts as
// stored; the new one, which the archive already holds, is the conflict. One Orthanc release: the fault is
// at the destination.
func TestGoogleConflictDeadLetteredAtOnce(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{destinations: []string{"archive"}, nats: true})
	s.env["DESTINATION_ARCHIVE_STOW_PROFILE"] = "google"
	s.env["DESTINATION_ARCHIVE_STOW_ON_CONFLICT"] = "deadletter"
	s.env["DESTINATION_ARCHIVE_STOW_PARALLEL_REQUESTS"] = "1" // the study in one request
	archive := s.destination(t, "archive")
	s.start(t)
	src := s.sources["main"]
	store, err := deadletter.Open(t.Context(), s.js)
	if err != nil {
		t.Fatal(err)
	}

	st := newStudies(t, 1, 2)[0]
	send(t, src, st.files[0])
	archive.waitHolds(t, st.uids[:1], time.Minute)
	s.waitIdle(t, 30*time.Second, "archive")

	// The archive holds a version of the new instance (the proxy's answer
	// says it differs): 272 in a 409 is a conflict only for an instance
	// the destination lists.
	archive.orthanc.Upload(t, st.files[1])
	before := archive.proxy.STOWRequests()
	archive.proxy.FailNextWithStatus(2, dicomweb.FailureProcessing, http.StatusConflict)
	send(t, src, st.files[1])
	testharness.WaitFor(t, "the study is dead-lettered", time.Minute, func() bool { return len(letters(t, store, "archive")) == 1 })
	s.waitIdle(t, 30*time.Second, "archive")
	l := letters(t, store, "archive")[0]
	if l.Class != forward.Conflict || !strings.Contains(l.Reason, "DESTINATION_ARCHIVE_STOW_ON_CONFLICT=deadletter") ||
		len(l.Failures) != 1 || l.Failures[0].SOPInstanceUID != st.uids[1] || !strings.Contains(l.Reason, st.uids[1]) {
		t.Errorf("dead letter: class %q, reason %q, failures %+v", l.Class, l.Reason, l.Failures)
	}
	if n := archive.proxy.STOWRequests() - before; n != 1 {
		t.Errorf("%d STOW requests for the resent study, want 1 (a conflict is not retried)", n)
	}
	if !strings.Contains(s.logText(), `"profile":"google"`) {
		t.Error("the forwarder did not log the destination's profile")
	}
}
