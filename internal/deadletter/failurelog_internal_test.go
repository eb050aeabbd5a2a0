package deadletter

import (
	"fmt"
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// A record of stored instances that a write would take past its bound
// drops the instances recorded longest ago (earlier versions'), never
// those the same attempt wrote in its earlier requests: clearing the
// whole record dropped them too, and the attempt's retry took the
// destination's "already exists" for them as conflicts. Bound 10 here.
func TestStoredRecordPastItsBound(t *testing.T) {
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureFailureLog(t.Context(), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	log := NewFailureLog(kv, "default")
	log.maxSent = 10
	ev := &events.StudyStable{Source: "orthanc-a", StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.9", LastUpdate: "20261205T201500"}
	ids := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s.%d", prefix, i)
		}
		return out
	}
	earlier, now := ids("v1", 8), ids("v2", 6)
	// The earlier version, then this attempt's three requests.
	writes := [][]string{earlier, now[:2], now[2:4], now[4:]}
	for i, w := range writes {
		if err := log.RememberSent(t.Context(), ev, w); err != nil {
			t.Fatalf("write %d: %v", i+1, err)
		}
	}
	sent, err := log.Sent(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ids  []string
		want bool
	}{
		{now, true},
		{earlier[4:], true},
		{earlier[:4], false}, // the oldest, for room
	} {
		for _, id := range tt.ids {
			if sent(id) != tt.want {
				t.Errorf("%s recorded %v, want %v", id, sent(id), tt.want)
			}
		}
	}
	// One already recorded, written again, counts as written last.
	if err := log.RememberSent(t.Context(), ev, []string{earlier[4]}); err != nil {
		t.Fatal(err)
	}
	if err := log.RememberSent(t.Context(), ev, ids("v3", 1)); err != nil {
		t.Fatal(err)
	}
	if sent, err = log.Sent(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	if !sent(earlier[4]) || sent(earlier[5]) {
		t.Errorf("after %s was written again: recorded %v, %s recorded %v; want it kept and the oldest dropped", earlier[4], sent(earlier[4]), earlier[5], sent(earlier[5]))
	}
}

// The records kept to skip reading back stay within maxWritten and
// maxWrittenBytes, and writtenBytes counts them.
func TestWrittenRecordsBounded(t *testing.T) {
	l := NewFailureLog(nil, "default")
	for i := range 200 {
		size := 8 << 10
		if i%3 == 0 {
			size = maxSentBytes
		}
		l.keepWritten(fmt.Sprint("k", i%80), sentRecord{data: make([]byte, size), rev: uint64(i)})
		total := 0
		for _, r := range l.written {
			total += len(r.data)
		}
		if total != l.writtenBytes || total > maxWrittenBytes || len(l.written) > maxWritten {
			t.Fatalf("after %d writes: %d records of %d bytes (counted %d), want at most %d of %d", i+1, len(l.written), total, l.writtenBytes, maxWritten, maxWrittenBytes)
		}
	}
	l.forgetWritten("k199")
	l.forgetWritten("k0")
	if _, ok := l.written["k0"]; ok {
		t.Error("k0 still kept after forgetWritten")
	}
}
