package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
)

// A source being added: a forwarder still on the configuration before it
// (ORTHANC_SOURCE_NAME=main) pulls an event of source "src", as a new
// ingest or the new Orthanc's Lua script queues it during a rolling
// configuration change. It gives the event back instead of
// dead-lettering it: a forwarder on the new configuration forwards the
// study. With none, it is dead-lettered as of an unknown source at the
// bound (here FORWARDER_MAX_DELIVERIES=2), not run past the limit.
func TestUnknownSourceGivenBack(t *testing.T) {
	tests := []struct {
		name string
		// newForwarder: one that knows "src" replaces the old one once it
		// gave the event back.
		newForwarder bool
	}{
		{"a forwarder that knows the source forwards it", true},
		{"dead-lettered as unknown source at the bound", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			id := r.addStudy(t, 2, 16)
			stopOld := r.startForwarder(t, map[string]string{"ORTHANC_SOURCE_NAME": "main", "FORWARDER_MAX_DELIVERIES": "2"})
			oldLogs := r.fwdLogs
			r.publish(t, id) // source "src"
			waitLogLine(t, oldLogs, "event of a source this forwarder does not know given back", 20*time.Second)
			store := r.deadLetters(t)
			if got := letters(t, store); len(got) > 0 {
				t.Fatalf("dead-lettered at its first delivery: %+v", got[0])
			}
			if !tt.newForwarder {
				e := waitDeadLetters(t, store, 1, 30*time.Second)[0]
				if e.Class != "permanent" || e.Attempts != 2 || !strings.HasPrefix(e.Reason, `unknown source "src"`) ||
					!strings.Contains(e.Reason, "in 2 deliveries") {
					t.Errorf("dead letter: class %s, attempts %d, reason %q", e.Class, e.Attempts, e.Reason)
				}
				return
			}
			stopOld()
			r.startForwarder(t, map[string]string{"ORTHANC_URL": "", "ORTHANC_SOURCES": "main,src",
				"ORTHANC_MAIN_URL": r.src.URL, "ORTHANC_SRC_URL": r.src.URL, "FORWARDER_MAX_DELIVERIES": "2"})
			r.waitDest(t, 2, 30*time.Second)
			if got := letters(t, store); len(got) > 0 {
				t.Errorf("dead letter: %+v", got[0])
			}
		})
	}
}

func letters(t *testing.T, store *deadletter.Store) []deadletter.Entry {
	t.Helper()
	got, err := store.List(context.Background(), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	return got
}
