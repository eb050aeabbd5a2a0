package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// memStudies is an Orthanc source of studies of 3 instances each: study
// k (Orthanc ID sid(k)) has Study Instance UID 1.2.<k>, and instances
// <i>-<sid(k)> with SOP Instance UIDs 1.2.<k>.<i>.
type memStudies map[int]string // study -> LastUpdate

func sid(k int) string { return fmt.Sprintf("%08d-00000000-00000000-00000000-00000000", k) }

func studyOf(id string) int {
	var k int
	fmt.Sscanf(id, "%08d-", &k)
	return k
}

func (m memStudies) Study(_ context.Context, id string) (orthancapi.Study, error) {
	lu, ok := m[studyOf(id)]
	if !ok {
		return orthancapi.Study{}, fmt.Errorf("study %s: %w", id, orthancapi.ErrNotFound)
	}
	return orthancapi.Study{ID: id, LastUpdate: lu, StudyInstanceUID: fmt.Sprintf("1.2.%d", studyOf(id))}, nil
}

func (m memStudies) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	var out []orthancapi.Instance
	for i := range 3 {
		out = append(out, orthancapi.Instance{ID: fmt.Sprintf("%d-%s", i, id), SOPInstanceUID: fmt.Sprintf("1.2.%d.%d", studyOf(id), i)})
	}
	return out, nil
}

// The verifying audit checks the studies forwarded within the window
// that are still as forwarded, expects only what the routing rules
// select, names what the destination does not list, and enqueues it for
// that destination under an ID of its own.
func TestVerify(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, "archive")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	record := func(k int, lastUpdate string, age time.Duration, notSelected bool) {
		t.Helper()
		l := ledger.New(ns.JS, kv, ledger.WithClock(func() time.Time { return now.Add(-age) }))
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
			OrthancStudyID: sid(k), StudyInstanceUID: fmt.Sprintf("1.2.%d", k), LastUpdate: lastUpdate}
		if err := l.Completed(ctx, ev, ledger.Outcome{NotSelected: notSelected}); err != nil {
			t.Fatal(err)
		}
	}
	src := memStudies{1: "20261126T100000", 2: "20261126T100000", 3: "20261126T100000",
		5: "20261126T120000", 6: "20261126T100000"}
	record(1, "20261126T100000", time.Hour, false)       // held in full
	record(2, "20261126T100000", time.Hour, false)       // lacks 1.2.s2.0
	record(3, "20261126T100000", 10*24*time.Hour, false) // too old to check
	record(4, "20261126T100000", time.Hour, false)       // gone from the source
	record(5, "20261126T100000", time.Hour, false)       // changed since
	record(6, "20261126T100000", time.Hour, true)        // not selected
	listed := map[string][]string{
		"1.2.1": {"1.2.1.0", "1.2.1.1"}, // .2 is not for this destination
		"1.2.2": {"1.2.2.1"},
		"1.2.5": {},
	}
	var published []string
	opts := ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      ledger.New(ns.JS, kv),
		Since:       now.Add(-7 * 24 * time.Hour),
		SourceFor:   func(string) (ledger.VerifySource, error) { return src, nil },
		Select: func(_ context.Context, _, _ string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
			return slices.DeleteFunc(in, func(i orthancapi.Instance) bool { return strings.HasSuffix(i.SOPInstanceUID, ".2") }), nil
		},
		Listed: func(_ context.Context, uid string, _ dicomweb.Expected) ([]string, error) { return listed[uid], nil },
		Publish: func(_ context.Context, ev *events.StudyStable, msgID string) (*jetstream.PubAck, error) {
			published = append(published, ev.OrthancStudyID+" "+msgID)
			return &jetstream.PubAck{Sequence: 1}, nil
		},
	}
	var found []ledger.VerifyFinding
	sum, err := ledger.Verify(ctx, opts, true, func(f ledger.VerifyFinding) error {
		found = append(found, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := ledger.VerifySummary{Studies: 4, Verified: 1, Gone: 1, Changed: 1, Findings: 1, MissingInstances: 1, Enqueued: 1}
	if sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	if len(found) != 1 || found[0].OrthancStudyID != sid(2) || found[0].Instances != 2 || !found[0].Enqueued ||
		!slices.Equal(found[0].Missing, []ledger.MissingInstance{{OrthancInstanceID: "0-" + sid(2), SOPInstanceUID: "1.2.2.0"}}) {
		t.Errorf("findings %+v, want study 2 missing its instance 0 (1.2.2.0), enqueued", found)
	}
	if wantID := sid(2) + " main/" + sid(2) + "/20261126T100000/verify/archive/"; len(published) != 1 || !strings.HasPrefix(published[0], wantID) {
		t.Errorf("published %q, want study 2 under a verify ID of its own (%s...)", published, wantID)
	}
	// A de-identifying destination is asked for the keyed study UID and
	// lists keyed SOP Instance UIDs; an original UID it lists does not
	// count, and the finding names the original.
	keyed := func(uid string) string { return "9." + uid }
	listedKeyed := map[string][]string{
		keyed("1.2.1"): {keyed("1.2.1.0"), keyed("1.2.1.1")},
		keyed("1.2.2"): {keyed("1.2.2.1"), "1.2.2.0"},
		keyed("1.2.5"): {},
	}
	opts.Keyed = keyed
	opts.Listed = func(_ context.Context, uid string, _ dicomweb.Expected) ([]string, error) {
		if !strings.HasPrefix(uid, "9.") {
			t.Errorf("the destination was asked for the original UID %s", uid)
		}
		return listedKeyed[uid], nil
	}
	found = nil
	if sum, err = ledger.Verify(ctx, opts, false, func(f ledger.VerifyFinding) error {
		found = append(found, f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want.Enqueued = 0; sum != want {
		t.Errorf("keyed: summary %+v, want %+v", sum, want)
	}
	if len(found) != 1 || !slices.Equal(found[0].Missing, []ledger.MissingInstance{{OrthancInstanceID: "0-" + sid(2), SOPInstanceUID: "1.2.2.0"}}) {
		t.Errorf("keyed: findings %+v, want study 2 missing its instance 0 (1.2.2.0)", found)
	}
}

// A walk that ends early ends with an error, never as if the ledger had
// been read to its end (audit --verify would report the studies it did
// not read as nothing to check): the caller cancels it, or the read of
// the bucket ends (the connection closed).
func TestForwardedCutShortIsAnError(t *testing.T) {
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	const studies = 20
	for k := range studies {
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
			OrthancStudyID: sid(k), StudyInstanceUID: fmt.Sprintf("1.2.%d", k), LastUpdate: "20261203T150000"}
		if err := ledger.New(ns.JS, kv).Record(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		kv      jetstream.KeyValue
		cancel  bool // the caller cancels at the first study
		wantErr error
	}{
		{name: "cancelled", kv: kv, cancel: true, wantErr: context.Canceled},
		{name: "watch ended", kv: testnats.CutWatch(kv, 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			walked := 0
			err := ledger.New(ns.JS, tc.kv).Forwarded(ctx, time.Time{}, func(string, string, ledger.Record) error {
				walked++
				if tc.cancel {
					cancel()
				}
				return nil
			})
			if err == nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("a walk cut short after %d of %d studies returned %v, want an error (%v)", walked, studies, err, tc.wantErr)
			}
		})
	}
	all := 0
	if err := ledger.New(ns.JS, kv).Forwarded(t.Context(), time.Time{}, func(string, string, ledger.Record) error { all++; return nil }); err != nil || all != studies {
		t.Errorf("whole walk: %d studies, %v; want %d", all, err, studies)
	}
}

// vanishing is a source whose study is deleted between the audit's two
// reads of it, as buffer mode deletes a study the moment it is
// forwarded.
type vanishing struct{ memStudies }

func (vanishing) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	return nil, fmt.Errorf("study %s: %w", id, orthancapi.ErrNotFound)
}

// TestVerifyStudyGoneBetweenReads: a study deleted from its source after
// the audit read it counts as no longer in the source, as one deleted
// before; the run goes on with the other studies instead of failing.
func TestVerifyStudyGoneBetweenReads(t *testing.T) {
	ctx := t.Context()
	l, src := forwardedToArchive(t, "main", "main")
	sum, err := ledger.Verify(ctx, ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      l,
		SourceFor: func(string) (ledger.VerifySource, error) {
			return vanishing{src}, nil
		},
		Listed: func(context.Context, string, dicomweb.Expected) ([]string, error) { return nil, nil },
	}, false, func(ledger.VerifyFinding) error { return nil })
	if err != nil {
		t.Fatalf("Verify: %v, want the deleted studies counted as gone", err)
	}
	if want := (ledger.VerifySummary{Studies: 2, Gone: 2}); sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
}

// A source the verifying audit cannot read (here taken out of
// ORTHANC_SOURCES since its forwards; or down) does not stop it: its
// first study failed the whole run, so no other source's studies were
// verified for as long as the window held one of its forwards. Now its
// studies are skipped and counted in the error, which names it, and the
// other source's missing instance is found.
func TestVerifyGoesOnPastAnUnreadableSource(t *testing.T) {
	ctx := t.Context()
	l, main := forwardedToArchive(t, "cardio", "cardio", "main", "main")
	var found []ledger.VerifyFinding
	sum, err := ledger.Verify(ctx, ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      l,
		SourceFor: func(source string) (ledger.VerifySource, error) {
			if source != "main" {
				return nil, fmt.Errorf("unknown source %q", source)
			}
			return main, nil
		},
		Listed: func(_ context.Context, uid string, _ dicomweb.Expected) ([]string, error) {
			if uid == "1.2.2" {
				return []string{"1.2.2.0", "1.2.2.1"}, nil // 1.2.2.2 missing
			}
			return []string{uid + ".0", uid + ".1", uid + ".2"}, nil
		},
	}, false, func(f ledger.VerifyFinding) error {
		found = append(found, f)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "source cardio: 2 forwarded studies not verified") {
		t.Errorf("err = %v, want one naming cardio's 2 studies", err)
	}
	if len(found) != 1 || found[0].Source != "main" || len(found[0].Missing) != 1 || found[0].Missing[0].SOPInstanceUID != "1.2.2.2" {
		t.Fatalf("findings = %+v, want main's study 1.2.2 missing 1.2.2.2", found)
	}
	if want := (ledger.VerifySummary{Studies: 4, Verified: 1, Findings: 1, MissingInstances: 1, NotVerified: 2}); sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
}

// TestVerifyGoesOnPastAFailedStudy: a QIDO request failing (a 502) or a
// routing rule failing on one study ended the whole run, leaving every
// later study unchecked; a study deleted while a rule read its metadata
// did too. Now the failed studies are counted as not verified and named
// in the error, the deleted one as gone, and the rest are verified.
func TestVerifyGoesOnPastAFailedStudy(t *testing.T) {
	ctx := t.Context()
	l, src := forwardedToArchive(t, slices.Repeat([]string{"main"}, 5)...)
	var found []ledger.VerifyFinding
	sum, err := ledger.Verify(ctx, ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      l,
		SourceFor:   func(string) (ledger.VerifySource, error) { return src, nil },
		Select: func(_ context.Context, _, id string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
			switch studyOf(id) {
			case 1:
				return nil, errors.New("DESTINATION_ARCHIVE_MATCH: no such tag")
			case 2:
				return nil, fmt.Errorf("read metadata: %w", orthancapi.ErrNotFound)
			}
			return in, nil
		},
		Listed: func(_ context.Context, uid string, _ dicomweb.Expected) ([]string, error) {
			switch uid {
			case "1.2.0":
				return nil, errors.New("QIDO-RS: 502 Bad Gateway")
			case "1.2.4":
				return []string{"1.2.4.0"}, nil
			}
			return []string{uid + ".0", uid + ".1", uid + ".2"}, nil
		},
	}, false, func(f ledger.VerifyFinding) error {
		found = append(found, f)
		return nil
	})
	for _, want := range []string{"study " + sid(0) + " of main: ask the destination: QIDO-RS: 502", "study " + sid(1) + " of main: routing rules"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to contain %q", err, want)
		}
	}
	if len(found) != 1 || found[0].OrthancStudyID != sid(4) || len(found[0].Missing) != 2 {
		t.Errorf("findings = %+v, want study 4 missing 2 instances", found)
	}
	if want := (ledger.VerifySummary{Studies: 5, Verified: 1, Gone: 1, Findings: 1, MissingInstances: 2, NotVerified: 2}); sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
}

// TestVerifyAfterKeyRotation: after a de-identifying destination's key
// was rotated, the verifying audit asked the destination for each study
// under its pseudonym by the new key, found none of the studies
// forwarded before, and --enqueue sent them all again under new
// pseudonyms. A study is now asked for under the pseudonym its record
// holds; its instances, named by the old key, are counted, and one the
// destination lists fewer of is counted apart, not re-forwarded. A
// record without a pseudonym (older releases) is checked as before.
func TestVerifyAfterKeyRotation(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, "research")
	if err != nil {
		t.Fatal(err)
	}
	oldKey := func(uid string) string { return "8." + uid }
	newKey := func(uid string) string { return "9." + uid }
	const lastUpdate = "20261204T100000"
	for k, pseudonyms := range map[int]func(string) string{
		1: oldKey, // held in full
		2: oldKey, // one instance missing
		3: nil,    // recorded before records named the pseudonym
		4: newKey, // forwarded after the rotation
	} {
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
			OrthancStudyID: sid(k), StudyInstanceUID: fmt.Sprintf("1.2.%d", k), LastUpdate: lastUpdate}
		if err := ledger.New(ns.JS, kv).WithPseudonyms(pseudonyms).Completed(ctx, ev, ledger.Outcome{}); err != nil {
			t.Fatal(err)
		}
	}
	listed := map[string][]string{
		oldKey("1.2.1"): {oldKey("1.2.1.0"), oldKey("1.2.1.1"), oldKey("1.2.1.2")},
		oldKey("1.2.2"): {oldKey("1.2.2.0"), oldKey("1.2.2.1")},
		newKey("1.2.3"): {newKey("1.2.3.0"), newKey("1.2.3.1"), newKey("1.2.3.2")},
		newKey("1.2.4"): {newKey("1.2.4.0"), newKey("1.2.4.1"), newKey("1.2.4.2")},
	}
	var asked, published []string
	sum, err := ledger.Verify(ctx, ledger.VerifyOptions{
		Destination: "research",
		Ledger:      ledger.New(ns.JS, kv),
		SourceFor: func(string) (ledger.VerifySource, error) {
			return memStudies{1: lastUpdate, 2: lastUpdate, 3: lastUpdate, 4: lastUpdate}, nil
		},
		Keyed: newKey,
		Listed: func(_ context.Context, uid string, _ dicomweb.Expected) ([]string, error) {
			asked = append(asked, uid)
			return listed[uid], nil
		},
		Publish: func(_ context.Context, ev *events.StudyStable, _ string) (*jetstream.PubAck, error) {
			published = append(published, ev.StudyInstanceUID)
			return &jetstream.PubAck{Sequence: 1}, nil
		},
	}, true, func(f ledger.VerifyFinding) error {
		t.Errorf("finding %+v, want none", f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (ledger.VerifySummary{Studies: 4, Verified: 3, OtherKey: 2, OtherKeyShort: 1}); sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	slices.Sort(asked)
	if want := []string{oldKey("1.2.1"), oldKey("1.2.2"), newKey("1.2.3"), newKey("1.2.4")}; !slices.Equal(asked, want) {
		t.Errorf("the destination was asked for %q, want %q", asked, want)
	}
	if len(published) != 0 {
		t.Errorf("re-forwarded %q, want nothing: a study sent again under the new key arrives as a new study", published)
	}
}

// TestVerifyPagesUntilEveryInstanceIsListed: the destination holds
// instances of the study besides those forwarded to it (another series,
// sent to it some other way) and lists them first, on pages it caps at
// 3 (Orthanc's LimitFindInstances), below the 200 asked. The audit
// passed only how many instances it checked for, so the first short page
// of 3 ended the listing, and the instances forwarded, listed after, were
// reported missing (and with --enqueue forwarded again, on every run).
// It now passes their UIDs (the keyed ones for a de-identifying
// destination), and the listing goes on until each is listed.
func TestVerifyPagesUntilEveryInstanceIsListed(t *testing.T) {
	const lastUpdate, capped = "20261205T100000", 3
	keyed := func(uid string) string { return "9." + uid }
	tests := []struct {
		name  string
		keyed bool
		// routed: the destination's routing rules select 1.2.1.0 and
		// 1.2.1.1 only; lost: a forwarded instance the destination
		// does not hold.
		routed       bool
		lost         string
		wantMissing  []string
		wantRequests int
	}{
		{name: "every instance", wantRequests: 3},
		{name: "routing rules picked some", routed: true, wantRequests: 2},
		{name: "de-identifying destination", keyed: true, wantRequests: 3},
		{name: "one lost", lost: "1.2.1.1", wantMissing: []string{"1.2.1.1"}, wantRequests: 3},
		{name: "de-identifying destination, one lost", keyed: true, lost: "1.2.1.2", wantMissing: []string{"1.2.1.2"}, wantRequests: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := func(uid string) string { return uid }
			if tt.keyed {
				name = keyed
			}
			// 4 instances of another series first, then those forwarded.
			held := []string{name("1.2.1.9.0"), name("1.2.1.9.1"), name("1.2.1.9.2"), name("1.2.1.9.3")}
			forwarded := []string{"1.2.1.0", "1.2.1.1", "1.2.1.2"}
			if tt.routed {
				forwarded = forwarded[:2]
			}
			for _, uid := range forwarded {
				if uid != tt.lost {
					held = append(held, name(uid))
				}
			}
			var requests atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				if want := "/studies/" + name("1.2.1") + "/instances"; r.URL.Path != want {
					http.Error(w, "unexpected "+r.URL.Path, http.StatusBadRequest)
					return
				}
				stowsink.WriteInstancePage(w, r, held, capped)
			}))
			t.Cleanup(srv.Close)
			qido, err := dicomweb.New(srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			ns := testnats.Start(t)
			kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, "archive")
			if err != nil {
				t.Fatal(err)
			}
			var pseudonyms func(string) string
			if tt.keyed {
				pseudonyms = keyed
			}
			ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
				OrthancStudyID: sid(1), StudyInstanceUID: "1.2.1", LastUpdate: lastUpdate}
			if err := ledger.New(ns.JS, kv).WithPseudonyms(pseudonyms).Completed(t.Context(), ev, ledger.Outcome{}); err != nil {
				t.Fatal(err)
			}
			opts := ledger.VerifyOptions{
				Destination: "archive",
				Ledger:      ledger.New(ns.JS, kv),
				SourceFor:   func(string) (ledger.VerifySource, error) { return memStudies{1: lastUpdate}, nil },
				Listed:      qido.StudyInstanceUIDs,
				Keyed:       pseudonyms,
			}
			if tt.routed {
				opts.Select = func(_ context.Context, _, _ string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
					return in[:2], nil
				}
			}
			var missing []string
			sum, err := ledger.Verify(t.Context(), opts, false, func(f ledger.VerifyFinding) error {
				for _, m := range f.Missing {
					missing = append(missing, m.SOPInstanceUID)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(missing, tt.wantMissing) {
				t.Errorf("missing %q, want %q", missing, tt.wantMissing)
			}
			want := ledger.VerifySummary{Studies: 1, Verified: 1}
			if len(tt.wantMissing) > 0 {
				want = ledger.VerifySummary{Studies: 1, Findings: 1, MissingInstances: len(tt.wantMissing)}
			}
			if sum != want {
				t.Errorf("summary %+v, want %+v", sum, want)
			}
			if got := int(requests.Load()); got != tt.wantRequests {
				t.Errorf("%d QIDO-RS pages asked, want %d", got, tt.wantRequests)
			}
		})
	}
}

// With the destination down, every study fails: the walk stops after 20
// in a row, rather than ask study after study, each waiting out its
// time-out, through a long window.
func TestVerifyStopsWhenEveryStudyFails(t *testing.T) {
	ctx := t.Context()
	l, src := forwardedToArchive(t, slices.Repeat([]string{"main"}, 30)...)
	var asked int
	sum, err := ledger.Verify(ctx, ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      l,
		SourceFor:   func(string) (ledger.VerifySource, error) { return src, nil },
		Listed: func(context.Context, string, dicomweb.Expected) ([]string, error) {
			asked++
			return nil, errors.New("QIDO-RS: no answer")
		},
	}, false, func(ledger.VerifyFinding) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "20 studies in a row could not be verified") {
		t.Errorf("err = %v, want the run stopped after 20 in a row", err)
	}
	if asked != 20 || sum.Studies != 20 || sum.NotVerified != 20 {
		t.Errorf("asked %d, summary %+v; want 20 asked, read and not verified", asked, sum)
	}
}

// forwardedToArchive records in destination archive's ledger, on a fresh
// JetStream, study k (sid(k), Study Instance UID 1.2.k, last updated
// 20261204T100000) of source sources[k] as forwarded, and returns the
// ledger and the studies of source main, as that source holds them.
func forwardedToArchive(t *testing.T, sources ...string) (*ledger.Ledger, memStudies) {
	t.Helper()
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, "archive")
	if err != nil {
		t.Fatal(err)
	}
	l := ledger.New(ns.JS, kv)
	main := memStudies{}
	for k, source := range sources {
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: source,
			OrthancStudyID: sid(k), StudyInstanceUID: fmt.Sprintf("1.2.%d", k), LastUpdate: "20261204T100000"}
		if err := l.Completed(t.Context(), ev, ledger.Outcome{}); err != nil {
			t.Fatal(err)
		}
		if source == "main" {
			main[k] = ev.LastUpdate
		}
	}
	return l, main
}

// bigStudy is an Orthanc source of one study, 1.2.1 (sid(1)), of n
// instances 1.2.1.<i> in one series.
type bigStudy struct {
	lastUpdate string
	n          int
}

func (b bigStudy) Study(_ context.Context, id string) (orthancapi.Study, error) {
	return orthancapi.Study{ID: id, LastUpdate: b.lastUpdate, StudyInstanceUID: "1.2.1"}, nil
}

func (b bigStudy) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	out := make([]orthancapi.Instance, b.n)
	for i := range out {
		out[i] = orthancapi.Instance{ID: fmt.Sprintf("%d-%s", i, id), SOPInstanceUID: fmt.Sprintf("1.2.1.%d", i)}
	}
	return out, nil
}

// TestVerifyCappedListing: AWS HealthImaging's search lists at most
// 10,000 records, so a study with a series of more cannot be verified in
// full. audit --verify counts it as such (Capped), not as missing
// instances, and --enqueue does not queue it: before, the instances past
// the cap were reported missing and the study enqueued at every run,
// forwarded again to no end.
func TestVerifyCappedListing(t *testing.T) {
	const lastUpdate, n, searchCap = "20261205T100000", 10050, 10000
	var held []string
	for i := range n {
		held = append(held, fmt.Sprintf("1.2.1.%d", i))
	}
	var undocumented atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/datastore/d1/studies/1.2.1/series":
			w.Header().Set("Content-Type", "application/dicom+json")
			fmt.Fprint(w, `[{"0020000E":{"vr":"UI","Value":["1.2.1.0"]}}]`)
		case "/datastore/d1/studies/1.2.1/series/1.2.1.0/instances":
			// Nothing past the cap is listed.
			stowsink.WriteInstancePage(w, r, held[:searchCap], 200)
		default:
			undocumented.Add(1)
			stowsink.WriteNotFoundJSON(w)
		}
	}))
	t.Cleanup(srv.Close)
	qido, err := dicomweb.New(srv.URL+"/datastore/d1", nil, dicomweb.WithSeriesSearch())
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, "archive")
	if err != nil {
		t.Fatal(err)
	}
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
		OrthancStudyID: sid(1), StudyInstanceUID: "1.2.1", LastUpdate: lastUpdate}
	if err := ledger.New(ns.JS, kv).Completed(t.Context(), ev, ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	var published int
	opts := ledger.VerifyOptions{
		Destination: "archive",
		Ledger:      ledger.New(ns.JS, kv),
		SourceFor:   func(string) (ledger.VerifySource, error) { return bigStudy{lastUpdate, n}, nil },
		Listed:      qido.StudyInstanceUIDs,
		Publish: func(context.Context, *events.StudyStable, string) (*jetstream.PubAck, error) {
			published++
			return &jetstream.PubAck{Sequence: 1}, nil
		},
	}
	var found []ledger.VerifyFinding
	sum, err := ledger.Verify(t.Context(), opts, true, func(f ledger.VerifyFinding) error {
		found = append(found, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (ledger.VerifySummary{Studies: 1, Capped: 1}); sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	if len(found) != 0 || published != 0 {
		t.Errorf("findings %d (%d enqueued), want none", len(found), published)
	}
	if got := undocumented.Load(); got != 0 {
		t.Errorf("%d requests to routes HealthImaging does not offer", got)
	}
}
