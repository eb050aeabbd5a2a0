package forward

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// Buffer mode's deletes on real Orthanc servers, both releases: 1.12.1 and
// later move a study's LastUpdate at each delete. A study of more than
// recheckEvery instances is deleted whole; so is one whose instances were
// deleted by hand between its event and the forward's listing (1.12
// moved its LastUpdate for that alone, and no next event comes). An
// instance not deleted yet, deleted and sent again (a modality's
// retransmission: the same Orthanc ID, a new file), stops the deletes and
// stays; a stale event (an instance listed received after it) deletes
// nothing, its next event does.
func TestDeleteForwardedOnOrthanc(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	testharness.ForEachRelease(t, testDeleteForwardedOnOrthanc)
}

func testDeleteForwardedOnOrthanc(t *testing.T, rel testharness.Release) {
	const n = recheckEvery + 8
	const studyUID = "1.2.826.0.1.3680043.8.498.4242"
	tests := []struct {
		name string
		// beforeListing runs once the event is taken, before the
		// forward lists the study.
		beforeListing func(t *testing.T, o *testharness.Orthanc, study string)
		// resendAfter: after that many deletes (0: never), resend runs.
		resendAfter int
		resend      func(t *testing.T, o *testharness.Orthanc, listed []orthancapi.Instance, paths []string)
		// want counts of the metric by result: deleted, skipped, gone,
		// failed; then the instances left in the source.
		want [4]float64
		left int
	}{
		{name: "nothing arrives", want: [4]float64{n, 0, 0, 0}},
		// Those deleted come back under their IDs, not deleted again:
		// their own event forwards and deletes them. The others Orthanc
		// keeps as they were (OverwriteInstances false).
		{name: "the first ten sent again", resendAfter: 10,
			resend: func(t *testing.T, o *testharness.Orthanc, _ []orthancapi.Instance, paths []string) {
				o.Upload(t, paths...)
			},
			want: [4]float64{n, 0, 0, 0}, left: 10},
		// The last one listed, deleted by hand and sent anew with the
		// rest: the same ID, a new file, unsent; the look before its
		// batch stops the deletes.
		{name: "the last one deleted and sent again", resendAfter: 10,
			resend: func(t *testing.T, o *testharness.Orthanc, listed []orthancapi.Instance, paths []string) {
				deleteByHand(t, o, listed[n-1].ID)
				o.Upload(t, paths...)
			},
			want: [4]float64{recheckEvery, n - recheckEvery, 0, 0}, left: n - recheckEvery + 10},
		{name: "four deleted by hand before the listing", beforeListing: func(t *testing.T, o *testharness.Orthanc, study string) {
			var ids []struct{ ID string }
			o.GetJSON(t, "/studies/"+study+"/instances", &ids)
			for _, in := range ids[:4] {
				deleteByHand(t, o, in.ID)
			}
		}, want: [4]float64{n - 4, 0, 0, 0}},
		// A stale event: the listing holds an instance received after
		// it, which its next event (StableStudy) deletes with the rest.
		{name: "one received before the listing", beforeListing: func(t *testing.T, o *testharness.Orthanc, _ string) {
			paths, err := dicomgen.WriteStudy(filepath.Join(t.TempDir(), "late"), dicomgen.StudySpec{StudyInstanceUID: studyUID, Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
			if err != nil {
				t.Fatal(err)
			}
			o.Upload(t, paths...)
		}, want: [4]float64{0, n + 1, 0, 0}, left: n + 1},
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "buffer-src", Release: rel})
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o.DeleteAll(t)
			paths, err := dicomgen.WriteStudy(filepath.Join(t.TempDir(), "study"), dicomgen.StudySpec{StudyInstanceUID: studyUID, Series: 1, InstancesPerSeries: n, Rows: 8, Columns: 8})
			if err != nil {
				t.Fatal(err)
			}
			o.Upload(t, paths...)
			// Its event comes at StableStudy: what follows falls in a
			// later second than its LastUpdate.
			o.WaitStable(t, 30*time.Second)
			var studies []string
			o.GetJSON(t, "/studies", &studies)
			if len(studies) != 1 {
				t.Fatalf("the source holds %d studies, want 1", len(studies))
			}
			st, err := client.Study(t.Context(), studies[0])
			if err != nil {
				t.Fatal(err)
			}
			ev := &events.StudyStable{Source: "src", OrthancStudyID: st.ID, LastUpdate: st.LastUpdate}
			if tt.beforeListing != nil {
				tt.beforeListing(t, o, st.ID)
			}
			listed, err := client.StudyInstances(t.Context(), st.ID)
			if err != nil {
				t.Fatalf("listing: %v", err)
			}
			cleaner := &resendingCleaner{Client: client, after: tt.resendAfter}
			if tt.resend != nil {
				cleaner.resend = func() { tt.resend(t, o, listed, paths) }
			}
			f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(op *Options) {
				op.Registerer = prometheus.NewRegistry()
				op.Completed = recordedOK
				op.CleanerFor = func(string) (SourceCleaner, error) { return cleaner, nil }
			})
			f.deleteForwarded(t.Context(), ev, listed, listed, nil, f.log)
			for i, r := range []string{"deleted", "skipped", "gone", "failed"} {
				if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(r)); got != tt.want[i] {
					t.Errorf("%s = %v, want %v", r, got, tt.want[i])
				}
			}
			if left := o.Statistics(t).CountInstances; left != tt.left {
				t.Errorf("the source holds %d instances, want %d", left, tt.left)
			}
		})
	}
}

// deleteByHand deletes an instance as Orthanc Explorer does.
func deleteByHand(t *testing.T, o *testharness.Orthanc, id string) {
	t.Helper()
	if err := o.Do(t.Context(), "DELETE", "/instances/"+id, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// resendingCleaner is a real Orthanc client whose deletes, after the
// after-th, see the study sent again.
type resendingCleaner struct {
	*orthancapi.Client
	after   int
	resend  func()
	deletes int
}

func (c *resendingCleaner) DeleteInstance(ctx context.Context, id string) error {
	err := c.Client.DeleteInstance(ctx, id)
	if c.deletes++; c.deletes == c.after {
		c.resend()
	}
	return err
}
