package deident

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
)

// BenchmarkRewrite measures the rewrite alone (in memory, one core) on
// the instance of the Pipeline benchmark (a 512x512 16-bit CT, 0.5 MB)
// and on the nested SR sample, against a plain copy of the same bytes.
//
//	go test -run '^$' -bench Rewrite -benchtime 2s ./internal/deident/
func BenchmarkRewrite(b *testing.B) {
	var ct bytes.Buffer
	if err := dicomgen.WriteInstance(&ct, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4",
		SOPInstanceUID: "1.2.3.4.5", FrameOfReferenceUID: "1.2.3.9", Rows: 512, Columns: 512}); err != nil {
		b.Fatal(err)
	}
	inputs := map[string][]byte{"ct-512": ct.Bytes()}
	if sr, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "shared", "dicom-samples", "sr-comprehensive-nested.dcm")); err == nil {
		inputs["sr-nested"] = sr
	}
	k, _ := NewKeyer(testKey, "ANON-")
	d, err := New(k, Options{RetainDates: true})
	if err != nil {
		b.Fatal(err)
	}
	for name, in := range inputs {
		b.Run(name+"/copy", func(b *testing.B) {
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				// Through a 32 KiB buffer, as the forwarder's plain copy.
				if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{bytes.NewReader(in)}, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/deidentify", func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.Rewrite(io.Discard, bytes.NewReader(in)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
