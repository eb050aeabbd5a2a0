package deident

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func str(tag Tag, vr, v string) *element { return &element{tag: tag, vr: vr, value: pad(v, vr)} }

func seq(tag Tag, items ...[]*element) *element {
	return &element{tag: tag, vr: "SQ", seq: true, items: items}
}

func item(els ...*element) []*element { return els }

// encodeDefined writes el as writeElement does, but sequences and items
// with defined lengths, as many writers do.
func encodeDefined(w io.Writer, el *element, explicit bool) error {
	if !el.seq {
		return writeElement(w, el, explicit)
	}
	itemsExplicit := explicit && !el.implicitItems
	var body bytes.Buffer
	for _, it := range el.items {
		var ib bytes.Buffer
		for _, c := range it {
			if err := encodeDefined(&ib, c, itemsExplicit); err != nil {
				return err
			}
		}
		_ = writeHeader(&body, tagItem, "", uint32(ib.Len()), false)
		body.Write(ib.Bytes())
	}
	if err := writeHeader(w, el.tag, el.vr, uint32(body.Len()), explicit); err != nil {
		return err
	}
	_, err := w.Write(body.Bytes())
	return err
}

// testFile writes a Part-10 file (or a bare data set without meta), its
// top-level elements in ascending tag order as PS3.5 7.1 wants (the
// rewrite refuses others): the tests list them in the order that reads
// best.
func testFile(t *testing.T, syntax string, explicit, defined, meta bool, els []*element) []byte {
	t.Helper()
	els = slices.Clone(els)
	slices.SortStableFunc(els, func(a, b *element) int { return cmp.Compare(a.tag, b.tag) })
	var b bytes.Buffer
	if meta {
		var mb bytes.Buffer
		for _, m := range []*element{
			{tag: 0x00020001, vr: "OB", value: []byte{0, 1}},
			str(0x00020002, "UI", "1.2.840.10008.5.1.4.1.1.2"),
			str(0x00020003, "UI", "1.2.3.4.5.6.1"),
			str(tagTransferSyntax, "UI", syntax),
			str(0x00020016, "AE", "SENDER_AE"),
		} {
			_ = writeElement(&mb, m, true)
		}
		b.Write(make([]byte, 128))
		b.WriteString("DICM")
		_ = writeElement(&b, &element{tag: 0x00020000, vr: "UL", value: binary.LittleEndian.AppendUint32(nil, uint32(mb.Len()))}, true)
		b.Write(mb.Bytes())
	}
	for _, el := range els {
		var err error
		if defined {
			err = encodeDefined(&b, el, explicit)
		} else {
			err = writeElement(&b, el, explicit)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func nestedDataset(evidenceUN bool, pixel *element) []*element {
	evidence := seq(0x0040A375, item(
		seq(0x00081115, item(
			seq(0x00081199, item(str(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2"), str(0x00081155, "UI", "1.2.3.4.5.6.3"))),
			str(tagSeriesInstanceUID, "UI", "1.2.3.4.5.6"),
		)),
		str(tagPatientName, "PN", "Doe^Jane"),
		str(tagStudyInstanceUID, "UI", "1.2.3.4.5"),
	))
	if evidenceUN {
		evidence.vr, evidence.implicitItems = "UN", true
	}
	return []*element{
		str(0x00080005, "CS", "ISO_IR 100"),
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.4.5.6.1"),
		str(0x00080020, "DA", "20200102"),
		str(0x00080030, "TM", "101500"),
		str(0x00080080, "LO", "General Hospital"),
		seq(0x00081140, item(
			str(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2"),
			str(0x00081155, "UI", "1.2.3.4.5.6.2"),
			str(0x00090010, "LO", "ACME"),
			str(0x00091001, "LO", "secret in a private tag"),
		)),
		str(0x00090010, "LO", "ACME"),
		seq(0x00091010, item(str(tagPatientName, "PN", "Doe^John"))),
		{tag: 0x00091020, vr: "OB", value: bytes.Repeat([]byte("Doe^John"), 20<<10)}, // streamed, before Patient ID
		str(tagPatientName, "PN", "Doe^John"),
		str(tagPatientID, "LO", "PID123"),
		str(0x00101000, "LO", "OTHER1"),
		str(tagStudyInstanceUID, "UI", "1.2.3.4.5"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.4.5.6"),
		str(0x00200052, "UI", "1.2.3.4.5.7"),
		evidence,
		pixel,
	}
}

func TestRewriteNestedSequences(t *testing.T) {
	native := &element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{1, 2, 3, 4}, 3<<18)} // 3 MiB: streamed
	encapsulated := &element{tag: tagPixelData, vr: "OB", encapsulated: true, fragments: [][]byte{{}, bytes.Repeat([]byte{9}, 2<<20)}}
	for _, tt := range []struct {
		name                    string
		syntax                  string
		explicit, defined, meta bool
		un                      bool
		pixel                   *element
	}{
		{"explicit undefined lengths", syntaxExplicitLE, true, false, true, false, native},
		{"explicit defined lengths", syntaxExplicitLE, true, true, true, false, native},
		{"implicit undefined lengths", syntaxImplicitLE, false, false, true, false, native},
		{"implicit defined lengths", syntaxImplicitLE, false, true, true, false, native},
		{"implicit without meta", syntaxImplicitLE, false, true, false, false, native},
		{"explicit sequence in a UN value", syntaxExplicitLE, true, true, true, true, native},
		{"encapsulated pixel data", "1.2.840.10008.1.2.4.70", true, false, true, false, encapsulated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := testFile(t, tt.syntax, tt.explicit, tt.defined, tt.meta, nestedDataset(tt.un, tt.pixel))
			for _, retain := range []bool{false, true} {
				d := newTestDeidentifier(t, Options{RetainDates: retain})
				var out bytes.Buffer
				inst, err := d.Rewrite(&out, bytes.NewReader(in))
				if err != nil {
					t.Fatalf("Rewrite: %v", err)
				}
				dcmdump(t, out.Bytes())
				orig, copy := parseFile(t, in), parseFile(t, out.Bytes())
				checkDeidentified(t, d, orig, copy)
				k := d.k
				uids := map[string]bool{}
				walk(copy.elements, 0, func(el *element, depth int) {
					switch el.tag {
					case 0x00081155, tagStudyInstanceUID, tagSeriesInstanceUID, tagSOPInstanceUID, 0x00200052:
						uids[trimValue(el.value)] = true
					case tagPatientName:
						if want := map[bool]string{true: "", false: k.PatientID("PID123")}[depth > 0]; trimValue(el.value) != want {
							t.Errorf("Patient's Name at depth %d: %q, want %q", depth, trimValue(el.value), want)
						}
					}
					if strings.Contains(string(el.value), "Doe^") || strings.Contains(string(el.value), "Hospital") {
						t.Errorf("%s keeps %q", el.tag, el.value)
					}
				})
				for _, o := range []string{"1.2.3.4.5", "1.2.3.4.5.6", "1.2.3.4.5.6.1", "1.2.3.4.5.6.2", "1.2.3.4.5.6.3", "1.2.3.4.5.7"} {
					if !uids[k.UID(o)] {
						t.Errorf("keyed UID of %s missing from the copy (have %v)", o, uids)
					}
				}
				if ev := find(copy.elements, 0x0040A375); ev == nil || !ev.seq || len(ev.items) != 1 {
					t.Errorf("evidence sequence %+v", ev)
				}
				date := trimValue(find(copy.elements, 0x00080020).value)
				want := ""
				if retain {
					want = "20200102"
					if sh, _ := shiftDates("20200102", k.DateShift("PID123")); sh != "" {
						want = sh
					}
				}
				if date != want || (retain && inst.DateShiftDays != k.DateShift("PID123")) {
					t.Errorf("Study Date %q, want %q (retain %v)", date, want, retain)
				}
				if tm := find(copy.elements, 0x00080030); retain && (tm == nil || trimValue(tm.value) != "101500") {
					t.Errorf("Study Time %v, want kept with retain-dates", tm)
				}
				px := find(copy.elements, tagPixelData)
				if tt.pixel.encapsulated {
					if px == nil || len(px.fragments) != 2 || !bytes.Equal(px.fragments[1], tt.pixel.fragments[1]) {
						t.Error("encapsulated pixel data changed")
					}
				} else if px == nil || !bytes.Equal(px.value, tt.pixel.value) {
					t.Error("pixel data changed")
				}
				if m := find(copy.meta, 0x00020016); m != nil {
					t.Errorf("source AE title kept in the meta: %q", m.value)
				}
			}
		})
	}
}

func TestKeyer(t *testing.T) {
	if _, err := NewKeyer([]byte("short"), ""); err == nil {
		t.Error("a 5-byte key was accepted")
	}
	a, _ := NewKeyer(testKey, "P-")
	b, _ := NewKeyer(append([]byte("x"), testKey...), "P-")
	uid := a.UID("1.2.3")
	if len(uid) > 64 || !strings.HasPrefix(uid, "2.25.") || uid != a.UID("1.2.3\x00") || uid == b.UID("1.2.3") || uid == a.UID("1.2.4") {
		t.Errorf("UID mapping: %s", uid)
	}
	if p := a.PatientID("PID"); len(p) != 22 || !strings.HasPrefix(p, "P-") || p == b.PatientID("PID") || p != a.PatientID("PID ") {
		t.Errorf("Patient ID mapping: %s", p)
	}
	if s := a.DateShift("PID"); s < 1 || s > MaxDateShiftDays {
		t.Errorf("date shift %d", s)
	}
}

// TestPatientIDSpacesAreNotSignificant: leading and trailing spaces of a
// Patient ID (VR LO) are not significant (PS3.5 6.2), so " PAT-42" from
// one modality and "PAT-42" from another are one patient: one pseudonym,
// one date offset.
func TestPatientIDSpacesAreNotSignificant(t *testing.T) {
	k, err := NewKeyer(testKey, "P-")
	if err != nil {
		t.Fatal(err)
	}
	want, wantShift := k.PatientID("PAT-42"), k.DateShift("PAT-42")
	for _, id := range []string{" PAT-42", "  PAT-42 ", "PAT-42\x00", " PAT-42\x00"} {
		if got := k.PatientID(id); got != want {
			t.Errorf("PatientID(%q) = %s, want %s as for PAT-42", id, got, want)
		}
		if got := k.DateShift(id); got != wantShift {
			t.Errorf("DateShift(%q) = %d, want %d as for PAT-42", id, got, wantShift)
		}
	}
}

// TestDateOffsetWithoutPatientID: instances without a Patient ID move
// their dates by their study's offset, one study alike; they shared one
// offset, so one known date gave away every such patient's dates.
func TestDateOffsetWithoutPatientID(t *testing.T) {
	d := newTestDeidentifier(t, Options{RetainDates: true})
	shift := func(patientID, study, sop string) int {
		t.Helper()
		var els []*element
		for _, el := range baseElements() {
			switch el.tag {
			case tagPatientID:
				el = str(tagPatientID, "LO", patientID)
			case tagStudyInstanceUID:
				el = str(tagStudyInstanceUID, "UI", study)
			case tagSOPInstanceUID:
				el = str(tagSOPInstanceUID, "UI", sop)
			}
			els = append(els, el)
		}
		inst, err := d.Rewrite(io.Discard, bytes.NewReader(testFile(t, syntaxExplicitLE, true, false, true, els)))
		if err != nil {
			t.Fatal(err)
		}
		return inst.DateShiftDays
	}
	a1, a2, b := shift("", "1.2.3.100", "1.2.3.100.1"), shift("", "1.2.3.100", "1.2.3.100.2"), shift("", "1.2.3.200", "1.2.3.200.1")
	if a1 != a2 {
		t.Errorf("two instances of one study without Patient ID: offsets %d and %d", a1, a2)
	}
	if a1 == b {
		t.Errorf("two studies without Patient ID share the offset %d", a1)
	}
	if p1, p2 := shift("PAT-42", "1.2.3.100", "1.2.3.100.3"), shift("PAT-42", "1.2.3.200", "1.2.3.200.2"); p1 != p2 || p1 != d.k.DateShift("PAT-42") {
		t.Errorf("one patient's studies: offsets %d and %d, want %d", p1, p2, d.k.DateShift("PAT-42"))
	}
}

func FuzzRewrite(f *testing.F) {
	px := &element{tag: tagPixelData, vr: "OW", value: []byte{1, 2, 3, 4}}
	f.Add(testFile(&testing.T{}, syntaxExplicitLE, true, true, true, nestedDataset(true, px)))
	f.Add(testFile(&testing.T{}, syntaxImplicitLE, false, false, false, nestedDataset(false, px)))
	k, _ := NewKeyer(testKey, "")
	d, _ := New(k, Options{RetainDates: true, IncludeBurnedIn: true})
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
			return
		}
		var again bytes.Buffer
		if _, err := d.Rewrite(&again, bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("the copy does not read back: %v", err)
		}
	})
}

func TestProfileActions(t *testing.T) {
	d := newTestDeidentifier(t, Options{Keep: []Tag{0x00081030}, Remove: []Tag{0x00080060}})
	for _, tt := range []struct {
		tag  Tag
		vr   string
		want action
	}{
		{0x00100010, "PN", actPatientName},
		{0x00100020, "LO", actPatientID},
		{0x0020000D, "UI", actUID},
		{0x00081155, "UI", actUID},  // Referenced SOP Instance UID
		{0x00080016, "UI", actKeep}, // SOP Class UID
		{0x00081030, "LO", actKeep}, // kept by the destination
		{0x00080060, "CS", actRemove},
		{0x00090010, "LO", actRemove}, // private creator
		{0x00180000, "UL", actRemove}, // group length
		{0x60003000, "OW", actRemove}, // Overlay Data
		{0x60000010, "US", actRemove}, // Overlay Rows: the whole group
		{0x601E1500, "LO", actRemove}, // Overlay Label
		{0x50000010, "US", actRemove}, // Curve
		{0x0018FFF0, "PN", actEmpty},  // a name the table does not list
		{0x00080080, "LO", actRemove}, // Institution Name
		{0x00080020, "DA", actEmpty},  // Study Date, no retain-dates
		{0x00280010, "US", actKeep},   // Rows
		{0x7FE00010, "OW", actKeep},   // Pixel Data
		{0x00880200, "SQ", actRemove}, // Icon Image Sequence
		{0x00100030, "DA", actEmpty},  // Patient's Birth Date
		{0x00101010, "AS", actRemove}, // Patient's Age
		{0x00081140, "SQ", actKeep},   // Referenced Image Sequence: kept, UIDs inside mapped
		{0x0040A730, "SQ", actEmpty},  // Content Sequence (D)
		{0x00181000, "LO", actRemove}, // Device Serial Number
		{0x00120062, "CS", actKeep},   // Patient Identity Removed (rewritten apart)
	} {
		if got := d.p.action(tt.tag, tt.vr); got != tt.want {
			t.Errorf("%s %s: action %d, want %d", tt.tag, tt.vr, got, tt.want)
		}
	}
	r := newTestDeidentifier(t, Options{RetainDates: true, RetainPatientCharacteristics: true, RetainDeviceIdentity: true})
	for _, tt := range []struct {
		tag  Tag
		vr   string
		want action
	}{
		{0x00080020, "DA", actShift},
		{0x00080020, "", actShift}, // implicit VR: the table knows it is a date
		{0x00080030, "TM", actKeep},
		{0x0008002A, "DT", actShift},
		{0x00100030, "DA", actEmpty}, // birth date never kept
		{0x00101010, "AS", actKeep},
		{0x00181000, "LO", actKeep},
	} {
		if got := r.p.action(tt.tag, tt.vr); got != tt.want {
			t.Errorf("retaining: %s %s: action %d, want %d", tt.tag, tt.vr, got, tt.want)
		}
	}
	c := newTestDeidentifier(t, Options{CleanDescriptors: true, Remove: []Tag{0x00204000}})
	for _, tt := range []struct {
		tag  Tag
		vr   string
		want action
	}{
		{0x00081030, "LO", actKeep},   // Study Description: C, cleaned
		{0x0008103E, "LO", actKeep},   // Series Description
		{0x00181030, "LO", actKeep},   // Protocol Name (X/D)
		{0x00400275, "SQ", actKeep},   // Request Attributes Sequence: its text cleaned
		{0x30060026, "LO", actKeep},   // ROI Name (Z)
		{0x00204000, "LT", actRemove}, // Image Comments, removed by the destination
		{0x00080080, "LO", actRemove}, // Institution Name: no C
		{0x00100010, "PN", actPatientName},
	} {
		if got := c.p.action(tt.tag, tt.vr); got != tt.want {
			t.Errorf("clean descriptors: %s %s: action %d, want %d", tt.tag, tt.vr, got, tt.want)
		}
	}
	if len(cleanDescriptors) != 125 {
		t.Errorf("%d Clean Descriptors attributes, want the 125 of Table E.1-1", len(cleanDescriptors))
	}
	for _, tag := range cleanDescriptors {
		if _, ok := basicProfile[tag]; !ok {
			t.Errorf("Clean Descriptors attribute %s is not in the basic profile table", tag)
		}
	}
	k, _ := NewKeyer(testKey, "")
	for _, o := range []Options{{Keep: []Tag{tagStudyInstanceUID}}, {Keep: []Tag{tagPatientID}}, {Remove: []Tag{tagSOPInstanceUID}}, {Remove: []Tag{tagPixelData}},
		// UIDs the table does not list are mapped too, so cannot be
		// kept either: (0028,0304) and (0008,1167).
		{Keep: []Tag{0x00280304}}, {Keep: []Tag{0x00081167}}} {
		if _, err := New(k, o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: %v, want ErrBadOptions", o, err)
		}
	}
}

func TestRewriteRefusesBurnedInAnnotation(t *testing.T) {
	px := &element{tag: tagPixelData, vr: "OW", value: []byte{1, 2, 3, 4}}
	els := nestedDataset(false, px)
	i := slices.IndexFunc(els, func(e *element) bool { return e.tag == 0x0040A375 })
	// A device writing the CS value in lower case, or with a leading
	// space, still says YES.
	for _, v := range []string{"YES", " yes", "NO"} {
		with := slices.Insert(slices.Clone(els), i, str(tagBurnedIn, "CS", v))
		in := testFile(t, syntaxExplicitLE, true, false, true, with)
		inst, err := newTestDeidentifier(t, Options{}).Rewrite(io.Discard, bytes.NewReader(in))
		if v != "NO" && !errors.Is(err, ErrBurnedIn) {
			t.Errorf("Burned In Annotation %q: %v, want ErrBurnedIn", v, err)
		}
		if v == "NO" && (err != nil || inst.BurnedInAnnotation != "NO") {
			t.Errorf("Burned In Annotation NO: %v, %+v", err, inst)
		}
		if _, err := newTestDeidentifier(t, Options{IncludeBurnedIn: true}).Rewrite(io.Discard, bytes.NewReader(in)); err != nil {
			t.Errorf("%s with IncludeBurnedIn: %v", v, err)
		}
	}
}

// Photographs and images flagged as showing the patient (a face, a slide
// label) are refused as burned-in text is: they passed when they lacked
// Burned In Annotation YES and were neither Secondary Capture nor
// Ultrasound. include sends them all.
func TestRewriteRefusesIdentifyingPixels(t *testing.T) {
	const ct, wsi = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.77.1.6"
	tests := []struct {
		name    string
		class   string
		flags   []*element // sorted, between Patient ID and Pixel Data
		refused string     // in the error; "" passes
	}{
		{name: "plain CT", class: ct},
		{name: "CT, Recognizable Visual Features YES", class: ct, flags: []*element{str(tagRecognizable, "CS", "YES")}, refused: "Recognizable Visual Features (0028,0302) is YES"},
		{name: "CT, Recognizable Visual Features NO", class: ct, flags: []*element{str(tagBurnedIn, "CS", "NO"), str(tagRecognizable, "CS", "NO")}},
		{name: "VL Photographic without Burned In Annotation", class: "1.2.840.10008.5.1.4.1.1.77.1.4", refused: "(VL or Video Photographic)"},
		{name: "VL Photographic, Burned In Annotation NO", class: "1.2.840.10008.5.1.4.1.1.77.1.4", flags: []*element{str(tagBurnedIn, "CS", "NO")}, refused: "Photographic"},
		{name: "Video Photographic", class: "1.2.840.10008.5.1.4.1.1.77.1.4.1", refused: "Photographic"},
		{name: "VL Endoscopic", class: "1.2.840.10008.5.1.4.1.1.77.1.1", refused: "Endoscopic"},
		{name: "Video Endoscopic", class: "1.2.840.10008.5.1.4.1.1.77.1.1.1", refused: "Endoscopic"},
		{name: "Ophthalmic Photography 8 Bit", class: "1.2.840.10008.5.1.4.1.1.77.1.5.1", refused: "Ophthalmic Photography"},
		{name: "Ophthalmic Photography 16 Bit", class: "1.2.840.10008.5.1.4.1.1.77.1.5.2", refused: "Ophthalmic Photography"},
		{name: "Wide Field Ophthalmic Photography", class: "1.2.840.10008.5.1.4.1.1.77.1.5.5", refused: "Ophthalmic Photography"},
		{name: "Dermoscopic Photography", class: "1.2.840.10008.5.1.4.1.1.77.1.7", refused: "Dermoscopic"},
		{name: "Photoacoustic", class: "1.2.840.10008.5.1.4.1.1.6.3", refused: "Photoacoustic"},
		{name: "Whole Slide, label in the image", class: wsi, flags: []*element{str(tagSpecimenLabel, "CS", "YES")}, refused: "Specimen Label in Image (0048,0010) is YES"},
		{name: "Whole Slide, no label", class: wsi, flags: []*element{str(tagSpecimenLabel, "CS", "NO")}},
		{name: "VL Microscopic", class: "1.2.840.10008.5.1.4.1.1.77.1.2"},
		{name: "Ophthalmic Tomography", class: "1.2.840.10008.5.1.4.1.1.77.1.5.4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			els := []*element{str(tagSOPClassUID, "UI", tt.class), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), str(tagPatientID, "LO", "PAT-1")}
			els = append(append(els, tt.flags...), &element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)})
			in := testFile(t, syntaxExplicitLE, true, false, true, els)
			var out bytes.Buffer
			_, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in))
			switch {
			case tt.refused == "" && err != nil:
				t.Errorf("Rewrite: %v, want it sent", err)
			case tt.refused != "" && (!errors.Is(err, ErrBurnedIn) || !strings.Contains(err.Error(), tt.refused) || out.Len() != 0):
				t.Errorf("Rewrite: %v, %d bytes written; want ErrBurnedIn naming %q, nothing written", err, out.Len(), tt.refused)
			}
			if _, err := newTestDeidentifier(t, Options{IncludeBurnedIn: true}).Rewrite(io.Discard, bytes.NewReader(in)); err != nil {
				t.Errorf("with IncludeBurnedIn: %v", err)
			}
		})
	}
}

// The attributes Table E.1-1 lists since 2024b (after the 2023b table.go
// was generated) are removed, in Explicit and Implicit VR, with and
// without retain-dates: they were kept.
func TestRewriteRemovesTable2024bAttributes(t *testing.T) {
	person := item(str(0x00401102, "ST", "12 Main Street")) // Person's Address
	els := []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.481.3"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(tagPatientID, "LO", "PAT-1"),
		str(0x00120022, "LO", "TRIAL-ISSUER"),
		seq(0x00120023, item(str(0x00120020, "LO", "OTHER-PROTOCOL"))),
		str(0x00120032, "LO", "SITE-ISSUER"),
		str(0x00120041, "LO", "SUBJECT-ISSUER"),
		str(0x00120043, "LO", "READING-ISSUER"),
		str(0x00120055, "LO", "TIMEPOINT-ISSUER"),
		str(0x00120073, "LO", "SERIES-ISSUER"),
		str(0x00181204, "DA", "20190101"),
		str(0x00181205, "DA", "20190202"),
		str(0x3006002D, "DT", "20240303101500"),
		str(0x3006002E, "DT", "20240404101500"),
		seq(0x3006004D, person),
		seq(0x3006004E, person),
	}
	for _, explicit := range []bool{true, false} {
		syntax := map[bool]string{true: syntaxExplicitLE, false: syntaxImplicitLE}[explicit]
		in := testFile(t, syntax, explicit, !explicit, true, els)
		for _, o := range []Options{{}, {RetainDates: true}} {
			var out bytes.Buffer
			if _, err := newTestDeidentifier(t, o).Rewrite(&out, bytes.NewReader(in)); err != nil {
				t.Fatalf("explicit %v, %+v: %v", explicit, o, err)
			}
			got := parseFile(t, out.Bytes()).elements
			for _, el := range els[3:] {
				if find(got, el.tag) != nil {
					t.Errorf("explicit %v, %+v: %s kept", explicit, o, el.tag)
				}
			}
		}
	}
}

// A repeated or out-of-order top-level tag is malformed: DCMTK and
// Orthanc read a repeated one as its first, the rewrite read it as its
// last, so a Secondary Capture with a second SOP Class UID of CT passed
// the burned-in check as CT.
func TestRewriteRefusesRepeatedOrUnorderedTags(t *testing.T) {
	const sc, ct = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.2"
	px := &element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)}
	tests := []struct {
		name      string
		els       []*element // written in this order
		malformed bool
	}{
		{name: "in order", els: []*element{str(tagSOPClassUID, "UI", ct), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), str(tagPatientID, "LO", "PAT-1"), px}},
		{name: "SC, then a second SOP Class UID of CT", malformed: true,
			els: []*element{str(tagSOPClassUID, "UI", sc), str(tagSOPClassUID, "UI", ct), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), px}},
		{name: "Patient ID twice", malformed: true,
			els: []*element{str(tagSOPClassUID, "UI", ct), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), str(tagPatientID, "LO", "PAT-1"), str(tagPatientID, "LO", "PAT-2"), px}},
		{name: "Patient ID after the Study Instance UID", malformed: true,
			els: []*element{str(tagSOPClassUID, "UI", ct), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), str(tagStudyInstanceUID, "UI", "1.2.3.9"), str(tagPatientID, "LO", "PAT-1"), px}},
		{name: "an element after Pixel Data that belongs before it", malformed: true,
			els: []*element{str(tagSOPClassUID, "UI", ct), str(tagSOPInstanceUID, "UI", "1.2.3.9.1"), px, str(tagPatientID, "LO", "PAT-1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := bytes.NewBuffer(testFile(t, syntaxExplicitLE, true, false, true, nil))
			for _, el := range tt.els {
				if err := writeElement(in, el, true); err != nil {
					t.Fatal(err)
				}
			}
			for _, o := range []Options{{}, {IncludeBurnedIn: true}} {
				_, err := newTestDeidentifier(t, o).Rewrite(io.Discard, bytes.NewReader(in.Bytes()))
				if tt.malformed != errors.Is(err, ErrMalformed) || (!tt.malformed && err != nil) {
					t.Errorf("%+v: Rewrite = %v, want malformed %v", o, err, tt.malformed)
				}
			}
		})
	}
}

// TestShiftDatesKeepsNoText: with retain-dates, what follows a date must
// be a DT's time and offset; anything else (another date, text) empties
// the value instead of being kept as it was.
func TestShiftDatesKeepsNoText(t *testing.T) {
	for in, want := range map[string]string{
		"20200110":                   "20200105",
		"20200110120000.123456+0100": "20200105120000.123456+0100",
		"20200110\\20200111":         "20200105\\20200106",
		"20200110 19700314":          "",
		"20200110120000-19700314":    "",
		"20200110DOE":                "",
	} {
		got, ok := shiftDates(in, 5)
		if !ok {
			got = ""
		}
		if got != want {
			t.Errorf("shiftDates(%q) = %q, want %q", in, got, want)
		}
	}
}

// overlayElements is the elements of overlay plane group g: bit-mapped
// (Overlay Bits Allocated 1, its own Overlay Data) unless bits is more,
// data false for one without Overlay Data.
func overlayElements(g uint16, bits uint16, data bool) []*element {
	tag := func(e uint16) Tag { return Tag(uint32(g)<<16 | uint32(e)) }
	us := func(v uint16) []byte { return []byte{byte(v), byte(v >> 8)} }
	els := []*element{
		{tag: tag(0x0010), vr: "US", value: us(4)}, // Overlay Rows
		{tag: tag(0x0011), vr: "US", value: us(4)}, // Overlay Columns
		str(tag(0x0022), "LO", "annotated by Roe"), // Overlay Description
		str(tag(0x0040), "CS", "G"),                // Overlay Type
		{tag: tag(0x0050), vr: "SS", value: []byte{1, 0, 1, 0}},
		{tag: tag(0x0100), vr: "US", value: us(bits)},
		{tag: tag(0x0102), vr: "US", value: us(bits - 1)}, // Overlay Bit Position
	}
	if data {
		els = append(els, &element{tag: tag(0x3000), vr: "OW", value: []byte{0xFF, 0xFF}})
	}
	return els
}

// TestRewriteOverlays: the overlay groups (60xx) are removed whole, not
// only their Overlay Data and Comments (a plane described without its
// data went out); an overlay embedded in Pixel Data's high bits (no
// Overlay Data, Overlay Bits Allocated other than 1) is refused as
// burned-in content, as it would go out in the pixels, unless
// IncludeBurnedIn. A plane with its Overlay Data, or of 1 bit without it
// (de-identified before by Table E.1-1, which removes Overlay Data only),
// leaves nothing in the pixels: sent.
func TestRewriteOverlays(t *testing.T) {
	px := &element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)}
	// A large Waveform Data streams: the overlays after it are read after
	// the copy has begun.
	waveform := &element{tag: 0x54001010, vr: "OW", value: make([]byte, 100<<10)}
	for _, tt := range []struct {
		name    string
		planes  [][]*element
		early   []*element
		refused bool
	}{
		{"bit-mapped", [][]*element{overlayElements(0x6000, 1, true), overlayElements(0x6002, 1, true)}, nil, false},
		{"embedded, 16 bits", [][]*element{overlayElements(0x6000, 16, false)}, nil, true},
		{"embedded, second plane", [][]*element{overlayElements(0x6000, 1, true), overlayElements(0x6004, 16, false)}, nil, true},
		{"embedded, last plane", [][]*element{overlayElements(0x601E, 16, false)}, nil, true},
		{"1 bit without Overlay Data", [][]*element{overlayElements(0x6000, 1, false)}, nil, false},
		{"16 bits with Overlay Data", [][]*element{overlayElements(0x6000, 16, true)}, nil, false},
		{"embedded after a streamed waveform", [][]*element{overlayElements(0x6000, 16, false)}, []*element{waveform}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			els := append(baseElements(), tt.early...)
			for _, p := range tt.planes {
				els = append(els, p...)
			}
			in := testFile(t, syntaxExplicitLE, true, false, true, sortedElements(append(els, px)))
			var out bytes.Buffer
			_, err := newTestDeidentifier(t, Options{}).Rewrite(&out, bytes.NewReader(in))
			if tt.refused != errors.Is(err, ErrBurnedIn) || (!tt.refused && err != nil) {
				t.Fatalf("Rewrite: %v, want refused %v", err, tt.refused)
			}
			if tt.refused && tt.early == nil && out.Len() != 0 {
				t.Errorf("refused, but %d bytes written", out.Len())
			}
			if tt.refused {
				out.Reset()
				if _, err := newTestDeidentifier(t, Options{IncludeBurnedIn: true}).Rewrite(&out, bytes.NewReader(in)); err != nil {
					t.Fatalf("Rewrite with IncludeBurnedIn: %v", err)
				}
			}
			for _, el := range parseFile(t, out.Bytes()).elements {
				if el.tag.Group()&0xFF00 == 0x6000 {
					t.Errorf("the copy holds %s", el.tag)
				}
			}
		})
	}
}
