package forward

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// A destination that closes a kept-alive connection just as the next
// study's STOW-RS request is sent on it (Orthanc's CivetWeb after 1 s
// idle, below the forwarder's 50 s IdleConnTimeout; a load balancer's
// idle time-out) costs the study nothing: the request is sent again on a
// new connection within the same attempt, with no failure, no retry
// and no delivery spent (not sent again, the attempt failed as "no
// answer", was retried with backoff and spent a delivery).
func TestKeepAliveClosedAsReusedCostsNothing(t *testing.T) {
	ns := testnats.Start(t)
	src := newMemSource(2)
	var k sink
	// The second request on a connection, once: closed unread.
	drop := &faultproxy.OnceOnConn{N: 2}
	srv := faultproxy.StartConnDropper(t, k.handler(nil), drop.Drop)
	cons := consumer(t, ns)
	rec := &recordingObserver{}
	f := newForwarder(t, src, srv.URL, cons, func(o *Options) { o.Observer = rec })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	first, second := testEvent(), testEvent()
	second.OrthancStudyID, second.StudyInstanceUID = "3e1a0b47-5c1bd0a2-8f0e6a1d-29c44f5e-0b7d2c31", "1.2.4"
	for i, ev := range []*events.StudyStable{first, second} {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		// One study at a time: the second's request goes on the
		// connection the first one's left idle.
		waitConsumer(t, cons, func(c *jetstream.ConsumerInfo) bool { return c.AckFloor.Stream == uint64(i+1) && c.NumAckPending == 0 })
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if drop.Dropped() != 1 {
		t.Fatal("no request met a closed kept-alive connection: the test proves nothing")
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 2 {
		t.Errorf("%d deliveries for 2 studies, want 2", info.Delivered.Consumer)
	}
	if got := k.requests.Load(); got != 2 {
		t.Errorf("the destination answered %d STOW-RS requests, want 2", got)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.started != 2 || rec.finished[ResultForwarded] != 2 {
		t.Errorf("observer: %d attempts started, finished %v; want 2 attempts, both forwarded", rec.started, rec.finished)
	}
	for _, rep := range rec.reports {
		if rep.Requests != 1 || rep.Instances != 2 {
			t.Errorf("an attempt sent %d instances in %d requests, want 2 in 1", rep.Instances, rep.Requests)
		}
	}
}

// A destination that stored a request's instances and then closed its
// kept-alive connection before answering (a load balancer's idle
// time-out, a restart) answers the request sent again "already exists"
// (Azure's 45070): likely stowline's own copies, unproven, so stored and
// kept in the source, not conflicts (deadletter dead-lettered the study,
// skip counted and alerted them as conflicts).
func TestStoredBeforeTheConnectionBrokeIsNoConflict(t *testing.T) {
	for _, action := range []string{ConflictDeadLetter, ConflictSkip} {
		t.Run(action, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			// The second request on a connection, once: stored, then
			// its connection closed without an answer.
			drop := &faultproxy.OnceOnConn{N: 2}
			srv := faultproxy.StartConnDropper(t, dest, func(r *http.Request, n int32) bool {
				if !drop.Drop(r, n) {
					return false
				}
				dest.ServeHTTP(httptest.NewRecorder(), r)
				return true
			})
			client := warmClient(t, srv.URL, 1024)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			var logs testharness.LogBuffer
			f := newForwarder(t, newMemSource(2), srv.URL, cons, out.options, func(o *Options) {
				o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
				o.Destination = client
				o.Failures = &memFailureLog{}
				o.MaxDeliveries = 1
				o.Conflicts = azureConflicts(action)
			})
			f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")
			if drop.Dropped() != 1 {
				t.Fatal("no request met a closed kept-alive connection: the test proves nothing")
			}
			if answers := dest.answered(); strings.Count(answers, ":45070") != 2 {
				t.Fatalf("answers %s: want the request sent again answered 45070 for both instances", answers)
			}
			noneSkipped(t, f)
			comps := out.settled(t, 1)
			if kept := comps[0].Kept; len(kept) != 2 {
				t.Errorf("the completion keeps %v in the source, want both instances (the destination's copies are unproven)", kept)
			}
			if got := testutil.ToFloat64(f.m.unproven); got != 2 {
				t.Errorf("stowline_forwarder_instances_unproven_total = %v, want 2", got)
			}
			if out := logs.String(); !strings.Contains(out, `"msg":"destination already holds instances stowline cannot prove it stored`) || !strings.Contains(out, `"instances":2`) {
				t.Errorf("no warning naming the 2 unproven instances in:\n%s", out)
			}
		})
	}
}

// unreadOnce is a memSource of 1 MiB instances (a body that breaks off
// after them has sent them, not left them in a buffer) whose instance
// id Orthanc fails to read once (its own 500).
type unreadOnce struct {
	*memSource
	id     string
	failed atomic.Bool
}

func newUnreadOnce(n, unread int) *unreadOnce {
	s := &unreadOnce{memSource: newMemSource(n)}
	for i := range s.instances {
		s.instances[i].FileSize = 1 << 20
		s.data[s.instances[i].ID] = bytes.Repeat([]byte{byte(i)}, 1<<20)
	}
	s.id = s.instances[unread].ID
	return s
}

func (s *unreadOnce) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	if id == s.id && s.failed.CompareAndSwap(false, true) {
		return nil, 0, &orthancapi.Error{StatusCode: http.StatusInternalServerError, OrthancMessage: "The path does not point to a regular file"}
	}
	return s.memSource.OpenInstanceFile(ctx, id)
}

// A request whose body broke off on an instance the source failed to
// read, at a destination that stores parts as it reads them, got the
// instances before it stored: the rest of the request, sent again at
// once, is answered "already exists" (45070) for them. Unproven, not
// conflicts: "nothing of the request was stored" dead-lettered the study
// (deadletter) or counted them as conflicts (skip).
func TestStoredBeforeTheBodyBrokeOffIsNoConflict(t *testing.T) {
	for _, action := range []string{ConflictDeadLetter, ConflictSkip} {
		t.Run(action, func(t *testing.T) {
			dest := &azureLike{held: map[string]bool{}}
			// The study is one request (RequestConcurrency 1), on the
			// first connection; its body breaks off and closes it, so
			// every later request comes on a later one. Those wait
			// until the broken one is stored: the rest of it is sent
			// again as soon as the body broke off, while the server
			// may not have read the broken one yet (by arrival at the
			// handler, the request sent again could come first, be
			// stored and its instances proven stowline's).
			var conns atomic.Int32
			brokenStored := make(chan struct{})
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Context().Value(connNumber{}) == int32(1) {
					defer close(brokenStored)
				} else {
					<-brokenStored
				}
				dest.ServeHTTP(w, r)
			}))
			srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
				return context.WithValue(ctx, connNumber{}, conns.Add(1))
			}
			srv.Start()
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			var out outcome
			f := newForwarder(t, nil, srv.URL, cons, out.options, func(o *Options) {
				src := newUnreadOnce(3, 2)
				o.SourceFor = func(string) (Source, error) { return src, nil }
				o.RequestConcurrency = 1
				o.MaxBytes = 8 << 20
				o.InstanceRetries = 2
				o.InstanceRetryDelay = 10 * time.Millisecond
				o.Failures = &memFailureLog{}
				o.MaxDeliveries = 1
				o.Conflicts = azureConflicts(action)
			})
			f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")
			const want = "1.2.3.1:stored 1.2.3.2:stored 1.2.3.1:45070 1.2.3.2:45070 1.2.3.3:stored"
			if answers := dest.answered(); answers != want {
				t.Fatalf("answers %s, want %s: 1.2.3.1 and 1.2.3.2 stored from the broken body, answered 45070 sent again, then 1.2.3.3 read again", answers, want)
			}
			noneSkipped(t, f)
			comps := out.settled(t, 1)
			if kept := comps[0].Kept; !slices.Equal(kept, []string{"1.2.3.1", "1.2.3.2"}) {
				t.Errorf("the completion keeps %v in the source, want those stored from the broken body, 1.2.3.1 and 1.2.3.2", kept)
			}
		})
	}
}

// connNumber is the context key of a test server's connection number,
// 1 for the first it accepted.
type connNumber struct{}

// Google's "already exists" is a 409 with Failure Reason 272, a
// conflict once the destination lists the instance (QIDO-RS): listed
// after a request sent again on a new connection, it is no conflict
// either (deadletter dead-lettered the study).
func TestStoredBeforeTheConnectionBrokeListedIsNoConflict(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	var posts atomic.Int32
	answer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		if r.Method == http.MethodGet {
			fmt.Fprintf(w, `[{"00080018":{"vr":"UI","Value":[%q]}}]`, sop)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		if posts.Add(1) == 1 { // the warm-up
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3.100"]}}]}}`)
			return
		}
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}]}}`, sop, dicomweb.FailureProcessing)
	})
	drop := &faultproxy.OnceOnConn{N: 2}
	srv := faultproxy.StartConnDropper(t, answer, func(r *http.Request, n int32) bool {
		if r.Method != http.MethodPost || !drop.Drop(r, n) {
			return false
		}
		_, _ = io.Copy(io.Discard, r.Body) // stored, as Google would
		return true
	})
	client := warmClient(t, srv.URL, 4)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	var out outcome
	f := newForwarder(t, newMemSource(1), srv.URL, cons, out.options, func(o *Options) {
		o.Destination = client
		o.MaxDeliveries = 1
		o.Conflicts = ConflictPolicy{Action: ConflictDeadLetter, Rules: []dicomweb.ConflictRule{{Code: dicomweb.FailureProcessing, Mask: 0xFFFF, Only409: true}}}
	})
	f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")
	if drop.Dropped() != 1 || posts.Load() != 2 {
		t.Fatalf("%d requests dropped, %d answered: want the study's request dropped once and sent again", drop.Dropped(), posts.Load())
	}
	out.noDeadLetters(t)
	if comps := out.completions(); len(comps) != 1 || !slices.Equal(comps[0].Kept, []string{sop}) {
		t.Errorf("completions %+v, want one keeping %s in the source", comps, sop)
	}
}

// warmClient is a DICOMweb client for url whose one kept-alive
// connection has carried a STOW-RS request of an instance 1.2.3.100 of
// size bytes, for the next request to reuse.
func warmClient(t *testing.T, url string, size int) *dicomweb.Client {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	client, err := dicomweb.New(url, hc)
	if err != nil {
		t.Fatal(err)
	}
	warm := dicomweb.Part{SOPInstanceUID: "1.2.3.100", Size: int64(size), Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(bytes.Repeat([]byte{99}, size))), nil
	}}
	if _, err := client.Store(t.Context(), []dicomweb.Part{warm}); err != nil {
		t.Fatal(err)
	}
	return client
}
