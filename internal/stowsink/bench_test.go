package stowsink

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
)

// BenchmarkParse is the sink's own cost per byte of a STOW-RS body: 20
// instances of 512 KiB, parsed from memory.
func BenchmarkParse(b *testing.B) {
	body, contentType := studyBody(b)
	sink := New(Options{})
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/dicom-web/studies", bytes.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		sink.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkLoopback is the same over a loopback connection (the client's
// cost included): the sink reads the body from a socket, as in the
// pipeline benchmark.
func BenchmarkLoopback(b *testing.B) {
	body, contentType := studyBody(b)
	srv := httptest.NewServer(New(Options{}))
	defer srv.Close()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/dicom-web/studies", bytes.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		resp, err := srv.Client().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// studyBody is a STOW-RS request body of 20 generated instances of
// 512 KiB, and its Content-Type.
func studyBody(b *testing.B) ([]byte, string) {
	b.Helper()
	paths, err := dicomgen.WriteStudy(b.TempDir(), dicomgen.StudySpec{InstancesPerSeries: 20, Rows: 512, Columns: 512})
	if err != nil {
		b.Fatal(err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		w, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		b.Fatal(err)
	}
	return body.Bytes(), `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
}
