package reconcile_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/testharness"
)

// An Orthanc without a configured source name is renamed (its "Name"
// changed, Orthanc restarted), and the Lua script names its events after
// the new name at once. The reconciler's events must too: under the old
// name each study was stored twice, under two dedupe IDs, and forwarded
// twice. And it must go on from where its cursor was under the old name:
// an ingest restarted after the rename began afresh at the end of the
// change log, and a study stored while it was down, whose webhook was
// lost with it, was never announced.
func TestUnnamedSourceRenamed(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tc := range []struct {
			name string
			// stopped: the ingest is down while Orthanc is renamed and
			// the second study arrives; else it runs all along.
			stopped bool
		}{
			{"ingest down meanwhile", true},
			{"ingest running", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := newRig(t, rel, "recon-old")
				rec, reg, stop := r.start(t, "")
				waitFirstCursor(t, r, "recon-old")
				// The webhook warns of events under another name than
				// the reconciler's (web.WebhookOptions.SourceNames).
				if got := rec.Names(); !slices.Equal(got, []string{"recon-old"}) {
					t.Errorf("Names() = %q, want [recon-old], Orthanc's Name", got)
				}
				upload(t, r.orthanc, writeStudy(t, 1))
				// And the cursor past its StableStudy change: a study
				// announced stable before that change was logged (seen
				// under load) is announced again from it, and under the new
				// name that is no duplicate.
				testharness.WaitFor(t, "the first study's event, and the cursor past its StableStudy change", 20*time.Second, func() bool {
					return len(streamEvents(t, r.nats.JS)) == 1 && cursorPastStable(t, r, "recon-old")
				})
				if tc.stopped {
					stop()
				}
				r.orthanc.Rename(t, "recon new")
				upload(t, r.orthanc, writeStudy(t, 1)) // its webhook is lost
				waitStable(t, r)
				if tc.stopped {
					rec, reg, _ = r.start(t, "")
				}
				testharness.WaitFor(t, "the second study's event, or the cursor past its StableStudy change", 30*time.Second, func() bool {
					return len(streamEvents(t, r.nats.JS)) >= 2 ||
						metric(t, reg, "stowline_reconcile_lease_held", map[string]string{"source": "recon-new"}) == 1 &&
							cursorPastStable(t, r, "recon-new")
				})
				evs := streamEvents(t, r.nats.JS)
				if len(evs) != 2 {
					t.Fatalf("%d events, want the second study's: %+v", len(evs), evs)
				}
				if evs[1].Source != "recon-new" {
					t.Errorf("the second study's event names source %q, want recon-new, as the Lua script's", evs[1].Source)
				}
				if got := rec.Names(); !slices.Equal(got, []string{"recon-new"}) {
					t.Errorf("Names() = %q after the rename, want [recon-new]", got)
				}
				if _, err := r.kv.Get(t.Context(), "cursor.recon-old"); err == nil {
					t.Error("the old name's cursor is still stored: should Orthanc be named so again, the reconciler would resume from it")
				}
				if got := metric(t, reg, "stowline_reconcile_lease_held", map[string]string{"source": "recon-old"}); got != -1 {
					t.Errorf("the old name's lease series is still exported (%v): StowlineReconcilerNotRunning would fire for it", got)
				}
			})
		}
	})
}

// A configured source name changed (one unnamed ORTHANC_URL, its source
// Orthanc's Name, moved into ORTHANC_SOURCES as "main"), and Orthanc
// restarted meanwhile (for its Lua configuration): it forgot the study
// it was receiving, which will never have a StableStudy change. The
// reconciler waited for it in the old name's cursor; under the new name
// it began at the end of the change log, the old cursor ignored, and
// the study was never announced. Told the old name
// (RECONCILE_ADOPT_CURSOR_FROM), it carries the cursor over and announces
// the study under the new name.
func TestConfiguredSourceRenamed(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tc := range []struct{ name, from, to string }{
			{"unnamed to configured", "", "main"},
			{"configured to another", "a", "b"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// Not stable within the test until Orthanc restarts.
				r := newRigAged(t, rel, "recon-cfg", 3600)
				old := tc.from
				if old == "" {
					old = "recon-cfg"
				}
				rec, _, stop := r.start(t, tc.from)
				if tc.from != "" {
					// Known from the start, before Orthanc answers.
					if got := rec.Names(); !slices.Equal(got, []string{tc.from}) {
						t.Errorf("Names() = %q, want [%s], the configured name", got, tc.from)
					}
				}
				// A first start begins at the end of the change log.
				testharness.WaitFor(t, "the old name's cursor", 20*time.Second, func() bool { return cursorSeq(t, r, old) >= 0 })
				upload(t, r.orthanc, writeStudy(t, 1))
				testharness.WaitFor(t, "the study pending in the old name's cursor", 20*time.Second, func() bool {
					e, err := r.kv.Get(t.Context(), "cursor."+old)
					if err != nil {
						return false
					}
					var c struct{ Pending map[string]int64 }
					return json.Unmarshal(e.Value(), &c) == nil && len(c.Pending) == 1
				})
				stop()
				r.orthanc.Stop(t)
				r.orthanc.Start(t) // forgets the unstable study: stable now, with no StableStudy change
				r.start(t, tc.to, func(o *reconcile.Options) { o.AdoptCursor = reconcile.CursorAdoption{To: tc.to, From: old} })
				testharness.WaitFor(t, "the pending study's event", 30*time.Second, func() bool {
					return len(streamEvents(t, r.nats.JS)) >= 1
				})
				evs := streamEvents(t, r.nats.JS)
				if len(evs) != 1 || evs[0].Source != tc.to {
					t.Fatalf("events %+v, want one, of source %q", evs, tc.to)
				}
				if _, err := r.kv.Get(t.Context(), "cursor."+old); err == nil {
					t.Error("the old name's cursor is still stored: should the source be named so again, the reconciler would resume from it")
				}
			})
		}
	})
}

// waitStable waits until Orthanc calls every study stable, and so has
// logged their StableStudy changes.
func waitStable(t *testing.T, r *rig) {
	t.Helper()
	testharness.WaitFor(t, "every study stable", 20*time.Second, func() bool {
		var studies []string
		r.orthanc.GetJSON(t, "/studies", &studies)
		for _, id := range studies {
			var st struct{ IsStable bool }
			r.orthanc.GetJSON(t, "/studies/"+id, &st)
			if !st.IsStable {
				return false
			}
		}
		return true
	})
}
