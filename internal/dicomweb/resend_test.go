package dicomweb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/internal/faultproxy"
)

// droppingSTOW is fakeSTOW, answering a DELETE with 204, except that a
// request for which drop (given its number on its connection, from 1)
// says so is read whole and its connection closed without an answer: a
// keep-alive connection a server or load balancer closes as a request
// arrives.
func droppingSTOW(t *testing.T, log *requestLog, drop func(onConn int32) bool) *httptest.Server {
	t.Helper()
	stow := fakeSTOWHandler(t, log)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			log.add(r, nil, nil, 0)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		stow.ServeHTTP(w, r)
	})
	return faultproxy.StartConnDropper(t, next, func(r *http.Request, n int32) bool {
		if !drop(n) {
			return false
		}
		_, _ = io.Copy(io.Discard, r.Body)
		log.add(r, nil, errors.New("dropped"), 0)
		return true
	})
}

// reusedThenBroken is a client that stored one instance at a droppingSTOW
// that drops the next request on that kept-alive connection, once.
func reusedThenBroken(t *testing.T, log *requestLog) *Client {
	t.Helper()
	drop := &faultproxy.OnceOnConn{N: 2}
	srv := droppingSTOW(t, log, func(n int32) bool { return drop.Drop(nil, n) })
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c, _ := New(srv.URL, hc)
	if _, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)}); err != nil {
		t.Fatalf("first Store: %v", err)
	}
	return c
}

func TestStoreSentAgainOnABrokenReusedConnection(t *testing.T) {
	checkNoGoroutineLeak(t)
	var log requestLog
	c := reusedThenBroken(t, &log)

	src := &trackedSource{size: 300 << 10}
	parts := []Part{uidPart("1.2", nil), src.part("1.3"), uidPart("1.4", nil)}
	res, err := c.Store(t.Context(), parts)
	if err != nil {
		t.Fatalf("Store on a connection the server broke: %v; want it sent again on a new one", err)
	}
	if got := len(res.Stored); got != 2 { // the tracked part carries no UID line
		t.Errorf("stored %d instances, want 2", got)
	}
	if !res.Resent {
		t.Error("the answer of the request sent again is not marked Resent: the caller takes the server's copies of the first sending for conflicts")
	}
	if n := log.count(); n != 3 {
		t.Errorf("server saw %d requests, want 3 (the first, the dropped one, the one sent again)", n)
	}
	if o, cl := src.opened.Load(), src.closed.Load(); o != 2 || cl != 2 {
		t.Errorf("the source was opened %d times and closed %d, want 2 and 2", o, cl)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if last := log.parts[len(log.parts)-1]; len(last) != 3 || int64(len(last[1].data)) != src.size {
		t.Errorf("the request sent again carried %d parts, want 3 whole ones", len(last))
	}
}

// A request sent again that the destination refuses (409, its first
// sending's copies "already exist", as Orthanc or Azure may answer) is
// marked Resent too: the caller reads the answer from the HTTPError's
// Result, and unmarked it takes those copies for another sender's
// (conflicts, dead-lettered or replaced) where they may be its own.
func TestStoreRefusalOfTheRequestSentAgainIsMarkedResent(t *testing.T) {
	checkNoGoroutineLeak(t)
	var log requestLog
	c := reusedThenBroken(t, &log)
	_, err := c.Store(t.Context(), []Part{failPart("1.2"), failPart("1.3")})
	he, ok := errors.AsType[*HTTPError](err)
	if !ok || he.StatusCode != http.StatusConflict || he.Result == nil {
		t.Fatalf("err = %v, want a 409 HTTPError with the STOW answer", err)
	}
	if len(he.Result.Failed) != 2 {
		t.Errorf("the answer names %d failed instances, want 2", len(he.Result.Failed))
	}
	if !he.Result.Resent {
		t.Error("the refusal of the request sent again is not marked Resent: the caller takes the server's copies of the first sending for conflicts")
	}
	if n := log.count(); n != 3 {
		t.Errorf("server saw %d requests, want 3 (the first, the dropped one, the one sent again)", n)
	}
}

// A DELETE (STOW_ON_CONFLICT=replace, method delete) is idempotent but
// not a GET: net/http does not send it again after a kept-alive
// connection broke as it was reused, and the replace failed as "no
// answer", counted by the circuit breaker.
func TestDeleteSentAgainOnABrokenReusedConnection(t *testing.T) {
	checkNoGoroutineLeak(t)
	var log requestLog
	c := reusedThenBroken(t, &log)
	if err := c.DeleteInstance(t.Context(), "1.2", "1.2.1", "1.1"); err != nil {
		t.Fatalf("DELETE on a connection the server broke: %v; want it sent again on a new one", err)
	}
	if n := log.count(); n != 3 {
		t.Errorf("server saw %d requests, want 3 (the STOW-RS one, the dropped DELETE, the one sent again)", n)
	}
}

func TestStoreNotSentAgainOnANewConnection(t *testing.T) {
	checkNoGoroutineLeak(t)
	var log requestLog
	srv := droppingSTOW(t, &log, func(n int32) bool { return n == 1 })
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	c, _ := New(srv.URL, hc)
	_, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)})
	if !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("err = %v, want ErrNoAnswer", err)
	}
	// A new connection broken says the server is at fault, not a closed
	// keep-alive connection: the caller's retry policy decides.
	if n := log.count(); n != 1 {
		t.Errorf("server saw %d requests, want 1", n)
	}
}

// A part's source read over HTTP on a kept-alive connection (Orthanc,
// for every instance) makes no new STOW-RS connection a reused one: the
// request it broke is not sent again.
func TestStoreNotSentAgainOnANewConnectionAfterASourceRequest(t *testing.T) {
	checkNoGoroutineLeak(t)
	source := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("UID:1.1\n"))
	}))
	t.Cleanup(source.Close)
	sourceHC := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(sourceHC.CloseIdleConnections)
	get := func(ctx context.Context) (io.ReadCloser, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, source.URL, nil)
		if err != nil {
			return nil, err
		}
		resp, err := sourceHC.Do(req)
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
	// The source's connection is kept alive, as Orthanc's are.
	rc, err := get(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, rc)
	rc.Close()

	var log requestLog
	srv := droppingSTOW(t, &log, func(n int32) bool { return n == 1 })
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c, _ := New(srv.URL, hc)
	_, err = c.Store(t.Context(), []Part{{SOPInstanceUID: "1.1", Size: -1, Open: get}})
	if !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("err = %v, want ErrNoAnswer", err)
	}
	if n := log.count(); n != 1 {
		t.Errorf("server saw %d requests, want 1: the broken connection was a new one", n)
	}
}

func TestStoreSourceFailureNotReadAgain(t *testing.T) {
	checkNoGoroutineLeak(t)
	var log requestLog
	srv := droppingSTOW(t, &log, func(int32) bool { return false })
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	c, _ := New(srv.URL, hc)
	if _, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)}); err != nil {
		t.Fatalf("first Store: %v", err)
	}
	boom := errors.New("orthanc: cannot transcode")
	var opened atomic.Int32
	failing := Part{SOPInstanceUID: "9.9", Size: -1, Open: func(context.Context) (io.ReadCloser, error) {
		opened.Add(1)
		return nil, boom
	}}
	_, err := c.Store(t.Context(), []Part{failing, uidPart("1.2", nil)})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the source's failure", err)
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("the failing source was opened %d times, want 1", n)
	}
}
