package dicomweb

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestMultipartLength: the announced length is what the body writes
// (Store refuses a request of no parts).
func TestMultipartLength(t *testing.T) {
	boundary, err := newBoundary()
	if err != nil {
		t.Fatal(err)
	}
	for _, sizes := range [][]int{{0}, {1}, {10, 0, 70000}, {1 << 20, 3}} {
		var parts []Part
		var contents [][]byte
		for i, n := range sizes {
			c := bytes.Repeat([]byte{'x'}, n)
			contents = append(contents, c)
			parts = append(parts, memPart(string(rune('a'+i)), c))
		}
		body := encodeParts(t, boundary, DefaultBufferSize, contents...)
		if got := multipartLength(boundary, parts); got != int64(len(body)) {
			t.Errorf("sizes %v: multipartLength = %d, written %d", sizes, got, len(body))
		}
	}
}

// TestWithContentLength: the request carries Content-Length (not chunked)
// when every size is known, chunked otherwise; a part whose size lies
// fails the request without sending the excess.
func TestWithContentLength(t *testing.T) {
	type seen struct {
		length   int64
		chunked  bool
		received int
	}
	var mu sync.Mutex
	var got []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		mu.Lock()
		got = append(got, seen{r.ContentLength, len(r.TransferEncoding) > 0, int(n)})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1"]}}]}}`)
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, nil, WithContentLength())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 100000)
	if _, err := c.Store(t.Context(), []Part{memPart("1", data)}); err != nil {
		t.Fatal(err)
	}
	unknown := memPart("1", data)
	unknown.Size = -1
	if _, err := c.Store(t.Context(), []Part{unknown}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(got) != 2 || got[0].chunked || got[0].length != int64(got[0].received) || !got[1].chunked || got[1].length != -1 {
		t.Fatalf("requests = %+v: want one with Content-Length, then one chunked", got)
	}
	mu.Unlock()

	for _, tt := range []struct {
		name  string
		size  int64
		wantS string
	}{{"longer than announced", int64(len(data)) - 10, "longer"}, {"shorter than announced", int64(len(data)) + 10, "short"}} {
		t.Run(tt.name, func(t *testing.T) {
			p := memPart("1", data)
			p.Size = tt.size
			_, err := c.Store(t.Context(), []Part{p})
			if !errors.Is(err, errSizeMismatch) || !strings.Contains(err.Error(), tt.wantS) {
				t.Fatalf("err = %v, want ErrSizeMismatch (%s)", err, tt.wantS)
			}
		})
	}
}
