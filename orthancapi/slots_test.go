package orthancapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// slotOrthanc answers GET /instances/<id>/file with a body it holds open
// until finish(id), and instance "bad" with a 500; it counts the
// requests it is answering and remembers the most at once.
type slotOrthanc struct {
	stop     chan struct{} // closed when the test ends: every body ends
	mu       sync.Mutex
	finished map[string]chan struct{}
	inFlight atomic.Int32
	most     atomic.Int32
}

func (s *slotOrthanc) finishChan(id string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished[id] == nil {
		s.finished[id] = make(chan struct{})
	}
	return s.finished[id]
}

func (s *slotOrthanc) finish(id string) { close(s.finishChan(id)) }

func (s *slotOrthanc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	if r.URL.Path == "/system" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"Name":"slots","Version":"1.12.7","ApiVersion":27}`)
		return
	}
	id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/instances/"), "/file")
	if id == badInstance {
		http.Error(w, `{"Message":"boom"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/dicom")
	io.WriteString(w, "DICM")
	w.(http.Flusher).Flush()
	select {
	case <-s.finishChan(id):
	case <-r.Context().Done():
	case <-s.stop:
	}
}

func newSlotOrthanc(t *testing.T) (*slotOrthanc, *httptest.Server) {
	s := &slotOrthanc{stop: make(chan struct{}), finished: map[string]chan struct{}{}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(s.stop) }) // first: Close waits for the handlers
	return s, srv
}

const badInstance = "ffffffff-00000000-00000000-00000000-00000000"

func slotInstance(i int) string { return fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i) }

// TestMaxRequestsCapsRequestsInFlight: with WithMaxRequests(2), a third
// request waits while two file streams are open (and gives up with its
// context's error), a stream read and closed frees its slot, and an
// error answer frees its slot too. Orthanc never answers more than two
// at once.
func TestMaxRequestsCapsRequestsInFlight(t *testing.T) {
	s, srv := newSlotOrthanc(t)
	c, err := orthancapi.New(srv.URL, orthancapi.WithMaxRequests(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	open := func(ctx context.Context, i int) (io.ReadCloser, error) {
		rc, _, err := c.OpenInstanceFile(ctx, slotInstance(i))
		return rc, err
	}
	mustOpen := func(i int) io.ReadCloser {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		t.Cleanup(cancel)
		rc, err := open(ctx, i)
		if err != nil {
			t.Fatalf("open instance %d: %v", i, err)
		}
		return rc
	}
	// readAndClose reads a stream to its end, which comes after the fake
	// stopped counting it, and closes it.
	readAndClose := func(i int, rc io.ReadCloser) {
		t.Helper()
		s.finish(slotInstance(i))
		if _, err := io.ReadAll(rc); err != nil {
			t.Fatalf("read instance %d: %v", i, err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
	}
	waiting := func(what string, wantErr error, ctx context.Context) {
		t.Helper()
		rc, err := open(ctx, 99)
		if err == nil {
			rc.Close()
			t.Fatalf("%s: a third request was sent while two streams were open", what)
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: got %v, want %v", what, err, wantErr)
		}
	}

	slots := func(when string, want orthancapi.RequestSlots, minWaited time.Duration) {
		t.Helper()
		got := c.Slots()
		waited := got.Waited
		got.Waited = 0
		if !reflect.DeepEqual(got, want) || waited < minWaited {
			t.Errorf("%s: Slots() = %+v waited %v, want %+v waited at least %v", when, got, waited, want, minWaited)
		}
	}
	first, second := mustOpen(1), mustOpen(2)
	slots("two streams open", orthancapi.RequestSlots{Max: 2, InUse: 2}, 0)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	waiting("deadline", context.DeadlineExceeded, short)
	cancel()
	cancelled, cancel := context.WithCancel(ctx)
	go cancel()
	waiting("cancelled", context.Canceled, cancelled)
	slots("after two waits", orthancapi.RequestSlots{Max: 2, InUse: 2, Waits: 2}, 100*time.Millisecond)

	readAndClose(1, first)
	third := mustOpen(3) // the first one's slot

	readAndClose(3, third)
	// Two error answers in a row with one slot free: the second would
	// wait for good if the first kept its slot.
	for range 2 {
		short, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, _, err := c.OpenInstanceFile(short, badInstance)
		cancel()
		var oe *orthancapi.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusInternalServerError {
			t.Fatalf("bad instance: got %v, want an HTTP 500 *Error", err)
		}
	}
	fourth := mustOpen(4)
	readAndClose(2, second)
	readAndClose(4, fourth)
	slots("every stream closed", orthancapi.RequestSlots{Max: 2, Waits: 2}, 100*time.Millisecond)
	uncapped, err := orthancapi.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := uncapped.Slots(); !reflect.DeepEqual(got, orthancapi.RequestSlots{}) {
		t.Errorf("uncapped client: Slots() = %+v, want zero", got)
	}

	if most := s.most.Load(); most > 2 {
		t.Errorf("Orthanc answered %d requests at once, want at most 2", most)
	}
}

// TestMaxRequestsUnslotted: with the only slot held by a stream, a
// request made while the caller holds a stream open (WhileHoldingBody)
// does not wait for its own slot, and neither does GET /system, which
// tells whether Orthanc answers (a held study's probe, /readyz): waiting
// behind the streams, a busy Orthanc was taken for one down.
func TestMaxRequestsUnslotted(t *testing.T) {
	for _, tt := range []struct {
		name string
		send func(context.Context, *orthancapi.Client) error
	}{
		{"while holding a body", func(ctx context.Context, c *orthancapi.Client) error {
			nested, _, err := c.OpenInstanceFile(orthancapi.WhileHoldingBody(ctx), slotInstance(2))
			if err == nil {
				nested.Close()
			}
			return err
		}},
		{"GET /system", func(ctx context.Context, c *orthancapi.Client) error {
			_, err := c.System(ctx)
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := newSlotOrthanc(t)
			c, err := orthancapi.New(srv.URL, orthancapi.WithMaxRequests(1))
			if err != nil {
				t.Fatal(err)
			}
			held, _, err := c.OpenInstanceFile(context.Background(), slotInstance(1))
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tt.send(ctx, c); err != nil {
				t.Fatalf("while every slot is held: %v", err)
			}
		})
	}
}

// TestMaxRequestsSlotFreedWhenConnectionFails: a request whose
// connection fails (Orthanc down) gives its slot back. With one slot,
// two requests to an address that refuses connections each fail with
// the connection's error, not waiting for a slot the one before kept,
// and once Orthanc listens there a third gets its file.
func TestMaxRequestsSlotFreedWhenConnectionFails(t *testing.T) {
	addr := testharness.FreeAddr(t) // nothing listens there until Orthanc starts below
	c, err := orthancapi.New("http://"+addr, orthancapi.WithMaxRequests(1))
	if err != nil {
		t.Fatal(err)
	}
	// fetch reads the instance's file within a deadline that only a
	// request waiting for a slot kept by another runs into.
	fetch := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rc, _, err := c.OpenInstanceFile(ctx, slotInstance(1))
		if err != nil {
			return "", err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		return string(b), err
	}
	for i := range 2 {
		_, err := fetch()
		if opErr, ok := errors.AsType[*net.OpError](err); !ok || opErr.Op != "dial" {
			t.Fatalf("request %d to an address nothing listens on: got %v, want the connection's error", i+1, err)
		}
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom")
		io.WriteString(w, "DICM")
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	if got, err := fetch(); err != nil || got != "DICM" {
		t.Fatalf("once Orthanc listens: got %q, %v; want the file", got, err)
	}
}

func TestMaxRequestsRefusesNegative(t *testing.T) {
	if _, err := orthancapi.New("http://orthanc:8042", orthancapi.WithMaxRequests(-1)); err == nil {
		t.Fatal("New accepted WithMaxRequests(-1)")
	}
}

// TestShareSlotsLeavesOneToEachOtherOwner: with a cap of 4 shared by
// three destinations, one whose streams stall holds at most 2 (the cap
// less one for each other), its third request waits and says so, and the
// others still get a slot each; a request of no owner takes one of the
// cap alone. A full cap's error names who holds the slots. Given one
// slot for requests of no owner (the single host's ingest), a lone
// destination leaves it one.
func TestShareSlotsLeavesOneToEachOtherOwner(t *testing.T) {
	s, srv := newSlotOrthanc(t)
	newClient := func(max int) *orthancapi.Client {
		c, err := orthancapi.New(srv.URL, orthancapi.WithMaxRequests(max))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	next := 0
	open := func(c *orthancapi.Client, owner string, wait time.Duration) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if owner != "" {
			ctx = orthancapi.ForSlotOwner(ctx, owner)
		}
		next++
		id := slotInstance(next)
		rc, _, err := c.OpenInstanceFile(ctx, id)
		if err == nil {
			t.Cleanup(func() { s.finish(id); rc.Close() })
		}
		return err
	}
	mustOpen := func(c *orthancapi.Client, owner string) {
		t.Helper()
		if err := open(c, owner, 10*time.Second); err != nil {
			t.Fatalf("%s: %v", owner, err)
		}
	}
	waits := func(c *orthancapi.Client, owner, want string) {
		t.Helper()
		if err := open(c, owner, 100*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: got %v, want it to wait, saying %q", owner, err, want)
		}
	}

	c := newClient(4)
	c.ShareSlots([]string{"ai", "archive", "dr"}, 0)
	mustOpen(c, "ai")
	mustOpen(c, "ai")
	waits(c, "ai", "all 2 of this destination's share are its requests in flight or waiting; held: ai 2)")
	mustOpen(c, "archive")
	mustOpen(c, "") // no owner: the cap's last slot
	waits(c, "dr", "(held: ai 2, archive 1)")
	got := c.Slots()
	if got.InUse != 4 || got.Waits != 1 {
		t.Errorf("Slots() = %+v, want 4 in use, 1 wait for the cap (dr's; ai's was for its share)", got)
	}
	// ai's wait was for its share, dr's for the cap.
	for i := range got.Shares {
		if got.Shares[i].Waited < 100*time.Millisecond*time.Duration(got.Shares[i].Waits) {
			t.Errorf("%s's share waited %v for %d waits, want at least 100 ms each", got.Shares[i].Owner, got.Shares[i].Waited, got.Shares[i].Waits)
		}
		got.Shares[i].Waited = 0
	}
	if want := []orthancapi.SlotShare{{Owner: "ai", Size: 2, Held: 2, Waits: 1}, {Owner: "archive", Size: 2, Held: 1}, {Owner: "dr", Size: 2}}; !reflect.DeepEqual(got.Shares, want) {
		t.Errorf("Slots().Shares = %+v, want %+v", got.Shares, want)
	}

	lone := newClient(2)
	lone.ShareSlots([]string{"archive"}, 1)
	mustOpen(lone, "archive")
	waits(lone, "archive", "all 1 of this destination's share")
	mustOpen(lone, "")
}

// Requests of a destination waiting for the cap hold slots of its share,
// not of the cap: a request that then finds its share full names who
// holds the cap's slots, the hung destination, not itself.
func TestShareSlotsNamesTheHolders(t *testing.T) {
	s, srv := newSlotOrthanc(t)
	c, err := orthancapi.New(srv.URL, orthancapi.WithMaxRequests(4))
	if err != nil {
		t.Fatal(err)
	}
	c.ShareSlots([]string{"ai", "archive"}, 0)
	var wg sync.WaitGroup
	for i := range 4 {
		owner := "ai"
		if i == 3 {
			owner = "archive"
		}
		rc, _, err := c.OpenInstanceFile(orthancapi.ForSlotOwner(t.Context(), owner), slotInstance(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.finish(slotInstance(i)); rc.Close() })
	}
	// Two more of archive's wait for the cap, holding its share's last
	// two places.
	ctx, cancel := context.WithCancel(t.Context())
	for i := range 2 {
		wg.Go(func() {
			if _, _, err := c.OpenInstanceFile(orthancapi.ForSlotOwner(ctx, "archive"), slotInstance(10+i)); err == nil {
				t.Error("a request got a slot of a full cap")
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Slots().Waits < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	short, cancelShort := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancelShort()
	_, _, err = c.OpenInstanceFile(orthancapi.ForSlotOwner(short, "archive"), slotInstance(20))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "held: ai 3, archive 1)") {
		t.Errorf("archive's request with its share full: got %v, want the cap's holders named truly", err)
	}
	cancel()
	wg.Wait()
}
