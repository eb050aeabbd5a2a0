package dicomweb

import (
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkStore streams a study to an httptest sink that parses the
// multipart body and discards it, as a STOW server would: 16 instances,
// or 8 MiB of the small ones (34 KiB: a 128x128 16-bit image with its
// header). MB/s is request body throughput over loopback; allocs/op count
// client and sink together (the sink's multipart reader allocates too).
func BenchmarkStore(b *testing.B) {
	for _, size := range []int{34 << 10, 256 << 10, 4 << 20} {
		b.Run(fmt.Sprintf("instance=%dKiB", size>>10), func(b *testing.B) {
			count := max(16, (8<<20)/size)
			data := randomBytes(3, size)
			parts := make([]Part, count)
			uids := make([]string, count)
			for i := range parts {
				uids[i] = fmt.Sprintf("1.2.3.%d", i)
				parts[i] = memPart(uids[i], data)
			}
			response := stowJSON(b, uids, nil, 0)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
				if err != nil {
					http.Error(w, err.Error(), http.StatusUnsupportedMediaType)
					return
				}
				mr := multipart.NewReader(r.Body, params["boundary"])
				for {
					p, err := mr.NextRawPart()
					if err == io.EOF {
						break
					}
					if err != nil {
						http.Error(w, err.Error(), http.StatusBadRequest)
						return
					}
					io.Copy(io.Discard, p)
				}
				w.Header().Set("Content-Type", "application/dicom+json")
				w.Write(response)
			}))
			defer srv.Close()
			c, err := New(srv.URL, srv.Client())
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.SetBytes(int64(count * size))
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU()
			for b.Loop() {
				res, err := c.Store(ctx, parts)
				if err != nil {
					b.Fatal(err)
				}
				if len(res.Stored) != count {
					b.Fatalf("stored %d", len(res.Stored))
				}
			}
			if cpu := processCPU() - cpu0; cpu > 0 {
				// The sink's share is the same whatever the client does.
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
