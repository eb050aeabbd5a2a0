package natsjs_test

import (
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
)

// The status page finds the destinations from what JetStream lists: each
// name maps back to the destination it was made for, and other names to
// none.
func TestDestinationOfNames(t *testing.T) {
	for _, d := range []string{natsjs.DefaultDestination, "archive", "ai-2", "AI_vendor"} {
		if got, ok := natsjs.DestinationOfConsumer(natsjs.ConsumerName(d)); !ok || got != d {
			t.Errorf("DestinationOfConsumer(ConsumerName(%q)) = %q, %v", d, got, ok)
		}
		if got, ok := natsjs.DestinationOfLedgerBucket(natsjs.LedgerBucketOf(d)); !ok || got != d {
			t.Errorf("DestinationOfLedgerBucket(LedgerBucketOf(%q)) = %q, %v", d, got, ok)
		}
		if got, ok := natsjs.DestinationOfDeadLetterSubject(natsjs.DeadLetterSubject(d, "orthanc-a")); !ok || got != d {
			t.Errorf("DestinationOfDeadLetterSubject(DeadLetterSubject(%q, orthanc-a)) = %q, %v", d, got, ok)
		}
	}
	for _, name := range []string{"", "stowline-forwarder-", "stowline-forwarderx", "audit-ordered-1", "stowline-forwarder-a.b"} {
		if got, ok := natsjs.DestinationOfConsumer(name); ok {
			t.Errorf("DestinationOfConsumer(%q) = %q, want none", name, got)
		}
	}
	for _, name := range []string{"", natsjs.StatusBucket, natsjs.FailureBucket, "stowline_forwarded_", "stowline_forwardedx"} {
		if got, ok := natsjs.DestinationOfLedgerBucket(name); ok {
			t.Errorf("DestinationOfLedgerBucket(%q) = %q, want none", name, got)
		}
	}
	// A letter from before destinations was the default destination's.
	if got, ok := natsjs.DestinationOfDeadLetterSubject("stowline.deadletter.orthanc-a"); !ok || got != natsjs.DefaultDestination {
		t.Errorf("old letter subject: %q, %v; want default", got, ok)
	}
	for _, s := range []string{"", "stowline.deadletter.", "stowline.study.stable.a", "stowline.deadletter.ai.", "stowline.deadletter.ai.a.b"} {
		if got, ok := natsjs.DestinationOfDeadLetterSubject(s); ok {
			t.Errorf("DestinationOfDeadLetterSubject(%q) = %q, want none", s, got)
		}
	}
}

// A dead letter of an event that does not decode takes its source from
// the subject it was stored on, in any lane, for every destination or one.
func TestSourceOfEventSubject(t *testing.T) {
	for _, lane := range events.Priorities {
		for _, d := range []string{"", "ai"} {
			if got, ok := natsjs.SourceOfEventSubject(natsjs.LaneSubject(lane, d, "orthanc-a")); !ok || got != "orthanc-a" {
				t.Errorf("SourceOfEventSubject(LaneSubject(%s, %q, orthanc-a)) = %q, %v", lane, d, got, ok)
			}
		}
	}
	if got, ok := natsjs.SourceOfEventSubject(natsjs.TriageSubject("orthanc-a")); !ok || got != "orthanc-a" {
		t.Errorf("SourceOfEventSubject(TriageSubject(orthanc-a)) = %q, %v", got, ok)
	}
	for _, s := range []string{"", "stowline.study.stable.", "stowline.dest.ai", "stowline.dest.ai.", "stowline.deadletter.ai.a", "other.a"} {
		if got, ok := natsjs.SourceOfEventSubject(s); ok {
			t.Errorf("SourceOfEventSubject(%q) = %q, want none", s, got)
		}
	}
}
