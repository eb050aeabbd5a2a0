package dicomweb

import (
	"context"
	"fmt"
	"io"
	"testing"
)

// BenchmarkRequestBody is the client's encoder alone (framing, copy into
// the buffer), written through WriteTo as net/http does
// for a chunked request: 8 MiB of small or large instances.
func BenchmarkRequestBody(b *testing.B) {
	for _, size := range []int{34 << 10, 4 << 20} {
		b.Run(fmt.Sprintf("instance=%dKiB", size>>10), func(b *testing.B) {
			data := randomBytes(5, size)
			parts := make([]Part, (8<<20)/size)
			for i := range parts {
				parts[i] = memPart(fmt.Sprint(i), data)
			}
			buf := make([]byte, DefaultBufferSize)
			b.SetBytes(int64(len(parts) * size))
			b.ReportAllocs()
			for b.Loop() {
				body := newRequestBody(context.Background(), testBoundary, parts, false, buf)
				if _, err := body.WriteTo(io.Discard); err != nil {
					b.Fatal(err)
				}
				if _, err := body.stop(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
