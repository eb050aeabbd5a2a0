package orthancapi_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// The calls the reconciler and the audit use, against a real Orthanc.
func TestStudyListingAgainstOrthanc(t *testing.T) {
	t.Parallel()
	testharness.ForEachRelease(t, testStudyListingAgainstOrthanc)
}

func testStudyListingAgainstOrthanc(t *testing.T, rel testharness.Release) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "orthancapi-list", StableAge: 1, Release: rel})
	c := newClient(t, o.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if last, err := c.LastChange(ctx); err != nil || last != 0 {
		t.Fatalf("LastChange of an empty Orthanc = %d, %v", last, err)
	}
	uids := uploadStudies(t, o, 3)

	// Paged two at a time: every study once.
	var all []orthancapi.Study
	for since := 0; ; {
		page, err := c.Studies(ctx, since, 2)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < 2 {
			break
		}
		since += len(page)
	}
	if len(all) != 3 {
		t.Fatalf("paged %d studies, want 3", len(all))
	}
	// Orthanc's clock, read after the studies were stored, is at or past
	// their LastUpdate: the same clock, the same layout, in UTC.
	now, err := c.Now(ctx)
	if err != nil {
		t.Fatalf("Now: %v", err)
	}
	if d := time.Until(now); d > 5*time.Second || d < -5*time.Second {
		t.Errorf("Now = %v, %v from this host's clock", now, d)
	}
	for _, s := range all {
		if uids[s.StudyInstanceUID] == nil || s.LastUpdate == "" || !orthancapi.ValidID(s.ID) {
			t.Errorf("study %+v", s)
		}
		if lu, err := time.Parse("20060102T150405", s.LastUpdate); err != nil || lu.After(now) {
			t.Errorf("study %s LastUpdate %q is not before Orthanc's Now %v (%v)", s.ID, s.LastUpdate, now, err)
		}
		delete(uids, s.StudyInstanceUID)
	}

	ch, err := c.Changes(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	last, err := c.LastChange(ctx)
	if err != nil || last != ch.Last || last == 0 {
		t.Errorf("LastChange = %d, %v; the change log ends at %d", last, err, ch.Last)
	}
	parents := 0
	for _, change := range ch.Changes {
		var s orthancapi.Study
		switch change.ChangeType {
		case "NewInstance":
			s, err = c.InstanceStudy(ctx, change.ID)
		case "NewSeries":
			s, err = c.SeriesStudy(ctx, change.ID)
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s %s: %v", change.ChangeType, change.ID, err)
		}
		if _, err := c.Study(ctx, s.ID); err != nil || s.StudyInstanceUID == "" {
			t.Errorf("parent of %s %s: %+v, %v", change.ChangeType, change.ID, s, err)
		}
		parents++
	}
	if parents != 6 {
		t.Errorf("looked up %d parents, want 6 (3 instances, 3 series)", parents)
	}

	const missing = "00000000-00000000-00000000-00000000-00000000"
	for _, tc := range []struct {
		level, id string
		want      bool
	}{
		{"Study", all[0].ID, true},
		{"Study", missing, false},
		{"Patient", missing, false},
		{"Instance", missing, false},
	} {
		if got, err := c.Exists(ctx, tc.level, tc.id); err != nil || got != tc.want {
			t.Errorf("Exists(%s, %s) = %v, %v; want %v", tc.level, tc.id, got, err, tc.want)
		}
	}
	if _, err := c.InstanceStudy(ctx, missing); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("InstanceStudy of a missing instance: %v, want ErrNotFound", err)
	}
	if _, err := c.SeriesStudy(ctx, "../studies"); !errors.Is(err, orthancapi.ErrInvalidID) {
		t.Errorf("SeriesStudy of a malformed ID: %v, want ErrInvalidID", err)
	}
	if _, err := c.Studies(ctx, -1, 10); err == nil {
		t.Error("Studies with a negative since must fail")
	}

	// What EachStudy allows for in Orthanc's list: paged by position; on
	// 1.10 in the order studies were made, so a study deleted and stored
	// again (same ID) comes back at its end; on 1.12 sorted by ID. Walked 4
	// at a time while studies already given are deleted, every study is
	// given.
	files := uploadStudies(t, o, 10)
	remove := func(studyID string) {
		t.Helper()
		instances, err := c.StudyInstances(ctx, studyID)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range instances {
			if err := c.DeleteInstance(ctx, in.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	before, err := c.Studies(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	remade := before[len(before)-5]
	remove(remade.ID)
	if res := o.Upload(t, files[remade.StudyInstanceUID]...); len(res.Failed) != 0 {
		t.Fatalf("upload again: %v", res.Failed)
	}
	after, err := c.Studies(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	byID := slices.IsSortedFunc(after, func(a, b orthancapi.Study) int { return strings.Compare(a.ID, b.ID) })
	switch {
	case rel.Name == "1.10" && after[len(after)-1].ID != remade.ID:
		t.Errorf("Orthanc 1.10: a study deleted and stored again is not at the end of the list")
	case rel.Name != "1.10" && !byID:
		t.Errorf("Orthanc %s: the list of studies is not sorted by ID", rel.Name)
	}
	given := map[string]bool{}
	err = orthancapi.EachStudy(ctx, c, 4, func(st orthancapi.Study) error {
		given[st.ID] = true
		if len(given)%3 == 0 {
			remove(st.ID) // in buffer mode, forwarded and deleted
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	left, err := c.Studies(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range left {
		if !given[st.ID] {
			t.Errorf("study %s not given", st.ID)
		}
	}

	// Buffer mode deletes a study once forwarded, and Orthanc its changes
	// with it. The newest study deleted, GET /changes?last is the newest
	// change left, before the highest number given; a page read past it
	// reports that number, which the reconciler judges the log's end by
	// (RECONCILE_ADOPT_CURSOR_FROM). A patient of its own: deleted with
	// the study, with its StablePatient change, the newest.
	uid := dicomgen.NewUID()
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, PatientID: "LASTCHANGE", Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	o.WaitStable(t, time.Minute)
	end, err := c.LastChange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left, err = c.Studies(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range left {
		if st.StudyInstanceUID == uid {
			remove(st.ID)
		}
	}
	last, err = c.LastChange(ctx)
	if err != nil || last >= end {
		t.Errorf("LastChange after the newest study was deleted = %d, %v; want the newest change left, before %d", last, err, end)
	}
	if past, err := c.Changes(ctx, end-1, 1); err != nil || len(past.Changes) != 0 || past.Last < end {
		t.Errorf("changes after %d = %+v, %v; want none, Last at least %d", end-1, past, err, end)
	}
}

// uploadStudies stores n studies of one tiny instance each in o and
// returns each study's file by its Study Instance UID.
func uploadStudies(t *testing.T, o *testharness.Orthanc, n int) map[string][]string {
	t.Helper()
	files := map[string][]string{}
	for range n {
		uid := dicomgen.NewUID()
		paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
		if err != nil {
			t.Fatal(err)
		}
		if res := o.Upload(t, paths...); len(res.Failed) != 0 {
			t.Fatalf("upload: %v", res.Failed)
		}
		files[uid] = paths
	}
	return files
}
