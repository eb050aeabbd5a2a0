package deident

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// scrub is scrubContext that neither stops nor runs out of lookups
// (tests, benchmarks).
func (ids *identifiers) scrub(v []byte) ([]byte, bool) {
	ids.lookups = 0
	out, changed, _ := ids.scrubContext(context.Background(), v)
	return out, changed
}

// ngIdentifiers are the identifying values of a patient whose name and
// ID are short: Ng^Me^^Mr, Patient ID 3037.
func ngIdentifiers() *identifiers {
	var ids identifiers
	ids.collect([]*element{
		str(tagPatientName, "PN", "Ng^Me^^Mr"),
		str(tagPatientID, "LO", "3037"),
	}, func(Tag, string) bool { return false })
	return &ids
}

// TestScrubWords: a match stands as a word, so short names and IDs do
// not cut other words and codes; prefixes and suffixes of names are not
// searched for; leading spaces stay.
func TestScrubWords(t *testing.T) {
	ids := ngIdentifiers()
	for _, tt := range []struct{ in, want string }{
		{"SIEMENS", "SIEMENS"},
		{"MR Imaging T2", "MR Imaging T2"},
		{"Mr Ng", "Mr"},
		{"123037004", "123037004"},
		{"ID 3037, seen by ME", "ID , seen by"},
		{"ng-3037", "-"},
		{"Ngozi", "Ngozi"},
		{"  indented NG\x00", "  indented"},
		{"3037\\1.2.3037", "\\1.2."},
	} {
		got, changed := ids.scrub([]byte(tt.in))
		if string(got) != tt.want || changed != (tt.in != tt.want) {
			t.Errorf("scrub(%q) = %q, %v; want %q", tt.in, got, changed, tt.want)
		}
	}
}

// TestScrubNextToPunctuationOfOtherCharacterSets: a no-break space, a
// typographic apostrophe, quote or dash (UTF-8, ISO 8859-1, or the
// windows-1252 bytes sites send as ISO_IR 100) ends a word as an ASCII
// space or quote does, so the name next to it goes; a letter of another
// character set still continues the word.
func TestScrubNextToPunctuationOfOtherCharacterSets(t *testing.T) {
	var ids identifiers
	ids.collect([]*element{
		str(tagPatientName, "PN", "Roe^Richard"),
		str(tagPatientID, "LO", "PAT-42"),
		str(0x00081070, "PN", "Jos^Ller"),
	}, func(Tag, string) bool { return false })
	for _, tt := range []struct{ name, in, want string }{
		{"UTF-8 apostrophe", "Roe\u2019s left knee", "\u2019s left knee"},
		{"UTF-8 no-break space", "Richard\u00a0Roe", "\u00a0"},
		{"UTF-8 quotes", "\u201cRoe\u201d", "\u201c\u201d"},
		{"UTF-8 en dash", "PAT-42\u2013CT", "\u2013CT"},
		{"UTF-8 guillemets", "\u00abRichard\u00bb", "\u00ab\u00bb"},
		{"Latin-1 no-break space", "Richard\xa0Roe", "\xa0"},
		{"Latin-1 guillemets", "\xabRoe\xbb", "\xab\xbb"},
		{"windows-1252 quotes", "\x93Roe\x94 \x96 PAT-42", "\x93\x94 \x96"},
		{"UTF-8 letter after", "Jos\u00e9", "Jos\u00e9"},
		{"Latin-1 letter after", "Jos\xe9", "Jos\xe9"},
		{"UTF-8 letter before", "M\u00fcller", "M\u00fcller"},
		{"Latin-1 letter before", "M\xfcller", "M\xfcller"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := ids.scrub([]byte(tt.in))
			if string(got) != tt.want || changed != (tt.in != tt.want) {
				t.Errorf("scrub(%q) = %q, %v; want %q", tt.in, got, changed, tt.want)
			}
		})
	}
}

// TestScrubWordsOfCompoundNames: a name component of several words (two
// surnames, a family name with a particle, a hyphenated given name) also
// loses each word, as text often names the person by one of them; the
// particles (de, la, van, der...) are common words of any text and stay.
func TestScrubWordsOfCompoundNames(t *testing.T) {
	var ids identifiers
	ids.collect([]*element{
		str(tagPatientName, "PN", "GARCIA LOPEZ^MARIA JOSE"),
		str(0x00081070, "PN", "van der Berg^Jan-Pieter"),
		str(0x00101001, "PN", "DOE,JOHN"),
		str(0x00080090, "PN", "MR ALAN SMITHEE"),
		str(0x00081050, "PN", "Dr. Jane Doe"),
	}, func(Tag, string) bool { return false })
	for _, tt := range []struct{ in, want string }{
		{"Maria Garcia", ""},
		{"seen by Dr Lopez", "seen by Dr"},
		{"GARCIA LOPEZ, MARIA JOSE", ","},
		{"Berg, Jan", ","},
		{"tech: Pieter van der Berg", "tech:"},
		{"Jan Pieter", ""},
		{"informe de la TC", "informe de la TC"},
		{"Befund der Lunge", "Befund der Lunge"},
		{"Bergamo", "Bergamo"},
		{"John Doe", ""},
		{"MR Brain, ref. Mr Smithee", "MR Brain, ref. Mr"},
		{"read by Dr. Jane", "read by Dr."},
	} {
		got, changed := ids.scrub([]byte(tt.in))
		if string(got) != tt.want || changed != (tt.in != tt.want) {
			t.Errorf("scrub(%q) = %q, %v; want %q", tt.in, got, changed, tt.want)
		}
	}
}

// TestRewriteKeepsCodes: coded entries (Code Value, Coding Scheme
// Designator...) arrive as they are, even when they hold an identifying
// value; Code Meaning is scrubbed.
func TestRewriteKeepsCodes(t *testing.T) {
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00080070, "LO", "SIEMENS"),
		seq(0x00089215, item(str(0x00080100, "SH", "123037004"), str(0x00080102, "SH", "SCT"),
			str(0x00080104, "LO", "Ng tissue"))),
		seq(0x00400260, item(str(0x00080100, "SH", "3037"), str(0x00080102, "SH", "NG"),
			str(0x00080104, "LO", "3037"))),
		str(tagPatientName, "PN", "Ng^Me^^Mr"),
		str(tagPatientID, "LO", "3037"),
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	})
	d := newTestDeidentifier(t, Options{})
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	dcmdump(t, out.Bytes())
	copy := parseFile(t, out.Bytes())
	if m := find(copy.elements, 0x00080070); m == nil || trimValue(m.value) != "SIEMENS" {
		t.Errorf("Manufacturer %v, want SIEMENS", m)
	}
	for _, tt := range []struct {
		seq                 Tag
		value, scheme, mean string
	}{{0x00089215, "123037004", "SCT", " tissue"}, {0x00400260, "3037", "NG", ""}} {
		s := find(copy.elements, tt.seq)
		if s == nil || len(s.items) != 1 {
			t.Fatalf("%s: %v", tt.seq, s)
		}
		it := s.items[0]
		if v := find(it, 0x00080100); v == nil || trimValue(v.value) != tt.value {
			t.Errorf("%s Code Value %v, want %q", tt.seq, v, tt.value)
		}
		if v := find(it, 0x00080102); v == nil || trimValue(v.value) != tt.scheme {
			t.Errorf("%s Coding Scheme Designator %v, want %q", tt.seq, v, tt.scheme)
		}
		if v := find(it, 0x00080104); v == nil || trimValue(v.value) != tt.mean {
			t.Errorf("%s Code Meaning %v, want %q (scrubbed)", tt.seq, v, tt.mean)
		}
	}
}

// largeText is n bytes of text in which the 2-letter name "Ng" stands as
// a word every 8 bytes.
func largeText(n int) []byte {
	return bytes.Repeat([]byte("abc Ng. "), n/8)
}

// TestScrubLargeText scrubs 1 MiB of text with a match every 8 bytes: the
// scrub is one pass (its speed: BenchmarkScrubLargeText).
func TestScrubLargeText(t *testing.T) {
	ids := ngIdentifiers()
	v := largeText(1 << 20)
	got, changed := ids.scrub(v)
	want := len(v) - 2*len(v)/8 - 1 // and the trailing space
	if !changed || len(got) != want || bytes.Contains(got, []byte("Ng")) {
		t.Errorf("scrub of 1 MiB: changed %v, %d bytes left of %d, want %d", changed, len(got), len(v), want)
	}
	if !bytes.HasPrefix(got, []byte("abc . abc . ")) {
		t.Errorf("scrub of 1 MiB starts %q", got[:16])
	}
}

// BenchmarkScrubLargeText: 1 MiB of text, a 2-byte name every 8 bytes.
//
//	go test -run '^$' -bench ScrubLargeText ./internal/deident/
func BenchmarkScrubLargeText(b *testing.B) {
	ids := ngIdentifiers()
	v := largeText(1 << 20)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		ids.scrub(v)
	}
}

// TestRewriteHoldsLargeValues: a large value before Pixel Data (a palette
// lookup table, a long text of unknown VR) does not cause the text before
// it to be written before the identifying values after it are known, and
// large text is scrubbed; text beyond what the scrub holds fails closed.
func TestRewriteHoldsLargeValues(t *testing.T) {
	lut := bytes.Repeat([]byte{1, 2, 3, 4}, 32<<10) // 128 KiB
	long := func(s string, n int) string {
		return strings.Repeat("x", n) + " dictated for WELBY, admission ADM-991 " + s
	}
	head := []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00081030, "LO", "CT for Welby"),
		str(tagPatientName, "PN", "Roe^Richard"),
		str(tagPatientID, "LO", "PAT-1"),
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		str(0x00204000, "LT", "seen by Welby, admission ADM-991, order ORD-77"),
	}
	tail := []*element{
		str(0x00321032, "PN", "Welby^Marcus"), // Requesting Physician
		str(0x00380010, "LO", "ADM-991"),      // Admission ID
		str(0x00402016, "LO", "ORD-77"),       // Placer Order Number
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	}
	secrets := []string{"welby", "adm-991", "ord-77"}
	for _, tt := range []struct {
		name     string
		explicit bool
		large    []*element // between head and tail
		wantErr  error
	}{
		{"palette LUT before the Requesting Physician/explicit", true,
			[]*element{{tag: 0x00281201, vr: "OW", value: lut}}, nil},
		{"palette LUT before the Requesting Physician/implicit", false,
			[]*element{{tag: 0x00281201, vr: "OW", value: lut}}, nil},
		{"large Text Value/implicit", false,
			[]*element{{tag: 0x00281201, vr: "OW", value: lut}}, nil},
		{"large text of unknown VR/implicit", false,
			[]*element{str(0x00320040, "", long("", 70<<10))}, nil},
		{"large text in VR UN/explicit", true,
			[]*element{str(0x00320040, "UN", long("", 70<<10))}, nil},
		{"text over the scrub's limit/explicit", true,
			[]*element{str(0x00320040, "UT", long("", 5<<20))}, ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			els := append(append(append([]*element{}, head...), tt.large...), tail...)
			if strings.HasPrefix(tt.name, "large Text Value") {
				// (0040,A160) Text Value, after the identifiers it names.
				els = append(append(append([]*element{}, head...), tail[:3]...),
					str(0x0040A160, "", long("Roe^Richard", 70<<10)), tail[3])
			}
			syntax := syntaxImplicitLE
			if tt.explicit {
				syntax = syntaxExplicitLE
			}
			in := testFile(t, syntax, tt.explicit, false, true, els)
			d := newTestDeidentifier(t, Options{CleanDescriptors: true})
			var out bytes.Buffer
			_, err := d.Rewrite(&out, bytes.NewReader(in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Rewrite: %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			folded := foldASCII(nil, out.Bytes())
			for _, s := range append(secrets, "roe", "richard") {
				if bytes.Contains(folded, []byte(s)) {
					t.Errorf("the copy holds %q", s)
				}
			}
			copy := parseFile(t, out.Bytes())
			if c := find(copy.elements, 0x00204000); c == nil || !strings.HasPrefix(string(c.value), "seen by , admission , order") {
				t.Errorf("Image Comments %v, want kept and scrubbed", c)
			}
			if l := find(copy.elements, 0x00281201); l != nil && !bytes.Equal(l.value, lut) {
				t.Errorf("palette LUT changed")
			}
		})
	}
}

// TestRewriteRemovesURLs: Retrieve URL and its kin carry the original
// UIDs and are removed, at any depth; another URL the copy keeps is
// scrubbed as text.
func TestRewriteRemovesURLs(t *testing.T) {
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00081190, "UR", "https://pacs.example/studies/1.2.3.9"),
		seq(0x00081115, item(str(0x00081190, "UR", "https://pacs.example/studies/1.2.3.9/series/1.2.3.9.2"),
			str(0x0020000E, "UI", "1.2.3.9.2"))),
		str(tagPatientName, "PN", "Roe^Richard"),
		str(tagPatientID, "LO", "PAT-1"),
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		str(0x00301000, "UR", "https://viewer.example/?patient=PAT-1"), // a URL the table does not list, kept
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	})
	d := newTestDeidentifier(t, Options{})
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	if bytes.Contains(out.Bytes(), []byte("pacs.example")) || bytes.Contains(out.Bytes(), []byte("PAT-1")) {
		t.Errorf("the copy holds a Retrieve URL or the Patient ID in a URL")
	}
	if u := find(parseFile(t, out.Bytes()).elements, 0x00301000); u == nil || trimValue(u.value) != "https://viewer.example/?patient=" {
		t.Errorf("(0030,1000) UR %v, want kept and scrubbed", u)
	}
}

// TestRewriteRefusesBurnedInBeforeWriting: an instance refused for
// Burned In Annotation YES leaves nothing written, even when what comes
// before it is more than the output buffer holds.
func TestRewriteRefusesBurnedInBeforeWriting(t *testing.T) {
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(tagPatientID, "LO", "PAT-1"),
		{tag: 0x00189FF0, vr: "OB", value: make([]byte, 100<<10)}, // unknown to the table: kept
		str(tagBurnedIn, "CS", "YES"),
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	})
	var out bytes.Buffer
	_, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in))
	if !errors.Is(err, ErrBurnedIn) || out.Len() != 0 {
		t.Errorf("Rewrite: %v, %d bytes written; want ErrBurnedIn and none", err, out.Len())
	}
}

// TestCleanDescriptorsHaveVR: every attribute the Clean Descriptors
// option keeps has a VR in an Implicit VR data set (dictionary or
// newerVR), so its text is scrubbed there too; the sequences among them
// are found by their items.
func TestCleanDescriptorsHaveVR(t *testing.T) {
	sequences := map[Tag]bool{0x00081084: true, 0x00321067: true, 0x00400275: true, 0x0040100A: true, 0x30100081: true}
	for _, tag := range cleanDescriptors {
		vr := dictionaryVR(tag, "")
		switch {
		case sequences[tag]:
			if vr != "" {
				t.Errorf("%s: VR %q, want a sequence", tag, vr)
			}
		case tag == 0x04000565 && vr == "CS": // Reason for the Attribute Modification: a defined term
		case vr == "OB": // Maker Note, Device Setting Description: removed, see below
		case !textVR(vr):
			t.Errorf("%s: VR %q in Implicit VR, want a text VR", tag, vr)
		}
	}
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	for _, tag := range []Tag{0x0016002B, 0x0016004B} {
		if a := d.p.action(tag, "OB"); a != actRemove {
			t.Errorf("%s (OB) with clean-descriptors: action %d, want removed (binary cannot be cleaned)", tag, a)
		}
	}
}

// TestRewriteHeaderOverHoldFailsClosed: a data set whose part before
// Pixel Data is larger than the hold is refused (ErrTooLarge), not
// written before its identifying values are known. The hold is 256 MiB;
// the test lowers it to 1 MiB.
func TestRewriteHeaderOverHoldFailsClosed(t *testing.T) {
	lut := bytes.Repeat([]byte{1, 2}, 256<<10) // 512 KiB
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00081030, "LO", "CT for Welby"),
		str(tagPatientID, "LO", "PAT-1"),
		{tag: 0x00281201, vr: "OW", value: lut},
		{tag: 0x00281202, vr: "OW", value: lut},
		{tag: 0x00281203, vr: "OW", value: lut},
		str(0x00321032, "PN", "Welby^Marcus"),
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	})
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	var out bytes.Buffer
	rw := &rewrite{d: d, dec: &decoder{r: bufio.NewReader(bytes.NewReader(in)), limit: 1 << 20}, w: bufio.NewWriter(&out)}
	err := rw.run()
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "before Pixel Data") {
		t.Fatalf("run: %v, want ErrTooLarge naming the hold before Pixel Data", err)
	}
	if out.Len() != 0 {
		t.Errorf("%d bytes written before the refusal", out.Len())
	}
}

// A sequence the copy drops (a private one; a Content Sequence, emptied)
// is read without holding its large values: one larger than the hold
// refused the instance (ErrTooLarge) though none of it is sent. Its small
// values still count for the scrub. The hold is lowered to 1 MiB.
func TestRewriteDroppedSequenceIsNotHeld(t *testing.T) {
	blob := bytes.Repeat([]byte{7, 9}, 1<<20) // 2 MiB
	nested := func() []*element {
		return item(str(tagPatientName, "PN", "Other^Olga"), &element{tag: 0x00091011, vr: "OB", value: blob},
			seq(0x00091012, item(&element{tag: 0x00091013, vr: "OB", value: blob})))
	}
	tests := []struct {
		name string
		drop *element
	}{
		{name: "private sequence", drop: seq(0x00091010, nested(), nested())},
		{name: "Content Sequence, emptied", drop: seq(0x0040A730, item(str(0x0040A123, "PN", "Other^Olga"), &element{tag: 0x0040A170, vr: "OB", value: blob}))},
	}
	for _, tt := range tests {
		for _, defined := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/defined length %v", tt.name, defined), func(t *testing.T) {
				in := testFile(t, syntaxExplicitLE, true, defined, true, []*element{
					str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
					str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
					str(0x00090010, "LO", "ACME 1.0"),
					str(tagPatientID, "LO", "PAT-1"),
					str(0x00204000, "LT", "seen by Olga"),
					tt.drop,
					{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
				})
				d := newTestDeidentifier(t, Options{CleanDescriptors: true})
				var out bytes.Buffer
				rw := &rewrite{d: d, dec: &decoder{r: bufio.NewReader(bytes.NewReader(in)), limit: 1 << 20}, w: bufio.NewWriter(&out)}
				if err := rw.run(); err != nil {
					t.Fatalf("run: %v", err)
				}
				if err := rw.w.Flush(); err != nil {
					t.Fatal(err)
				}
				got := parseFile(t, out.Bytes()).elements
				if bytes.Contains(out.Bytes(), blob[:64]) {
					t.Error("the copy holds the dropped sequence's values")
				}
				if c := find(got, 0x00204000); c == nil || strings.Contains(string(c.value), "Olga") {
					t.Errorf("Image Comments %v, want kept without the name only the dropped sequence holds", c)
				}
			})
		}
	}
}

// Overlay text (a repeating group the dictionary leaves out) is scrubbed
// in Implicit VR as in Explicit VR: a patient's name or ID typed into an
// overlay's label or description does not reach the destination.
func TestRewriteScrubsOverlayText(t *testing.T) {
	for _, explicit := range []bool{true, false} {
		vr := func(v string) string {
			if explicit {
				return v
			}
			return ""
		}
		els := []*element{
			str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
			str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
			str(tagPatientName, "PN", "Doe^John"),
			str(tagPatientID, "LO", "PID123"),
			str(tagStudyInstanceUID, "UI", "1.2.3.9"),
			str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
			str(0x60000022, vr("LO"), "overlay of Doe John PID123"),
			str(0x60000045, vr("LO"), "USER Doe"),
			str(0x60021500, vr("LO"), "John Doe"),
			{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
		}
		syntax := syntaxImplicitLE
		if explicit {
			syntax = syntaxExplicitLE
		}
		in := testFile(t, syntax, explicit, false, true, els)
		// The overlay groups are removed: kept, their text is scrubbed.
		d := newTestDeidentifier(t, Options{Keep: []Tag{0x60000022, 0x60000045, 0x60021500}})
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
			t.Fatalf("explicit %v: Rewrite: %v", explicit, err)
		}
		folded := foldASCII(nil, out.Bytes())
		for _, s := range []string{"doe", "john", "pid123"} {
			if bytes.Contains(folded, []byte(s)) {
				t.Errorf("explicit %v: the copy holds %q", explicit, s)
			}
		}
		if el := find(parseFile(t, out.Bytes()).elements, 0x60000022); el == nil || trimValue(el.value) != "overlay of" {
			t.Errorf("explicit %v: Overlay Description %v, want kept and scrubbed", explicit, el)
		}
	}
}

// With RetainDates, what is kept as a date or time is decided by the
// dictionary, never by the VR the file declares: an address or a
// procedure description written as TM is still removed.
func TestRetainDatesTrustsTheDictionaryNotTheFile(t *testing.T) {
	els := []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00080030, "TM", "101500"), // Study Time: kept with RetainDates
		str(tagPatientName, "PN", "Doe^John"),
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		str(0x00101040, "TM", "12 ELM STREET"),  // Patient's Address, as TM
		str(0x00321060, "TM", "CT OF DOE HEAD"), // Requested Procedure Description, as TM
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	}
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	d := newTestDeidentifier(t, Options{RetainDates: true})
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	folded := foldASCII(nil, out.Bytes())
	for _, s := range []string{"elm street", "doe"} {
		if bytes.Contains(folded, []byte(s)) {
			t.Errorf("the copy holds %q", s)
		}
	}
	if c := find(parseFile(t, out.Bytes()).elements, 0x00080030); c == nil || trimValue(c.value) != "101500" {
		t.Errorf("Study Time %v, want kept with RetainDates", c)
	}
}

// TestRetainDatesKnowsEveryDateOfTheTable: with RetainDates every date
// and time of the profile's table is read by its dictionary VR, so a DT
// is moved back, never kept as a time (HL7 Document Effective Time, a DT,
// was kept as it came), and a DA is moved back, not removed (Date of
// Secondary Capture).
func TestRetainDatesKnowsEveryDateOfTheTable(t *testing.T) {
	for tag := range basicProfile {
		if tag == 0x00160077 {
			continue // GPS Time Stamp: not in the option's column, removed
		}
		switch vr := dictVR[tag]; vr {
		case "DA", "DT", "TM":
			if temporalVR[tag] != vr {
				t.Errorf("%s is %s in PS3.6, %q in temporalVR", tag, vr, temporalVR[tag])
			}
		}
	}
	for tag, vr := range temporalVR {
		if d, ok := dictVR[tag]; ok && d != vr {
			t.Errorf("%s is %s in PS3.6, %s in temporalVR", tag, d, vr)
		}
	}

	els := []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00181012, "DA", "20200314"), // Date of Secondary Capture
		str(tagPatientID, "LO", "PAT-42"),
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		seq(0x0040A390, item(str(0x0040E004, "DT", "20200314101500"))), // HL7 Document Effective Time
	}
	in := testFile(t, syntaxImplicitLE, false, false, true, els)
	d := newTestDeidentifier(t, Options{RetainDates: true})
	var out bytes.Buffer
	inst, err := d.Rewrite(&out, bytes.NewReader(in))
	if err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	if bytes.Contains(out.Bytes(), []byte("20200314")) {
		t.Error("the copy holds the original date 20200314")
	}
	shifted, _ := shiftDates("20200314", inst.DateShiftDays)
	got := parseFile(t, out.Bytes())
	if c := find(got.elements, 0x00181012); c == nil || trimValue(c.value) != shifted {
		t.Errorf("Date of Secondary Capture %v, want %s", c, shifted)
	}
	if c := find(find(got.elements, 0x0040A390).items[0], 0x0040E004); c == nil || trimValue(c.value) != shifted+"101500" {
		t.Errorf("HL7 Document Effective Time %v, want %s101500", c, shifted)
	}
}

// A data set without its SOP Class UID takes the file meta's in the copy:
// a Secondary Capture so declared is refused like any other.
func TestRewriteChecksTheMetaSOPClass(t *testing.T) {
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(tagPatientID, "LO", "PAT-1"),
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	})
	// The meta's class, CT in testFile, becomes Secondary Capture (as long).
	ct, sc := []byte("1.2.840.10008.5.1.4.1.1.2\x00"), []byte("1.2.840.10008.5.1.4.1.1.7\x00")
	if !bytes.Contains(in, ct) {
		t.Fatal("testFile's meta class not found")
	}
	in = bytes.Replace(in, ct, sc, 1)
	var out bytes.Buffer
	_, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in))
	if !errors.Is(err, ErrBurnedIn) || out.Len() != 0 {
		t.Errorf("Rewrite: %v, %d bytes written; want ErrBurnedIn and none", err, out.Len())
	}
}

// TestScrubRemovesTheInstanceDates: every date the copy does not keep as
// it is (shifted with RetainDates, emptied or removed without), and the
// date part of every such DT, is removed from kept text in its usual
// spellings, as Station Name's value is: "FOLLOWUP 2023-05-04" next to a
// shifted Study Date gave away the patient's offset.
func TestScrubRemovesTheInstanceDates(t *testing.T) {
	for _, retain := range []bool{true, false} {
		els := sortedElements(append(baseElements(),
			str(0x00080020, "DA", "20230504"),              // Study Date
			str(0x00080021, "DA", "20230505"),              // Series Date
			str(0x0008002A, "DT", "20230506101010.5+0100"), // Acquisition DateTime
			str(0x00081010, "SH", "CTROOM7"),               // Station Name
			str(0x0008103E, "LO", "FOLLOWUP 2023-05-04 and 20230504, 05.05.2023, 06/05/2023 on CTROOM7"),
			&element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
		))
		in := testFile(t, syntaxExplicitLE, true, false, true, els)
		d := newTestDeidentifier(t, Options{CleanDescriptors: true, RetainDates: retain})
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
			t.Fatalf("retain dates %v: Rewrite: %v", retain, err)
		}
		got := "absent"
		if el := find(parseFile(t, out.Bytes()).elements, 0x0008103E); el != nil {
			got = trimValue(el.value)
		}
		if got != "FOLLOWUP  and , ,  on" {
			t.Errorf("retain dates %v: Series Description %q, want the dates and station gone", retain, got)
		}
	}
}

// TestScrubKeepsAShortStationName: a Station Name shorter than
// minStation (a station named by its modality) is not searched for: it
// cut that word out of every description. One of minStation characters
// is.
func TestScrubKeepsAShortStationName(t *testing.T) {
	for _, tt := range []struct{ station, desc, want string }{
		{"CT", "CT HEAD W/O", "CT HEAD W/O"},
		{"MRI", "MRI HEAD on MRI", "MRI HEAD on MRI"},
		{"CT07", "CT HEAD W/O on CT07", "CT HEAD W/O on"},
	} {
		t.Run(tt.station, func(t *testing.T) {
			els := sortedElements(append(baseElements(),
				str(0x00081010, "SH", tt.station), // Station Name
				str(0x0008103E, "LO", tt.desc),    // Series Description
				&element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
			))
			in := testFile(t, syntaxExplicitLE, true, false, true, els)
			var out bytes.Buffer
			if _, err := newTestDeidentifier(t, Options{CleanDescriptors: true}).Rewrite(&out, bytes.NewReader(in)); err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			got := "absent"
			if el := find(parseFile(t, out.Bytes()).elements, 0x0008103E); el != nil {
				got = trimValue(el.value)
			}
			if got != tt.want {
				t.Errorf("Series Description %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRewriteRecordsWhatBecameOfDates: Longitudinal Temporal Information
// Modified says REMOVED, or MODIFIED with RetainDates, whose code 113107
// the method codes hold then only.
func TestRewriteRecordsWhatBecameOfDates(t *testing.T) {
	for _, tt := range []struct {
		retain bool
		want   string
	}{{false, "REMOVED"}, {true, "MODIFIED"}} {
		t.Run(tt.want, func(t *testing.T) {
			els := sortedElements(append(baseElements(),
				str(0x00080020, "DA", "20230504"), // Study Date
				&element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
			))
			in := testFile(t, syntaxExplicitLE, true, false, true, els)
			var out bytes.Buffer
			if _, err := newTestDeidentifier(t, Options{RetainDates: tt.retain}).Rewrite(&out, bytes.NewReader(in)); err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			copy := parseFile(t, out.Bytes())
			if el := find(copy.elements, tagLongitudinal); el == nil || trimValue(el.value) != tt.want {
				t.Errorf("Longitudinal Temporal Information Modified %v, want %s", el, tt.want)
			}
			var codes []string
			if el := find(copy.elements, tagDeidentMethodCodes); el != nil {
				for _, it := range el.items {
					codes = append(codes, trimValue(find(it, 0x00080100).value))
				}
			}
			if slices.Contains(codes, "113107") != tt.retain {
				t.Errorf("method codes %v: 113107 (Retain Longitudinal Temporal Information Modified Dates) present should be %v", codes, tt.retain)
			}
		})
	}
}

// TestRewriteRemovesEncryptedAttributesAndFreeText: the Encrypted
// Attributes Sequence (the original identifying attributes, encrypted for
// a recipient) and the MAC Parameters Sequence are removed, and free text
// outside the containers the table empties (a Text Value in a Protocol
// Context Sequence, an Unformatted Text Value in a Waveform Annotation
// Sequence) is emptied; all of them were sent as they came.
func TestRewriteRemovesEncryptedAttributesAndFreeText(t *testing.T) {
	els := sortedElements(append(baseElements(),
		seq(0x00400440, item( // Protocol Context Sequence
			str(0x0040A040, "CS", "TEXT"),
			str(0x0040A160, "UT", "told the nurse her neighbour Alice Smith hit her"),
		)),
		seq(0x0040B020, item( // Waveform Annotation Sequence
			str(0x00700006, "ST", "lead off, call Bob Jones on 555 0199"),
		)),
		seq(0x04000500, item( // Encrypted Attributes Sequence
			str(0x04000510, "UI", "1.2.840.10008.1.2.1"),
			&element{tag: 0x04000520, vr: "OB", value: []byte("ENCRYPTED-ORIGINALS!")},
		)),
		seq(0x4FFE0001, item( // MAC Parameters Sequence
			&element{tag: 0x04000005, vr: "US", value: []byte{1, 0}},
			str(0x04000015, "CS", "RIPEMD160"),
		)),
		&element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	))
	in := testFile(t, syntaxExplicitLE, true, false, true, els)
	var out bytes.Buffer
	if _, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	for _, s := range []string{"Alice", "Bob Jones", "ENCRYPTED-ORIGINALS", "RIPEMD160"} {
		if bytes.Contains(out.Bytes(), []byte(s)) {
			t.Errorf("the copy holds %q", s)
		}
	}
	got := parseFile(t, out.Bytes()).elements
	for _, tag := range []Tag{0x04000500, 0x4FFE0001} {
		if find(got, tag) != nil {
			t.Errorf("the copy holds %s", tag)
		}
	}
	for _, tt := range []struct{ seq, text Tag }{{0x00400440, 0x0040A160}, {0x0040B020, 0x00700006}} {
		s := find(got, tt.seq)
		if s == nil || len(s.items) != 1 {
			t.Errorf("%s: %v, want kept with its item", tt.seq, s)
			continue
		}
		if v := find(s.items[0], tt.text); v == nil || len(v.value) != 0 {
			t.Errorf("%s in %s: %v, want present and empty", tt.text, tt.seq, v)
		}
	}
}
