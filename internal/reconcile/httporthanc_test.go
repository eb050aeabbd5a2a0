package reconcile

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/orthancapi"
)

// httpOrthanc is a fake Orthanc behind an HTTP server, read through the
// real client: its clock (GET /tools/now), change log, studies and the
// study of each instance are set by the test.
type httpOrthanc struct {
	client *orthancapi.Client

	mu        sync.Mutex
	now       time.Time
	changes   []orthancapi.Change
	studies   map[string]orthancapi.Study
	instances map[string]string // instance ID -> study ID
	reads     map[string]int    // GET /studies/{id} answered, by ID
	maxSince  int64             // the furthest page of the change log asked for
	// failing instances' study lookups answer 503 so many more times.
	failing map[string]int

	// clockNotRouted: /tools/now answers a proxy's text 404, as an
	// ingress routing an allowlist without it does; systemGone: /system
	// answers the same (Orthanc's pod is gone).
	clockNotRouted, systemGone bool

	// lookupDelay is how long GET /instances/{id}/study takes.
	lookupDelay time.Duration
	// lookups in flight, and the most at once.
	inFlight, maxInFlight atomic.Int32
}

func newHTTPOrthanc(t *testing.T, now time.Time) *httpOrthanc {
	t.Helper()
	o := &httpOrthanc{now: now.Truncate(time.Second), studies: map[string]orthancapi.Study{},
		instances: map[string]string{}, reads: map[string]int{}, failing: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /system", func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		gone := o.systemGone
		o.mu.Unlock()
		if gone {
			http.NotFound(w, r)
			return
		}
		writeJSON(w, map[string]any{"Name": "fake", "Version": "1.12.5"})
	})
	mux.HandleFunc("GET /tools/now", func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.clockNotRouted {
			http.NotFound(w, r) // "404 page not found", text/plain
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(o.now.UTC().Format(orthancapi.TimeLayout)))
	})
	mux.HandleFunc("GET /changes", o.serveChanges)
	mux.HandleFunc("GET /studies/{id}", func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		defer o.mu.Unlock()
		id := r.PathValue("id")
		o.reads[id]++
		o.writeStudy(w, id)
	})
	mux.HandleFunc("GET /instances/{id}/study", func(w http.ResponseWriter, r *http.Request) {
		n := o.inFlight.Add(1)
		defer o.inFlight.Add(-1)
		for m := o.maxInFlight.Load(); n > m && !o.maxInFlight.CompareAndSwap(m, n); m = o.maxInFlight.Load() {
		}
		o.mu.Lock()
		delay := o.lookupDelay
		o.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		if id := r.PathValue("id"); o.failing[id] > 0 {
			o.failing[id]--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		o.writeStudy(w, o.instances[r.PathValue("id")])
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := orthancapi.New(srv.URL, orthancapi.WithRequestTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	o.client = c
	return o
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeStudy answers a study as Orthanc does; o.mu is held.
func (o *httpOrthanc) writeStudy(w http.ResponseWriter, id string) {
	st, ok := o.studies[id]
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"HttpStatus":404,"Message":"Unknown resource"}`))
		return
	}
	writeJSON(w, map[string]any{"ID": st.ID, "IsStable": st.IsStable, "LastUpdate": st.LastUpdate,
		"MainDicomTags": map[string]string{"StudyInstanceUID": st.StudyInstanceUID}, "Series": []string{}})
}

func (o *httpOrthanc) serveChanges(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := r.URL.Query()
	last := int64(len(o.changes))
	if q.Has("last") {
		writeJSON(w, orthancapi.Changes{Changes: []orthancapi.Change{}, Done: true, Last: last})
		return
	}
	since, _ := strconv.ParseInt(q.Get("since"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	o.maxSince = max(o.maxSince, since)
	writeJSON(w, changesPage(o.changes, last, since, limit, nil))
}

// addInstance logs a NewInstance change of study n's instance i.
func (o *httpOrthanc) addInstance(n, i int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	inst := orthancID(100000*n + i)
	o.instances[inst] = orthancID(n)
	seq := int64(len(o.changes) + 1)
	o.changes = append(o.changes, orthancapi.Change{Seq: seq, ChangeType: "NewInstance", ResourceType: "Instance",
		ID: inst, Date: o.now.UTC().Format(orthancapi.TimeLayout)})
}

// failLookups makes the study lookup of study n's instance i fail times
// times.
func (o *httpOrthanc) failLookups(n, i, times int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failing[orthancID(100000*n+i)] = times
}

// addStableStudy logs a StableStudy change of study n.
func (o *httpOrthanc) addStableStudy(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seq := int64(len(o.changes) + 1)
	o.changes = append(o.changes, orthancapi.Change{Seq: seq, ChangeType: "StableStudy", ResourceType: "Study",
		ID: orthancID(n), Date: o.now.UTC().Format(orthancapi.TimeLayout)})
}

// setStudy stores study n, stable or not, last updated at lastUpdate.
func (o *httpOrthanc) setStudy(n int, stable bool, lastUpdate time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.studies[orthancID(n)] = orthancapi.Study{ID: orthancID(n), StudyInstanceUID: "1.2.3." + strconv.Itoa(n),
		IsStable: stable, LastUpdate: lastUpdate.UTC().Format(orthancapi.TimeLayout)}
}

func (o *httpOrthanc) studyReads(n int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.reads[orthancID(n)]
}

func (o *httpOrthanc) advance(d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.now = o.now.Add(d)
}

// furthest is the furthest page of the change log asked for so far.
func (o *httpOrthanc) furthest() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.maxSince
}
