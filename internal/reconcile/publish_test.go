package reconcile

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/orthancapi"
)

// TestStudyChangedThisSecondWaits: Orthanc processes sharing one
// database behind one URL each call stable what they did not receive
// themselves, so a study may be called stable while another process
// still stores it. Published with the LastUpdate of Orthanc's current
// second, the study's own event, complete, got the same dedupe ID if its
// last instance came within that second, and JetStream dropped it. A
// study, pending or named by a StableStudy change, is published once its
// LastUpdate is before Orthanc's clock (not stowline's).
func TestStudyChangedThisSecondWaits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  string        // the change that tells of the study
		updated time.Duration // LastUpdate, from Orthanc's clock
		held    bool
	}{
		{"pending, changed in Orthanc's current second", "NewInstance", 0, true},
		{"pending, changed a second before", "NewInstance", -time.Second, false},
		{"StableStudy change, changed in Orthanc's current second", "StableStudy", 0, true},
		{"StableStudy change, changed a second before", "StableStudy", -time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Orthanc's clock is not this host's: a day behind.
			start := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
			o := newHTTPOrthanc(t, start)
			_, kv := testBucket(t)
			pub := &publishedIDs{}
			_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o.client}}, KV: kv, Publisher: pub,
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			waitUntil(t, "the first start's cursor", func() bool {
				_, found, err := (&cursorStore{kv: kv, key: cursorKey("s")}).load(ctx)
				return err == nil && found
			})
			o.setStudy(1, true, start.Add(tc.updated))
			if tc.change == "StableStudy" {
				o.addStableStudy(1)
			} else {
				o.addInstance(1, 1)
			}
			if tc.held {
				waitUntil(t, "three passes over the pending study, or its event", func() bool {
					return o.studyReads(1) >= 3 || pub.has(orthancID(1))
				})
				if pub.has(orthancID(1)) {
					t.Fatal("a study changed in Orthanc's current second was published: an instance stored within that second leaves LastUpdate as it is, and the study's own event would be dropped as this one's duplicate")
				}
				o.advance(time.Second)
			}
			waitUntil(t, "the pending study's event", func() bool { return pub.has(orthancID(1)) })
		})
	}
}

// clocklessOrthanc refuses GET /tools/now, as a least-privilege proxy
// set up before the reconciler read it does.
type clocklessOrthanc struct {
	*swappableOrthanc
	asked atomic.Int32
}

func (o *clocklessOrthanc) Now(context.Context) (time.Time, error) {
	o.asked.Add(1)
	return time.Time{}, &orthancapi.Error{Method: http.MethodGet, Path: "/tools/now", StatusCode: http.StatusForbidden}
}

// TestClockUnreadHoldsTheCursor: Orthanc's clock refused is no fault of
// the stable study being handled: the cursor is not moved past its
// StableStudy change (it was, after stuckAfter polls, the study left to
// the pending list with a warning that Orthanc failed to read it), and
// the polls fail, saying why.
func TestClockUnreadHoldsTheCursor(t *testing.T) {
	_, kv := testBucket(t)
	o := &clocklessOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}}
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: &publishedIDs{},
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	store := &cursorStore{kv: kv, key: cursorKey("s")}
	waitUntil(t, "the first start's cursor", func() bool {
		_, found, err := store.load(ctx)
		return err == nil && found
	})
	o.mu.Lock()
	o.log.addStudy(1) // its StableStudy change is number 4
	o.mu.Unlock()
	waitUntil(t, "more polls than a change may fail", func() bool { return o.asked.Load() > 2*stuckAfter })
	if c, _, err := store.load(ctx); err != nil || c.Seq >= 4 {
		t.Errorf("cursor at %d (%v): moved past the StableStudy change while Orthanc's clock could not be read", c.Seq, err)
	}
	if err := r.Checks()["reconcile_s"](ctx); err == nil || !strings.Contains(err.Error(), "/tools/now") {
		t.Errorf("check = %v, want the clock named", err)
	}
}
