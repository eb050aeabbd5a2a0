package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/faultproxy"
)

// TestMaybeStored: a request whose body went and whose answer could not
// be read may have been stored (a proxy's 504 while the server went on
// storing, a 2xx cut off or too large); one refused or never sent was
// not.
func TestMaybeStored(t *testing.T) {
	stow := `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]}}`
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter)
		opts   []Option
		want   bool
	}{
		{"gateway 504 page", func(w http.ResponseWriter) {
			http.Error(w, "<html>504 Gateway Time-out</html>", http.StatusGatewayTimeout)
		}, nil, true},
		{"bad gateway, empty", func(w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) }, nil, true},
		{"408 page", func(w http.ResponseWriter) { http.Error(w, "timeout", http.StatusRequestTimeout) }, nil, true},
		{"200 cut off", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"00081199":`)
		}, nil, true},
		{"200 too large", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = io.WriteString(w, stow+strings.Repeat(" ", 4096))
		}, []Option{withMaxResponseBytes(1024)}, true},
		{"500 with a STOW body naming the instance", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, stow)
		}, nil, false},
		{"400 page", func(w http.ResponseWriter) { http.Error(w, "bad", http.StatusBadRequest) }, nil, false},
		{"429", func(w http.ResponseWriter) { http.Error(w, "slow down", http.StatusTooManyRequests) }, nil, false},
		{"501", func(w http.ResponseWriter) { http.Error(w, "no PUT", http.StatusNotImplemented) }, nil, false},
		{"503 page", func(w http.ResponseWriter) { http.Error(w, "busy", http.StatusServiceUnavailable) }, nil, false},
		{"500 page", func(w http.ResponseWriter) { http.Error(w, "oops", http.StatusInternalServerError) }, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				tt.answer(w)
			}))
			t.Cleanup(srv.Close)
			c, err := New(srv.URL, nil, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Store(t.Context(), []Part{memPart("1.2.3", []byte("x"))})
			if err == nil {
				t.Fatal("stored, want an error")
			}
			if got := MaybeStored(err); got != tt.want {
				t.Errorf("MaybeStored(%v) = %v, want %v", err, got, tt.want)
			}
		})
	}
	t.Run("not connected", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		c, err := New(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Store(t.Context(), []Part{memPart("1.2.3", []byte("x"))})
		if err == nil || MaybeStored(err) {
			t.Errorf("err %v: want an error, not MaybeStored: nothing was sent", err)
		}
	})
}

// TestMaybeStoredWithoutAnAnswer: a request whose body went on a
// connection that then gave no answer may have been stored: a stall
// after the body, a new connection closed before an answer, and a
// request sent again after its reused connection broke, whatever its
// second sending's failure (the first one may have stored).
func TestMaybeStoredWithoutAnAnswer(t *testing.T) {
	t.Run("no answer after the body", func(t *testing.T) {
		var release chan struct{}
		c := stallClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			select { // never answers
			case <-release:
			case <-r.Context().Done():
			}
		}), &release, 300*time.Millisecond, 300*time.Millisecond)
		_, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)})
		if !errors.Is(err, context.DeadlineExceeded) || !MaybeStored(err) {
			t.Errorf("Store = %v, want a time-out that MaybeStored", err)
		}
	})
	t.Run("new connection closed before an answer", func(t *testing.T) {
		checkNoGoroutineLeak(t)
		var log requestLog
		srv := droppingSTOW(t, &log, func(n int32) bool { return n == 1 })
		hc := &http.Client{Transport: &http.Transport{}}
		t.Cleanup(hc.CloseIdleConnections)
		c, _ := New(srv.URL, hc)
		_, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)})
		if !errors.Is(err, ErrNoAnswer) || !MaybeStored(err) {
			t.Errorf("Store = %v, want no answer that MaybeStored", err)
		}
	})
	t.Run("sent again and refused", func(t *testing.T) {
		checkNoGoroutineLeak(t)
		// The first POST is answered, the second (on the same kept-alive
		// connection) dropped, the one sent again refused with a 503,
		// which alone says nothing was stored.
		var posts atomic.Int32
		var log requestLog
		stow := fakeSTOWHandler(t, &log)
		drop := &faultproxy.OnceOnConn{N: 2}
		srv := faultproxy.StartConnDropper(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if posts.Add(1) == 1 {
				stow.ServeHTTP(w, r)
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}), func(r *http.Request, n int32) bool {
			if !drop.Drop(r, n) {
				return false
			}
			_, _ = io.Copy(io.Discard, r.Body)
			return true
		})
		hc := &http.Client{Transport: &http.Transport{}}
		t.Cleanup(hc.CloseIdleConnections)
		c, _ := New(srv.URL, hc)
		if _, err := c.Store(t.Context(), []Part{uidPart("1.1", nil)}); err != nil {
			t.Fatalf("first Store: %v", err)
		}
		_, err := c.Store(t.Context(), []Part{uidPart("1.2", nil)})
		he, ok := errors.AsType[*HTTPError](err)
		if !ok || he.StatusCode != http.StatusServiceUnavailable || drop.Dropped() != 1 {
			t.Fatalf("Store = %v (dropped %d), want the 503 of the request sent again", err, drop.Dropped())
		}
		if !MaybeStored(err) {
			t.Errorf("MaybeStored(%v) = false, want true: the dropped first sending may have stored", err)
		}
	})
}

// failingReader yields data, then fails with err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestBrokenAt: a body that broke off on a part, whatever broke it,
// names that part, so the caller can take those before it as perhaps
// stored; a failure with no broken body names none.
func TestBrokenAt(t *testing.T) {
	reset := func(ctx context.Context) (io.ReadCloser, error) {
		return nil, syscall.ECONNRESET
	}
	readReset := func(ctx context.Context) (io.ReadCloser, error) {
		return io.NopCloser(&failingReader{data: []byte("UID:1.2\n"), err: syscall.ECONNRESET}), nil
	}
	stalls := func(ctx context.Context) (io.ReadCloser, error) {
		return blockingSource{ctx}, nil
	}
	stored := func(t *testing.T) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = w.Write(stowJSON(t, []string{"1.1", "1.2", "1.3"}, nil, 0))
		})
	}
	tests := []struct {
		name string
		open func(context.Context) (io.ReadCloser, error)
		// size: the broken part's Size, announced (WithContentLength)
		// when not -1.
		size int64
		// answered: the transport answers 200 to what it read.
		answered bool
		// handler: the server; stored when nil.
		handler func(*testing.T) http.Handler
		want    string
	}{
		{"source refuses to open", reset, -1, false, nil, "1.2"},
		{"source breaks mid-part", readReset, -1, false, nil, "1.2"},
		{"source stalls", stalls, -1, false, nil, "1.2"},
		{"size other than announced", func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("UID:1.2\n")), nil
		}, 100, false, nil, "1.2"},
		{"200 to a broken body", reset, -1, true, nil, "1.2"},
		{"gateway 504, body whole", nil, -1, false, func(*testing.T) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				http.Error(w, "<html>504 Gateway Time-out</html>", http.StatusGatewayTimeout)
			})
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := stored
			if tt.handler != nil {
				h = tt.handler
			}
			var opts []Option
			if tt.size >= 0 {
				opts = append(opts, WithContentLength())
			}
			var release chan struct{}
			c := stallClient(t, h(t), &release, 300*time.Millisecond, 300*time.Millisecond)
			if tt.answered {
				rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
					_, _ = io.Copy(io.Discard, req.Body)
					req.Body.Close()
					return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/dicom+json"}},
						Body: io.NopCloser(bytes.NewReader(stowJSON(t, []string{"1.1"}, nil, 0))), Request: req}, nil
				})
				var err error
				if c, err = New("http://dest.test/dicom-web", &http.Client{Transport: rt}); err != nil {
					t.Fatal(err)
				}
			} else if len(opts) > 0 {
				for _, o := range opts {
					if err := o(c); err != nil {
						t.Fatal(err)
					}
				}
			}
			broken := uidPart("1.2", nil)
			if tt.open != nil {
				broken = Part{SOPInstanceUID: "1.2", Size: tt.size, Open: tt.open}
			}
			_, err := c.Store(t.Context(), []Part{uidPart("1.1", nil), broken, uidPart("1.3", nil)})
			if err == nil {
				t.Fatal("stored, want an error")
			}
			if uid, ok := BrokenAt(err); uid != tt.want || ok != (tt.want != "") {
				t.Errorf("BrokenAt(%v) = %q, %v; want %q", err, uid, ok, tt.want)
			}
		})
	}
}

// TestRenameBroken: the part a broken body names is renamed when the
// renamer knows it, the error's chain kept; any other error, or a name
// it does not know, is returned as it is.
func TestRenameBroken(t *testing.T) {
	names := map[string]string{"2.25.1": "1.2"}
	rename := func(uid string) (string, bool) { o, ok := names[uid]; return o, ok }
	cause := syscall.ECONNRESET
	for _, tt := range []struct {
		name   string
		err    error
		want   string // BrokenAt after the rename; "": none
		wantIs error
	}{
		{"known", &brokenBodyError{uid: "2.25.1", err: cause}, "1.2", cause},
		{"unknown", &brokenBodyError{uid: "2.25.2", err: cause}, "2.25.2", cause},
		{"not broken", cause, "", cause},
		{"nil", nil, "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := RenameBroken(tt.err, rename)
			if uid, ok := BrokenAt(err); uid != tt.want || ok != (tt.want != "") {
				t.Errorf("BrokenAt = %q, %v; want %q", uid, ok, tt.want)
			}
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("%v is not %v: the chain was lost", err, tt.wantIs)
			}
		})
	}
}
