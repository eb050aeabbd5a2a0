package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memPart is a Part backed by a byte slice.
func memPart(uid string, data []byte) Part {
	return Part{
		SOPInstanceUID: uid,
		Size:           int64(len(data)),
		Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		},
	}
}

// trackedSource is a Part source that counts what was read, whether it was
// closed and whether its context ended, to check that Store stops reading
// and closes it.
type trackedSource struct {
	size   int64
	read   atomic.Int64
	opened atomic.Int32
	closed atomic.Int32
}

func (s *trackedSource) part(uid string) Part {
	return Part{
		SOPInstanceUID: uid,
		Size:           s.size,
		Open: func(ctx context.Context) (io.ReadCloser, error) {
			s.opened.Add(1)
			return &trackedReader{src: s, left: s.size}, nil
		},
	}
}

type trackedReader struct {
	src  *trackedSource
	left int64
}

func (r *trackedReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.left))
	for i := range p[:n] {
		p[i] = byte(i) // never contains "\r\n--" followed by a boundary
	}
	r.left -= int64(n)
	r.src.read.Add(int64(n))
	return n, nil
}

func (r *trackedReader) Close() error {
	r.src.closed.Add(1)
	return nil
}

// receivedPart is what a fake STOW server saw of one part.
type receivedPart struct {
	header http.Header
	data   []byte
}

// readMultipart parses a STOW request body the way a server would.
func readMultipart(t *testing.T, r *http.Request) ([]receivedPart, error) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, err
	}
	if mt != "multipart/related" || params["type"] != dicomMediaType {
		return nil, errors.New("unexpected content type " + r.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	var parts []receivedPart
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		data, err := io.ReadAll(p)
		if err != nil {
			return parts, err
		}
		parts = append(parts, receivedPart{header: http.Header(p.Header), data: data})
	}
}

// checkNoGoroutineLeak fails the test if, shortly after it ends, more
// goroutines run than before it started.
func checkNoGoroutineLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			now := runtime.NumGoroutine()
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, now, buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// readTestdata reads a file under testdata/.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read testdata: %v", err)
	}
	return b
}

// requestLog records what a fake server saw, safely across handlers.
type requestLog struct {
	mu       sync.Mutex
	requests []*http.Request
	parts    [][]receivedPart
	errs     []error
	bodySize []int64
}

func (l *requestLog) add(r *http.Request, parts []receivedPart, err error, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests = append(l.requests, r)
	l.parts = append(l.parts, parts)
	l.errs = append(l.errs, err)
	l.bodySize = append(l.bodySize, size)
}

func (l *requestLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.requests)
}

// countingBody counts the bytes a handler reads from a request body.
type countingBody struct {
	r io.Reader
	n int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
