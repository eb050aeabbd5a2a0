package dicomweb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// CountBytes counts a whole body, passes open's error on as it is, and
// gives up a source that stops serving, before its answer or mid-body,
// once no byte came for the stall time-out (an Orthanc stand-in: a real
// one does not stall on purpose).
func TestCountBytes(t *testing.T) {
	const size = 100 << 10
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/headers":
			<-r.Context().Done() // no answer at all
			return
		case "/half":
			w.Header().Set("Content-Length", "102400")
			_, _ = w.Write(make([]byte, size/2))
			http.NewResponseController(w).Flush()
			<-r.Context().Done() // the rest never comes
			return
		}
		_, _ = w.Write(make([]byte, size))
	}))
	t.Cleanup(srv.Close)
	get := func(path string) func(context.Context) (io.ReadCloser, error) {
		return func(ctx context.Context) (io.ReadCloser, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
			if err != nil {
				return nil, err
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				return nil, err
			}
			return resp.Body, nil
		}
	}
	gone := errors.New("instance gone")
	// The stall watch starts before open, so the cases that must not
	// stall get a time-out a paused CI process cannot run out; the
	// stalling ones a short one, to end quickly.
	const (
		stalls   = 200 * time.Millisecond
		noStalls = 30 * time.Second
	)
	for _, tc := range []struct {
		name    string
		open    func(context.Context) (io.ReadCloser, error)
		stall   time.Duration
		want    int64
		wantErr error
	}{
		{"whole", get("/whole"), noStalls, size, nil},
		{"open fails", func(context.Context) (io.ReadCloser, error) { return nil, gone }, noStalls, 0, gone},
		{"no answer", get("/headers"), stalls, 0, context.DeadlineExceeded},
		{"stalled mid-body", get("/half"), stalls, 0, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := CountBytes(t.Context(), tc.open, tc.stall)
			if n != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("CountBytes = %d, %v; want %d, %v", n, err, tc.want, tc.wantErr)
			}
		})
	}
}
