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
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// answerLostOnce stands in front of an Azure-like store: the first POST
// reaches the store, which stores it, and its answer is lost on the way
// back, as answer says (a proxy's 504 while the store went on storing,
// a 2xx cut off).
type answerLostOnce struct {
	d      *azureLike
	answer func(w http.ResponseWriter)
	done   atomic.Bool
}

func (u *answerLostOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && u.done.CompareAndSwap(false, true) {
		u.d.ServeHTTP(httptest.NewRecorder(), r) // the store took it
		u.answer(w)
		return
	}
	u.d.ServeHTTP(w, r)
}

// gatewayTimeout is a reverse proxy's 504 page: no STOW-RS body.
func gatewayTimeout(w http.ResponseWriter) {
	http.Error(w, "<html>504 Gateway Time-out</html>", http.StatusGatewayTimeout)
}

// cutAnswer is a 200 whose body breaks off: it announces more bytes
// than it holds, so the server closes the connection mid-body.
func cutAnswer(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/dicom+json")
	w.Header().Set("Content-Length", "1000")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(`{"00081199":`))
}

// goneSource is a memSource whose instance gone leaves it as it is first
// read (Orthanc's 404), after the study was listed: the request's body
// breaks off there, the instances before it sent whole.
type goneSource struct {
	*memSource
	gone string

	mu   sync.Mutex
	left bool
}

func (s *goneSource) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	list, err := s.memSource.StudyInstances(ctx, id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left {
		list = slices.DeleteFunc(slices.Clone(list), func(in orthancapi.Instance) bool { return in.SOPInstanceUID == s.gone })
	}
	return list, err
}

func (s *goneSource) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.IndexFunc(s.instances, func(in orthancapi.Instance) bool { return in.ID == id }); i >= 0 && s.instances[i].SOPInstanceUID == s.gone {
		s.left = true
		return nil, 0, fmt.Errorf("GET /instances/%s/file: %w", id, orthancapi.ErrNotFound)
	}
	return s.memSource.OpenInstanceFile(ctx, id)
}

// TestUnreadAnswerIsNoConflictLater: a request the destination stored but
// whose answer stowline could not read fails the delivery; the next one
// finds its instances "already there" (45070). They are perhaps
// stowline's own copies (unproven: counted stored, warned), not copies
// with other content: no conflict dead letter under deadletter (one no
// replay could heal), no skipped conflict under skip.
func TestUnreadAnswerIsNoConflictLater(t *testing.T) {
	for _, tc := range []struct {
		name, action string
		// answer: the first request's answer, lost; nil: none lost.
		answer func(http.ResponseWriter)
		// gone: an instance that leaves the source as it is read,
		// breaking off the body after the others.
		gone    string
		already int // the instances answered 45070 at the next delivery
	}{
		{"gateway 504, deadletter", ConflictDeadLetter, gatewayTimeout, "", 2},
		{"gateway 504, skip", ConflictSkip, gatewayTimeout, "", 2},
		{"2xx cut off, deadletter", ConflictDeadLetter, cutAnswer, "", 2},
		{"body broken by a 404 from the source, deadletter", ConflictDeadLetter, nil, "1.2.3.2", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			var h http.Handler = dest
			if tc.answer != nil {
				h = &answerLostOnce{d: dest, answer: tc.answer}
			}
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			src := newMemSource(2)
			f := newForwarder(t, src, srv.URL, cons, out.options, func(o *Options) {
				if tc.gone != "" {
					gs := &goneSource{memSource: src, gone: tc.gone}
					o.SourceFor = func(string) (Source, error) { return gs, nil }
				}
				o.Failures = &memFailureLog{}
				o.MaxDeliveries = 5
				o.MaxInstances = 2
				o.RetryDelay = 20 * time.Millisecond
				o.RetryMaxDelay = 40 * time.Millisecond
				o.Conflicts = azureConflicts(tc.action)
			})
			forwardOne(t, f, ns, cons, testEvent())
			answers := dest.answered()
			if strings.Count(answers, ":45070") != tc.already {
				t.Fatalf("answers %s: want %d answered 45070, or the test tests nothing", answers, tc.already)
			}
			out.settled(t, 1)
			if got := testutil.ToFloat64(f.m.unproven); got != float64(tc.already) {
				t.Errorf("instances_unproven_total = %v, want %d", got, tc.already)
			}
			noneSkipped(t, f)
		})
	}
}

// breakingSource is a memSource whose instance flaky fails the first time
// it is opened as open says (Orthanc restarting, overloaded, a file that
// changed): the request's body breaks off there, the instances before it
// sent whole.
type breakingSource struct {
	*memSource
	flaky string
	open  func(id string) (io.ReadCloser, int64, error)

	mu   sync.Mutex
	done bool
}

func (s *breakingSource) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	i := slices.IndexFunc(s.instances, func(in orthancapi.Instance) bool { return in.ID == id })
	first := i >= 0 && s.instances[i].SOPInstanceUID == s.flaky && !s.done
	if first {
		s.done = true
	}
	s.mu.Unlock()
	if first {
		return s.open(id)
	}
	return s.memSource.OpenInstanceFile(ctx, id)
}

// TestBrokenBodyIsNoConflictLater: a request whose body a source failure
// broke off fails the delivery, whatever the failure; the destination
// keeps the instances before the break, and the next delivery finds them
// "already there" (45070): perhaps stowline's own copies (unproven), not
// a conflict dead letter no replay could heal.
func TestBrokenBodyIsNoConflictLater(t *testing.T) {
	orthancErr := func(status int) func(string) (io.ReadCloser, int64, error) {
		return func(id string) (io.ReadCloser, int64, error) {
			return nil, 0, &orthancapi.Error{Method: http.MethodGet, Path: "/instances/" + id + "/file", StatusCode: status}
		}
	}
	for _, tc := range []struct {
		name string
		open func(id string) (io.ReadCloser, int64, error)
		// exactLength: the request announces its length
		// (dicomweb.WithContentLength).
		exactLength bool
	}{
		{"connection reset", func(id string) (io.ReadCloser, int64, error) {
			return nil, 0, fmt.Errorf("GET /instances/%s/file: %w", id, syscall.ECONNRESET)
		}, false},
		{"503 from Orthanc", orthancErr(http.StatusServiceUnavailable), false},
		{"500 without a message", orthancErr(http.StatusInternalServerError), false},
		{"file shorter than its size", func(string) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(strings.Repeat("x", 1000))), 1024, nil
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			srv := httptest.NewServer(dest)
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			src := newMemSource(2)
			f := newForwarder(t, src, srv.URL, cons, out.options, func(o *Options) {
				bs := &breakingSource{memSource: src, flaky: "1.2.3.2", open: tc.open}
				o.SourceFor = func(string) (Source, error) { return bs, nil }
				if tc.exactLength {
					client, err := dicomweb.New(srv.URL, nil, dicomweb.WithContentLength())
					if err != nil {
						t.Fatal(err)
					}
					o.Destination = client
				}
				o.Failures = &memFailureLog{}
				o.MaxDeliveries = 5
				o.MaxInstances = 2
				o.RetryDelay = 20 * time.Millisecond
				o.RetryMaxDelay = 40 * time.Millisecond
				o.Conflicts = azureConflicts(ConflictDeadLetter)
			})
			forwardOne(t, f, ns, cons, testEvent())
			answers := dest.answered()
			if strings.Count(answers, ":45070") != 1 {
				t.Fatalf("answers %s: want 1.2.3.1 answered 45070 once, or the test tests nothing", answers)
			}
			out.settled(t, 1)
			if got := testutil.ToFloat64(f.m.unproven); got != 1 {
				t.Errorf("instances_unproven_total = %v, want 1", got)
			}
			noneSkipped(t, f)
		})
	}
}

// TestBrokenBodyDeidentified: on a de-identifying destination the part
// a body broke off on is named by its original UID, so only the parts
// before it are marked as perhaps stored, not the broken part nor those
// after it, which never went.
func TestBrokenBodyDeidentified(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	client, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, d := testDeidentifier(t)
	dst, err := Deidentified(client, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	var batch []dicomweb.Part
	for _, uid := range []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"} {
		var b bytes.Buffer
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.0", SOPInstanceUID: uid, Rows: 8, Columns: 8}); err != nil {
			t.Fatal(err)
		}
		p := filePart(uid, b.Bytes())
		if uid == "1.2.3.2" {
			p.Open = func(context.Context) (io.ReadCloser, error) {
				return nil, fmt.Errorf("GET /instances/x/file: %w", syscall.ECONNRESET)
			}
		}
		batch = append(batch, p)
	}
	_, err = dst.Store(t.Context(), batch)
	uid, ok := dicomweb.BrokenAt(err)
	if !ok || uid != "1.2.3.2" {
		t.Fatalf("BrokenAt(%v) = %q, %v; want 1.2.3.2 (its pseudonym is %s)", err, uid, ok, k.UID("1.2.3.2"))
	}
	if got := sentBefore(batch, uid); !slices.Equal(got, []string{"1.2.3.1"}) {
		t.Errorf("sentBefore = %v, want [1.2.3.1]", got)
	}
}

// TestSentBefore: the parts before the one named, and none when the
// name is not in the batch (a name the caller does not know marks
// nothing rather than everything).
func TestSentBefore(t *testing.T) {
	batch := []dicomweb.Part{{SOPInstanceUID: "1.2.3.1"}, {SOPInstanceUID: "1.2.3.2"}, {SOPInstanceUID: "1.2.3.3"}}
	for _, tc := range []struct {
		broken string
		want   []string
	}{
		{"1.2.3.1", nil},
		{"1.2.3.2", []string{"1.2.3.1"}},
		{"1.2.3.3", []string{"1.2.3.1", "1.2.3.2"}},
		{"2.25.1", nil},
	} {
		if got := sentBefore(batch, tc.broken); !slices.Equal(got, tc.want) {
			t.Errorf("sentBefore(%s) = %v, want %v", tc.broken, got, tc.want)
		}
	}
}
