package deident

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
)

// BenchmarkRewrite measures the rewrite alone (in memory, one core) on
// the instance of the Pipeline benchmark (a 512x512 16-bit CT, 0.5 MB)
// and on the nested SR sample, against a plain copy of the same bytes;
// scrub is the part of the rewrite that removes the instance's own
// identifying values from kept text (clean.go).
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
		// The scrub's share of the rewrite: collecting the instance's
		// identifying values and searching every kept text value for them.
		b.Run(name+"/scrub", func(b *testing.B) {
			rw := &rewrite{d: d, dec: &decoder{r: bufio.NewReader(bytes.NewReader(in))}}
			if err := rw.readMeta(); err != nil {
				b.Fatal(err)
			}
			var els []*element
			for {
				tag, vr, n, err := rw.dec.header(rw.explicit)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				el, err := rw.dec.readBody(tag, vr, n, rw.explicit, 0)
				if err != nil {
					b.Fatal(err)
				}
				els = append(els, el)
			}
			b.ReportAllocs()
			for b.Loop() {
				rw.ids = identifiers{}
				rw.ids.collect(els, rw.kept)
				walk(els, 0, func(el *element, _ int) {
					if !el.seq && rw.kept(el.tag, el.vr) && scrubbable(el) {
						rw.ids.scrub(el.value)
					}
				})
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
