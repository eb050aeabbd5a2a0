package dicomweb

import (
	"bytes"
	"errors"
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

func dicomHeader() textproto.MIMEHeader {
	return textproto.MIMEHeader{"Content-Type": {dicomMediaType}}
}

// encodeParts writes parts with a MultipartWriter using a small buffer, so
// that content crosses many chunk edges.
func encodeParts(t *testing.T, boundary string, bufSize int, parts []testPart) []byte {
	t.Helper()
	var out bytes.Buffer
	mw, err := newMultipartWriter(&out, boundary, make([]byte, bufSize))
	if err != nil {
		t.Fatalf("newMultipartWriter: %v", err)
	}
	for i, p := range parts {
		n, err := mw.WritePart(p.header, bytes.NewReader(p.data))
		if err != nil {
			t.Fatalf("WritePart %d: %v", i, err)
		}
		if n != int64(len(p.data)) {
			t.Fatalf("WritePart %d wrote %d content bytes, want %d", i, n, len(p.data))
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if mw.bytesWritten() != int64(out.Len()) {
		t.Fatalf("BytesWritten = %d, buffer holds %d", mw.bytesWritten(), out.Len())
	}
	return out.Bytes()
}

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
		parts   []testPart
	}{
		{"one part", 512, []testPart{{dicomHeader(), []byte("DICM")}}},
		{"empty part", 512, []testPart{{dicomHeader(), nil}}},
		{"empty parts around data", 512, []testPart{
			{dicomHeader(), nil}, {dicomHeader(), []byte("x")}, {dicomHeader(), nil},
		}},
		{"binary with CR LF and dashes", 512, []testPart{{dicomHeader(), binary}}},
		{"content ends with CR and dashes", 512, []testPart{
			{dicomHeader(), []byte("abc\r")}, {dicomHeader(), []byte("\r\n--")}, {dicomHeader(), []byte("--")},
		}},
		{"delimiter-like text split over tiny buffer", 512, []testPart{
			{dicomHeader(), bytes.Repeat(binary, 50)},
		}},
		{"large random parts", 1024, []testPart{
			{dicomHeader(), randomBytes(1, 300_000)}, {dicomHeader(), randomBytes(2, 70_001)},
		}},
		{"per-part headers", 512, []testPart{
			{textproto.MIMEHeader{
				"Content-Type":     {dicomMediaType + "; transfer-syntax=1.2.840.10008.1.2.1"},
				"Content-Location": {"/instances/1"},
				"X-Multi":          {"a", "b"},
			}, []byte("one")},
			{textproto.MIMEHeader{}, []byte("no header at all")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := encodeParts(t, testBoundary, tt.bufSize, tt.parts)
			got := decodeParts(t, testBoundary, body)
			if len(got) != len(tt.parts) {
				t.Fatalf("decoded %d parts, want %d", len(got), len(tt.parts))
			}
			for i := range got {
				if !bytes.Equal(got[i].data, tt.parts[i].data) {
					t.Errorf("part %d: content differs (got %d bytes, want %d)", i, len(got[i].data), len(tt.parts[i].data))
				}
				for k, want := range tt.parts[i].header {
					if g := got[i].header[k]; strings.Join(g, "|") != strings.Join(want, "|") {
						t.Errorf("part %d header %s = %q, want %q", i, k, g, want)
					}
				}
				if len(got[i].header) != len(tt.parts[i].header) {
					t.Errorf("part %d has %d header fields, want %d", i, len(got[i].header), len(tt.parts[i].header))
				}
			}
		})
	}
}

func TestMultipartWriterExactBytes(t *testing.T) {
	body := encodeParts(t, "b0", 512, []testPart{
		{dicomHeader(), []byte("A")},
		{textproto.MIMEHeader{"Z": {"1"}, "Content-Type": {dicomMediaType}}, nil},
	})
	want := "--b0\r\nContent-Type: application/dicom\r\n\r\nA" +
		"\r\n--b0\r\nContent-Type: application/dicom\r\nZ: 1\r\n\r\n" +
		"\r\n--b0--\r\n"
	if string(body) != want {
		t.Fatalf("body =\n%q\nwant\n%q", body, want)
	}
}

func TestMultipartWriterNoParts(t *testing.T) {
	var out bytes.Buffer
	mw, err := NewMultipartWriter(&out, "b0")
	if err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if out.String() != "--b0--\r\n" {
		t.Fatalf("body = %q", out.String())
	}
	if _, err := mw.WritePart(dicomHeader(), strings.NewReader("x")); !errors.Is(err, errWriterClosed) {
		t.Fatalf("WritePart after Close: %v, want ErrWriterClosed", err)
	}
}

func TestContentType(t *testing.T) {
	mw, err := NewMultipartWriter(io.Discard, testBoundary)
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(mw.ContentType())
	if err != nil {
		t.Fatal(err)
	}
	if mt != "multipart/related" || params["type"] != dicomMediaType || params["boundary"] != testBoundary {
		t.Fatalf("ContentType() = %q", mw.ContentType())
	}
	if mw.boundary != testBoundary {
		t.Fatalf("boundary = %q", mw.boundary)
	}
	// A boundary with tspecials must come out quoted and still parse.
	odd := "a:b(c)=d?e f"
	_, params, err = mime.ParseMediaType(requestContentType(odd))
	if err != nil || params["boundary"] != odd {
		t.Fatalf("RequestContentType(%q) = %q (err %v)", odd, requestContentType(odd), err)
	}
}

func TestNewMultipartWriterBoundaryValidation(t *testing.T) {
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
		_, err := NewMultipartWriter(io.Discard, tt.boundary)
		if tt.ok && err != nil {
			t.Errorf("boundary %q: unexpected error %v", tt.boundary, err)
		}
		if !tt.ok && !errors.Is(err, errInvalidBoundary) {
			t.Errorf("boundary %q: error %v, want ErrInvalidBoundary", tt.boundary, err)
		}
	}
}

func TestWritePartRejectsBadHeader(t *testing.T) {
	tests := []struct {
		name   string
		header textproto.MIMEHeader
	}{
		{"CRLF in value", textproto.MIMEHeader{"Content-Type": {"application/dicom\r\nX-Evil: 1"}}},
		{"LF in value", textproto.MIMEHeader{"A": {"x\ny"}}},
		{"NUL in value", textproto.MIMEHeader{"A": {"x\x00"}}},
		{"colon in name", textproto.MIMEHeader{"A:B": {"x"}}},
		{"space in name", textproto.MIMEHeader{"A B": {"x"}}},
		{"empty name", textproto.MIMEHeader{"": {"x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			mw, _ := NewMultipartWriter(&out, "b0")
			if _, err := mw.WritePart(tt.header, strings.NewReader("x")); !errors.Is(err, errInvalidHeader) {
				t.Fatalf("err = %v, want ErrInvalidHeader", err)
			}
			if out.Len() != 0 {
				t.Fatalf("wrote %q before rejecting the header", out.String())
			}
			// Nothing was written, so the writer is still usable.
			if _, err := mw.WritePart(dicomHeader(), strings.NewReader("x")); err != nil {
				t.Fatalf("WritePart after rejected header: %v", err)
			}
		})
	}
}

func TestWritePartBoundaryCollision(t *testing.T) {
	delim := "\r\n--" + testBoundary
	tests := []struct {
		name    string
		content string
	}{
		{"delimiter in the middle", "DICM" + delim + "\r\nrest"},
		{"close delimiter", "DICM" + delim + "--"},
		{"content starts with dash-boundary", "--" + testBoundary + "\r\n"},
		{"delimiter at the very end", "DICM" + delim},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			mw, err := newMultipartWriter(&out, testBoundary, make([]byte, 512))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := mw.WritePart(dicomHeader(), strings.NewReader("clean first part")); err != nil {
				t.Fatal(err)
			}
			framed := out.Len()
			_, err = mw.WritePart(dicomHeader(), iotest.OneByteReader(strings.NewReader(tt.content)))
			if !errors.Is(err, errBoundaryCollision) {
				t.Fatalf("err = %v, want ErrBoundaryCollision", err)
			}
			// The bytes that complete the delimiter were never written.
			content := out.Bytes()[framed:]
			_, afterHeader, _ := bytes.Cut(content, []byte("\r\n\r\n"))
			if bytes.Contains(append([]byte("\r\n"), afterHeader...), []byte(delim)) {
				t.Fatalf("the delimiter reached the output: %q", afterHeader)
			}
			if _, err := mw.WritePart(dicomHeader(), strings.NewReader("x")); !errors.Is(err, errBoundaryCollision) {
				t.Fatalf("writer not poisoned after collision: %v", err)
			}
			if err := mw.Close(); !errors.Is(err, errBoundaryCollision) {
				t.Fatalf("Close after collision: %v", err)
			}
		})
	}
}

func TestWritePartErrors(t *testing.T) {
	boom := errors.New("boom")
	t.Run("read error", func(t *testing.T) {
		mw, _ := NewMultipartWriter(io.Discard, "b0")
		n, err := mw.WritePart(dicomHeader(), io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(boom)))
		if !errors.Is(err, boom) || n != 3 {
			t.Fatalf("WritePart = %d, %v; want 3, boom", n, err)
		}
	})
	t.Run("write error", func(t *testing.T) {
		mw, _ := NewMultipartWriter(failingWriter{boom}, "b0")
		if _, err := mw.WritePart(dicomHeader(), strings.NewReader("abc")); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
	})
	t.Run("short write", func(t *testing.T) {
		mw, _ := NewMultipartWriter(shortWriter{}, "b0")
		if _, err := mw.WritePart(dicomHeader(), strings.NewReader("abc")); !errors.Is(err, io.ErrShortWrite) {
			t.Fatalf("err = %v, want io.ErrShortWrite", err)
		}
	})
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
