package forward

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
	ev, client := uploadStudy(t, srcOrthanc, 3)
	src := &deletingSource{Client: client, o: srcOrthanc}
	rec := &recordingObserver{}
	// A request per instance: the deleted one's fails alone.
	f, ns, cons, dls := orthancForwarder(t, src, dest, func(o *Options) { o.Observer = rec })
	forwardOne(t, f, ns, cons, ev)
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

// An instance whose file the source Orthanc cannot read (its storage
// lost the file: Orthanc answers 500) fails alone: the study's other
// instances are sent at the first attempt, and the dead letter of the
// last delivery names the unreadable one. Before, its request's error
// stopped the study's requests not started yet, at every delivery, so
// the instances after it never reached the destination.
func TestUnreadableInstanceDoesNotHoldTheStudy(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	testharness.ForEachRelease(t, testUnreadableInstanceDoesNotHoldTheStudy)
}

func testUnreadableInstanceDoesNotHoldTheStudy(t *testing.T, rel testharness.Release) {
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "unreadable-src", Release: rel})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "unreadable-dest", DicomWeb: true})
	ev, client := uploadStudy(t, srcOrthanc, 5)
	list, err := client.StudyInstances(context.Background(), ev.OrthancStudyID)
	if err != nil || len(list) != 5 {
		t.Fatalf("listing: %d instances, %v", len(list), err)
	}
	// The second instance, in the order the forwarder sends them, loses
	// its file; a restart empties Orthanc's cache of it.
	broken := list[1]
	if err := os.Remove(filepath.Join(srcOrthanc.Dir, "storage", broken.FileUUID[:2], broken.FileUUID[2:4], broken.FileUUID)); err != nil {
		t.Fatal(err)
	}
	srcOrthanc.Stop(t)
	srcOrthanc.Start(t)

	for _, tt := range []struct {
		name                    string
		perRequest, roundsAfter int
	}{
		{"a request per instance", 1, 1},
		{"one request", 5, 1},            // the others share the broken one's request
		{"one request, no rounds", 5, 0}, // FORWARDER_INSTANCE_RETRIES=0
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest.DeleteAll(t)
			f, ns, cons, dls := orthancForwarder(t, client, dest, func(o *Options) {
				o.MaxInstances, o.MaxDeliveries = tt.perRequest, 2
				o.InstanceRetries, o.InstanceRetryDelay = tt.roundsAfter, 50*time.Millisecond
			})
			forwardOne(t, f, ns, cons, ev)
			held := dest.InstanceMD5s(t)
			for i, in := range list {
				if _, ok := held[in.SOPInstanceUID]; ok != (i != 1) {
					t.Errorf("instance %d of 5 (%s) at the destination: %v; want every instance but the unreadable one", i+1, in.SOPInstanceUID, ok)
				}
			}
			letters := dls.all()
			if len(letters) != 1 {
				t.Fatalf("%d dead letters, want 1", len(letters))
			}
			l := letters[0]
			if l.Class != Transient || l.Attempts != 2 || len(l.Failures) != 1 || l.Failures[0].SOPInstanceUID != broken.SOPInstanceUID ||
				!strings.Contains(l.Reason, "source Orthanc") || !strings.Contains(l.Failures[0].Text, "HTTP 500") {
				t.Errorf("dead letter: class %q, attempts %d, reason %q, failures %+v", l.Class, l.Attempts, l.Reason, l.Failures)
			}
		})
	}
}

// unreadableSource answers every file with Orthanc's own 500, as when
// its storage is gone while /system still answers.
type unreadableSource struct{ *memSource }

func (s unreadableSource) OpenInstanceFile(context.Context, string) (io.ReadCloser, int64, error) {
	return nil, 0, &orthancapi.Error{StatusCode: http.StatusInternalServerError, OrthancMessage: "The path does not point to a regular file"}
}

// A source that reads no file fails the attempt after a bounded number
// of requests: each request broke at its first part and the rest was
// sent again at once, the unreadable ones each alone every round, which
// made thousands of aborted requests for one study, back to back.
func TestUnreadableSourceBoundsTheRequests(t *testing.T) {
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	src := newMemSource(400)
	f := newForwarder(t, src, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return unreadableSource{src}, nil }
		o.MaxInstances = 20
		o.InstanceRetries = 1
		o.InstanceRetryDelay = time.Millisecond
	})
	_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if Classify(err) != Transient || !strings.Contains(fmt.Sprint(err), "the source Orthanc failed to read") {
		t.Errorf("err %v, want a transient failure to read from the source", err)
	}
	if n := k.requests.Load(); n > 700 {
		t.Errorf("%d STOW-RS requests for 400 instances none of which can be read, want at most 700", n)
	}
}

// orthancForwarder is a forwarder with one worker from src to dest's
// DICOMweb plugin, over a JetStream of its own: a request per instance,
// quick retries, at most 5 deliveries, unless opts say otherwise. The
// dead letters are kept in memory.
func orthancForwarder(t *testing.T, src Source, dest *testharness.Orthanc, opts ...func(*Options)) (*Forwarder, *testnats.Server, jetstream.Consumer, *memDeadLetters) {
	t.Helper()
	stow, err := dicomweb.New(dest.URL+"/dicom-web", nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	o := Options{
		DestinationName: "default",
		Lanes:           []Lane{{Priority: events.PriorityRoutine, Consumer: cons}},
		SourceFor:       func(string) (Source, error) { return src, nil },
		Destination:     stow,
		Concurrency:     1,
		MaxInstances:    1,
		MaxBytes:        1 << 20,
		AckWait:         3 * time.Second,
		RetryDelay:      100 * time.Millisecond,
		RetryMaxDelay:   200 * time.Millisecond,
		ShutdownGrace:   200 * time.Millisecond,
		DeadLetters:     dls,
		MaxDeliveries:   5,
	}
	for _, opt := range opts {
		opt(&o)
	}
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return f, ns, cons, dls
}

// uploadStudy stores a generated study of n instances in o and returns
// its stable event (source "a") and a client of o. o may hold other
// studies.
func uploadStudy(t *testing.T, o *testharness.Orthanc, n int) (*events.StudyStable, *orthancapi.Client) {
	t.Helper()
	paths, err := dicomgen.WriteStudy(filepath.Join(t.TempDir(), "study"), dicomgen.StudySpec{Series: 1, InstancesPerSeries: n})
	if err != nil {
		t.Fatal(err)
	}
	var before, after []string
	o.GetJSON(t, "/studies", &before)
	o.Upload(t, paths...)
	o.GetJSON(t, "/studies", &after)
	after = slices.DeleteFunc(after, func(id string) bool { return slices.Contains(before, id) })
	if len(after) != 1 {
		t.Fatalf("the upload made %d studies, want 1", len(after))
	}
	var study struct {
		MainDicomTags struct{ StudyInstanceUID string }
		LastUpdate    string
	}
	o.GetJSON(t, "/studies/"+after[0], &study)
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	return &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a",
		OrthancStudyID: after[0], StudyInstanceUID: study.MainDicomTags.StudyInstanceUID, LastUpdate: study.LastUpdate}, client
}

// An older event of a study buffer mode deleted once a newer one carried
// it finds the study gone and the destination's ledger holding a newer
// state of it: the event is acked, and counted as already_forwarded. It
// was counted forwarded, the study twice on every dashboard.
func TestOlderEventOfDeletedStudyNotCountedForwarded(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc server; skipped in -short mode")
	}
	// The source holds no study: buffer mode deleted it. Nothing is sent,
	// so the same Orthanc serves as the destination.
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "older-deleted", DicomWeb: true})
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	f, ns, cons, dls := orthancForwarder(t, client, o, func(opts *Options) {
		opts.Forwarded = func(context.Context, *events.StudyStable) (bool, error) { return true, nil }
	})
	forwardOne(t, f, ns, cons, testEvent())
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered as %q: %s; want the event acked", letters[0].Class, letters[0].Reason)
	}
	for result, want := range map[Result]float64{ResultForwarded: 0, ResultAlreadyForwarded: 1} {
		if got := testutil.ToFloat64(f.m.studies.WithLabelValues(string(result))); got != want {
			t.Errorf("studies_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
