package dicomweb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/bandwidth"
)

// bodyPath is one way net/http consumes the request body.
type bodyPath struct {
	name string
	// transport wraps a fresh http.Transport.
	transport func(http.RoundTripper) http.RoundTripper
	opts      []Option
	// h2: the server speaks HTTP/2 over TLS, and so the client: Go's
	// HTTP/2 client reads the body through Read, and may close it from
	// another goroutine.
	h2 bool
}

// bodyPaths are the three ways a destination's body is sent: chunked
// through WriteTo; chunked through Read, because a RoundTripper (here the
// real bandwidth cap of internal/app) wraps the body and hides WriteTo;
// with Content-Length, which net/http reads through io.LimitReader.
var bodyPaths = []bodyPath{
	{name: "chunked WriteTo", transport: func(rt http.RoundTripper) http.RoundTripper { return rt }},
	{name: "chunked Read under the bandwidth cap", transport: func(rt http.RoundTripper) http.RoundTripper {
		return bandwidth.New(1 << 40).Transport(rt)
	}},
	{name: "Content-Length Read", transport: func(rt http.RoundTripper) http.RoundTripper { return rt }, opts: []Option{WithContentLength()}},
	{name: "HTTP/2 Read", transport: func(rt http.RoundTripper) http.RoundTripper { return rt }, h2: true},
}

// serve starts a server for h speaking the path's protocol.
func (p bodyPath) serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if want := map[bool]int{true: 2, false: 1}[p.h2]; r.ProtoMajor != want {
			t.Errorf("request over %s, want HTTP/%d", r.Proto, want)
		}
		h.ServeHTTP(w, r)
	}))
	if p.h2 {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

func (p bodyPath) client(t *testing.T, srv *httptest.Server, opts ...Option) *Client {
	t.Helper()
	var tr *http.Transport
	if p.h2 {
		tr = srv.Client().Transport.(*http.Transport).Clone()
		if tr.TLSClientConfig == nil || !slices.Contains(tr.TLSClientConfig.NextProtos, "h2") {
			t.Fatal("the test server's client does not offer HTTP/2")
		}
	} else {
		tr = &http.Transport{}
	}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := New(srv.URL, &http.Client{Transport: p.transport(tr)}, append(slices.Clip(p.opts), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStoreBodyPaths: every way of sending the body delivers every part
// intact, with sizes around the buffer's (a part ending exactly at a
// buffer edge, parts smaller than the framing), and counts what it sent.
func TestStoreBodyPaths(t *testing.T) {
	const bufSize = 4096
	var parts []Part
	var uids []string
	var want [][]byte
	for i, size := range []int{0, 1, bufSize - 100, bufSize, 3*bufSize + 7, 70000, 5} {
		uid := fmt.Sprintf("1.2.%d", i)
		data := append([]byte("UID:"+uid+"\n"), randomBytes(uint64(i), size)...)
		parts = append(parts, memPart(uid, data))
		uids = append(uids, uid)
		want = append(want, data)
	}
	// Content that looks like framing, of another boundary, is content.
	lookalike := []byte("UID:1.2.99\n\r\n--" + testBoundary + "\r\nContent-Type: text/plain\r\n\r\n--" + testBoundary + "--\r\n")
	parts = append(parts, memPart("1.2.99", lookalike))
	uids = append(uids, "1.2.99")
	want = append(want, lookalike)
	for _, path := range bodyPaths {
		t.Run(path.name, func(t *testing.T) {
			checkNoGoroutineLeak(t)
			var log requestLog
			srv := path.serve(t, fakeSTOWHandler(t, &log))
			c := path.client(t, srv, withBufferSize(bufSize))
			for range 2 { // the second request reuses the pooled buffer
				res, err := c.Store(t.Context(), parts)
				if err != nil {
					t.Fatalf("Store: %v", err)
				}
				if got := storedUIDs(res); !slices.Equal(got, uids) {
					t.Errorf("stored %q, want %q", got, uids)
				}
				log.mu.Lock()
				last := len(log.parts) - 1
				got, size := log.parts[last], log.bodySize[last]
				log.mu.Unlock()
				if len(got) != len(want) {
					t.Fatalf("server got %d parts, want %d", len(got), len(want))
				}
				for i := range got {
					if !bytes.Equal(got[i].data, want[i]) {
						t.Errorf("part %d differs (%d bytes, want %d)", i+1, len(got[i].data), len(want[i]))
					}
				}
				if res.BytesSent != size {
					t.Errorf("BytesSent = %d, server read %d", res.BytesSent, size)
				}
			}
		})
	}
}

// TestStoreWritesFullChunks: on HTTP/1.1 without a known length, net/http
// writes the body through WriteTo, so every HTTP chunk but the last is
// one full buffer (io.Copy through Read would make 32 KiB ones). A raw
// listener sees the chunk sizes, which a real server hides.
func TestStoreWritesFullChunks(t *testing.T) {
	checkNoGoroutineLeak(t)
	const bufSize = 4096
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan rawRequest, 1)
	answer := stowJSON(t, []string{"1", "2", "3"}, nil, 0)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- rawRequest{err: err}
			return
		}
		defer conn.Close()
		req := readChunkedRequest(bufio.NewReader(conn))
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(answer), answer)
		got <- req
	}()

	want := [][]byte{randomBytes(1, 10000), randomBytes(2, 3), randomBytes(3, 50000)}
	parts := []Part{memPart("1", want[0]), memPart("2", want[1]), memPart("3", want[2])}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := New("http://"+ln.Addr().String(), &http.Client{Transport: tr}, withBufferSize(bufSize))
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Store(t.Context(), parts)
	if err != nil {
		t.Fatalf("Store: %v", err)
	}
	req := <-got
	if req.err != nil {
		t.Fatalf("server: %v", req.err)
	}
	if len(req.chunks) < 2 {
		t.Fatalf("chunks %v: want several", req.chunks)
	}
	for i, n := range req.chunks[:len(req.chunks)-1] {
		if n != bufSize {
			t.Fatalf("chunk %d of %d is %d bytes, want %d (all: %v)", i+1, len(req.chunks), n, bufSize, req.chunks)
		}
	}
	if res.BytesSent != int64(len(req.body)) {
		t.Errorf("BytesSent = %d, server got %d", res.BytesSent, len(req.body))
	}
	_, params, err := mime.ParseMediaType(req.ctype)
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(bytes.NewReader(req.body), params["boundary"])
	for i := range want {
		p, err := mr.NextRawPart()
		if err != nil {
			t.Fatalf("part %d: %v", i+1, err)
		}
		data, err := io.ReadAll(p)
		if err != nil || !bytes.Equal(data, want[i]) {
			t.Errorf("part %d: %d bytes, %v; want %d bytes", i+1, len(data), err, len(want[i]))
		}
	}
	if _, err := mr.NextRawPart(); err != io.EOF {
		t.Errorf("after the parts: %v, want io.EOF", err)
	}
}

// rawRequest is what readChunkedRequest saw of a request.
type rawRequest struct {
	chunks []int // the size of each HTTP chunk
	body   []byte
	ctype  string
	err    error
}

// readChunkedRequest reads one chunked HTTP/1.1 request, keeping the size
// of each chunk.
func readChunkedRequest(br *bufio.Reader) rawRequest {
	var req rawRequest
	tp := textproto.NewReader(br)
	if _, err := tp.ReadLine(); err != nil {
		req.err = err
		return req
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		req.err = err
		return req
	}
	req.ctype = h.Get("Content-Type")
	if te := h.Get("Transfer-Encoding"); te != "chunked" {
		req.err = fmt.Errorf("Transfer-Encoding %q, want chunked", te)
		return req
	}
	for {
		line, err := tp.ReadLine()
		if err != nil {
			req.err = err
			return req
		}
		n, err := strconv.ParseInt(line, 16, 64)
		if err != nil {
			req.err = fmt.Errorf("chunk size %q: %w", line, err)
			return req
		}
		if n == 0 {
			_, req.err = tp.ReadLine() // no trailer: the final CRLF
			return req
		}
		req.chunks = append(req.chunks, int(n))
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			req.err = err
			return req
		}
		if !bytes.HasSuffix(chunk, []byte("\r\n")) {
			req.err = errors.New("chunk not followed by CRLF")
			return req
		}
		req.body = append(req.body, chunk[:n]...)
	}
}

// TestStoreAnswerWhileSending: a server that answers 503 before reading
// the body, or once it has read the start of a large one (so the body is
// being written), ends the request promptly on every body path: the
// sources stop and are closed, no goroutine is left, and the answer's
// Retry-After reaches the caller.
func TestStoreAnswerWhileSending(t *testing.T) {
	for _, path := range bodyPaths {
		for _, read := range []int64{0, 1 << 20} {
			t.Run(fmt.Sprintf("%s/after %d bytes", path.name, read), func(t *testing.T) {
				checkNoGoroutineLeak(t)
				srv := path.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if _, err := io.CopyN(io.Discard, r.Body, read); err != nil {
						t.Errorf("server read: %v", err)
					}
					w.Header().Set("Retry-After", "30")
					http.Error(w, "overloaded", http.StatusServiceUnavailable)
				}))
				c := path.client(t, srv)
				// 4 GiB: far more than the sockets can buffer.
				src := &trackedSource{size: 1 << 30}
				parts := []Part{src.part("1"), src.part("2"), src.part("3"), src.part("4")}
				start := time.Now()
				_, err := c.Store(t.Context(), parts)
				elapsed := time.Since(start)
				t.Logf("Store returned after %v, having read %d bytes", elapsed, src.read.Load())
				var he *HTTPError
				if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("err = %v, want HTTPError 503", err)
				}
				if he.RetryAfter != 30*time.Second {
					t.Errorf("RetryAfter = %v", he.RetryAfter)
				}
				if elapsed > 5*time.Second {
					t.Errorf("Store took %v to give up", elapsed)
				}
				if read := src.read.Load(); read >= src.size {
					t.Errorf("read %d bytes of the sources after the server answered", read)
				}
				// A server that reads nothing may answer before the transport
				// opened any part: none opened is then right too.
				if o, c := src.opened.Load(), src.closed.Load(); o != c || o > 2 || (read > 0 && o == 0) {
					t.Errorf("opened %d sources, closed %d", o, c)
				}
			})
		}
	}
}

// TestStoreBodyOutlivesDo: a RoundTripper may answer before it has
// finished with the body (net/http's does when the server answers early).
// Store then waits for WriteTo to end before it returns, and so before the
// pooled buffer can serve another request; the writes never overlap the
// next request.
func TestStoreBodyOutlivesDo(t *testing.T) {
	checkNoGoroutineLeak(t)
	var returned atomic.Bool
	lateWrites := atomic.Int32{}
	writerDone := make(chan struct{})
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		wt, ok := req.Body.(io.WriterTo)
		if !ok {
			return nil, errors.New("body is not an io.WriterTo")
		}
		started := make(chan struct{})
		go func() {
			defer close(writerDone)
			defer req.Body.Close()
			_, _ = wt.WriteTo(writerFunc(func(p []byte) (int, error) {
				select {
				case <-started:
				default:
					close(started)
				}
				if returned.Load() {
					lateWrites.Add(1)
				}
				return len(p), nil
			}))
		}()
		<-started // the answer comes while the body is being written
		return &http.Response{
			StatusCode: http.StatusServiceUnavailable,
			Header:     http.Header{"Content-Type": {"text/plain"}},
			Body:       io.NopCloser(strings.NewReader("busy")),
			Request:    req,
		}, nil
	})
	c, err := New("http://stow.test", &http.Client{Transport: rt}, withBufferSize(4096))
	if err != nil {
		t.Fatal(err)
	}
	src := &trackedSource{size: 1 << 40} // never ends by itself
	_, err = c.Store(t.Context(), []Part{src.part("1")})
	returned.Store(true)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("err = %v, want HTTPError 503", err)
	}
	<-writerDone
	if n := lateWrites.Load(); n > 0 {
		t.Errorf("%d writes of the body after Store returned", n)
	}
	if o, c := src.opened.Load(), src.closed.Load(); o != 1 || c != 1 {
		t.Errorf("opened %d, closed %d", o, c)
	}
}

// TestRequestBodyAfterStop: once stopped, the body neither reads its
// sources nor touches the buffer, whatever the transport calls.
func TestRequestBodyAfterStop(t *testing.T) {
	src := &trackedSource{size: 100}
	buf := make([]byte, 512)
	b := newRequestBody(t.Context(), testBoundary, []Part{src.part("1")}, false, buf)
	if n, err := b.Read(make([]byte, 10)); n != 10 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	sent, err := b.stop()
	if sent != 10 || err != nil {
		t.Errorf("stop = %d, %v; want 10, nil", sent, err)
	}
	if src.closed.Load() != 1 {
		t.Errorf("source not closed by stop")
	}
	if n, err := b.Read(make([]byte, 10)); n != 0 || !errors.Is(err, errBodyAbandoned) {
		t.Errorf("Read after stop = %d, %v", n, err)
	}
	var out bytes.Buffer
	if n, err := b.WriteTo(&out); n != 0 || !errors.Is(err, errBodyAbandoned) || out.Len() != 0 {
		t.Errorf("WriteTo after stop = %d, %v", n, err)
	}
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Error("the buffer was written to")
	}
	if src.read.Load() > 10 {
		t.Errorf("read %d bytes of the source", src.read.Load())
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestRequestBodyClosedBeforeStart: Go's HTTP/2 client closes the body
// of a request a connection could not take before reading any of it,
// and sends the same request on another connection: that body still
// reads whole. Once started, Close ends it.
func TestRequestBodyClosedBeforeStart(t *testing.T) {
	src := &trackedSource{size: 100}
	b := newRequestBody(t.Context(), testBoundary, []Part{src.part("1")}, false, make([]byte, 512))
	b.Close()
	body, err := io.ReadAll(b)
	if err != nil || !bytes.HasSuffix(body, []byte("--"+testBoundary+"--\r\n")) {
		t.Fatalf("ReadAll after an early Close = %d bytes, %v; want the whole body", len(body), err)
	}
	b.Close()
	if _, err := b.Read(make([]byte, 10)); !errors.Is(err, errBodyAbandoned) {
		t.Errorf("Read after Close of a started body = %v, want errBodyAbandoned", err)
	}
	if _, err := b.stop(); err != nil {
		t.Errorf("stop = %v", err)
	}
}

// TestStoreSuccessAnswerToAnIncompleteBodyIsAFailure: a success answer to
// a request whose body broke off (a part's source failed) is not taken
// as the destination's word on the parts: it answered what it could
// read, and the part the source failed is the study's failure, told as
// the source's error.
func TestStoreSuccessAnswerToAnIncompleteBodyIsAFailure(t *testing.T) {
	sourceErr := errors.New("orthanc: 500 reading the instance")
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		// A server that answers 200 for what it read of a body that
		// broke off.
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/dicom+json"}},
			Body: io.NopCloser(bytes.NewReader(stowJSON(t, []string{"1.2"}, nil, 0))), Request: req}, nil
	})
	c, err := New("http://dest.test/dicom-web", &http.Client{Transport: rt})
	if err != nil {
		t.Fatal(err)
	}
	failing := Part{SOPInstanceUID: "1.3", Size: -1, Open: func(ctx context.Context) (io.ReadCloser, error) { return nil, sourceErr }}
	res, err := c.Store(t.Context(), []Part{uidPart("1.2", nil), failing})
	if !errors.Is(err, errIncompleteBody) || !errors.Is(err, sourceErr) {
		t.Fatalf("Store = %+v, %v; want an incomplete body failing with the source's error", res, err)
	}
}
