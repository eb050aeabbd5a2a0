package bandwidth

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stowline/stowline/internal/flow"
)

// The cap is the feature, so this test measures a rate: several
// requests at once, through one limiter, for about five seconds, must
// together send within 10% of the cap.
func TestTransportCapsRate(t *testing.T) {
	if testing.Short() {
		t.Skip("measures a rate for 5 s")
	}
	const (
		limit    = 2 << 20 // bytes per second
		requests = 3
		seconds  = 5
	)
	var received atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		received.Add(n)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	l := New(limit)
	client := &http.Client{Transport: l.Transport(http.DefaultTransport)}
	// Each request alone would send the whole volume: the shared bucket
	// is what holds them back.
	payload := bytes.Repeat([]byte{0x5a}, limit*seconds/requests)
	start := time.Now()
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL, bytes.NewReader(payload))
			if err != nil {
				t.Error(err)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	got := float64(received.Load()) / elapsed.Seconds()
	t.Logf("sent %d bytes in %s: %.0f B/s, cap %d B/s (%.1f%%)", received.Load(), elapsed.Round(time.Millisecond), got, limit, 100*got/limit)
	if received.Load() != int64(len(payload)*requests) {
		t.Fatalf("received %d bytes, want %d", received.Load(), len(payload)*requests)
	}
	if got < 0.9*limit || got > 1.1*limit {
		t.Errorf("rate %.0f B/s, want within 10%% of %d", got, limit)
	}
}

// Replicas share the cap: each takes its part.
func TestSetReplicas(t *testing.T) {
	tests := []struct {
		limit    int64
		replicas int
		want     int64
	}{
		{10 << 20, 1, 10 << 20},
		{10 << 20, 4, 10 << 20 / 4},
		{10 << 20, 0, 10 << 20},
		{3, 5, 1},
		{0, 3, 0},
	}
	for _, tt := range tests {
		l := New(tt.limit)
		l.SetReplicas(tt.replicas)
		if got := l.Rate(); got != tt.want {
			t.Errorf("cap %d over %d replicas: rate %d, want %d", tt.limit, tt.replicas, got, tt.want)
		}
		// The bucket holds a twentieth of a second of the share, not of
		// the whole cap: else each replica could send that much more
		// ahead of its share at once.
		if tt.want > 0 {
			if got, want := l.lim.Burst(), burst(tt.want); got != want {
				t.Errorf("cap %d over %d replicas: burst %d, want %d", tt.limit, tt.replicas, got, want)
			}
		}
	}
}

// Without a cap the transport and reader are the ones given.
func TestNoCap(t *testing.T) {
	var l *Limiter
	if l.Transport(http.DefaultTransport) != http.DefaultTransport || New(0).Transport(http.DefaultTransport) != http.DefaultTransport {
		t.Error("no cap wrapped the transport")
	}
	r := bytes.NewReader(nil)
	if New(0).Reader(context.Background(), r) != r {
		t.Error("no cap wrapped the reader")
	}
}

// A reader waiting for the bucket ends with its context.
func TestReaderCancelled(t *testing.T) {
	l := New(1 << 10)
	ctx, cancel := context.WithCancel(t.Context())
	r := l.Reader(ctx, bytes.NewReader(make([]byte, 1<<20)))
	buf := make([]byte, 8<<10)
	if _, err := r.Read(buf); err != nil { // the first burst is free
		t.Fatal(err)
	}
	cancel()
	if _, err := r.Read(buf); err == nil {
		t.Fatal("read went on after the context ended")
	}
}

// shrinkingReader lowers the limiter's burst (a replica joined) while
// the read is under way, then fills the whole buffer.
type shrinkingReader struct{ l *Limiter }

func (s shrinkingReader) Read(p []byte) (int, error) {
	s.l.SetReplicas(4)
	return len(p), nil
}

// A chunk read under the old burst still passes once the burst shrank
// during the read: the wait is taken in pieces of the new burst.
func TestReaderBurstShrinksDuringRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(1 << 20)
		r := l.Reader(t.Context(), shrinkingReader{l})
		n, err := r.Read(make([]byte, 1<<20))
		if err != nil || n != burst(1<<20) {
			t.Fatalf("read %d bytes, err %v; want %d and no error", n, err, burst(1<<20))
		}
	})
}

// The cap's waits are told to the request's limit (flow.ReportWait): a
// cap below what the destination takes made each request slower as more
// ran at once, which the adaptive limit read as the destination's latency
// and answered by lowering the requests in flight.
func TestReaderReportsItsWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate = 1 << 20
		l := New(rate)
		var waited atomic.Int64
		ctx := flow.WithWaitReport(t.Context(), func(d time.Duration) { waited.Add(int64(d)) })
		start := time.Now()
		if _, err := io.Copy(io.Discard, l.Reader(ctx, bytes.NewReader(make([]byte, 3*rate)))); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if got := time.Duration(waited.Load()); got < took-100*time.Millisecond || got > took {
			t.Errorf("reported waits %s, want about the %s the copy took", got, took)
		}
	})
}
