package forward

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
)

// awsImageSetFake is a destination serving only AWS HealthImaging's
// documented routes (as TestVerifyAtAWSHealthImaging's): StoreDICOM
// answers every instance stored with an imageSetId in its RetrieveURL,
// and the study's one series lists listed (searchStatus, if set, answers
// the series search instead). Other routes answer 404 with JSON and are
// counted in undocumented.
type awsImageSetFake struct {
	listed       []string
	searchStatus int
	searches     atomic.Int32
	undocumented atomic.Int32
	// byContent: the instances posted are a uidSource's.
	byContent bool
}

func (a *awsImageSetFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/datastore/d1/studies" {
		var items []string
		read := partUIDs
		if a.byContent {
			read = contentUIDs
		}
		for _, uid := range read(r) {
			items = append(items, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081190":{"vr":"UR","Value":["https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/d1/studies/1.2.3/series/1.2.3.0/instances/%s?imageSetId=0123456789abcdef0123456789abcdef"]}}`, uid, uid))
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
		return
	}
	seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/datastore/d1/studies/"), "/")
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Has("imageSetId"):
		// A search with imageSetId would see non-primary sets too.
		a.undocumented.Add(1)
		http.Error(w, "searched with imageSetId", http.StatusBadRequest)
	case r.Method == http.MethodGet && len(seg) == 2 && seg[0] == "1.2.3" && seg[1] == "series":
		a.searches.Add(1)
		if a.searchStatus != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(a.searchStatus)
			fmt.Fprint(w, `{"message":"search refused"}`)
			return
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, `[{"0020000E":{"vr":"UI","Value":["1.2.3.0"]}}]`)
	case r.Method == http.MethodGet && len(seg) == 4 && seg[0] == "1.2.3" && seg[1] == "series" && seg[2] == "1.2.3.0" && seg[3] == "instances":
		a.searches.Add(1)
		stowsink.WriteInstancePage(w, r, a.listed, 200)
	default:
		a.undocumented.Add(1)
		stowsink.WriteNotFoundJSON(w)
	}
}

// awsClient is the aws profile's client of srv's data store: it searches
// series by series.
func awsClient(t *testing.T, srv *httptest.Server) *dicomweb.Client {
	t.Helper()
	c, err := dicomweb.New(srv.URL+"/datastore/d1", nil, dicomweb.WithSeriesSearch())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An imageSetId in a stored instance's RetrieveURL was read as "stored
// in a non-primary image set", and the study dead-lettered as a
// conflict. HealthImaging documents imageSetId as an optional parameter
// of every DICOMweb retrieve, for primary image sets too, and a search
// without it sees primary image sets only: an instance that search lists
// is stored where a viewer finds it. Only those it does not list are
// non-primary.
func TestNonPrimaryConfirmedBySearch(t *testing.T) {
	for _, tt := range []struct {
		name   string
		listed []string
		want   []string // dead-lettered as non-primary; none: acked
	}{
		{name: "listed without imageSetId: primary", listed: []string{"1.2.3.1", "1.2.3.2"}},
		{name: "not listed: non-primary", want: []string{"1.2.3.1", "1.2.3.2"}},
		{name: "one listed", listed: []string{"1.2.3.2"}, want: []string{"1.2.3.1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := &awsImageSetFake{listed: tt.listed}
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			f := newForwarder(t, newMemSource(2), srv.URL+"/datastore/d1", cons, func(o *Options) {
				o.Destination, o.DeadLetters, o.MaxDeliveries = awsClient(t, srv), dls, 1
				o.Conflicts = ConflictPolicy{Action: ConflictSkip} // non-primary is dead-lettered whatever it says
			})
			forwardOne(t, f, ns, cons, testEvent())
			letters := dls.all()
			if len(tt.want) == 0 {
				for _, l := range letters {
					t.Errorf("dead-lettered (class %s): %s", l.Class, l.Reason)
				}
			} else {
				var named []string
				if len(letters) == 1 {
					for _, in := range letters[0].Failures {
						named = append(named, in.SOPInstanceUID)
					}
				}
				if len(letters) != 1 || letters[0].Class != Conflict || !strings.Contains(letters[0].Reason, "non-primary image set") ||
					!slices.Equal(named, tt.want) {
					t.Errorf("dead letters %+v; want one of class conflict naming %v as non-primary", letters, tt.want)
				}
			}
			if got := testutil.ToFloat64(f.m.nonPrimary); got != float64(len(tt.want)) {
				t.Errorf("non-primary metric %v, want %d", got, len(tt.want))
			}
			// The series, then its instances; a listing missing some asks
			// again from where it stopped (dicomweb's bySeries).
			if got := fake.searches.Load(); got < 2 || len(tt.want) == 0 && got != 2 {
				t.Errorf("%d searches, want the study's series, then its instances", got)
			}
			if got := fake.undocumented.Load(); got != 0 {
				t.Errorf("%d requests HealthImaging does not serve, or with imageSetId", got)
			}
		})
	}
}

// HealthImaging's search lists at most 10,000 records: in a series of
// more, instances stored with an imageSetId that it does not list may
// well be past the cap, in the primary set. Not confirmed non-primary,
// they are taken as stored, as the STOW-RS answer said. Before, the
// study was dead-lettered as a conflict naming them, at every delivery.
func TestNonPrimaryCappedSearch(t *testing.T) {
	const n, searchCap = 10050, 10000
	fake := &awsImageSetFake{byContent: true}
	for i := 1; i <= searchCap; i++ {
		fake.listed = append(fake.listed, fmt.Sprintf("1.2.3.%d", i))
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, uidSource(n), srv.URL+"/datastore/d1", cons, func(o *Options) {
		o.Destination, o.DeadLetters, o.MaxDeliveries = awsClient(t, srv), dls, 1
		o.Conflicts = ConflictPolicy{Action: ConflictSkip}
	})
	forwardOne(t, f, ns, cons, testEvent())
	for _, l := range dls.all() {
		t.Errorf("dead-lettered (class %s): %.300s", l.Class, l.Reason)
	}
	if got := testutil.ToFloat64(f.m.nonPrimary); got != 0 {
		t.Errorf("non-primary metric %v, want 0", got)
	}
	if got := fake.undocumented.Load(); got != 0 {
		t.Errorf("%d requests HealthImaging does not serve, or with imageSetId", got)
	}
}

// The search that tells a primary image set failing, the attempt fails
// as a failed verification does, of the class its answer gives (503:
// retried; 403, the identity refused SearchDICOMSeries: permanent),
// naming the instances: neither acked nor dead-lettered as a conflict.
func TestNonPrimarySearchFails(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   Class
	}{
		{http.StatusServiceUnavailable, Transient},
		{http.StatusForbidden, Permanent},
	} {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			fake := &awsImageSetFake{searchStatus: tt.status}
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close)
			f := newForwarder(t, newMemSource(2), srv.URL+"/datastore/d1", nil, func(o *Options) {
				o.Destination = awsClient(t, srv)
			})
			_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			var fe *Error
			if !errors.As(err, &fe) || fe.Class != tt.want || len(fe.Instances) != 2 || !strings.Contains(err.Error(), "imageSetId") {
				t.Fatalf("err %v; want class %s naming the 2 instances stored with an imageSetId", err, tt.want)
			}
			if got := testutil.ToFloat64(f.m.nonPrimary); got != 0 {
				t.Errorf("non-primary metric %v, want 0: none confirmed", got)
			}
		})
	}
}

// TestSettleUnsureCappedSearch: a 409 whose code is a conflict only for
// an instance the destination holds is settled by its listing. An
// instance the listing lacks is failed, a listing capped by
// HealthImaging's 10,000 records too: the cap is the study's, not a
// series', and held, under skip an instance of a series listed in full
// was counted stored, the study acked, though HealthImaging failed it.
func TestSettleUnsureCappedSearch(t *testing.T) {
	uids := func(n int) []string {
		var out []string
		for i := 1; i <= n; i++ {
			out = append(out, fmt.Sprintf("1.2.3.%d", i))
		}
		return out
	}
	for _, tt := range []struct {
		name       string
		listed     []string
		wantFailed []string
	}{
		{name: "capped", listed: uids(10000), wantFailed: []string{"1.2.3.10030"}},
		{name: "not capped", listed: uids(3), wantFailed: []string{"1.2.3.10030"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := &awsImageSetFake{listed: tt.listed}
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close)
			f := newForwarder(t, &memSource{}, srv.URL+"/datastore/d1", nil, func(o *Options) {
				o.Verifier = awsClient(t, srv)
			})
			unsure := []conflicted{
				{part: dicomweb.Part{SOPInstanceUID: "1.2.3.2"}, reason: dicomweb.FailureProcessing},
				{part: dicomweb.Part{SOPInstanceUID: "1.2.3.10030"}, reason: dicomweb.FailureProcessing},
			}
			held, failed := f.settleUnsure(t.Context(), testEvent(), unsure, f.log)
			var got []string
			for _, c := range failed {
				got = append(got, c.part.SOPInstanceUID)
			}
			if !slices.Equal(got, tt.wantFailed) || len(held)+len(failed) != len(unsure) {
				t.Errorf("held %v, failed %v; want failed %v, the others held", held, failed, tt.wantFailed)
			}
			if got := fake.undocumented.Load(); got != 0 {
				t.Errorf("%d requests HealthImaging does not serve", got)
			}
		})
	}
}

// In buffer mode a correction sent again under the UIDs of instances an
// earlier attempt stored from other files is not confirmed by a search:
// the search lists the earlier copy, in the primary image set, whatever
// set the correction went to. Acked on the search's word, the study was
// recorded forwarded and buffer mode deleted the correction from Orthanc;
// it stays a non-primary conflict, as before the search. An instance not
// stored before is confirmed as ever.
func TestNonPrimaryCorrectionNotConfirmedBySearch(t *testing.T) {
	fake := &awsImageSetFake{listed: []string{"1.2.3.1", "1.2.3.2"}}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	rig := newBufferRig(t)
	src := newMemSource(2)
	for i := range src.instances {
		src.instances[i].FileUUID = fmt.Sprintf("corrected-file-%d", i)
	}
	dls := &memDeadLetters{}
	f := newForwarder(t, src, srv.URL+"/datastore/d1", rig.cons, func(o *Options) {
		o.Destination, o.DeadLetters, o.MaxDeliveries = awsClient(t, srv), dls, 1
		o.Conflicts = ConflictPolicy{Action: ConflictSkip}
		o.Completed = recordedOK
		o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
		o.Failures = &memFailureLog{}
	})
	// An earlier attempt stored 1.2.3.1 from another file.
	if err := f.rememberStored(t.Context(), rig.ev, []string{uidID("1.2.3.1")}); err != nil {
		t.Fatal(err)
	}
	f.handle(t.Context(), rig.deliver(t), "")
	letters := dls.all()
	var named []string
	if len(letters) == 1 {
		for _, in := range letters[0].Failures {
			named = append(named, in.SOPInstanceUID)
		}
	}
	if len(letters) != 1 || letters[0].Class != Conflict || !slices.Equal(named, []string{"1.2.3.1"}) {
		t.Errorf("dead letters %+v; want one conflict naming the correction 1.2.3.1 as non-primary", letters)
	}
	if len(rig.cleaner.deleted) != 0 {
		t.Errorf("deleted %v from the source, want nothing deleted", rig.cleaner.deleted)
	}
}
