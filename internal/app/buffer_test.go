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

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
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
			ns := testnats.Start(t)
			ledgers := map[string]*ledger.Ledger{}
			for _, name := range []string{"archive", "ai"} {
				kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, name)
				if err != nil {
					t.Fatal(err)
				}
				ledgers[name] = ledger.New(ns.JS, kv)
			}
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
			sel, err := selectFunc([]config.NamedDestination{archive, ai}, map[string]*route{}, ledgers)(t.Context(), ev, listed)
			if err != nil {
				t.Fatal(err)
			}
			got, err := sel.Release(t.Context())
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

// fakeOrthanc serves the facts of a study of a CT and an SR series, and
// counts the reads of them.
type fakeOrthanc struct {
	mu    sync.Mutex
	reads int // GET /studies/{id}
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
// their own (4 reads here).
func TestBufferSelectionReadsStudyOnce(t *testing.T) {
	o := &fakeOrthanc{}
	srv := httptest.NewServer(o)
	t.Cleanup(srv.Close)
	sources, err := NewSources(&config.Orthanc{URL: srv.URL, SourceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	all := []config.NamedDestination{{Name: "archive", InstanceMatch: `instance.modality == "CT"`}, {Name: "ai", InstanceMatch: `instance.modality == "CT"`}}
	routes := map[string]*route{}
	ns := testnats.Start(t)
	ledgers := map[string]*ledger.Ledger{}
	ev := &events.StudyStable{Source: "main", OrthancStudyID: "0b1f7a3e-5c0d4e2a-9f8b7c6d-1a2b3c4d-5e6f7a8b", StudyInstanceUID: "1.2.9", LastUpdate: "20261203T100000"}
	ct, sr := orthancapi.Instance{ID: "c1", SOPInstanceUID: "1.2.9.1", SeriesID: "ct"}, orthancapi.Instance{ID: "s1", SOPInstanceUID: "1.2.9.2", SeriesID: "sr"}
	for _, d := range all {
		if routes[d.Name], err = newRoute(d, sources); err != nil {
			t.Fatal(err)
		}
		kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, d.Name)
		if err != nil {
			t.Fatal(err)
		}
		ledgers[d.Name] = ledger.New(ns.JS, kv)
		// Both stored the CT.
		if err := ledgers[d.Name].Completed(t.Context(), ev, ledger.Outcome{Selected: []orthancapi.Instance{ct}}); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := selectFunc(all, routes, ledgers)(t.Context(), ev, []orthancapi.Instance{ct, sr})
	if err != nil {
		t.Fatal(err)
	}
	released, err := sel.Release(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if u := sel.Unselected(); !slices.Equal(u, []orthancapi.Instance{sr}) || !slices.Equal(released, []orthancapi.Instance{ct}) {
		t.Errorf("unselected %v, released %v; want the SR, the CT", u, released)
	}
	if o.reads != 1 {
		t.Errorf("the study was read %d times, want once", o.reads)
	}
}
