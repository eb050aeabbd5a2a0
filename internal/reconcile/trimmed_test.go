package reconcile_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// countingOrthanc counts the reconciler's reads of the change log, so a
// test can wait for polls without sleeping.
type countingOrthanc struct {
	*orthancapi.Client
	reads atomic.Int64
}

func (c *countingOrthanc) Changes(ctx context.Context, since int64, limit int, types ...string) (orthancapi.Changes, error) {
	ch, err := c.Client.Changes(ctx, since, limit, types...)
	c.reads.Add(1)
	return ch, err
}

// The change the cursor points at leaves Orthanc's change log with nothing
// after it: its study is deleted (Orthanc deletes a resource's changes
// with it, as recycling does), or the log is cleared (DELETE /changes).
// Orthanc keeps numbering, and its "Last" stays the highest number given
// even with the log empty (1.10 and 1.12): this is no reset, the
// reconciler neither counts one nor rescans, and a study stored
// afterwards is published. A cleared log, the cursor's resource still in
// Orthanc, is told (stowline_reconcile_change_log_trimmed_total, a Warn:
// studies whose changes went unread are missed, the audit finds them); a
// deletion, normal, is not.
func TestCursorChangeGoneIsNoReset(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tc := range []struct {
			name    string
			trim    func(t *testing.T, o *testharness.Orthanc, study string)
			trimmed float64
		}{
			{"study deleted", func(t *testing.T, o *testharness.Orthanc, study string) {
				if err := o.Do(t.Context(), http.MethodDelete, "/studies/"+study, nil, nil); err != nil {
					t.Fatal(err)
				}
			}, 0},
			{"change log cleared", func(t *testing.T, o *testharness.Orthanc, _ string) {
				if err := o.Do(t.Context(), http.MethodDelete, "/changes", nil, nil); err != nil {
					t.Fatal(err)
				}
			}, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := newRig(t, rel, "recon-t")
				spy := &countingOrthanc{Client: r.client}
				r.client2 = spy
				_, reg, _ := r.start(t, "t")
				waitFirstCursor(t, r, "t")
				upload(t, r.orthanc, writeStudy(t, 1))
				testharness.WaitFor(t, "the first study's event", 20*time.Second, func() bool {
					return len(streamEvents(t, r.nats.JS)) == 1
				})
				var studies []string
				r.orthanc.GetJSON(t, "/studies", &studies)
				testharness.WaitFor(t, "the cursor past the study's StableStudy change", 10*time.Second, func() bool {
					return cursorPastStable(t, r, "t")
				})
				tc.trim(t, r.orthanc, studies[0])
				polls := spy.reads.Load()
				testharness.WaitFor(t, "three polls after", 10*time.Second, func() bool { return spy.reads.Load() >= polls+3 })
				if got := metric(t, reg, "stowline_reconcile_change_log_resets_total", map[string]string{"source": "t"}); got != 0 {
					t.Errorf("resets = %v, want 0: the log was only trimmed", got)
				}
				upload(t, r.orthanc, writeStudy(t, 1))
				testharness.WaitFor(t, "the second study's event", 20*time.Second, func() bool {
					return len(streamEvents(t, r.nats.JS)) == 2
				})
				if got := metric(t, reg, "stowline_reconcile_change_log_trimmed_total", map[string]string{"source": "t"}); got != tc.trimmed {
					t.Errorf("trims told = %v, want %v", got, tc.trimmed)
				}
			})
		}
	})
}

// cursorPastStable reports whether source's stored cursor is at or past
// Orthanc's last StableStudy change (an Orthanc that filters its log by
// type is not read beyond the last change of a type the reconciler acts
// on: the cursor stays there).
func cursorPastStable(t *testing.T, r *rig, source string) bool {
	t.Helper()
	var log orthancapi.Changes
	r.orthanc.GetJSON(t, "/changes?since=0&limit=10000", &log)
	last := int64(-1)
	for _, c := range log.Changes {
		if c.ChangeType == "StableStudy" {
			last = c.Seq
		}
	}
	return last >= 0 && cursorSeq(t, r, source) >= last
}

// waitFirstCursor waits for the reconciler of source to store its first
// start's cursor, at the end of the change log: a study uploaded before
// would be left behind it (under load the upload can beat the start).
func waitFirstCursor(t *testing.T, r *rig, source string) {
	t.Helper()
	testharness.WaitFor(t, "the first start's cursor of "+source, 20*time.Second, func() bool { return cursorSeq(t, r, source) >= 0 })
}

func cursorSeq(t *testing.T, r *rig, source string) int64 {
	t.Helper()
	e, err := r.kv.Get(context.Background(), "cursor."+source)
	if err != nil {
		return -1
	}
	var c struct{ Seq int64 }
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		t.Fatal(err)
	}
	return c.Seq
}
