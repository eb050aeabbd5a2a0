package app

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// Buffer mode deletes an instance from the source only once every
// destination that selects it stored it, and one of them holds it as
// it is.
func TestReleaseFunc(t *testing.T) {
	const state = "20261203T100000"
	x, y := orthancapi.Instance{ID: "x", SOPInstanceUID: "1.2.3"}, orthancapi.Instance{ID: "y", SOPInstanceUID: "1.2.4"}
	listed := []orthancapi.Instance{x, y}
	both := ledger.Outcome{Selected: []orthancapi.Instance{y, x}}
	tests := []struct {
		name                string
		archive, ai         *ledger.Outcome // nil: not recorded
		aiState             string          // ai's recorded LastUpdate if not state
		aiDeidentifies      bool
		archiveDeidentifies bool
		// aiPseudonym: ai's forwarder recorded the pseudonym it sent the
		// study under (it de-identifies, whatever this process's settings
		// of ai say).
		aiPseudonym bool
		want        []string
	}{
		{"both stored", &both, &both, "", false, false, false, []string{"x", "y"}},
		{"one not recorded", &both, nil, "", false, false, false, nil},
		{"one recorded an older state", &both, &both, "20261203T090000", false, false, false, nil},
		{"a conflict the other skipped stays", &both, &ledger.Outcome{Selected: both.Selected, Kept: []string{"1.2.3"}}, "", false, false, false, []string{"y"}},
		{"a conflict the deleting one skipped stays", &ledger.Outcome{Selected: both.Selected, Kept: []string{"1.2.4"}}, &both, "", false, false, false, []string{"x"}},
		// Its rules selected nothing then, and select the study now.
		{"a record of not selected stored nothing", &both, &ledger.Outcome{NotSelected: true}, "", false, false, false, nil},
		// Its rules selected less then (a rule changed since, or an
		// older replica's rules).
		{"a record of another selection", &both, &ledger.Outcome{Selected: []orthancapi.Instance{x}}, "", false, false, false, nil},
		{"a record of a release before selections were recorded", &both, &ledger.Outcome{}, "", false, false, false, []string{"x", "y"}},
		{"one of two de-identifies", &both, &both, "", true, false, false, []string{"x", "y"}},
		// A list too long for a record stands for every instance.
		{"more kept than a record lists", &both, &ledger.Outcome{Selected: both.Selected, Kept: manyUIDs(1001)}, "", false, false, false, nil},
		{"both de-identify: no original would be left", &both, &both, "", true, true, false, nil},
		// This process's settings of ai lack STOW_DEIDENTIFY (a group that
		// does not serve it, a rollout turning it on): its record says it.
		{"one de-identifies by its record: no original would be left", &both, &both, "", false, true, true, nil},
		{"a pseudonym recorded for the other one only", &both, &both, "", false, false, true, []string{"x", "y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ledgers := testLedgers(t, "archive", "ai")
			ev := &events.StudyStable{Source: "main", OrthancStudyID: "0b1f7a3e-5c0d4e2a-9f8b7c6d-1a2b3c4d-5e6f7a8b", StudyInstanceUID: "1.2.9", LastUpdate: state}
			record := func(name string, o *ledger.Outcome, lastUpdate string, pseudonym bool) {
				if o == nil {
					return
				}
				e := *ev
				if lastUpdate != "" {
					e.LastUpdate = lastUpdate
				}
				l := ledgers[name]
				if pseudonym {
					l = l.WithPseudonyms(func(string) string { return "2.25.1" })
				}
				if err := l.Completed(t.Context(), &e, *o); err != nil {
					t.Fatal(err)
				}
			}
			record("archive", tt.archive, "", false)
			record("ai", tt.ai, tt.aiState, tt.aiPseudonym)
			archive, ai := config.NamedDestination{Name: "archive"}, config.NamedDestination{Name: "ai"}
			if tt.archiveDeidentifies {
				archive.Deidentify.Mode = config.DeidentifyBasic
			}
			if tt.aiDeidentifies {
				ai.Deidentify.Mode = config.DeidentifyBasic
			}
			got, err := selectFunc([]config.NamedDestination{archive, ai}, map[string]*route{}, ledgers)(ev, listed).Release(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, in := range got {
				ids = append(ids, in.ID)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("released %v, want %v", ids, tt.want)
			}
		})
	}
}

// An Orthanc whose clock ran ahead dated a study, and so its ledger
// records, far in the future; once its clock is mended, the study's next
// change is stamped earlier. Each destination's forward of it moves its
// record back, and buffer mode releases the study: kept, the records
// never equalled a later event, and the study stayed in Orthanc.
func TestReleaseAfterRecordsDatedAhead(t *testing.T) {
	x, y := orthancapi.Instance{ID: "x", SOPInstanceUID: "1.2.3"}, orthancapi.Instance{ID: "y", SOPInstanceUID: "1.2.4"}
	listed := []orthancapi.Instance{x, y}
	both := ledger.Outcome{Selected: listed}
	ledgers := testLedgers(t, "archive", "ai")
	ev := &events.StudyStable{Source: "main", OrthancStudyID: "0b1f7a3e-5c0d4e2a-9f8b7c6d-1a2b3c4d-5e6f7a8b", StudyInstanceUID: "1.2.9",
		LastUpdate: time.Now().UTC().Add(-time.Minute).Format("20060102T150405")}
	ahead := *ev
	ahead.LastUpdate = time.Now().UTC().Add(90 * 24 * time.Hour).Format("20060102T150405")
	for _, name := range []string{"archive", "ai"} {
		for _, e := range []*events.StudyStable{&ahead, ev} {
			if err := ledgers[name].Completed(t.Context(), e, both); err != nil {
				t.Fatal(err)
			}
		}
	}
	dests := []config.NamedDestination{{Name: "archive"}, {Name: "ai"}}
	got, err := selectFunc(dests, map[string]*route{}, ledgers)(ev, listed).Release(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("released %d instances, want both", len(got))
	}
}

func manyUIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("1.2.9.%d", i)
	}
	return out
}

// TestUnselectedCounter: forwarder groups that list DESTINATIONS in
// different orders pick the same destination to count the instances no
// destination selects, so a study is counted once, not twice or never.
func TestUnselectedCounter(t *testing.T) {
	named := func(names ...string) []config.NamedDestination {
		var all []config.NamedDestination
		for _, n := range names {
			all = append(all, config.NamedDestination{Name: n})
		}
		return all
	}
	for _, order := range [][]string{{"archive", "ai", "research"}, {"research", "archive", "ai"}, {"ai", "research", "archive"}} {
		if got := unselectedCounter(named(order...)); got != "ai" {
			t.Errorf("DESTINATIONS=%v: %q counts, want ai whatever the order", order, got)
		}
	}
}

// fakeStudy is the study fakeOrthanc serves: its event, its CT and its
// SR instance.
func fakeStudy() (ev *events.StudyStable, ct, sr orthancapi.Instance) {
	ev = &events.StudyStable{Source: "main", OrthancStudyID: "0b1f7a3e-5c0d4e2a-9f8b7c6d-1a2b3c4d-5e6f7a8b", StudyInstanceUID: "1.2.9", LastUpdate: "20261203T100000"}
	ct = orthancapi.Instance{ID: "c0c0c0c0-00000000-00000000-00000000-00000001", SOPInstanceUID: "1.2.9.1", SeriesID: "ct"}
	sr = orthancapi.Instance{ID: "c0c0c0c0-00000000-00000000-00000000-00000002", SOPInstanceUID: "1.2.9.2", SeriesID: "sr"}
	return ev, ct, sr
}

// bufferSelect is buffer mode's Select over all, their rules reading o
// as source "main"; the destinations named in stored have recorded ev's
// state of the study as storing its CT.
func bufferSelect(t *testing.T, o *fakeOrthanc, all []config.NamedDestination, ev *events.StudyStable, stored ...string) func(*events.StudyStable, []orthancapi.Instance) forward.Selection {
	t.Helper()
	srv := httptest.NewServer(o)
	t.Cleanup(srv.Close)
	sources, err := newSources(&config.Orthanc{URL: srv.URL, SourceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	_, ct, _ := fakeStudy()
	routes, ledgers := routesAndLedgers(t, all, sources)
	for _, d := range all {
		if !slices.Contains(stored, d.Name) {
			continue
		}
		if err := ledgers[d.Name].Completed(t.Context(), ev, ledger.Outcome{Selected: []orthancapi.Instance{ct}}); err != nil {
			t.Fatal(err)
		}
	}
	return selectFunc(all, routes, ledgers)
}

// routesAndLedgers builds each destination's route from sources, and
// their ledgers (testLedgers).
func routesAndLedgers(t *testing.T, all []config.NamedDestination, sources *Sources) (map[string]*route, map[string]*ledger.Ledger) {
	t.Helper()
	routes := map[string]*route{}
	names := make([]string, len(all))
	for i, d := range all {
		var err error
		if routes[d.Name], err = newRoute(d, sources); err != nil {
			t.Fatal(err)
		}
		names[i] = d.Name
	}
	return routes, testLedgers(t, names...)
}

// testLedgers returns the named destinations' ledgers on a JetStream
// server of their own.
func testLedgers(t *testing.T, names ...string) map[string]*ledger.Ledger {
	t.Helper()
	ns := testnats.Start(t)
	ledgers := map[string]*ledger.Ledger{}
	for _, name := range names {
		kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, name)
		if err != nil {
			t.Fatal(err)
		}
		ledgers[name] = ledger.New(ns.JS, kv)
	}
	return ledgers
}

// fakeOrthanc serves the facts of a study of a CT and an SR series, and
// its instances' metadata (their SOP class), and counts the reads of them.
type fakeOrthanc struct {
	sopClasses map[string]string // by instance ID
	mu         sync.Mutex
	reads      int // GET /studies/{id}
	metaReads  int // GET /instances/{id}/metadata
}

func (o *fakeOrthanc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case strings.HasSuffix(r.URL.Path, "/series"):
		json.NewEncoder(w).Encode([]map[string]any{
			{"ID": "ct", "MainDicomTags": map[string]string{"Modality": "CT"}},
			{"ID": "sr", "MainDicomTags": map[string]string{"Modality": "SR"}},
		})
	case strings.HasPrefix(r.URL.Path, "/instances/") && strings.HasSuffix(r.URL.Path, "/metadata"):
		o.metaReads++
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/instances/"), "/metadata")
		json.NewEncoder(w).Encode(map[string]string{"SopClassUid": o.sopClasses[id]})
	case strings.HasPrefix(r.URL.Path, "/studies/"):
		o.reads++
		json.NewEncoder(w).Encode(map[string]any{"MainDicomTags": map[string]string{"ModalitiesInStudy": `CT\SR`}})
	default:
		http.NotFound(w, r)
	}
}

// The forwarders that count kept_unselected apply every destination's
// rules once per study, reading the study from Orthanc once: the one
// selection tells both what no destination selects and what to release.
// They applied them twice, each destination's rules reading the study on
// their own (4 reads here); once without a reading shared by all rules,
// 2.
func TestBufferSelectionReadsStudyOnce(t *testing.T) {
	o := &fakeOrthanc{}
	all := []config.NamedDestination{{Name: "archive", InstanceMatch: `instance.modality == "CT"`}, {Name: "ai", InstanceMatch: `instance.modality == "CT"`}}
	ev, ct, sr := fakeStudy()
	// Both stored the CT. As the counter asks the selection: Unselected,
	// then Release.
	sel := bufferSelect(t, o, all, ev, "archive", "ai")(ev, []orthancapi.Instance{ct, sr})
	u, err := sel.Unselected(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	released, err := sel.Release(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u, []orthancapi.Instance{sr}) || !slices.Equal(released, []orthancapi.Instance{ct}) {
		t.Errorf("unselected %v, released %v; want the SR, the CT", u, released)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.reads != 1 {
		t.Errorf("the study was read %d times, want once", o.reads)
	}
}

// The forwarders of a destination that does not count kept_unselected
// apply each destination's rules only as far as the release needs: up to
// the first destination that selects some of the study and has not
// stored it. A forwarder that is not the last to store a study then
// seldom reads the instances' metadata a later destination's rule needs
// (thousands of requests for a big study), nor fails on it.
func TestBufferReleaseStopsAtFirstNotStored(t *testing.T) {
	const (
		ctClass = "1.2.840.10008.5.1.4.1.1.2"
		srClass = "1.2.840.10008.5.1.4.1.1.88.22"
	)
	ev, ct, sr := fakeStudy()
	tests := []struct {
		name          string
		archiveStored bool
		wantReleased  []orthancapi.Instance
		wantMetaReads int
	}{
		{name: "the first has not stored it: the second's rules not applied", archiveStored: false},
		{name: "the first has stored it: the second's rules read the metadata", archiveStored: true, wantReleased: []orthancapi.Instance{ct}, wantMetaReads: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &fakeOrthanc{sopClasses: map[string]string{ct.ID: ctClass, sr.ID: srClass}}
			// archive selects by the series' modality, ai by each
			// instance's SOP class, from its metadata.
			all := []config.NamedDestination{
				{Name: "archive", InstanceMatch: `instance.modality == "CT"`},
				{Name: "ai", InstanceMatch: `instance.sopClassUid == "` + ctClass + `"`},
			}
			stored := []string{"ai"}
			if tt.archiveStored {
				stored = append(stored, "archive")
			}
			released, err := bufferSelect(t, o, all, ev, stored...)(ev, []orthancapi.Instance{ct, sr}).Release(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(released, tt.wantReleased) {
				t.Errorf("released %v, want %v", released, tt.wantReleased)
			}
			o.mu.Lock()
			defer o.mu.Unlock()
			if o.metaReads != tt.wantMetaReads {
				t.Errorf("instance metadata read %d times, want %d", o.metaReads, tt.wantMetaReads)
			}
		})
	}
}

// Buffer mode's forwarders skip an event whose state of the study, or a
// newer one, the destination's ledger records as forwarded; a record of
// the same state as not selected (sent nothing) is not one. And they take
// a study gone from the source for one their rules did not select only
// from a record of that, made with no rules named or with their own.
func TestForwardedFunc(t *testing.T) {
	const state, rules = "20261203T100000", "rules-a"
	tests := []struct {
		name        string
		recorded    *ledger.Outcome // nil: not recorded
		asked       string          // the event's LastUpdate
		forwarded   bool
		notSelected bool
	}{
		{"not recorded", nil, state, false, false},
		{"the event's state forwarded", &ledger.Outcome{}, state, true, false},
		{"a state newer than the event's forwarded", &ledger.Outcome{}, "20261203T090000", true, false},
		{"only a state older than the event's forwarded", &ledger.Outcome{}, "20261203T110000", false, false},
		{"the event's state not selected", &ledger.Outcome{NotSelected: true}, state, false, true},
		{"not selected by these rules", &ledger.Outcome{NotSelected: true, Rules: rules}, state, false, true},
		{"not selected by other rules", &ledger.Outcome{NotSelected: true, Rules: "rules-b"}, state, false, false},
		{"an older state not selected", &ledger.Outcome{NotSelected: true}, "20261203T110000", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testLedgers(t, "archive")["archive"]
			ev, _, _ := fakeStudy()
			ev.LastUpdate = state
			if tt.recorded != nil {
				if err := l.Completed(t.Context(), ev, *tt.recorded); err != nil {
					t.Fatal(err)
				}
			}
			asked := *ev
			asked.LastUpdate = tt.asked
			got, err := forwardedFunc(l)(t.Context(), &asked)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.forwarded {
				t.Errorf("forwarded = %v, want %v", got, tt.forwarded)
			}
			if got, err = recordedNotSelectedFunc(l, rules)(t.Context(), &asked); err != nil || got != tt.notSelected {
				t.Errorf("recorded not selected = %v (err %v), want %v", got, err, tt.notSelected)
			}
		})
	}
}

// With one destination, buffer mode's forwarders read what its ledger
// records as kept for the event's state of the study: a later delivery of
// that state (an ack not confirmed, a backfill past the stored-instances
// record's retention) may get a kept instance answered stored without a
// warning, and deleted it. A record of another state says nothing of this
// one's files.
func TestKeptBeforeFunc(t *testing.T) {
	const state = "20261203T100000"
	ev, ct, sr := fakeStudy()
	many := make([]string, 1001) // past the ledger's list: KeptAll
	for i := range many {
		many[i] = fmt.Sprintf("1.2.9.%d", 100+i)
	}
	tests := []struct {
		name     string
		recorded *ledger.Outcome // nil: not recorded
		asked    string          // the event's LastUpdate
		want     []bool          // kept: ct, sr
	}{
		{"not recorded", nil, state, []bool{false, false}},
		{"the event's state, the CT kept", &ledger.Outcome{Selected: []orthancapi.Instance{ct, sr}, Kept: []string{ct.SOPInstanceUID}}, state, []bool{true, false}},
		{"the event's state, too many kept to list", &ledger.Outcome{Selected: []orthancapi.Instance{ct, sr}, Kept: many}, state, []bool{true, true}},
		{"an older state, the CT kept", &ledger.Outcome{Selected: []orthancapi.Instance{ct, sr}, Kept: []string{ct.SOPInstanceUID}}, "20261203T110000", []bool{false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testLedgers(t, "archive")["archive"]
			recorded := *ev
			recorded.LastUpdate = state
			if tt.recorded != nil {
				if err := l.Completed(t.Context(), &recorded, *tt.recorded); err != nil {
					t.Fatal(err)
				}
			}
			asked := *ev
			asked.LastUpdate = tt.asked
			kept, err := keptBeforeFunc(l)(t.Context(), &asked)
			if err != nil {
				t.Fatal(err)
			}
			if got := []bool{kept(ct.SOPInstanceUID), kept(sr.SOPInstanceUID)}; !slices.Equal(got, tt.want) {
				t.Errorf("kept (CT, SR) = %v, want %v", got, tt.want)
			}
		})
	}
}

// The digest of a destination's rules, kept in the not selected records
// other groups write for it, tells its study rule and its instance rule
// apart: a group whose instance rule for it differs must not pass for
// one that holds the same rules (its record would end, as done, the
// destination's event of a study its own rules select).
func TestRulesDigest(t *testing.T) {
	base := config.NamedDestination{Name: "ai", Match: "'MR' in study.modalities", InstanceMatch: "instance.modality == 'MR'"}
	for _, tt := range []struct {
		name string
		d    config.NamedDestination
		same bool
	}{
		{"the same rules", base, true},
		{"another name, the same rules", config.NamedDestination{Name: "ai2", Match: base.Match, InstanceMatch: base.InstanceMatch}, true},
		{"another study rule", config.NamedDestination{Name: "ai", Match: "'CT' in study.modalities", InstanceMatch: base.InstanceMatch}, false},
		{"another instance rule", config.NamedDestination{Name: "ai", Match: base.Match, InstanceMatch: "instance.modality == 'SR'"}, false},
		{"no instance rule", config.NamedDestination{Name: "ai", Match: base.Match}, false},
		{"the rules swapped", config.NamedDestination{Name: "ai", Match: base.InstanceMatch, InstanceMatch: base.Match}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := rulesDigest(tt.d) == rulesDigest(base); got != tt.same {
				t.Errorf("digest equal to the base's: %v, want %v", got, tt.same)
			}
		})
	}
}

// recordNotSelected writes a destination's record that its rules select
// none of a study's state, unless its ledger holds that state or a newer
// one: a record there, not selected by the rules of the group that wrote
// it, or forwarded, stays as it is.
func TestRecordNotSelected(t *testing.T) {
	const state, rules = "20261203T100000", "rules-a"
	tests := []struct {
		name      string
		recorded  *ledger.Outcome // nil: not recorded
		at        string          // the recorded LastUpdate, if recorded
		wantState string
		wantNot   bool
		wantRules string
	}{
		{"not recorded", nil, "", state, true, rules},
		{"an older state forwarded", &ledger.Outcome{}, "20261203T090000", state, true, rules},
		{"this state forwarded", &ledger.Outcome{}, state, state, false, ""},
		{"a newer state forwarded", &ledger.Outcome{}, "20261203T110000", "20261203T110000", false, ""},
		{"this state not selected by another group's rules", &ledger.Outcome{NotSelected: true, Rules: "rules-b"}, state, state, true, "rules-b"},
		{"a newer state not selected by another group's rules", &ledger.Outcome{NotSelected: true, Rules: "rules-b"}, "20261203T110000", "20261203T110000", true, "rules-b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testLedgers(t, "ai")["ai"]
			ev, _, _ := fakeStudy()
			ev.LastUpdate = state
			if tt.recorded != nil {
				e := *ev
				e.LastUpdate = tt.at
				if err := l.Completed(t.Context(), &e, *tt.recorded); err != nil {
					t.Fatal(err)
				}
			}
			if err := recordNotSelected(t.Context(), l, ev, rules); err != nil {
				t.Fatal(err)
			}
			rec, err := l.Lookup(t.Context(), ev.Source, ev.OrthancStudyID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.LastUpdate != tt.wantState || rec.NotSelected != tt.wantNot || rec.Rules != tt.wantRules {
				t.Errorf("record: state %s, not selected %v, rules %q; want %s, %v, %q",
					rec.LastUpdate, rec.NotSelected, rec.Rules, tt.wantState, tt.wantNot, tt.wantRules)
			}
		})
	}
}

// Before buffer mode deletes what a study's destinations stored, each
// destination whose rules select none of it gets that state recorded as
// not selected, under its rules' digest: its own event of the study, if
// still queued, then finds the study gone and done, not a source-missing
// dead letter.
func TestReleaseRecordsTheUnselectingDestinations(t *testing.T) {
	o := &fakeOrthanc{}
	srv := httptest.NewServer(o)
	t.Cleanup(srv.Close)
	sources, err := newSources(&config.Orthanc{URL: srv.URL, SourceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	ev, ct, sr := fakeStudy()
	all := []config.NamedDestination{
		{Name: "archive"},
		{Name: "ai", Match: `'MR' in study.modalities`}, // the study is CT and SR
	}
	routes, ledgers := routesAndLedgers(t, all, sources)
	listed := []orthancapi.Instance{ct, sr}
	if err := ledgers["archive"].Completed(t.Context(), ev, ledger.Outcome{Selected: listed}); err != nil {
		t.Fatal(err)
	}
	released, err := selectFunc(all, routes, ledgers)(ev, listed).Release(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(released, listed) {
		t.Fatalf("released %v, want the archive's whole study", released)
	}
	rec, err := ledgers["ai"].Lookup(t.Context(), ev.Source, ev.OrthancStudyID)
	if err != nil {
		t.Fatalf("ai's ledger: %v; want the study recorded not selected", err)
	}
	if rec.LastUpdate != ev.LastUpdate || !rec.NotSelected || rec.Rules != rulesDigest(all[1]) {
		t.Errorf("ai's record: state %s, not selected %v, rules %q; want %s, true, %q", rec.LastUpdate, rec.NotSelected, rec.Rules, ev.LastUpdate, rulesDigest(all[1]))
	}
	if done, err := recordedNotSelectedFunc(ledgers["ai"], rulesDigest(all[1]))(t.Context(), ev); err != nil || !done {
		t.Errorf("ai's event of the study: done %v (err %v), want done", done, err)
	}
}
