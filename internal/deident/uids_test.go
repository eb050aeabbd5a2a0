package deident

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// baseElements is a minimal CT instance.
func baseElements() []*element {
	return []*element{
		str(0x00080005, "CS", "ISO_IR 100"),
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.4.5.6.1"),
		str(tagPatientName, "PN", "Roe^Richard"),
		str(tagPatientID, "LO", "PAT-42"),
		str(tagStudyInstanceUID, "UI", "1.2.3.4.5"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.4.5.6"),
	}
}

func sortedElements(els []*element) []*element {
	slices.SortFunc(els, func(a, b *element) int { return int(int64(a.tag) - int64(b.tag)) })
	return els
}

// A UID the profile's table does not list is mapped like the table's:
// no original instance UID is left, a reference to a mapped UID still
// resolves, and a UID the standard defines, or a class UID, is kept.
func TestUIDsOutsideTheTable(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	const privateClass = "1.2.840.113619.4.30" // a vendor's SOP class
	els := sortedElements(append(baseElements(),
		str(0x00081167, "UI", "1.2.3.4.5.6.99"),      // Multi-frame Source SOP Instance UID
		str(0x00200242, "UI", "1.2.3.4.5.6.98"),      // SOP Instance UID of Concatenation Source
		str(0x00209313, "UI", "1.2.3.4.5.77"),        // Table Frame of Reference UID
		str(0x00280304, "UI", "1.2.840.10008.1.5.1"), // Referenced Color Palette Instance UID: a standard palette
		seq(0x00081115, item(str(0x00081150, "UI", privateClass), str(0x00081155, "UI", "1.2.3.4.5.6.2"))),
		seq(0x00700318, item(str(0x0070031A, "UI", "1.2.3.4.5.55"), str(0x0070031B, "UI", "1.2.3.4.5.55"))),
	))
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"1.2.3.4.5.6.99", "1.2.3.4.5.6.98", "1.2.3.4.5.77", "1.2.3.4.5.55"} {
		if bytes.Contains(out.Bytes(), []byte(u)) {
			t.Errorf("original UID %s is in the copy", u)
		}
	}
	if n := bytes.Count(out.Bytes(), []byte(d.k.UID("1.2.3.4.5.55"))); n != 2 {
		t.Errorf("the fiducial UID and its reference map to %d copies of one pseudonym, want 2", n)
	}
	for _, keep := range []string{"1.2.840.10008.1.5.1", privateClass, "1.2.840.10008.5.1.4.1.1.2"} {
		if !bytes.Contains(out.Bytes(), []byte(keep)) {
			t.Errorf("UID %s, which names no instance, was not kept", keep)
		}
	}
}

// TestWellKnownUIDsInTheTable: the table's frame of reference attributes
// keep the frames the standard defines (UTC synchronization, an atlas);
// any other attribute maps a value under a well-known root (a device's
// own series, a reference to one of its instances).
func TestWellKnownUIDsInTheTable(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	const misused = "1.2.840.10008.1.4.77.2" // a device's own UID under a well-known root
	els := sortedElements(append(baseElements(),
		str(0x00200052, "UI", "1.2.840.10008.1.4.1.1"), // Frame of Reference UID: Talairach atlas
		str(0x00200200, "UI", "1.2.840.10008.15.1.1"),  // Synchronization Frame of Reference UID: UTC
		str(0x00281199, "UI", "1.2.840.10008.1.5.1"),   // Palette Color Lookup Table UID: Hot Iron
		seq(0x00081140, item(str(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2"), str(0x00081155, "UI", misused))),
	))
	// A device whose own series UID is under a well-known root.
	for _, el := range els {
		if el.tag == tagSeriesInstanceUID {
			*el = *str(tagSeriesInstanceUID, "UI", "1.2.840.10008.1.4.77.1")
		}
	}
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	copied := parseFile(t, out.Bytes())
	for tag, keep := range map[Tag]string{0x00200052: "1.2.840.10008.1.4.1.1", 0x00200200: "1.2.840.10008.15.1.1", 0x00281199: "1.2.840.10008.1.5.1"} {
		if el := find(copied.elements, tag); el == nil || trimValue(el.value) != keep {
			t.Errorf("%s: the well-known UID %s was not kept", tag, keep)
		}
	}
	for _, u := range []string{misused, "1.2.840.10008.1.4.77.1"} {
		if bytes.Contains(out.Bytes(), []byte(u)) {
			t.Errorf("UID %s of an instance was kept", u)
		}
	}
}

// TestUIDsOfAttributesNewerThanTheDictionary: a public attribute the
// dictionaries do not know, in Implicit VR or written as UN, holding
// UIDs, is mapped as a UID; other values of such attributes are kept.
func TestUIDsOfAttributesNewerThanTheDictionary(t *testing.T) {
	const newer, number, version = Tag(0x0020FFF0), Tag(0x0020FFF2), Tag(0x0020FFF4)
	for _, tt := range []struct {
		name     string
		syntax   string
		explicit bool
		vr       string
	}{
		{"implicit VR", syntaxImplicitLE, false, ""},
		{"explicit VR, UN", syntaxExplicitLE, true, "UN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestDeidentifier(t, Options{})
			els := sortedElements(append(baseElements(),
				&element{tag: newer, vr: tt.vr, value: pad(`1.2.3.4.5.6.77\2.25.1234567890`, "UI")},
				&element{tag: number, vr: tt.vr, value: pad(`1.5\2.5`, "DS")},
				&element{tag: version, vr: tt.vr, value: pad("1.10.1", "LO")},
			))
			var out bytes.Buffer
			if _, err := d.Rewrite(&out, bytes.NewReader(testFile(t, tt.syntax, tt.explicit, false, true, els))); err != nil {
				t.Fatal(err)
			}
			copied := parseFile(t, out.Bytes())
			want := map[Tag]string{newer: d.k.UID("1.2.3.4.5.6.77") + `\` + d.k.UID("2.25.1234567890"), number: `1.5\2.5`, version: "1.10.1"}
			for tag, v := range want {
				if el := find(copied.elements, tag); el == nil || strings.TrimRight(string(el.value), "\x00 ") != v {
					t.Errorf("%s: got %v, want %q", tag, el, v)
				}
			}
		})
	}
}

// failingReader fails with err after n bytes.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(b []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(b) > f.n {
		b = b[:f.n]
	}
	m, err := f.r.Read(b)
	f.n -= m
	return m, err
}

// A read from Orthanc that fails (a reset, shutdown, or an answer cut
// before its Content-Length, which net/http reports as
// io.ErrUnexpectedEOF) is that failure, to be retried, not a malformed
// file refused for good; a file that ends early is malformed.
func TestSourceFailureIsNotMalformed(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	in := testFile(t, syntaxExplicitLE, true, false, true, sortedElements(baseElements()))
	for _, cut := range []int{50, 140, 141, 150, len(in) - 5} {
		for _, failure := range []error{context.Canceled, io.ErrUnexpectedEOF} {
			var out bytes.Buffer
			_, err := d.Rewrite(&out, &failingReader{r: bytes.NewReader(in), n: cut, err: failure})
			if !errors.Is(err, failure) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrNotDICOM) {
				t.Errorf("read failing with %v after %d bytes: %v; want the read's error, not a malformed file", failure, cut, err)
			}
		}
		var out bytes.Buffer
		_, err := d.Rewrite(&out, bytes.NewReader(in[:cut]))
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNotDICOM) {
			t.Errorf("file cut after %d bytes: %v; want malformed", cut, err)
		}
	}
}

// Burned In Annotation " YES" is YES: leading spaces mean nothing in CS.
func TestBurnedInWithLeadingSpace(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	els := sortedElements(append(baseElements(), &element{tag: tagBurnedIn, vr: "CS", value: []byte(" YES")}))
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	if _, err := d.Rewrite(io.Discard, bytes.NewReader(in)); !errors.Is(err, ErrBurnedIn) {
		t.Errorf("Rewrite = %v, want ErrBurnedIn", err)
	}
}

// A SOP Class UID " 1.2.840.10008.5.1.4.1.1.7" (Orthanc drops the
// space) is Secondary Capture: refused like one, in the data set or,
// without one there, in the file meta.
func TestBurnedInClassWithLeadingSpace(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	els := baseElements()
	els[1] = str(tagSOPClassUID, "UI", " 1.2.840.10008.5.1.4.1.1.7")
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	if _, err := d.Rewrite(io.Discard, bytes.NewReader(in)); !errors.Is(err, ErrBurnedIn) {
		t.Errorf("data set's class: Rewrite = %v, want ErrBurnedIn", err)
	}
	in = testFile(t, syntaxExplicitLE, true, false, true, slices.Delete(baseElements(), 1, 2))
	ct, sc := []byte("1.2.840.10008.5.1.4.1.1.2\x00"), []byte(" 1.2.840.10008.5.1.4.1.1.7")
	if !bytes.Contains(in, ct) {
		t.Fatal("testFile's meta class not found")
	}
	in = bytes.Replace(in, ct, sc, 1)
	if _, err := d.Rewrite(io.Discard, bytes.NewReader(in)); !errors.Is(err, ErrBurnedIn) {
		t.Errorf("file meta's class: Rewrite = %v, want ErrBurnedIn", err)
	}
}

// A private attribute a destination keeps (STOW_DEIDENTIFY_KEEP) keeps
// its Private Creator: without it the attribute names nothing (PS3.5
// 7.8.1), and the destination cannot tell whose it is. Other blocks of
// the group stay removed.
func TestKeptPrivateAttributeKeepsItsCreator(t *testing.T) {
	d := newTestDeidentifier(t, Options{Keep: []Tag{0x00431029}})
	els := sortedElements(append(baseElements(),
		str(0x00430010, "LO", "GEMS_PARM_01"),
		&element{tag: 0x00431029, vr: "OB", value: []byte{1, 2, 3, 4}},
		str(0x00430011, "LO", "OTHER VENDOR"),
		str(0x00431101, "LO", "Roe private note"),
		seq(0x00081115, item(str(0x00430010, "LO", "GEMS_PARM_01"), &element{tag: 0x00431029, vr: "OB", value: []byte{5, 6}})),
	))
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	got := parseFile(t, out.Bytes())
	for _, level := range []struct {
		name string
		els  []*element
	}{{"top level", got.elements}, {"in a sequence", find(got.elements, 0x00081115).items[0]}} {
		if c := find(level.els, 0x00430010); c == nil || trimValue(c.value) != "GEMS_PARM_01" {
			t.Errorf("%s: the kept (0043,1029) lost its Private Creator (0043,0010): %v", level.name, c)
		}
		if find(level.els, 0x00431029) == nil {
			t.Errorf("%s: the kept (0043,1029) is gone", level.name)
		}
	}
	for _, tag := range []Tag{0x00430011, 0x00431101} {
		if find(got.elements, tag) != nil {
			t.Errorf("%s, of another private block, was kept", tag)
		}
	}
	dcmdump(t, out.Bytes())
}

// TestFileMetaWithoutPreamble: Orthanc accepts a file whose file meta
// starts at byte 0 (no 128-byte preamble, no "DICM") and serves it back
// as it came; its copy is the copy of the same file with a preamble,
// not a refusal as "not a DICOM file".
func TestFileMetaWithoutPreamble(t *testing.T) {
	full, err := os.ReadFile(filepath.Join(testharness.SamplesDir(t), "ct-explicit-le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	checkCopyAsComplete(t, full, full[132:])
}

// TestPreambleWithoutFileMeta: likewise for a file with the preamble and
// "DICM" but no file meta, which was refused as malformed ("the file
// meta has no Transfer Syntax UID").
func TestPreambleWithoutFileMeta(t *testing.T) {
	full, err := os.ReadFile(filepath.Join(testharness.SamplesDir(t), "ct-explicit-le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	metaEnd := 144 + int(binary.LittleEndian.Uint32(full[140:144]))
	checkCopyAsComplete(t, full, append(slices.Clip(full[:132]), full[metaEnd:]...))
}

// TestFileMetaWithoutTransferSyntax: likewise for file meta without a
// Transfer Syntax UID, Explicit or Implicit VR after it: Orthanc accepts
// both; they were refused as malformed.
func TestFileMetaWithoutTransferSyntax(t *testing.T) {
	for _, explicit := range []bool{true, false} {
		syntax := syntaxImplicitLE
		if explicit {
			syntax = syntaxExplicitLE
		}
		full := testFile(t, syntax, explicit, true, true, baseElements())
		ts := writeTestElement(t, str(tagTransferSyntax, "UI", syntax))
		i := bytes.Index(full, ts)
		if i < 0 {
			t.Fatal("testFile's Transfer Syntax UID not found")
		}
		part := slices.Concat(full[:i], full[i+len(ts):])
		binary.LittleEndian.PutUint32(part[140:], binary.LittleEndian.Uint32(full[140:])-uint32(len(ts)))
		checkCopyAsComplete(t, full, part)
	}
}

func writeTestElement(t *testing.T, el *element) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeElement(&b, el, true); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestBlankVR: an element whose VR is two spaces (some writers' VR when
// they know none) is read by Orthanc with a 2-byte length; the rewrite
// refused the whole instance as malformed. It now reads it as UN (its VR
// from the dictionary): a private one is removed, a kept text scrubbed,
// and the copy parses.
func TestBlankVR(t *testing.T) {
	els := sortedElements(append(baseElements(),
		str(0x00080070, "  ", "Roe Medical"), // Manufacturer, kept (LO)
		str(0x00190010, "LO", "ACME"),
		str(0x00191010, "  ", "Richard Roe"),
	))
	in := testFile(t, syntaxExplicitLE, true, true, true, els)
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "blank-vr"})
	storeInOrthanc(t, o, in)
	var out bytes.Buffer
	if _, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	copied := parseFile(t, out.Bytes())
	if m := find(copied.elements, 0x00080070); m == nil || strings.TrimSpace(trimValue(m.value)) != "Medical" {
		t.Errorf("Manufacturer %v, want it kept without the patient's name", m)
	}
	walk(copied.elements, 0, func(el *element, _ int) {
		if el.tag.Private() {
			t.Errorf("private element %s remains", el.tag)
		}
	})
	dcmdump(t, out.Bytes())
}

// TestSequenceDelimiterEndsDefinedLength: a sequence of defined length
// whose last 8 bytes are a sequence delimiter (some writers add one) is
// read by Orthanc; the rewrite refused the instance as malformed. It now
// takes the delimiter as the sequence's end, in either VR encoding.
func TestSequenceDelimiterEndsDefinedLength(t *testing.T) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "sequence-delimiter"})
	d := newTestDeidentifier(t, Options{})
	const referenced = "1.2.3.4.5.6.9"
	for _, explicit := range []bool{true, false} {
		syntax := syntaxImplicitLE
		if explicit {
			syntax = syntaxExplicitLE
		}
		var item, body, sq bytes.Buffer
		for _, el := range []*element{str(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2"), str(0x00081155, "UI", referenced)} {
			if err := writeElement(&item, el, explicit); err != nil {
				t.Fatal(err)
			}
		}
		_ = writeHeader(&body, tagItem, "", uint32(item.Len()), false)
		body.Write(item.Bytes())
		_ = writeHeader(&body, tagSeqDelim, "", 0, false)
		_ = writeHeader(&sq, 0x00081140, "SQ", uint32(body.Len()), explicit) // Referenced Image Sequence
		sq.Write(body.Bytes())
		els := baseElements() // sorted: the sequence goes after the SOP Instance UID
		in := slices.Concat(testFile(t, syntax, explicit, true, true, els[:3]), sq.Bytes(), testFile(t, syntax, explicit, true, false, els[3:]))
		storeInOrthanc(t, o, in)
		o.DeleteAll(t)
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
			t.Fatalf("explicit %v: Rewrite: %v", explicit, err)
		}
		seq := find(parseFile(t, out.Bytes()).elements, 0x00081140)
		if seq == nil || len(seq.items) != 1 || trimValue(find(seq.items[0], 0x00081155).value) != d.Keyer().UID(referenced) {
			t.Errorf("explicit %v: Referenced Image Sequence %v, want its one item with the keyed UID", explicit, seq)
		}
	}
}

// storeInOrthanc stores data in o as a DICOM file; the test fails if
// Orthanc refuses it.
func storeInOrthanc(t *testing.T, o *testharness.Orthanc, data []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "instance.dcm")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, path); len(res.Failed) > 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
}

// checkCopyAsComplete stores part, full with a part missing, in a real
// Orthanc, reads it back as it came, and wants its copy to be full's.
func checkCopyAsComplete(t *testing.T, full, part []byte) {
	t.Helper()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "incomplete"})
	storeInOrthanc(t, o, part)
	var ids []string
	o.GetJSON(t, "/instances", &ids)
	if len(ids) != 1 {
		t.Fatalf("Orthanc holds %d instances, want 1", len(ids))
	}
	stored, err := o.Bytes(t.Context(), http.MethodGet, "/instances/"+ids[0]+"/file", nil)
	if err != nil || !bytes.Equal(stored, part) {
		t.Fatalf("Orthanc serves %d bytes (%v), want the file as uploaded", len(stored), err)
	}
	d := newTestDeidentifier(t, Options{})
	var want, got bytes.Buffer
	if _, err := d.Rewrite(&want, bytes.NewReader(full)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Rewrite(&got, bytes.NewReader(stored)); err != nil {
		t.Fatalf("Rewrite of the incomplete file: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Error("the copy of the incomplete file differs from the copy of the complete one")
	}
}

// TestUIDLeadingSpace: Orthanc drops a UID's leading space, and the
// forwarder maps the UIDs Orthanc reports (the parts it sends, the
// answer mapped back, the ledger's and QIDO's study pseudonym): the
// copy must carry the pseudonyms of those, not of the UID with its
// space, or the stored instance is never recognised as sent.
func TestUIDLeadingSpace(t *testing.T) {
	els := baseElements()
	for i, el := range els {
		switch el.tag {
		case tagSOPInstanceUID, tagStudyInstanceUID, tagSeriesInstanceUID:
			els[i] = str(el.tag, "UI", " "+trimValue(el.value))
		}
	}
	in := testFile(t, syntaxExplicitLE, true, true, true, els)
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "uid-space"})
	storeInOrthanc(t, o, in)
	var instances []struct{ ID string }
	o.GetJSON(t, "/instances?expand", &instances)
	if len(instances) != 1 {
		t.Fatalf("Orthanc holds %d instances, want 1", len(instances))
	}
	var tags map[string]string
	o.GetJSON(t, "/instances/"+instances[0].ID+"/simplified-tags", &tags)
	stored, err := o.Bytes(t.Context(), http.MethodGet, "/instances/"+instances[0].ID+"/file", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDeidentifier(t, Options{})
	var out bytes.Buffer
	inst, err := d.Rewrite(&out, bytes.NewReader(stored))
	if err != nil {
		t.Fatal(err)
	}
	copied := parseFile(t, out.Bytes())
	for _, c := range []struct {
		tag  Tag
		name string
	}{{tagSOPInstanceUID, "SOPInstanceUID"}, {tagStudyInstanceUID, "StudyInstanceUID"}, {tagSeriesInstanceUID, "SeriesInstanceUID"}} {
		reported := tags[c.name]
		if reported == "" || strings.HasPrefix(reported, " ") {
			t.Fatalf("Orthanc reports %s %q, want the UID without its space", c.name, reported)
		}
		if got, want := trimValue(find(copied.elements, c.tag).value), d.Keyer().UID(reported); got != want {
			t.Errorf("%s: the copy holds %s, want %s, the pseudonym of %q as Orthanc reports it", c.name, got, want, reported)
		}
	}
	if want := d.Keyer().UID(tags["SOPInstanceUID"]); inst.NewSOPInstanceUID != want {
		t.Errorf("NewSOPInstanceUID %s, want %s", inst.NewSOPInstanceUID, want)
	}
}
