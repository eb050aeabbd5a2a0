package forward

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// deletingSource is a real Orthanc whose first listing of a study is
// followed by the deletion of one of its instances, before the forwarder
// reads it: an instance deleted from Orthanc while its study is forwarded
// (a technician removing a wrongly sent image).
type deletingSource struct {
	*orthancapi.Client
	o    *testharness.Orthanc
	once sync.Once
	gone string // the SOP Instance UID deleted
	err  error
}

func (s *deletingSource) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	list, err := s.Client.StudyInstances(ctx, id)
	if err != nil || len(list) < 2 {
		return list, err
	}
	s.once.Do(func() {
		victim := list[1]
		s.gone = victim.SOPInstanceUID
		_, s.err = s.o.Bytes(ctx, http.MethodDelete, "/instances/"+victim.ID, nil)
	})
	return list, nil
}

// An instance deleted from the source Orthanc between the study's listing
// and its read fails that attempt only: the study is still there, and the
// next attempt lists it again and forwards what it holds. It is not
// dead-lettered as source-missing ("the study is no longer in Orthanc"),
// which left the rest of the study unsent.
func TestInstanceDeletedWhileForwarded(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	testharness.ForEachRelease(t, testInstanceDeletedWhileForwarded)
}

func testInstanceDeletedWhileForwarded(t *testing.T, rel testharness.Release) {
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "gone-src", Release: rel})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "gone-dest", DicomWeb: true})
	paths, err := dicomgen.WriteStudy(filepath.Join(t.TempDir(), "study"), dicomgen.StudySpec{Series: 1, InstancesPerSeries: 3})
	if err != nil {
		t.Fatal(err)
	}
	srcOrthanc.Upload(t, paths...)
	var studies []string
	srcOrthanc.GetJSON(t, "/studies", &studies)
	var study struct {
		MainDicomTags struct{ StudyInstanceUID string }
		LastUpdate    string
	}
	srcOrthanc.GetJSON(t, "/studies/"+studies[0], &study)

	client, err := orthancapi.New(srcOrthanc.URL)
	if err != nil {
		t.Fatal(err)
	}
	src := &deletingSource{Client: client, o: srcOrthanc}
	stow, err := dicomweb.New(dest.URL+"/dicom-web", nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	rec := &recordingObserver{}
	f, err := New(Options{
		DestinationName: "default",
		Consumer:        cons,
		SourceFor:       func(string) (Source, error) { return src, nil },
		Destination:     stow,
		Concurrency:     1,
		MaxInstances:    1, // a request per instance: the deleted one's fails alone
		MaxBytes:        1 << 20,
		AckWait:         3 * time.Second,
		RetryDelay:      100 * time.Millisecond,
		RetryMaxDelay:   200 * time.Millisecond,
		ShutdownGrace:   200 * time.Millisecond,
		DeadLetters:     dls,
		MaxDeliveries:   5,
		Observer:        rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	forwardOne(t, f, ns, cons, &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a",
		OrthancStudyID: studies[0], StudyInstanceUID: study.MainDicomTags.StudyInstanceUID, LastUpdate: study.LastUpdate})
	if src.err != nil {
		t.Fatalf("delete an instance from the source: %v", src.err)
	}
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered as %q: %s; want the study forwarded at its next attempt", letters[0].Class, letters[0].Reason)
	}
	held := dest.InstanceMD5s(t)
	if len(held) != 2 {
		t.Errorf("the destination holds %d instances, want the 2 still in the source", len(held))
	}
	if _, ok := held[src.gone]; ok {
		t.Errorf("the destination holds the deleted instance %s", src.gone)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.started != 2 || rec.finished[ResultForwarded] != 1 {
		t.Errorf("%d attempts, finished %v; want a failed attempt, then the study forwarded", rec.started, rec.finished)
	}
}
