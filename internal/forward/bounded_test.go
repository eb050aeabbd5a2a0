package forward

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/orthancapi"
)

// dicomSource serves n small generated DICOM instances from memory and
// records the most goroutines running stowline's forward and STOW-RS code
// while they were read. Counting only those keeps the figure free of the
// test's HTTP server and of goroutines other tests left winding down.
type dicomSource struct {
	instances []orthancapi.Instance
	data      map[string][]byte

	mu    sync.Mutex
	reads int
	peak  int
}

func newDICOMSource(t *testing.T, n int) *dicomSource {
	t.Helper()
	s := &dicomSource{data: map[string][]byte{}}
	study, series := dicomgen.NewUID(), dicomgen.NewUID()
	for i := range n {
		var b bytes.Buffer
		uid := dicomgen.NewUID()
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: study, SeriesInstanceUID: series,
			SOPInstanceUID: uid, InstanceNumber: i + 1, Rows: 8, Columns: 8}); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i)
		s.instances = append(s.instances, orthancapi.Instance{ID: id, SOPInstanceUID: uid, FileSize: int64(b.Len())})
		s.data[id] = b.Bytes()
	}
	return s
}

func (s *dicomSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return s.instances, nil
}

func (s *dicomSource) OpenInstanceFile(_ context.Context, id string) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	s.reads++
	// A full stack dump per read would dominate a large study; a small
	// one is sampled at every read, so that its peak is not missed
	// (sampled every 5th, 60 instances gave 8 where 1,500 gave 11 on a
	// loaded machine).
	if s.reads%5 == 1 || len(s.instances) <= 100 {
		s.peak = max(s.peak, pipelineGoroutines())
	}
	s.mu.Unlock()
	return io.NopCloser(bytes.NewReader(s.data[id])), int64(len(s.data[id])), nil
}

// pipelineGoroutines counts the goroutines with a frame in the forward or
// dicomweb packages.
func pipelineGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("stowline/internal/forward.")) || bytes.Contains(g, []byte("stowline/internal/dicomweb.")) {
			count++
		}
	}
	return count
}

// Forwarding a study costs a bounded number of goroutines, whatever its
// number of instances: requests run RequestConcurrency at a time and each
// streams its instances one after the other.
func TestForwardGoroutinesDoNotGrowWithInstances(t *testing.T) {
	peak := func(n int) int {
		t.Helper()
		src := newDICOMSource(t, n)
		sink := stowsink.New(stowsink.Options{})
		srv := httptest.NewServer(sink)
		defer srv.Close()
		f := newForwarder(t, nil, srv.URL, nil, func(o *Options) {
			o.SourceFor = func(string) (Source, error) { return src, nil }
			o.MaxInstances = 25
			o.RequestConcurrency = 3
			o.MinRequestConcurrency = 3 // fixed: both studies keep 3 in flight
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rep, err := f.transfer(ctx, &Attempt{Event: testEvent()})
		if err != nil {
			t.Fatalf("%d instances: %v", n, err)
		}
		if rep.Instances != n || sink.Distinct() != n {
			t.Fatalf("%d instances: %d confirmed, %d at the sink", n, rep.Instances, sink.Distinct())
		}
		return src.peak
	}
	small, large := peak(60), peak(1500)
	t.Logf("peak goroutines while reading instances: %d for 60 instances, %d for 1500", small, large)
	// Sampling may catch one more request in flight; growth with the
	// instances would show as hundreds.
	if large > small+2 {
		t.Errorf("peak goroutines grew from %d (60 instances) to %d (1500 instances)", small, large)
	}
}
