package orthancapi_test

import (
	"context"
	"errors"
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
	uids := map[string]bool{}
	for range 3 {
		uid := dicomgen.NewUID()
		paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
		if err != nil {
			t.Fatal(err)
		}
		if res := o.Upload(t, paths...); len(res.Failed) != 0 {
			t.Fatalf("upload: %v", res.Failed)
		}
		uids[uid] = true
	}

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
	for _, s := range all {
		if !uids[s.StudyInstanceUID] || s.LastUpdate == "" || !orthancapi.ValidID(s.ID) {
			t.Errorf("study %+v", s)
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
	if _, err := c.InstanceStudy(ctx, missing); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("InstanceStudy of a missing instance: %v, want ErrNotFound", err)
	}
	if _, err := c.SeriesStudy(ctx, "../studies"); !errors.Is(err, orthancapi.ErrInvalidID) {
		t.Errorf("SeriesStudy of a malformed ID: %v, want ErrInvalidID", err)
	}
	if _, err := c.Studies(ctx, -1, 10); err == nil {
		t.Error("Studies with a negative since must fail")
	}
}
