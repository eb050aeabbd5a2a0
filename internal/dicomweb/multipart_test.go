package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
)

const testBoundary = "stowline.test-Boundary_0123456789abcdefghij"

type testPart struct {
	header textproto.MIMEHeader
	data   []byte
}

// encodeParts encodes contents as Store does, through WriteTo with a
// buffer of bufSize (so content crosses many buffer edges) and through
// Read in pieces of bufSize/3+1; both must give the same bytes, and count
// them.
func encodeParts(t *testing.T, boundary string, bufSize int, contents ...[]byte) []byte {
	t.Helper()
	parts := make([]Part, len(contents))
	for i, c := range contents {
		parts[i] = memPart(fmt.Sprint(i+1), c)
	}
	var out bytes.Buffer
	b := newRequestBody(t.Context(), boundary, parts, false, make([]byte, bufSize))
	n, err := b.WriteTo(&out)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if sent, err := b.stop(); sent != n || n != int64(out.Len()) || err != nil {
		t.Fatalf("WriteTo wrote %d, stop = %d, %v; buffer holds %d", n, sent, err, out.Len())
	}
	b = newRequestBody(t.Context(), boundary, parts, false, nil)
	read, err := io.ReadAll(iotest.HalfReader(onlyReader{b}))
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if !bytes.Equal(read, out.Bytes()) {
		t.Fatalf("Read gave %d bytes, WriteTo %d, not the same", len(read), out.Len())
	}
	return out.Bytes()
}

// onlyReader hides WriteTo.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// decodeParts reads a body back with Go's mime/multipart reader.
func decodeParts(t *testing.T, boundary string, body []byte) []testPart {
	t.Helper()
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var parts []testPart
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatalf("NextRawPart after %d parts: %v", len(parts), err)
		}
		data, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("read part %d: %v", len(parts), err)
		}
		parts = append(parts, testPart{header: p.Header, data: data})
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestMultipartRoundTrip(t *testing.T) {
	binary := []byte("\x00\r\n--\r\n\r\n--stowline\r\n--" + testBoundary[:20] + "\n--" + testBoundary + "\r--" + testBoundary + "\r\r\n-\r\n--")
	tests := []struct {
		name    string
		bufSize int
		parts   [][]byte
	}{
		{"one part", 512, [][]byte{[]byte("DICM")}},
		{"empty part", 512, [][]byte{nil}},
		{"empty parts around data", 512, [][]byte{nil, []byte("x"), nil}},
		{"binary with CR LF and dashes", 512, [][]byte{binary}},
		{"content ends with CR and dashes", 512, [][]byte{[]byte("abc\r"), []byte("\r\n--"), []byte("--")}},
		{"delimiter-like text split over tiny buffer", 512, [][]byte{bytes.Repeat(binary, 50)}},
		{"large random parts", 1024, [][]byte{randomBytes(1, 300_000), randomBytes(2, 70_001)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := encodeParts(t, testBoundary, tt.bufSize, tt.parts...)
			got := decodeParts(t, testBoundary, body)
			if len(got) != len(tt.parts) {
				t.Fatalf("decoded %d parts, want %d", len(got), len(tt.parts))
			}
			for i := range got {
				if !bytes.Equal(got[i].data, tt.parts[i]) {
					t.Errorf("part %d: content differs (got %d bytes, want %d)", i, len(got[i].data), len(tt.parts[i]))
				}
				if ct := got[i].header.Get("Content-Type"); ct != dicomMediaType || len(got[i].header) != 1 {
					t.Errorf("part %d header %v, want only Content-Type %s", i, got[i].header, dicomMediaType)
				}
			}
		})
	}
}

func TestRequestBodyExactBytes(t *testing.T) {
	body := encodeParts(t, "b0", 512, []byte("A"), nil)
	want := "--b0\r\nContent-Type: application/dicom\r\n\r\nA" +
		"\r\n--b0\r\nContent-Type: application/dicom\r\n\r\n" +
		"\r\n--b0--\r\n"
	if string(body) != want {
		t.Fatalf("body =\n%q\nwant\n%q", body, want)
	}
}

func TestContentType(t *testing.T) {
	mt, params, err := mime.ParseMediaType(requestContentType(testBoundary))
	if err != nil {
		t.Fatal(err)
	}
	if mt != "multipart/related" || params["type"] != dicomMediaType || params["boundary"] != testBoundary {
		t.Fatalf("requestContentType = %q", requestContentType(testBoundary))
	}
	// A boundary with tspecials must come out quoted and still parse.
	odd := "a:b(c)=d?e f"
	_, params, err = mime.ParseMediaType(requestContentType(odd))
	if err != nil || params["boundary"] != odd {
		t.Fatalf("requestContentType(%q) = %q (err %v)", odd, requestContentType(odd), err)
	}
}

func TestValidateBoundary(t *testing.T) {
	tests := []struct {
		boundary string
		ok       bool
	}{
		{"a", true},
		{strings.Repeat("x", 70), true},
		{"with space inside", true},
		{"'()+_,-./:=?", true},
		{"", false},
		{strings.Repeat("x", 71), false},
		{"ends with space ", false},
		{"crlf\r\n", false},
		{"quote\"", false},
		{"semi;colon", false},
		{"ümlaut", false},
	}
	for _, tt := range tests {
		err := validateBoundary(tt.boundary)
		if tt.ok && err != nil {
			t.Errorf("boundary %q: unexpected error %v", tt.boundary, err)
		}
		if !tt.ok && !errors.Is(err, errInvalidBoundary) {
			t.Errorf("boundary %q: error %v, want ErrInvalidBoundary", tt.boundary, err)
		}
	}
}

// A source that fails mid-part fails the body with its error; a writer
// that fails or writes short ends WriteTo with its error.
func TestRequestBodyErrors(t *testing.T) {
	boom := errors.New("boom")
	failing := Part{SOPInstanceUID: "1", Size: -1, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(boom))), nil
	}}
	for _, tt := range []struct {
		name string
		part Part
		w    io.Writer
		want error
	}{
		{"read error", failing, io.Discard, boom},
		{"write error", memPart("1", []byte("abc")), failingWriter{boom}, boom},
		{"short write", memPart("1", []byte("abc")), shortWriter{}, io.ErrShortWrite},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newRequestBody(t.Context(), "b0", []Part{tt.part}, false, make([]byte, 512))
			if _, err := b.WriteTo(tt.w); !errors.Is(err, tt.want) {
				t.Errorf("WriteTo = %v, want %v", err, tt.want)
			}
			b.stop()
		})
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestNewBoundary(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		b, err := newBoundary()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 30 || len(b) > maxBoundaryLen {
			t.Fatalf("boundary %q has length %d", b, len(b))
		}
		if err := validateBoundary(b); err != nil {
			t.Fatalf("boundary %q: %v", b, err)
		}
		if seen[b] {
			t.Fatalf("boundary %q repeated", b)
		}
		seen[b] = true
	}
}
