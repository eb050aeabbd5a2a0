package forward

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// conflictFilter stands in front of a real destination Orthanc and gives
// it a cloud's conflict answers, which Orthanc itself cannot produce (it
// keeps or overwrites a duplicate, per OverwriteInstances, and answers
// success either way): a STOW-RS POST of an instance the Orthanc already
// holds is answered with the shape of Google (409, FailureReason 272) or
// Azure (409, 45070). A DICOMweb DELETE of an instance, which Google and
// dcm4chee offer, is carried out with Orthanc's REST API. Everything else
// goes to Orthanc unchanged.
type conflictFilter struct {
	o      *testharness.Orthanc
	shape  string // "google" or "azure"
	proxy  *httputil.ReverseProxy
	hc     *http.Client // for Orthanc's REST API
	posts  atomic.Int32
	delete atomic.Int32
	// failPosts POSTs from now are refused whole, with failReason for
	// each instance in a 409, as dcm4chee answers a request none of whose
	// instances it stored (a storage or database failure).
	failPosts  atomic.Int32
	failReason int
}

func newConflictFilter(t *testing.T, o *testharness.Orthanc, shape string) (*conflictFilter, string) {
	t.Helper()
	target, err := url.Parse(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Idle connections close before Orthanc closes them (1 s): a POST or
	// DELETE sent on one as it does fails, not sent again by net/http.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.IdleConnTimeout = 300 * time.Millisecond
	t.Cleanup(transport.CloseIdleConnections)
	f := &conflictFilter{o: o, shape: shape, proxy: httputil.NewSingleHostReverseProxy(target), hc: &http.Client{Transport: transport}}
	f.proxy.Transport = transport
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL + "/dicom-web"
}

func (f *conflictFilter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/dicom-web/studies":
		f.posts.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if f.failPosts.Add(-1) >= 0 {
			f.answerFailed(w, sopUIDsIn(body))
			return
		}
		for _, sop := range sopUIDsIn(body) {
			if id, ok := f.lookup(sop); ok && id != "" {
				f.answerConflict(w, sop)
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/dicom-web/studies/"):
		f.delete.Add(1)
		parts := strings.Split(r.URL.Path, "/")
		id, ok := f.lookup(parts[len(parts)-1])
		if !ok {
			http.Error(w, "lookup failed", http.StatusBadGateway)
			return
		}
		if id == "" {
			http.NotFound(w, r)
			return
		}
		if status := f.rest(http.MethodDelete, "/instances/"+id, nil, nil); status/100 != 2 {
			http.Error(w, "delete failed", status)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	f.proxy.ServeHTTP(w, r)
}

// answerConflict writes a 409 whose FailedSOPSequence lists sop with the
// shape's Failure Reason.
func (f *conflictFilter) answerConflict(w http.ResponseWriter, sop string) {
	reason := dicomweb.FailureProcessing // Google: 272, "same UID, other content"
	if f.shape == "azure" {
		reason = dicomweb.FailureAzureAlreadyExists
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	w.WriteHeader(http.StatusConflict)
	fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}]}}`, sop, reason)
}

// answerFailed writes a 409 whose FailedSOPSequence lists every sop with
// failReason.
func (f *conflictFilter) answerFailed(w http.ResponseWriter, sops []string) {
	items := make([]string, len(sops))
	for i, sop := range sops {
		items[i] = fmt.Sprintf(`{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}`, sop, f.failReason)
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	w.WriteHeader(http.StatusConflict)
	fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
}

// lookup returns the Orthanc ID of the instance with SOP Instance UID sop,
// "" if Orthanc does not hold it.
func (f *conflictFilter) lookup(sop string) (string, bool) {
	var found []struct{ ID, Type string }
	if status := f.rest(http.MethodPost, "/tools/lookup", strings.NewReader(sop), &found); status != http.StatusOK {
		return "", false
	}
	for _, x := range found {
		if x.Type == "Instance" {
			return x.ID, true
		}
	}
	return "", true
}

func (f *conflictFilter) rest(method, path string, body io.Reader, out any) int {
	req, err := http.NewRequest(method, f.o.URL+path, body)
	if err != nil {
		return 0
	}
	if f.o.Username != "" {
		req.SetBasicAuth(f.o.Username, f.o.Password)
	}
	resp, err := f.hc.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if out != nil {
		data, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(data, out); err != nil {
			return 0
		}
	}
	return resp.StatusCode
}

// sopUIDsIn finds the SOP Instance UIDs a STOW body carries: the test's
// instances are dicomgen files, whose (0008,0018) is an explicit VR UI.
func sopUIDsIn(body []byte) []string {
	var out []string
	tag := []byte{0x08, 0x00, 0x18, 0x00, 'U', 'I'}
	for i := bytes.Index(body, tag); i >= 0 && i+8 <= len(body); {
		n := int(body[i+6]) | int(body[i+7])<<8
		if i+8+n <= len(body) {
			out = append(out, strings.TrimRight(string(body[i+8:i+8+n]), "\x00"))
		}
		next := bytes.Index(body[i+8:], tag)
		if next < 0 {
			break
		}
		i += 8 + next
	}
	return out
}

// correctedInstance returns a study of one instance in two versions with
// the same UIDs: as first sent, and corrected (another patient name).
func correctedInstance(t *testing.T) (study, series, sop string, before, after []byte) {
	t.Helper()
	study, series, sop = dicomgen.NewUID(), dicomgen.NewUID(), dicomgen.NewUID()
	write := func(name string) []byte {
		var b bytes.Buffer
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: study, SeriesInstanceUID: series,
			SOPInstanceUID: sop, PatientID: "CONFLICT", PatientName: name, Rows: 8, Columns: 8}); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	return study, series, sop, write("Before^Correction"), write("After^Correction")
}

// A corrected instance (same SOP Instance UID, other content) resent to a
// destination that already holds the first version: under each
// STOW_ON_CONFLICT, and for Google's and Azure's conflict answers. None is
// retried as transient: one STOW request answers it (two with replace).
func TestConflictWithRealOrthanc(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc; skipped in -short mode")
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "conflict-dest", DicomWeb: true})
	rules := []dicomweb.ConflictRule{
		{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF}, {Code: 0x0111, Mask: 0xFFFF},
		{Code: dicomweb.FailureProcessing, Mask: 0xFFFF, Only409: true}, {Code: 0xA700, Mask: 0xFF00, Only409: true},
	}
	tests := []struct {
		shape, action string
		wantAfter     bool // the destination ends with the corrected version
		wantDead      bool
		wantPosts     int32
		wantDeletes   int32
	}{
		{shape: "google", action: ConflictSkip, wantPosts: 1},
		{shape: "google", action: ConflictDeadLetter, wantDead: true, wantPosts: 1},
		{shape: "google", action: ConflictReplace, wantAfter: true, wantPosts: 2, wantDeletes: 1},
		{shape: "azure", action: ConflictSkip, wantPosts: 1},
		{shape: "azure", action: ConflictDeadLetter, wantDead: true, wantPosts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.shape+"/"+tt.action, func(t *testing.T) {
			filter, dest := newConflictFilter(t, o, tt.shape)
			study, series, sop, before, after := correctedInstance(t)
			path := filepath.Join(t.TempDir(), "before.dcm")
			if err := os.WriteFile(path, before, 0o600); err != nil {
				t.Fatal(err)
			}
			o.Upload(t, path) // the first forward, before the correction
			src := &memSource{data: map[string][]byte{"corrected": after},
				instances: []orthancapi.Instance{{ID: "corrected", SOPInstanceUID: sop, SeriesInstanceUID: series, FileSize: int64(len(after))}}}

			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			cleaner := &memCleaner{lastUpdate: "20261202T101500"} // buffer mode
			method := ""
			if tt.action == ConflictReplace {
				method = ReplaceDelete
			}
			f := newForwarder(t, src, dest, cons, func(o *Options) {
				o.DeadLetters = dls
				o.MaxDeliveries = 5
				o.InstanceRetries = 3
				o.InstanceRetryDelay = 50 * time.Millisecond
				o.Conflicts = ConflictPolicy{Action: tt.action, Rules: rules, Method: method, Setting: "DESTINATION_ARCHIVE_STOW_ON_CONFLICT"}
				o.Completed = recordedOK
				o.CleanerFor = func(string) (SourceCleaner, error) { return cleaner, nil }
			})
			forwardOne(t, f, ns, cons, &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a",
				OrthancStudyID: "0b1f7a3e-5c0d4e2a-9f8b7c6d-1a2b3c4d-5e6f7a8b", StudyInstanceUID: study, LastUpdate: "20261202T101500"})

			letters := dls.all()
			switch {
			case tt.wantDead && len(letters) != 1:
				t.Fatalf("%d dead letters, want 1", len(letters))
			case tt.wantDead:
				l := letters[0]
				if l.Class != Conflict || l.Attempts != 1 || !strings.Contains(l.Reason, sop) || !strings.Contains(l.Reason, "DESTINATION_ARCHIVE_STOW_ON_CONFLICT=deadletter") ||
					len(l.Failures) != 1 || l.Failures[0].SOPInstanceUID != sop {
					t.Errorf("dead letter: class %q, attempts %d, reason %q, instances %+v", l.Class, l.Attempts, l.Reason, l.Failures)
				}
				if strings.Contains(l.Reason, "Correction") {
					t.Errorf("reason %q holds patient data", l.Reason)
				}
			case len(letters) != 0:
				t.Fatalf("dead letters %+v, want none", letters)
			}
			if got := filter.posts.Load(); got != tt.wantPosts {
				t.Errorf("%d STOW requests, want %d (a conflict is never retried as transient)", got, tt.wantPosts)
			}
			if got := filter.delete.Load(); got != tt.wantDeletes {
				t.Errorf("%d DELETE requests, want %d", got, tt.wantDeletes)
			}
			want := before
			if tt.wantAfter {
				want = after
			}
			wantSum, err := testharness.DatasetMD5(bytes.NewReader(want))
			if err != nil {
				t.Fatal(err)
			}
			if got := o.InstanceDatasetMD5s(t)[sop]; got != wantSum {
				t.Errorf("destination holds data set MD5 %s, want %s (the corrected version: %v)", got, wantSum, tt.wantAfter)
			}
			// Buffer mode deletes the corrected instance from the source
			// only once the destination holds it.
			if deleted := len(cleaner.deleted) == 1; deleted != tt.wantAfter {
				t.Errorf("buffer mode deleted %v from the source; want it deleted: %v", cleaner.deleted, tt.wantAfter)
			}
			metric := map[string]string{ConflictSkip: "skipped", ConflictDeadLetter: "dead_lettered", ConflictReplace: "replaced"}[tt.action]
			if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues(metric)); got != 1 {
				t.Errorf("stowline_forwarder_conflicts_total{action=%q} = %v, want 1", metric, got)
			}
		})
	}
}

// A 409 whose instances all failed with 0xA700 (out of resources) or
// 0x0110 (processing failure), dcm4chee's answer when its storage or
// its database fails, matches the @409 conflict rules every profile
// has (Google's 409 with 272 for an instance it holds with other
// content). Under skip it was counted as stored and the study acked,
// though the destination held nothing; under deadletter the study was
// dead-lettered as holding other content. Now it is a conflict only if
// the destination lists the instance: here it does not, so the
// instance is sent again and stored.
func TestFailureIn409IsNoConflictUnlessHeld(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc; skipped in -short mode")
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "failing-dest", DicomWeb: true})
	rules := []dicomweb.ConflictRule{
		{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF}, {Code: 0x0111, Mask: 0xFFFF},
		{Code: dicomweb.FailureProcessing, Mask: 0xFFFF, Only409: true}, {Code: 0xA700, Mask: 0xFF00, Only409: true},
	}
	for _, tt := range []struct {
		reason int
		action string
	}{{0xA700, ConflictSkip}, {dicomweb.FailureProcessing, ConflictSkip}, {0xA700, ConflictDeadLetter}} {
		reason := tt.reason
		t.Run(fmt.Sprintf("0x%04X/%s", reason, tt.action), func(t *testing.T) {
			filter, dest := newConflictFilter(t, o, "google")
			filter.failReason = reason
			filter.failPosts.Store(1)
			study, series, sop, data, _ := correctedInstance(t)
			src := &memSource{data: map[string][]byte{"inst": data},
				instances: []orthancapi.Instance{{ID: "inst", SOPInstanceUID: sop, SeriesInstanceUID: series, FileSize: int64(len(data))}}}
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			f := newForwarder(t, src, dest, cons, func(o *Options) {
				o.DeadLetters = dls
				o.MaxDeliveries = 5
				o.InstanceRetries = 3
				o.InstanceRetryDelay = 50 * time.Millisecond
				o.Conflicts = ConflictPolicy{Action: tt.action, Rules: rules, Setting: "STOW_ON_CONFLICT"}
			})
			ev := testEvent()
			ev.StudyInstanceUID = study
			forwardOne(t, f, ns, cons, ev)
			if letters := dls.all(); len(letters) != 0 {
				t.Fatalf("dead-lettered: %s", letters[0].Reason)
			}
			if _, ok := o.InstanceDatasetMD5s(t)[sop]; !ok {
				t.Errorf("the study was acked but the destination does not hold %s", sop)
			}
			if got := filter.posts.Load(); got != 2 {
				t.Errorf("%d STOW requests, want 2 (the refused one sent again)", got)
			}
			for _, action := range []string{"skipped", "dead_lettered"} {
				if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues(action)); got != 0 {
					t.Errorf("conflicts{action=%q} = %v, want 0", action, got)
				}
			}
		})
	}
}
