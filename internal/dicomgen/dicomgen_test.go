package dicomgen_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// elem is one parsed top-level element of an Explicit VR Little Endian
// file.
type elem struct {
	tag    uint32
	vr     string
	length uint32
	value  []byte // nil for PixelData, which is only counted
}

// parsePart10 checks the Part 10 structure the package promises and
// returns the meta and data set elements.
func parsePart10(t *testing.T, b []byte) (meta, ds []elem) {
	t.Helper()
	if len(b) < 132 {
		t.Fatalf("file is %d bytes", len(b))
	}
	if !bytes.Equal(b[:128], make([]byte, 128)) {
		t.Errorf("preamble is not zero")
	}
	if string(b[128:132]) != "DICM" {
		t.Fatalf("no DICM prefix")
	}
	off := 132
	var groupEnd int
	var prev uint32
	for off < len(b) {
		if len(b)-off < 8 {
			t.Fatalf("trailing %d bytes at %d", len(b)-off, off)
		}
		tag := uint32(binary.LittleEndian.Uint16(b[off:]))<<16 | uint32(binary.LittleEndian.Uint16(b[off+2:]))
		vr := string(b[off+4 : off+6])
		var length uint32
		switch vr {
		case "OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV":
			length = binary.LittleEndian.Uint32(b[off+8:])
			off += 12
		default:
			length = uint32(binary.LittleEndian.Uint16(b[off+6:]))
			off += 8
		}
		if length%2 != 0 {
			t.Errorf("element %08X has odd length %d", tag, length)
		}
		if tag <= prev && prev != 0 {
			t.Errorf("element %08X after %08X: not ascending", tag, prev)
		}
		prev = tag
		if off+int(length) > len(b) {
			t.Fatalf("element %08X length %d runs past the end", tag, length)
		}
		e := elem{tag: tag, vr: vr, length: length}
		if tag != 0x7FE00010 {
			e.value = b[off : off+int(length)]
		}
		off += int(length)
		if tag>>16 == 0x0002 {
			if tag == 0x00020000 {
				groupEnd = off + int(binary.LittleEndian.Uint32(e.value))
			}
			meta = append(meta, e)
			if off == groupEnd {
				prev = 0 // data set ordering starts afresh
			}
			continue
		}
		ds = append(ds, e)
	}
	if groupEnd == 0 {
		t.Fatalf("no (0002,0000) group length")
	}
	// The group length must end exactly where group 0002 ends.
	metaEnd := 132
	for _, e := range meta {
		metaEnd += int(e.length) + 8
		if e.vr == "OB" {
			metaEnd += 4
		}
	}
	if metaEnd != groupEnd {
		t.Errorf("group length says meta ends at %d, elements end at %d", groupEnd, metaEnd)
	}
	return meta, ds
}

func find(es []elem, tag uint32) (elem, bool) {
	for _, e := range es {
		if e.tag == tag {
			return e, true
		}
	}
	return elem{}, false
}

func str(t *testing.T, es []elem, tag uint32) string {
	t.Helper()
	e, ok := find(es, tag)
	if !ok {
		t.Fatalf("element %08X missing", tag)
	}
	return strings.TrimRight(string(e.value), "\x00 ")
}

func us(t *testing.T, es []elem, tag uint32) uint16 {
	t.Helper()
	e, ok := find(es, tag)
	if !ok || len(e.value) != 2 {
		t.Fatalf("US element %08X missing or malformed", tag)
	}
	return binary.LittleEndian.Uint16(e.value)
}

func newSpec() dicomgen.InstanceSpec {
	return dicomgen.InstanceSpec{
		StudyInstanceUID:  dicomgen.NewUID(),
		SeriesInstanceUID: dicomgen.NewUID(),
		SOPInstanceUID:    dicomgen.NewUID(),
	}
}

func TestWriteInstance(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*dicomgen.InstanceSpec)
		check  func(t *testing.T, ds []elem)
	}{
		{
			name: "defaults",
			check: func(t *testing.T, ds []elem) {
				if got := us(t, ds, 0x00280010); got != dicomgen.DefaultRows {
					t.Errorf("Rows = %d", got)
				}
				if got := str(t, ds, 0x00100020); got != dicomgen.DefaultPatientID {
					t.Errorf("PatientID = %q", got)
				}
				if _, ok := find(ds, 0x00080005); ok {
					t.Errorf("SpecificCharacterSet written for ASCII values")
				}
				if _, ok := find(ds, 0x00200052); ok {
					t.Errorf("FrameOfReferenceUID written though not set")
				}
			},
		},
		{
			name: "odd sizes and UTF-8 name",
			modify: func(s *dicomgen.InstanceSpec) {
				s.Rows, s.Columns = 3, 5
				s.PatientName = "Wang^XiaoDong=王^小東"
				s.PatientID = "ODD"
				s.InstanceNumber = 7
				s.FrameOfReferenceUID = "1.2.3"
			},
			check: func(t *testing.T, ds []elem) {
				if got := str(t, ds, 0x00080005); got != "ISO_IR 192" {
					t.Errorf("SpecificCharacterSet = %q", got)
				}
				if got := str(t, ds, 0x00100010); got != "Wang^XiaoDong=王^小東" {
					t.Errorf("PatientName = %q", got)
				}
				if got := str(t, ds, 0x00200013); got != "7" {
					t.Errorf("InstanceNumber = %q", got)
				}
				if got := str(t, ds, 0x00200052); got != "1.2.3" {
					t.Errorf("FrameOfReferenceUID = %q", got)
				}
				px, _ := find(ds, 0x7FE00010)
				if px.length != 3*5*2 {
					t.Errorf("PixelData length %d, want 30", px.length)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := newSpec()
			if tc.modify != nil {
				tc.modify(&spec)
			}
			var buf bytes.Buffer
			if err := dicomgen.WriteInstance(&buf, spec); err != nil {
				t.Fatal(err)
			}
			meta, ds := parsePart10(t, buf.Bytes())
			if got := str(t, meta, 0x00020010); got != dicomgen.ExplicitVRLittleEndian {
				t.Errorf("transfer syntax %q", got)
			}
			if got := str(t, meta, 0x00020002); got != dicomgen.CTImageStorage {
				t.Errorf("media storage SOP class %q", got)
			}
			if got := str(t, meta, 0x00020003); got != spec.SOPInstanceUID {
				t.Errorf("media storage SOP instance %q, want %q", got, spec.SOPInstanceUID)
			}
			for tag, want := range map[uint32]string{
				0x00080016: dicomgen.CTImageStorage,
				0x00080018: spec.SOPInstanceUID,
				0x00080060: "CT",
				0x0020000D: spec.StudyInstanceUID,
				0x0020000E: spec.SeriesInstanceUID,
				0x00280004: "MONOCHROME2",
			} {
				if got := str(t, ds, tag); got != want {
					t.Errorf("element %08X = %q, want %q", tag, got, want)
				}
			}
			if got := us(t, ds, 0x00280100); got != 16 {
				t.Errorf("BitsAllocated = %d", got)
			}
			px, ok := find(ds, 0x7FE00010)
			if !ok || px.vr != "OW" {
				t.Fatalf("no PixelData OW")
			}
			if ds[len(ds)-1].tag != 0x7FE00010 {
				t.Errorf("PixelData is not last")
			}
			tc.check(t, ds)
		})
	}
}

// Each modality gets its SOP class in the meta and the data set; images
// carry pixel data and a frame of reference, non-image objects neither.
func TestWriteInstanceModality(t *testing.T) {
	tests := []struct {
		modality, sopClass string
		image              bool
	}{
		{"", dicomgen.CTImageStorage, true},
		{"CT", dicomgen.CTImageStorage, true},
		{"MR", dicomgen.MRImageStorage, true},
		{"NM", dicomgen.SecondaryCaptureImageStorage, true},
		{"SR", dicomgen.BasicTextSRStorage, false},
		{"KO", dicomgen.KeyObjectSelectionDocumentStorage, false},
		{"PR", dicomgen.GrayscaleSoftcopyPresentationStateStorage, false},
	}
	for _, tc := range tests {
		t.Run(tc.modality, func(t *testing.T) {
			spec := newSpec()
			spec.Modality = tc.modality
			spec.FrameOfReferenceUID = "1.2.3"
			var buf bytes.Buffer
			if err := dicomgen.WriteInstance(&buf, spec); err != nil {
				t.Fatal(err)
			}
			meta, ds := parsePart10(t, buf.Bytes())
			wantModality := tc.modality
			if wantModality == "" {
				wantModality = dicomgen.DefaultModality
			}
			if got := str(t, ds, 0x00080060); got != wantModality {
				t.Errorf("Modality = %q, want %q", got, wantModality)
			}
			if got := str(t, meta, 0x00020002); got != tc.sopClass {
				t.Errorf("media storage SOP class %q, want %q", got, tc.sopClass)
			}
			if got := str(t, ds, 0x00080016); got != tc.sopClass {
				t.Errorf("SOP class %q, want %q", got, tc.sopClass)
			}
			for _, tag := range []uint32{0x7FE00010, 0x00280010, 0x00200052, 0x00080008} {
				if _, ok := find(ds, tag); ok != tc.image {
					t.Errorf("element %08X written = %v, want %v", tag, ok, tc.image)
				}
			}
		})
	}
	spec := newSpec()
	spec.Modality = `M\R`
	if err := dicomgen.WriteInstance(io.Discard, spec); !errors.Is(err, dicomgen.ErrInvalidSpec) {
		t.Errorf("Modality with a backslash: err = %v, want ErrInvalidSpec", err)
	}
}

func TestWriteInstanceDeterministic(t *testing.T) {
	spec := newSpec()
	var a, b bytes.Buffer
	if err := dicomgen.WriteInstance(&a, spec); err != nil {
		t.Fatal(err)
	}
	if err := dicomgen.WriteInstance(&b, spec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("same spec gave different bytes")
	}
}

func TestWriteInstanceInvalid(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*dicomgen.InstanceSpec)
	}{
		{"missing SOP UID", func(s *dicomgen.InstanceSpec) { s.SOPInstanceUID = "" }},
		{"UID with letters", func(s *dicomgen.InstanceSpec) { s.StudyInstanceUID = "1.2.abc" }},
		{"UID leading zero", func(s *dicomgen.InstanceSpec) { s.SeriesInstanceUID = "1.02.3" }},
		{"UID too long", func(s *dicomgen.InstanceSpec) { s.SOPInstanceUID = "1." + strings.Repeat("1", 63) }},
		{"bad frame of reference", func(s *dicomgen.InstanceSpec) { s.FrameOfReferenceUID = "x" }},
		{"rows negative", func(s *dicomgen.InstanceSpec) { s.Rows = -1 }},
		{"columns too large", func(s *dicomgen.InstanceSpec) { s.Columns = 70000 }},
		{"pixel data too large", func(s *dicomgen.InstanceSpec) { s.Rows, s.Columns = 65535, 65535 }},
		{"backslash in patient ID", func(s *dicomgen.InstanceSpec) { s.PatientID = `a\b` }},
		{"patient name group too long", func(s *dicomgen.InstanceSpec) { s.PatientName = strings.Repeat("x", 65) }},
		{"newline in study ID", func(s *dicomgen.InstanceSpec) { s.StudyID = "a\nb" }},
		{"negative instance number", func(s *dicomgen.InstanceSpec) { s.InstanceNumber = -1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := newSpec()
			tc.modify(&spec)
			var buf bytes.Buffer
			err := dicomgen.WriteInstance(&buf, spec)
			if !errors.Is(err, dicomgen.ErrInvalidSpec) {
				t.Fatalf("err = %v, want ErrInvalidSpec", err)
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes written for an invalid spec", buf.Len())
			}
		})
	}
}

// maxWriteWriter records the largest single Write.
type maxWriteWriter struct {
	n, max int
}

func (w *maxWriteWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.max = max(w.max, len(p))
	return len(p), nil
}

func TestWriteInstanceStreamsPixelData(t *testing.T) {
	spec := newSpec()
	spec.Rows, spec.Columns = 2048, 2048 // 8 MiB of pixels
	var w maxWriteWriter
	if err := dicomgen.WriteInstance(&w, spec); err != nil {
		t.Fatal(err)
	}
	if w.n < 2048*2048*2 {
		t.Fatalf("wrote %d bytes", w.n)
	}
	if w.max > 128<<10 {
		t.Errorf("largest write %d bytes: pixel data is not streamed in chunks", w.max)
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after < len(p) {
		return 0, io.ErrShortWrite
	}
	w.after -= len(p)
	return len(p), nil
}

func TestWriteInstanceWriterError(t *testing.T) {
	spec := newSpec()
	spec.Rows, spec.Columns = 512, 512
	err := dicomgen.WriteInstance(&failingWriter{after: 100 << 10}, spec)
	if !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("err = %v, want the writer's error", err)
	}
}

func TestNewUID(t *testing.T) {
	re := regexp.MustCompile(`^2\.25\.[1-9][0-9]*$`)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		u := dicomgen.NewUID()
		if !re.MatchString(u) || len(u) > 64 || !events.ValidUID(u) {
			t.Fatalf("bad UID %q", u)
		}
		if seen[u] {
			t.Fatalf("duplicate UID %q", u)
		}
		seen[u] = true
	}
}

func TestWriteStudy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "study")
	paths, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{
		StudyInstanceUID: "1.2.3.4", Series: 2, InstancesPerSeries: 3, Rows: 8, Columns: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 6 {
		t.Fatalf("%d paths, want 6", len(paths))
	}
	if filepath.Base(paths[0]) != "s001-i00001.dcm" || filepath.Base(paths[5]) != "s002-i00003.dcm" {
		t.Errorf("unexpected names %s .. %s", paths[0], paths[5])
	}
	series := map[string]int{}
	sops := map[string]bool{}
	frames := map[string]bool{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		_, ds := parsePart10(t, b)
		if got := str(t, ds, 0x0020000D); got != "1.2.3.4" {
			t.Errorf("%s: study UID %q", p, got)
		}
		series[str(t, ds, 0x0020000E)]++
		sops[str(t, ds, 0x00080018)] = true
		frames[str(t, ds, 0x00200052)] = true
	}
	if len(series) != 2 || len(sops) != 6 || len(frames) != 1 {
		t.Errorf("series %v, %d SOP UIDs, %d frames of reference", series, len(sops), len(frames))
	}
}

// SeriesList gives each series its modality, description and size.
func TestWriteStudySeriesList(t *testing.T) {
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		Rows: 4, Columns: 4,
		SeriesList: []dicomgen.SeriesSpec{
			{Modality: "MR", Description: "t1 axial", Instances: 2},
			{Modality: "SR", Instances: 1},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	type seriesInfo struct{ modality, description, sopClass string }
	var got []seriesInfo
	series := map[string]bool{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		_, ds := parsePart10(t, b)
		got = append(got, seriesInfo{str(t, ds, 0x00080060), str(t, ds, 0x0008103E), str(t, ds, 0x00080016)})
		series[str(t, ds, 0x0020000E)] = true
	}
	want := []seriesInfo{
		{"MR", "t1 axial", dicomgen.MRImageStorage},
		{"MR", "t1 axial", dicomgen.MRImageStorage},
		{"SR", "dicomgen series 2", dicomgen.BasicTextSRStorage},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(series) != 2 {
		t.Errorf("instances %v in %d series, want %v in 2", got, len(series), want)
	}
}

func TestWriteStudyInvalid(t *testing.T) {
	dir := t.TempDir()
	tests := []dicomgen.StudySpec{
		{Series: -1},
		{InstancesPerSeries: -2},
		{Rows: 70000},
		{StudyInstanceUID: "bad uid"},
		{Series: 2, SeriesList: []dicomgen.SeriesSpec{{Instances: 1}}},
		{SeriesList: []dicomgen.SeriesSpec{{Modality: "MR"}}},
	}
	for i, spec := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			_, err := dicomgen.WriteStudy(filepath.Join(dir, fmt.Sprint(i)), spec)
			if !errors.Is(err, dicomgen.ErrInvalidSpec) {
				t.Fatalf("err = %v, want ErrInvalidSpec", err)
			}
			// No partial file may remain.
			m, _ := filepath.Glob(filepath.Join(dir, fmt.Sprint(i), "*.dcm"))
			if len(m) != 0 {
				t.Errorf("left %v", m)
			}
		})
	}
}

// TestDcmdumpReadsGeneratedFiles has dcmtk parse a generated file strictly
// (file format only) and checks it reports no warning.
func TestDcmdumpReadsGeneratedFiles(t *testing.T) {
	bin := testharness.RequireBinary(t, "dcmdump")
	dir := t.TempDir()
	spec := newSpec()
	spec.Rows, spec.Columns = 5, 3
	spec.PatientName = "Müller^Hans"
	path := filepath.Join(dir, "x.dcm")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := dicomgen.WriteInstance(f, spec); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--read-file-only", "--convert-to-utf8", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dcmdump: %v\n%s", err, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("dcmdump warnings:\n%s", stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"(0002,0010) UI =LittleEndianExplicit",
		"(0008,0016) UI =CTImageStorage",
		"(0008,0060) CS [CT]",
		"(0010,0010) PN [Müller^Hans]",
		"(0028,0010) US 5",
		"(0028,0011) US 3",
		"(7fe0,0010) OW",
		"(0008,0005) CS [ISO_IR 192]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dcmdump output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("dcmdump output:\n%s", out)
	}
}
