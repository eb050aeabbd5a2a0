package ingest

import (
	"fmt"
	"testing"
	"time"
)

// The per-client table stays bounded however many addresses send.
func TestLimiterBounded(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	l := newLimiter(10, 20, func() time.Time { return now })
	for i := range 5 * maxClients {
		now = now.Add(time.Microsecond)
		if ok, _ := l.allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)); !ok {
			t.Fatal("a new client was limited")
		}
		if n := l.size(); n > maxClients {
			t.Fatalf("%d clients tracked, want at most %d", n, maxClients)
		}
	}
	// Idle clients are evicted once their bucket would be full again.
	now = now.Add(l.idleAfter())
	l.allow("192.0.2.1")
	if n := l.size(); n != 1 {
		t.Errorf("%d clients tracked after all went idle, want 1", n)
	}
}
