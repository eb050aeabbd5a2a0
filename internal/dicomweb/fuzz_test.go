package dicomweb

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseResponse: any body under any content type either parses or
// fails with one of the package's sentinel errors, and never panics.
func FuzzParseResponse(f *testing.F) {
	for _, rec := range loadRecordings(f) {
		f.Add(rec.contentType(), readTestdata(f, "orthanc/"+rec.File))
	}
	docs, err := filepath.Glob(filepath.Join("testdata", "docs", "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range docs {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		ct := map[string]string{".json": "application/dicom+json", ".xml": "application/dicom+xml", ".html": "text/html"}[filepath.Ext(path)]
		f.Add(ct, b)
		f.Add("", b)
	}
	f.Add("application/dicom+json", []byte(`[{"00081199":{"vr":"SQ","Value":[{}]}}]`))
	f.Add("text/plain", []byte("\x00\xff"))

	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		res, err := parseResponse(contentType, body, 1)
		if err != nil {
			if res != nil {
				t.Fatalf("result %+v returned with error %v", res, err)
			}
			if !errors.Is(err, errUnexpectedContentType) && !errors.Is(err, errMalformedResponse) && !errors.Is(err, errNotSTOWResponse) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			if len(err.Error()) > 1024 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		if res == nil {
			t.Fatal("nil result without error")
		}
		// Missing must agree with Stored.
		var sent []string
		for _, in := range res.Stored {
			sent = append(sent, in.SOPInstanceUID)
		}
		if m := res.Missing(sent); m != nil {
			t.Fatalf("Missing(stored UIDs) = %q", m)
		}
	})
}

// FuzzMultipartRoundTrip: whatever the boundary and contents (that do
// not hold the delimiter: Store's boundaries are random, see
// boundaryRandomBytes), the body Go's multipart reader splits back into
// the exact parts.
func FuzzMultipartRoundTrip(f *testing.F) {
	f.Add("b0", []byte("DICM"), []byte(""), []byte("\r\n--"))
	f.Add(testBoundary, []byte("\r\n--"+testBoundary[:5]+"--"), []byte("x"), []byte(""))
	f.Add("ab", []byte("--a"), []byte("a\r\n--a"), []byte("\r\n-"))
	f.Add("x y", []byte("\r\n--x \r\n"), []byte("\r"), []byte("\n"))
	for _, rec := range loadRecordings(f) {
		f.Add(testBoundary, readTestdata(f, "orthanc/"+rec.File), []byte{}, []byte("\r\n"))
	}
	f.Fuzz(func(t *testing.T, boundary string, a, b, c []byte) {
		if validateBoundary(boundary) != nil {
			return
		}
		parts := [][]byte{a, b, c}
		delim := []byte("\r\n--" + boundary)
		for _, p := range parts {
			// The part starts right after the header's CRLF.
			if bytes.Contains(append([]byte("\r\n"), p...), delim) {
				return
			}
		}
		body := encodeParts(t, boundary, 7, parts...) // odd, tiny buffer
		mr := multipart.NewReader(bytes.NewReader(body), boundary)
		for i, want := range parts {
			p, err := mr.NextRawPart()
			if err != nil {
				t.Fatalf("part %d: %v\nbody %q", i, err, body)
			}
			if ct := p.Header.Get("Content-Type"); ct != dicomMediaType {
				t.Fatalf("part %d Content-Type %q", i, ct)
			}
			got, err := io.ReadAll(p)
			if err != nil {
				t.Fatalf("read part %d: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("part %d = %q, want %q\nbody %q", i, got, want, body)
			}
		}
		if _, err := mr.NextRawPart(); err != io.EOF {
			t.Fatalf("after the last part: %v, want io.EOF", err)
		}
		if !bytes.HasSuffix(body, []byte("--"+boundary+"--\r\n")) {
			t.Fatal("no close delimiter")
		}
	})
}
