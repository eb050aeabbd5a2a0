package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
		{"pending, changed 30 s after Orthanc's clock", "NewInstance", 30 * time.Second, true},
		// Orthanc's clock set back since, or processes disagreeing:
		// waiting for the clock, the study was held silently that long.
		{"pending, changed over a minute after Orthanc's clock", "NewInstance", 61 * time.Second, false},
		{"StableStudy change, changed over a minute after Orthanc's clock", "StableStudy", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Orthanc's clock is not this host's: a day behind.
			start := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
			o := newHTTPOrthanc(t, start)
			_, kv := testBucket(t)
			pub := &publishedIDs{}
			_, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o.client}}, KV: kv, Publisher: pub,
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			waitFirstCursor(ctx, t, kv, "s")
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
				o.advance(tc.updated + time.Second)
			}
			waitUntil(t, "the pending study's event", func() bool { return pub.has(orthancID(1)) })
		})
	}
}

// clocklessOrthanc fails GET /tools/now with err, as a least-privilege
// proxy set up before the reconciler read it does (403), or an Orthanc
// overloaded (503).
// After failures failures (0: for ever), it answers.
type clocklessOrthanc struct {
	*swappableOrthanc
	err      error
	asked    atomic.Int32
	failures int32
}

func (o *clocklessOrthanc) Now(context.Context) (time.Time, error) {
	if n := o.asked.Add(1); o.failures > 0 && n > o.failures {
		return time.Now(), nil
	}
	return time.Time{}, o.err
}

// TestClockUnread: Orthanc's clock refused for good (401, 403, 405, a
// 404 of Orthanc's own) is a site whose proxy follows the access list
// the docs gave before the reconciler read it: a stable study is
// published on IsStable alone, the gauge and the check tell (it held the
// cursor at the first StableStudy change, for good). A transient failure
// (a 5xx, a 404 not Orthanc's) says nothing of the study either: the
// cursor is held and the polls fail, naming the clock.
func TestClockUnread(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		notOurs string // Error.NotFromOrthanc
		refused bool
	}{
		{"403", http.StatusForbidden, "", true},
		{"401", http.StatusUnauthorized, "", true},
		{"405", http.StatusMethodNotAllowed, "", true},
		{"404 of Orthanc", http.StatusNotFound, "", true},
		{"404 of a proxy", http.StatusNotFound, "its body is not Orthanc's", false},
		{"503", http.StatusServiceUnavailable, "", false},
		{"500", http.StatusInternalServerError, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kv := testBucket(t)
			o := &clocklessOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}},
				err: &orthancapi.Error{Method: http.MethodGet, Path: "/tools/now", StatusCode: tc.status, NotFromOrthanc: tc.notOurs}}
			pub := &publishedIDs{}
			r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			store := waitFirstCursor(ctx, t, kv, "s")
			id := orthancID(1)
			o.mu.Lock()
			o.log.studies[id] = orthancapi.Study{ID: id, StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000", IsStable: true}
			o.log.add("NewStudy", id)
			o.log.add("StableStudy", id) // change number 2
			o.mu.Unlock()
			gauge := func() float64 { return testutil.ToFloat64(r.m.clockUnavailable.WithLabelValues("s")) }
			check := r.Checks()["reconcile_s"]
			if tc.refused {
				waitPublished(ctx, t, store, pub, 2, id)
				if got := gauge(); got != 1 {
					t.Errorf("clock_unavailable = %v, want 1", got)
				}
				if err := check(ctx); err == nil || !strings.Contains(err.Error(), "/tools/now") {
					t.Errorf("check = %v, want a note naming the clock", err)
				}
				return
			}
			waitUntil(t, "more polls than a change may fail", func() bool { return o.asked.Load() > 2*stuckAfter })
			checkHeld(ctx, t, store, pub, 2, id)
			if err := check(ctx); err == nil || !strings.Contains(err.Error(), "/tools/now") {
				t.Errorf("check = %v, want the clock named", err)
			}
			if got := gauge(); got != 0 {
				t.Errorf("clock_unavailable = %v, want 0 for a transient failure", got)
			}
		})
	}
}

// TestClockNotRoutedByAProxy: an ingress routing an allowlist without
// /tools/now answers its own "404 page not found", which the client does
// not take for Orthanc's. While Orthanc answers GET /system behind the
// same URL, that 404 is a refusal for good: studies are published without
// the same-second check (the cursor was held for good). A proxy whose
// Orthanc is gone answers /system the same: that is transient, and the
// cursor is held.
func TestClockNotRoutedByAProxy(t *testing.T) {
	for _, tc := range []struct {
		name       string
		systemGone bool
	}{
		{"Orthanc answers /system", false},
		{"/system not found either", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
			o := newHTTPOrthanc(t, start)
			o.mu.Lock()
			o.clockNotRouted, o.systemGone = true, tc.systemGone
			o.mu.Unlock()
			_, kv := testBucket(t)
			pub := &publishedIDs{}
			r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o.client}}, KV: kv, Publisher: pub,
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			store := waitFirstCursor(ctx, t, kv, "s")
			o.setStudy(1, true, start.Add(-time.Minute))
			o.addStableStudy(1) // change number 1
			gauge := func() float64 { return testutil.ToFloat64(r.m.clockUnavailable.WithLabelValues("s")) }
			if !tc.systemGone {
				waitPublished(ctx, t, store, pub, 1, orthancID(1))
				if got := gauge(); got != 1 {
					t.Errorf("clock_unavailable = %v, want 1", got)
				}
				return
			}
			waitUntil(t, "more polls than a change may fail", func() bool {
				return testutil.ToFloat64(r.m.pollErrors.WithLabelValues("s")) > 2*stuckAfter
			})
			checkHeld(ctx, t, store, pub, 1, orthancID(1))
			if got := gauge(); got != 0 {
				t.Errorf("clock_unavailable = %v, want 0 while Orthanc may be gone", got)
			}
		})
	}
}

// TestClockRefusedBriefly: a refusal of GET /tools/now or two in a row
// (a policy or token being rolled out) turned the same-second check off
// at once, the gauge and a Warn flapping. The check is turned off at the
// third refusal in a row; until then the cursor is held.
func TestClockRefusedBriefly(t *testing.T) {
	for _, tc := range []struct {
		refusals int32
		off      bool
	}{
		{1, false},
		{clockOffAfter - 1, false},
		{clockOffAfter, true},
	} {
		t.Run(fmt.Sprint(tc.refusals), func(t *testing.T) {
			_, kv := testBucket(t)
			failures := tc.refusals
			if tc.off {
				// Refused for good (0): a clock answering after the
				// third refusal turns the check on again at the next
				// poll, and the gauge could read 0 before it is read.
				failures = 0
			}
			o := &clocklessOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}},
				err: &orthancapi.Error{Method: http.MethodGet, Path: "/tools/now", StatusCode: http.StatusForbidden}, failures: failures}
			pub := &publishedIDs{}
			warned := &warnings{}
			r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub, Logger: slog.New(warned),
				PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
			store := waitFirstCursor(ctx, t, kv, "s")
			id := orthancID(1)
			o.mu.Lock()
			o.log.studies[id] = orthancapi.Study{ID: id, StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000", IsStable: true}
			o.log.add("StableStudy", id) // change number 1
			o.mu.Unlock()
			waitPublished(ctx, t, store, pub, 1, id)
			off := warned.has("Orthanc refuses GET /tools/now")
			if off != tc.off {
				t.Errorf("check turned off (Warn) %v, want %v; warnings %q", off, tc.off, warned.all())
			}
			if got, want := testutil.ToFloat64(r.m.clockUnavailable.WithLabelValues("s")), map[bool]float64{true: 1}[tc.off]; got != want {
				t.Errorf("clock_unavailable = %v, want %v", got, want)
			}
		})
	}
}

// waitPublished waits for the event of study id and the cursor at seq
// or past it.
func waitPublished(ctx context.Context, t *testing.T, store *cursorStore, pub *publishedIDs, seq int64, id string) {
	t.Helper()
	waitUntil(t, "the study's event and the cursor past it", func() bool {
		c, _, err := store.load(ctx)
		return err == nil && c.Seq >= seq && pub.has(id)
	})
}

// checkHeld checks that the cursor is before the StableStudy change seq
// of study id and that the study was not published: Orthanc's clock could
// not be read.
func checkHeld(ctx context.Context, t *testing.T, store *cursorStore, pub *publishedIDs, seq int64, id string) {
	t.Helper()
	if c, _, err := store.load(ctx); err != nil || c.Seq >= seq || pub.has(id) {
		t.Errorf("cursor at %d (%v), published %v: moved past the StableStudy change while Orthanc's clock could not be read", c.Seq, err, pub.has(id))
	}
}

// toggledClockOrthanc refuses GET /tools/now (403) while refuse is set.
type toggledClockOrthanc struct {
	*swappableOrthanc
	refuse atomic.Bool
}

func (o *toggledClockOrthanc) Now(context.Context) (time.Time, error) {
	if o.refuse.Load() {
		return time.Time{}, &orthancapi.Error{Method: http.MethodGet, Path: "/tools/now", StatusCode: http.StatusForbidden}
	}
	return time.Now(), nil
}

// TestClockBackWhileIdle: the clock was read only before a poll's first
// study, so once the check was off, the gauge and the check's note stayed
// on after the proxy was fixed until the next study came. Off, it is
// asked at every poll: idle polls turn it on again.
func TestClockBackWhileIdle(t *testing.T) {
	_, kv := testBucket(t)
	o := &toggledClockOrthanc{swappableOrthanc: &swappableOrthanc{log: &changeLog{studies: map[string]orthancapi.Study{}}}}
	o.refuse.Store(true)
	pub := &publishedIDs{}
	r, ctx := runReconciler(t, Options{Sources: []Source{{Name: "s", Orthanc: o}}, KV: kv, Publisher: pub,
		PollInterval: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, LeaseTTL: time.Second})
	waitFirstCursor(ctx, t, kv, "s")
	id := orthancID(1)
	o.mu.Lock()
	o.log.studies[id] = orthancapi.Study{ID: id, StudyInstanceUID: "1.2.3.1", LastUpdate: "20261203T150000", IsStable: true}
	o.log.add("StableStudy", id) // change number 1
	o.mu.Unlock()
	gauge := func() float64 { return testutil.ToFloat64(r.m.clockUnavailable.WithLabelValues("s")) }
	waitUntil(t, "the study published without the clock", func() bool { return pub.has(id) && gauge() == 1 })
	o.refuse.Store(false) // the proxy fixed; no study comes
	// The gauge is set before the check's note is cleared: both are
	// waited for.
	waitUntil(t, "clock_unavailable back to 0 and the check's note gone while idle", func() bool {
		err := r.Checks()["reconcile_s"](ctx)
		return gauge() == 0 && (err == nil || !strings.Contains(err.Error(), "/tools/now"))
	})
}
