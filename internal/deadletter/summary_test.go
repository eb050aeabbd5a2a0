package deadletter_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
)

// TestNewestReadsSummaries: Newest gives the newest letters' summaries,
// newest first, read from their headers: a reason past ASCII, with a line
// break, or too long for a header is kept (the long one cut); a letter
// stored without a summary (by an older build) is read whole; replayed
// letters leave no gap.
func TestNewestReadsSummaries(t *testing.T) {
	s, ns := newStore(t)
	at := time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC)
	odd := "Zugriff verweigert: Prüfung fehlgeschlagen 🚫\r\n<b>next line</b>"
	long := strings.Repeat("x", 5000)
	// An older build's letter: no summary header.
	old, err := json.Marshal(letter(1, forward.Permanent, "HTTP 415 (old build)", at))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.JS.PublishMsg(testCtx(t), &nats.Msg{Subject: natsjs.DeadLetterSubjectPrefix + "src", Data: old}); err != nil {
		t.Fatal(err)
	}
	seqs := add(t, s, letter(2, forward.Transient, odd, at), letter(3, forward.Permanent, long, at), letter(4, forward.Permanent, "gone", at))
	if _, err := s.Purge(testCtx(t), deadletter.Filter{Seq: seqs[2]}, false, func(*deadletter.Entry) {}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Newest(testCtx(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Seq != seqs[1] || got[1].Seq != seqs[0] || got[2].Seq != 1 {
		t.Fatalf("Newest(3) = %+v; want letters %d, %d, 1", got, seqs[1], seqs[0])
	}
	if r := []rune(got[0].Reason); len(r) != 1000 || r[999] != '…' {
		t.Errorf("long reason: %d characters, want 1000 ending in …", len(r))
	}
	want := deadletter.Summary{Seq: seqs[0], Source: "src", OrthancStudyID: "00000002-00000002-00000002-00000002-00000002",
		StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.2", Class: forward.Transient, Reason: odd, Attempts: 3, DeadLetteredAt: at}
	if g := got[1]; g != want {
		t.Errorf("summary = %+v\nwant      %+v", g, want)
	}
	if g := got[2]; g.Reason != "HTTP 415 (old build)" || g.StudyInstanceUID != "1.2.826.0.1.3680043.2.1143.1" || g.Attempts != 3 {
		t.Errorf("the older build's letter = %+v", g)
	}
}
