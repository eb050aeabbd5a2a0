package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// blockingSource serves a few bytes, then blocks until its context ends:
// an Orthanc that stopped serving.
type blockingSource struct{ ctx context.Context }

func (s blockingSource) Read(p []byte) (int, error) {
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}
func (blockingSource) Close() error { return nil }

// A request that stopped moving is given up as a time-out, whichever side
// stopped: a destination that never answers must not hold a study for
// good. It is a time-out with no answer when the destination stopped, and
// the part's when its source did: an Orthanc that stopped serving is no
// destination down (the breaker would open on it).
func TestStalledRequestGivenUp(t *testing.T) {
	var release chan struct{} // each case's: closed before its server
	silent := func(read bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if read {
				io.Copy(io.Discard, r.Body)
			}
			select { // never answers
			case <-release:
			case <-r.Context().Done():
			}
		})
	}
	tests := []struct {
		name    string
		handler http.Handler
		part    Part
		// source: the source stalled, not the destination.
		source bool
	}{
		{"no answer after the body", silent(true), uidPart("1.1", nil), false},
		{"the destination stops reading", silent(false), (&trackedSource{size: 256 << 20}).part("1.2"), false},
		{"the source stops serving", silent(true), Part{SOPInstanceUID: "1.3", Size: -1, Open: func(ctx context.Context) (io.ReadCloser, error) {
			return blockingSource{ctx}, nil
		}}, true},
		{"the source does not open", silent(true), Part{SOPInstanceUID: "1.4", Size: -1, Open: func(ctx context.Context) (io.ReadCloser, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stallClient(t, tt.handler, &release, 300*time.Millisecond, 300*time.Millisecond)
			start := time.Now()
			_, err := c.Store(t.Context(), []Part{tt.part})
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoAnswer) == tt.source {
				t.Fatalf("Store = %v, want a time-out, with no answer: %v", err, !tt.source)
			}
			if tt.source && !strings.Contains(err.Error(), tt.part.SOPInstanceUID) {
				t.Errorf("Store = %v, want the part's SOP Instance UID named", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("given up after %s", d)
			}
		})
	}
}

// stallClient is a client of a server of h with the time-outs given,
// closed with the test after *release, a fresh channel its handlers wait
// on (a handler that reads nothing does not see the client go), and
// checked for goroutines left.
func stallClient(t *testing.T, h http.Handler, release *chan struct{}, stall, response time.Duration) *Client {
	t.Helper()
	checkNoGoroutineLeak(t)
	*release = make(chan struct{})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ch := *release
	t.Cleanup(func() { close(ch) })
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c, err := New(srv.URL, hc, withTimeouts(stall, response))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The stall time-out bounds a body that does not move, the response
// time-out the wait for an answer once the body is sent; neither stands
// in for the other. A destination that stops reading is given up at
// about the stall time-out, not the response time-out; one that read the
// whole body and answers after more than the stall time-out (but within
// the response time-out) is no stalled request. The margins are wide for
// a loaded host: the slow answer comes at five times the stall time-out,
// and the response time-out is more than six times as long again.
func TestStallAndResponseTimeoutsApart(t *testing.T) {
	const (
		stall    = 300 * time.Millisecond
		response = 10 * time.Second
		answerIn = 1500 * time.Millisecond
	)
	var release chan struct{} // each case's: closed before its server
	var log requestLog
	tests := []struct {
		name    string
		handler http.Handler
		part    Part
		stored  bool
	}{
		{"the destination stops reading", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select { // reads nothing, never answers
			case <-release:
			case <-r.Context().Done():
			}
		}), (&trackedSource{size: 256 << 20}).part("1.1"), false},
		{"the destination answers late", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			select {
			case <-time.After(answerIn):
			case <-r.Context().Done():
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			fakeSTOWHandler(t, &log).ServeHTTP(w, r)
		}), uidPart("1.2", nil), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stallClient(t, tt.handler, &release, stall, response)
			start := time.Now()
			_, err := c.Store(t.Context(), []Part{tt.part})
			d := time.Since(start)
			if tt.stored {
				if err != nil {
					t.Fatalf("Store = %v after %s, want it stored: an answer %s after the body is within the response time-out", err, d, answerIn)
				}
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrNoAnswer) {
				t.Fatalf("Store = %v, want a time-out with no answer", err)
			}
			if d > response/2 {
				t.Errorf("given up after %s, want about the stall time-out (%s), well before the response time-out (%s)", d, stall, response)
			}
		})
	}
}

// slowSource yields 4 KiB every 100 ms, n times.
type slowSource struct{ n int }

func (s *slowSource) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	s.n--
	time.Sleep(100 * time.Millisecond)
	return copy(p, make([]byte, min(len(p), 4096))), nil
}
func (*slowSource) Close() error { return nil }

// A slow request that keeps moving is not given up: its body takes three
// times the stall time-out. A chunk every tenth of the stall time-out
// leaves room for the test process to be paused on a loaded host.
func TestSlowRequestNotGivenUp(t *testing.T) {
	var log requestLog
	srv := fakeSTOW(t, &log)
	c, err := New(srv.URL, nil, withTimeouts(time.Second, 5*time.Second), withBufferSize(4096))
	if err != nil {
		t.Fatal(err)
	}
	// It starts with the UID line fakeSTOW answers for.
	part := Part{SOPInstanceUID: "1.1", Size: -1, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("UID:1.1\n"), &slowSource{n: 30})), nil
	}}
	if _, err := c.Store(t.Context(), []Part{part}); err != nil {
		t.Fatalf("Store = %v, want it stored", err)
	}
}

// A QIDO-RS listing, a probe or a DELETE that gets no answer is given up
// after the response time-out as a STOW-RS request is: verification
// (STOW_VERIFY=qido) and delete-and-replace held the study and its worker
// for good on a destination that took the request and never answered.
func TestBodilessRequestGivenUp(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c, err := New(srv.URL, hc, withTimeouts(time.Minute, 300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		call     func() error
		noAnswer bool
	}{
		{"listing", func() error { _, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3}); return err }, true},
		{"probe", func() error { return c.Probe(t.Context(), "1.2.3") }, true},
		{"delete", func() error { return c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.9", "1.2.3.0") }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := tt.call()
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoAnswer) != tt.noAnswer {
				t.Fatalf("err = %v, want a time-out with no answer", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("given up after %s", d)
			}
		})
	}
}
