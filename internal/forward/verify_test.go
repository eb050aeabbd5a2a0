package forward

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
)

// fakeVerifier lists every instance sent but those in lost, which it
// lists only from call listFrom on (0: never).
type fakeVerifier struct {
	mu       sync.Mutex
	all      []string
	lost     []string
	listFrom int
	err      error
	calls    int
}

func (v *fakeVerifier) StudyInstanceUIDs(_ context.Context, study string, _ dicomweb.Expected) ([]string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.calls++
	if v.err != nil {
		return nil, v.err
	}
	var out []string
	for _, u := range v.all {
		if !slices.Contains(v.lost, u) || (v.listFrom > 0 && v.calls >= v.listFrom) {
			out = append(out, u)
		}
	}
	return out, nil
}

// verifierSpec is what a fakeVerifier of a test case does.
type verifierSpec struct {
	lost     []string
	listFrom int
	err      error
}

func TestTransferVerifies(t *testing.T) {
	tests := []struct {
		name      string
		v         verifierSpec
		wantErr   string
		wantClass Class
		wantCalls int
		// wantResult counts stowline_forwarder_verifications_total;
		// wantMissing stowline_forwarder_verify_missing_instances_total.
		wantResult  map[string]float64
		wantMissing float64
	}{
		{name: "all listed", wantCalls: 1, wantResult: map[string]float64{verifyVerified: 1}},
		{name: "lost then listed after a re-send", v: verifierSpec{lost: []string{"1.2.3.2"}, listFrom: 2}, wantCalls: 2,
			wantResult: map[string]float64{verifyMissing: 1, verifyVerified: 1}, wantMissing: 1},
		{name: "never listed", v: verifierSpec{lost: []string{"1.2.3.2", "1.2.3.7"}}, wantCalls: 3,
			wantErr: "destination does not list 2 of 10 instances it confirmed, after 3 rounds (STOW_VERIFY=qido; first: 1.2.3.2, 1.2.3.7)", wantClass: Transient,
			wantResult: map[string]float64{verifyMissing: 3}, wantMissing: 6},
		{name: "query refused", v: verifierSpec{err: &dicomweb.HTTPError{StatusCode: http.StatusForbidden}}, wantCalls: 1,
			wantErr: "verify study 1.2.3 at the destination (QIDO-RS)", wantClass: Permanent,
			wantResult: map[string]float64{verifyError: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newMemSource(10)
			var k sink
			srv := httptest.NewServer(k.handler(nil))
			t.Cleanup(srv.Close)
			v := &fakeVerifier{lost: tt.v.lost, listFrom: tt.v.listFrom, err: tt.v.err}
			for _, in := range src.instances {
				v.all = append(v.all, in.SOPInstanceUID)
			}
			reg := prometheus.NewRegistry()
			f := newForwarder(t, src, srv.URL, nil, func(o *Options) {
				o.Verifier, o.InstanceRetries, o.InstanceRetryDelay, o.Registerer = v, 2, time.Millisecond, reg
			})
			rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("transfer: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("transfer: %v, want an error with %q", err, tt.wantErr)
			case tt.wantErr != "" && Classify(err) != tt.wantClass:
				t.Errorf("class %s, want %s", Classify(err), tt.wantClass)
			}
			if v.calls != tt.wantCalls {
				t.Errorf("%d QIDO-RS queries, want %d", v.calls, tt.wantCalls)
			}
			if err == nil && rep.Instances != 10 {
				t.Errorf("report counts %d instances confirmed, want 10", rep.Instances)
			}
			if (err == nil) != (len(rep.forwarded) == 10) {
				t.Errorf("%d instances for buffer mode to delete after err %v", len(rep.forwarded), err)
			}
			for _, r := range []string{verifyVerified, verifyMissing, verifyError} {
				if got := testutil.ToFloat64(f.m.verifications.WithLabelValues(r)); got != tt.wantResult[r] {
					t.Errorf("verifications{result=%q} = %v, want %v", r, got, tt.wantResult[r])
				}
			}
			if got := testutil.ToFloat64(f.m.verifyMissing); got != tt.wantMissing {
				t.Errorf("verify_missing_instances_total = %v, want %v", got, tt.wantMissing)
			}
		})
	}
}

// TestVerifyResendsThePartAsConverted: an instance in a listed syntax that
// the destination refuses (0xC122) is converted and stored; QIDO-RS lists
// it only from the second query. The re-send is the converted part (the
// original was refused again, then for good as "refused converted"), and
// the destination's "already stored" for it is its own copy.
func TestVerifyResendsThePartAsConverted(t *testing.T) {
	src := newSyntaxSource(tsExplicit, tsBig)
	f, k, _ := syntaxForwarder(t, src, 4, 1, tsExplicit, tsBig)
	v := &fakeVerifier{all: []string{"1.2.3.1", "1.2.3.2"}, lost: []string{"1.2.3.2"}, listFrom: 2}
	f.opts.Verifier, f.opts.InstanceRetries, f.opts.InstanceRetryDelay = v, 2, time.Millisecond
	if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err != nil {
		t.Fatalf("transfer: %v (class %s)", err, Classify(err))
	}
	if v.calls != 2 {
		t.Errorf("%d QIDO-RS queries, want 2", v.calls)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if got := k.stored["1.2.3.2"]; got != tsExplicit {
		t.Errorf("1.2.3.2 stored in %q, want %s", got, tsExplicit)
	}
}

// TestVerifyPagesUntilEverySentIsListed: a destination capping QIDO-RS
// pages at 100 holds 150 instances of the
// study, of which the 60 sent (a routing rule picked one series) are on
// its second page. The first page lists more than were sent and is short
// of the 200 asked, and is still not the last: the study is verified and
// acked, not re-sent round after round and dead-lettered.
func TestVerifyPagesUntilEverySentIsListed(t *testing.T) {
	const sent, others, capped = 60, 90, 100
	var k sink
	stow := k.handler(nil)
	var queries atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			stow.ServeHTTP(w, r)
			return
		}
		queries.Add(1)
		var held []string
		for i := range others {
			held = append(held, fmt.Sprintf("1.2.4.%d", i))
		}
		for i := range sent {
			held = append(held, fmt.Sprintf("1.2.3.%d", i+1))
		}
		stowsink.WriteInstancePage(w, r, held, capped)
	}))
	t.Cleanup(srv.Close)
	qido, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	reg := prometheus.NewRegistry()
	f := newForwarder(t, newMemSource(sent), srv.URL, cons, func(o *Options) {
		o.Verifier, o.Registerer, o.DeadLetters = qido, reg, dls
		o.InstanceRetries, o.InstanceRetryDelay, o.MaxDeliveries = 1, time.Millisecond, 1
	})
	forwardOne(t, f, ns, cons, testEvent())
	checkVerified(t, f, dls)
	if got := queries.Load(); got != 2 {
		t.Errorf("%d QIDO-RS pages asked, want 2", got)
	}
}

// TestVerifyAtAWSHealthImaging: a destination that, like AWS
// HealthImaging, searches instances only within a series and answers any
// other search 404 with JSON. With the aws profile's client
// (WithSeriesSearch) the stored study is verified and acked at its first
// delivery. Asked GET studies/{study}/instances, the 404 listed nothing:
// every instance was re-sent round after round and the study failed.
func TestVerifyAtAWSHealthImaging(t *testing.T) {
	const n = 6
	var k sink
	stow := k.handler(nil)
	var undocumented, queries, posted atomic.Int32
	series := map[string][]string{"1.2.3.100": nil, "1.2.3.200": nil}
	for i := 1; i <= n; i++ {
		s := "1.2.3.100"
		if i%2 == 0 {
			s = "1.2.3.200"
		}
		series[s] = append(series[s], fmt.Sprintf("1.2.3.%d", i))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/datastore/d1/studies" {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			posted.Add(int32(len(partUIDs(r.Clone(r.Context())))))
			r.Body = io.NopCloser(bytes.NewReader(body))
			stow.ServeHTTP(w, r)
			return
		}
		seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/datastore/d1/studies/"), "/")
		switch {
		case r.Method == http.MethodGet && len(seg) == 2 && seg[0] == "1.2.3" && seg[1] == "series":
			queries.Add(1)
			w.Header().Set("Content-Type", "application/dicom+json")
			fmt.Fprint(w, `[{"0020000E":{"vr":"UI","Value":["1.2.3.100"]}},{"0020000E":{"vr":"UI","Value":["1.2.3.200"]}}]`)
		case r.Method == http.MethodGet && len(seg) == 4 && seg[0] == "1.2.3" && seg[1] == "series" && seg[3] == "instances":
			queries.Add(1)
			stowsink.WriteInstancePage(w, r, series[seg[2]], 200)
		default:
			undocumented.Add(1)
			stowsink.WriteNotFoundJSON(w)
		}
	}))
	t.Cleanup(srv.Close)
	qido := awsClient(t, srv)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	reg := prometheus.NewRegistry()
	f := newForwarder(t, newMemSource(n), srv.URL+"/datastore/d1", cons, func(o *Options) {
		o.Verifier, o.Registerer, o.DeadLetters = qido, reg, dls
		o.InstanceRetries, o.InstanceRetryDelay, o.MaxDeliveries = 3, time.Millisecond, 1
	})
	forwardOne(t, f, ns, cons, testEvent())
	checkVerified(t, f, dls)
	if got := posted.Load(); got != n {
		t.Errorf("%d instances sent, want %d (no re-send)", got, n)
	}
	if got := undocumented.Load(); got != 0 {
		t.Errorf("%d requests to routes HealthImaging does not offer", got)
	}
	if got := queries.Load(); got != 3 {
		t.Errorf("%d QIDO-RS requests, want 3 (the series, then each series' instances)", got)
	}
}

// TestVerifyAtAWSHealthImagingCapped: HealthImaging's searches list at
// most 10,000 records, so a series of more cannot be listed in full. The
// study is acked at its first delivery, each instance sent once, the
// instances past the cap taken as stored on the STOW-RS answer
// (verifications{result="capped"}). Before, they were verified as
// missing: sent again round after round, and the study failed.
func TestVerifyAtAWSHealthImagingCapped(t *testing.T) {
	const n, searchCap = 10050, 10000
	var undocumented, posted atomic.Int32
	var held []string
	for i := 1; i <= n; i++ {
		held = append(held, fmt.Sprintf("1.2.3.%d", i))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/datastore/d1/studies" {
			var items []string
			for _, uid := range contentUIDs(r) {
				items = append(items, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]}}`, uid))
			}
			posted.Add(int32(len(items)))
			w.Header().Set("Content-Type", "application/dicom+json")
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
			return
		}
		seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/datastore/d1/studies/"), "/")
		switch {
		case r.Method == http.MethodGet && len(seg) == 2 && seg[0] == "1.2.3" && seg[1] == "series":
			w.Header().Set("Content-Type", "application/dicom+json")
			fmt.Fprint(w, `[{"0020000E":{"vr":"UI","Value":["1.2.3.0"]}}]`)
		case r.Method == http.MethodGet && len(seg) == 4 && seg[0] == "1.2.3" && seg[1] == "series" && seg[2] == "1.2.3.0" && seg[3] == "instances":
			// Nothing past the cap is listed.
			stowsink.WriteInstancePage(w, r, held[:searchCap], 200)
		default:
			undocumented.Add(1)
			stowsink.WriteNotFoundJSON(w)
		}
	}))
	t.Cleanup(srv.Close)
	qido := awsClient(t, srv)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, uidSource(n), srv.URL+"/datastore/d1", cons, func(o *Options) {
		o.Verifier, o.DeadLetters = qido, dls
		o.InstanceRetries, o.InstanceRetryDelay, o.MaxDeliveries = 3, time.Millisecond, 1
	})
	forwardOne(t, f, ns, cons, testEvent())
	for _, l := range dls.all() {
		t.Errorf("dead-lettered (class %s): %s", l.Class, l.Reason)
	}
	for result, want := range map[string]float64{verifyCapped: 1, verifyMissing: 0, verifyVerified: 0} {
		if got := testutil.ToFloat64(f.m.verifications.WithLabelValues(result)); got != want {
			t.Errorf("verifications{result=%s} = %v, want %v", result, got, want)
		}
	}
	if got := posted.Load(); got != n {
		t.Errorf("%d instances sent, want %d (no re-send)", got, n)
	}
	if got := undocumented.Load(); got != 0 {
		t.Errorf("%d requests to routes HealthImaging does not offer", got)
	}
}

// uidSource is newMemSource(n) whose instances hold their SOP Instance
// UID (padded to their size): partUIDs reads one byte, which names at
// most 256 instances.
func uidSource(n int) *memSource {
	s := newMemSource(n)
	for _, in := range s.instances {
		s.data[in.ID] = fmt.Appendf(nil, "%-1024s", in.SOPInstanceUID)
	}
	return s
}

// contentUIDs is partUIDs for a uidSource's instances.
func contentUIDs(r *http.Request) []string {
	return partsNamed(r, func(b []byte) string { return strings.TrimSpace(string(b)) })
}

// checkVerified checks that f's one study was verified, nothing missing
// and nothing dead-lettered.
func checkVerified(t *testing.T, f *Forwarder, dls *memDeadLetters) {
	t.Helper()
	for _, l := range dls.all() {
		t.Errorf("dead-lettered (class %s): %s", l.Class, l.Reason)
	}
	if got := testutil.ToFloat64(f.m.verifications.WithLabelValues(verifyVerified)); got != 1 {
		t.Errorf("verifications{result=verified} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.m.verifications.WithLabelValues(verifyMissing)); got != 0 {
		t.Errorf("verifications{result=missing} = %v, want 0", got)
	}
}
