package deident

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// iso8859_5 encodes Cyrillic letters (U+0410-U+044F) as ISO_IR 144 does
// (0xB0-0xEF); ASCII stays as it is.
func iso8859_5(s string) string {
	var b []byte
	for _, r := range s {
		switch {
		case r < 0x80:
			b = append(b, byte(r))
		case r >= 0x0410 && r <= 0x044F:
			b = append(b, byte(r-0x0410+0xB0))
		default:
			panic("not in the test's ISO 8859-5 subset")
		}
	}
	return string(b)
}

// foldUpper upper-cases ASCII letters only (the value may be in any
// character set).
func foldUpper(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
	return b
}

// oddPatient is a patient whose identifying values a modality or a
// third-party system copied to odd places, in one character set.
type oddPatient struct {
	charset string // Specific Character Set
	desc    string // Study Description before the name; "CT thorax" if empty
	name    string // Patient's Name, encoded
	// parts are the name's components as they may appear elsewhere
	// (encoded), each of which must not arrive.
	parts     []string
	id, other string
	birth     string // YYYYMMDD
	physician string
}

var oddPatients = map[string]oddPatient{
	"latin1": {charset: "ISO_IR 100", name: "Roe^Richard", parts: []string{"Roe", "Richard"},
		id: "PAT-ODD-42", other: "MRN-777123", birth: "19700314", physician: "Welby^Marcus"},
	// PS3.5 H.3.1: the same name in alphabetic, ideographic and
	// phonetic groups, with ISO 2022 escape sequences.
	"iso2022 japanese": {charset: `\ISO 2022 IR 87`,
		name:  "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
		parts: []string{"Yamada", "Tarou", "\x1b$B;3ED\x1b(B", "\x1b$BB@O:\x1b(B", ";3ED", "B@O:"},
		id:    "JP-0042", other: "JP-OTHER-9", birth: "19811224", physician: "Suzuki^Ichiro"},
	// All capitals and digits, as many RIS write: in Implicit VR such a
	// value looks like a code string unless the dictionary says it is text.
	"upper-case": {charset: "ISO_IR 100", desc: "CT HEAD", name: "ROE^RICHARD", parts: []string{"ROE", "RICHARD"},
		id: "12345678", other: "87654321", birth: "19700314", physician: "WELBY^MARCUS"},
	"cyrillic iso_ir 144": {charset: "ISO_IR 144", name: iso8859_5("Иванов^Петр"),
		parts: []string{iso8859_5("Иванов"), iso8859_5("Петр")},
		id:    "RU-31337", other: "RU-OLD-7", birth: "19650101", physician: iso8859_5("Сидоров^Олег")},
	"utf-8": {charset: "ISO_IR 192", name: "王^小东=王^小東", parts: []string{"王", "小东", "小東"},
		id: "CN-2024-77", other: "CN-OLD-88", birth: "19900630", physician: "Lu^Wen"},
}

// oddDataset holds p's identifying values in private tags (a creator
// block, a private sequence, odd groups), nested sequences at depth 2
// and more, free text and attributes the profile does not list.
func oddDataset(p oddPatient) []*element {
	printed := p.birth[6:8] + "." + p.birth[4:6] + "." + p.birth[:4]
	family := p.parts[0]
	desc := p.desc
	if desc == "" {
		desc = "CT thorax"
	}
	return []*element{
		str(0x00080005, "CS", p.charset),
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00080050, "SH", "ACC-5566"),
		str(0x00080070, "LO", "ACME"),
		str(0x00080080, "LO", "Saint Elsewhere Clinic"),
		str(0x00080090, "PN", p.physician),
		// Descriptors: removed, or cleaned with the option.
		str(0x00081030, "LO", desc+" "+string(foldUpper(family))+" "+p.id),
		str(0x0008103E, "LO", "axial "+printed),
		// Referenced Patient Sequence, with the Other Patient IDs
		// Sequence at depth 2.
		seq(0x00081120, item(
			str(tagPatientName, "PN", p.name),
			str(tagPatientID, "LO", p.id),
			seq(0x00101002, item(str(tagPatientID, "LO", p.other), str(0x00100022, "CS", "TEXT"))),
		)),
		// Referenced Image Sequence, kept: a Code Meaning at depth 2 and
		// names at depths 1 and 2.
		seq(0x00081140, item(
			str(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2"),
			str(0x00081155, "UI", "1.2.3.9.1.7"),
			seq(0x00089215, item(str(0x00080100, "SH", "113072"), str(0x00080102, "SH", "DCM"),
				str(0x00080104, "LO", "derived for "+family+" "+p.id), str(tagPatientName, "PN", p.name))),
			str(tagPatientName, "PN", p.name),
		)),
		// Software Versions, kept by the profile: an ID copied there.
		str(0x00181020, "LO", "v1.0 "+p.id),
		// A private creator block, its values, a private sequence.
		str(0x00090010, "LO", "ACME 1.0"),
		str(0x00091001, "LO", p.name),
		seq(0x00091002, item(str(tagPatientName, "PN", p.name), str(tagBirthDate, "DA", p.birth))),
		str(tagPatientName, "PN", p.name),
		str(tagPatientID, "LO", p.id),
		str(tagBirthDate, "DA", p.birth),
		// Identifying attributes Table E.1-1 (2023b) does not list.
		str(0x00100033, "LO", oddUnlisted[0]), // Patient's Birth Date in Alternative Calendar
		str(0x00100034, "LO", oddUnlisted[1]), // Patient's Death Date in Alternative Calendar
		str(0x00101000, "LO", p.other),
		seq(0x00101002, item(str(tagPatientID, "LO", p.other))),
		seq(0x00102294, item(str(0x00102295, "LO", oddUnlisted[2]))), // Breed Registration Number
		str(0x00110010, "LO", "OTHER VENDOR"),
		str(0x00111010, "LT", "patient "+p.name+" born "+p.birth),
		// An unknown public attribute in VR UN holding the name.
		{tag: 0x001899F0, vr: "UN", value: []byte(pad(p.name, "PN"))},
		str(tagStudyInstanceUID, "UI", "1.2.3.9"),
		str(tagSeriesInstanceUID, "UI", "1.2.3.9.2"),
		str(0x00204000, "LT", "Patient "+p.name+" born "+printed+", ID "+p.id),
		// Request Attributes Sequence > Scheduled Protocol Code Sequence:
		// a Code Meaning at depth 2 naming the patient.
		seq(0x00400275, item(
			str(0x00321060, "LO", "CT for "+family),
			seq(0x00400008, item(str(0x00080100, "SH", "P1"), str(0x00080102, "SH", "99LOCAL"), str(0x00080104, "LO", "protocol of "+family+" "+p.other),
				str(tagPatientName, "PN", p.name))),
			seq(0x00081120, item(str(tagPatientName, "PN", p.name))),
			str(tagPatientName, "PN", p.name),
		)),
		// Retired order numbers.
		str(0x00401006, "SH", oddUnlisted[3]),
		str(0x00401007, "SH", oddUnlisted[4]),
		str(0x00402006, "SH", oddUnlisted[5]),
		str(0x00402007, "SH", oddUnlisted[6]),
		// A text value the table does not list, at the top level, with
		// the values of those the table does not list either.
		str(0x0040A160, "UT", "dictated for "+p.name+" ("+p.id+") "+strings.Join(oddUnlisted, " ")),
		str(0x0040E001, "ST", oddUnlisted[7]), // HL7 Instance Identifier
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	}
}

// oddUnlisted are the values of identifying attributes Table E.1-1 of
// 2023b does not list: birth and death dates in an alternative
// calendar, a breed registration number, four retired order numbers and
// an HL7 Instance Identifier.
var oddUnlisted = []string{"1349/01/23", "1420/07/07", "BREED-REG-36", "PLC-PROC-31", "FIL-PROC-32", "PLC-ISR-33", "FIL-ISR-34",
	"2.16.840.1.113883.19.5^HL7-DOC-35"}

// oddSecrets are the byte strings that must not arrive, in the file's
// own encoding: the whole name, its parts, the IDs, the birth date in
// DICOM and printed form, the values of oddUnlisted.
func oddSecrets(p oddPatient) []string {
	s := append([]string{p.name, p.id, p.other, p.birth, p.physician, "ACC-5566", "Saint Elsewhere",
		p.birth[6:8] + "." + p.birth[4:6] + "." + p.birth[:4]}, p.parts...)
	s = append(s, oddUnlisted...)
	return append(s, strings.Split(p.physician, "^")...)
}

// TestRewriteOddPlaces sends files whose patient data sits where the
// profile's table does not look, in four character sets, explicit and
// implicit VR, with and without Clean Descriptors: no identifying value
// arrives, found by a walk of every element at any depth and by a byte
// search of the whole output (ASCII letters in either case).
func TestRewriteOddPlaces(t *testing.T) {
	for name, p := range oddPatients {
		for _, enc := range []struct {
			name     string
			syntax   string
			explicit bool
		}{{"explicit", syntaxExplicitLE, true}, {"implicit", syntaxImplicitLE, false}} {
			for _, clean := range []bool{false, true} {
				t.Run(name+"/"+enc.name+"/"+map[bool]string{false: "basic", true: "clean-descriptors"}[clean], func(t *testing.T) {
					in := testFile(t, enc.syntax, enc.explicit, !enc.explicit, true, oddDataset(p))
					d := newTestDeidentifier(t, Options{CleanDescriptors: clean, RetainDates: true})
					var out bytes.Buffer
					if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
						t.Fatalf("Rewrite: %v", err)
					}
					dcmdump(t, out.Bytes())
					copy := parseFile(t, out.Bytes())
					folded := foldASCII(nil, out.Bytes())
					for _, s := range oddSecrets(p) {
						if len(s) < minNeedle {
							continue
						}
						if bytes.Contains(folded, foldASCII(nil, []byte(s))) {
							t.Errorf("the copy holds %q (raw byte search)", s)
						}
					}
					walk(copy.elements, 0, func(el *element, depth int) {
						if el.tag.Private() {
							t.Errorf("private %s remains at depth %d", el.tag, depth)
						}
						for _, s := range oddSecrets(p) {
							if len(s) >= minNeedle && bytes.Contains(foldASCII(nil, el.value), foldASCII(nil, []byte(s))) {
								t.Errorf("%s at depth %d holds %q: %q", el.tag, depth, s, el.value)
							}
						}
						if el.tag == tagPatientName && depth > 0 && len(el.value) != 0 {
							t.Errorf("Patient's Name at depth %d is %q, want emptied", depth, el.value)
						}
					})
					desc := find(copy.elements, 0x00081030)
					method := trimValue(find(copy.elements, tagDeidentMethod).value)
					codes := find(copy.elements, tagDeidentMethodCodes)
					var got []string
					for _, it := range codes.items {
						got = append(got, trimValue(find(it, 0x00080100).value))
					}
					if !clean {
						if desc != nil {
							t.Errorf("Study Description %q kept without clean-descriptors", desc.value)
						}
						if slices.Contains(got, "113105") || strings.Contains(method, "Clean") {
							t.Errorf("Clean Descriptors recorded without the option: %q, %v", method, got)
						}
						return
					}
					want := p.desc
					if want == "" {
						want = "CT thorax"
					}
					if desc == nil || trimValue(desc.value) != want {
						t.Errorf("Study Description %v, want %q (cleaned)", desc, want)
					}
					if c := find(copy.elements, 0x00204000); c == nil || !strings.HasPrefix(string(c.value), "Patient ") {
						t.Errorf("Image Comments %v, want kept cleaned", c)
					}
					if !slices.Equal(got, []string{"113100", "113105", "113107"}) || !strings.Contains(method, "Clean Descriptors") {
						t.Errorf("De-identification Method %q, codes %v; want the Clean Descriptors Option recorded", method, got)
					}
				})
			}
		}
	}
}

func TestScrub(t *testing.T) {
	var ids identifiers
	ids.collect([]*element{
		str(tagPatientName, "PN", "Roe^Richard^J"),
		str(tagPatientID, "LO", `P-1\P-22`),
		str(tagBirthDate, "DA", "19700314"),
		str(0x00080080, "LO", "Saint Elsewhere"),
		str(0x00090010, "LO", "private values are not identifiers"),
		seq(0x00081120, item(str(0x00101001, "PN", "Other^Olga"))),
		str(0x00081030, "LO", "descriptions are not identifiers"),
		str(0x00081040, "LO", "Kept Department"),
		str(0x00081070, "PN", "Ito^Ken^Hiro^Dr^III"), // Operators' Name
	}, func(t Tag, _ string) bool { return t == 0x00081040 })
	for _, tt := range []struct{ in, want string }{
		{"CT RICHARD ROE", "CT"},
		{"roe, richard j.", ",  j."},
		{"born 1970-03-14 / 14.03.1970 / 03/14/1970", "born  /  /"},
		// Each printed form of the date deidentification.md lists.
		{"19700314 1970/03/14 1970.03.14 14/03/1970 14-03-1970 03-14-1970", ""},
		// Family, given and middle names; not the prefix and suffix.
		{"op. Hiro Ito", "op."},
		{"Dr Ken, III", "Dr , III"},
		{"IDs P-22 and P-1", "IDs  and"},
		{"at Saint Elsewhere", "at"},
		{"olga", ""},
		{"RoRICHARDe", "RoRICHARDe"}, // not a word of its own
		{"Jaw J", "Jaw J"},           // one letter is not searched for
		{"descriptions are kept", "descriptions are kept"},
		{"Kept Department", "Kept Department"}, // the site keeps it
	} {
		got, changed := ids.scrub([]byte(tt.in))
		if string(got) != tt.want || changed != (tt.in != tt.want) {
			t.Errorf("scrub(%q) = %q, %v; want %q", tt.in, got, changed, tt.want)
		}
	}
}

// TestScrubbable: a value of unknown VR is scrubbed only when it is free
// text, so a numeric Patient ID is not cut out of a UID, a number or a
// date of an Implicit VR data set.
func TestScrubbable(t *testing.T) {
	for _, tt := range []struct {
		el   *element
		want bool
	}{
		{str(0x00081030, "LO", "1.2.840.10008"), true}, // explicit: the VR decides
		{str(0x00080016, "UI", "Roe^Richard"), false},
		{&element{tag: 0x00080016, value: []byte("1.2.840.10008.5.1.4.1.1.2\x00")}, false},
		{&element{tag: 0x00201041, value: []byte("-10008.5E+2 ")}, false},
		{&element{tag: 0x00080030, value: []byte("101500.123")}, false},
		{&element{tag: 0x00080008, value: []byte(`ORIGINAL\PRIMARY\AXIAL `)}, false},
		{&element{tag: 0x00080005, value: []byte(`\ISO 2022 IR 87`)}, false},
		{&element{tag: 0x00081030, value: []byte("CT of Roe ")}, true},
		{&element{tag: 0x00081030, value: []byte("ROE^RICHARD ")}, true},
		{&element{tag: 0x00081030, value: []byte("Roe\x00")}, true}, // padded with NUL
		{&element{tag: 0x00081030, value: []byte("\x1b$B;3ED\x1b(B")}, true},
		{&element{tag: 0x001899F0, vr: "UN", value: []byte("PAT-42 born 14.03.1970")}, true},
		{&element{tag: 0x00301020, value: []byte{'a', 0, 0, 0}}, false}, // binary
		{&element{tag: 0x00300010, value: []byte("ab")}, true},
		{&element{tag: 0x00289FF0, value: []byte("ab")}, false}, // image pixel group
		// Implicit VR: the dictionary gives the VR; where it does not,
		// upper-case words are text to scrub.
		{&element{tag: 0x00081030, value: []byte("CT HEAD ROE RICHARD 12345678")}, true},
		{&element{tag: 0x0040A160, value: []byte("ROE RICHARD")}, true},
		{&element{tag: 0x00301000, value: []byte("ROE RICHARD")}, true},
		{&element{tag: 0x00301000, value: []byte("1.2.840.10008 -5E+2\\12:30\x00")}, false},
		{&element{tag: 0x00180015, value: []byte("HEAD")}, false}, // Body Part Examined, CS
		{&element{tag: 0x00080070, vr: "UN", value: []byte("SIEMENS")}, true},
	} {
		if got := scrubbable(tt.el); got != tt.want {
			t.Errorf("scrubbable(%s %q %q) = %v, want %v", tt.el.tag, tt.el.vr, tt.el.value, got, tt.want)
		}
	}
}

// TestRewriteSamplesNamesGone rewrites the shared third-party samples
// (other character sets among them) and looks for each sample's own
// Patient's Name, its groups and components, and Patient ID in every
// text value of the copy at any depth, ASCII letters in either case.
func TestRewriteSamplesNamesGone(t *testing.T) {
	dir := testharness.SamplesDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", dir, err)
	}
	d := newTestDeidentifier(t, Options{IncludeBurnedIn: true, CleanDescriptors: true, RetainDates: true})
	checked := 0
	for _, f := range files {
		in, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
			continue // the refusals are TestRewriteSamples'
		}
		var secrets [][]byte
		for _, tag := range []Tag{tagPatientName, tagPatientID} {
			el := find(parseFile(t, in).elements, tag)
			if el == nil {
				continue
			}
			var ids identifiers
			ids.collect([]*element{el}, func(Tag, string) bool { return false })
			for _, n := range ids.needles {
				if len(n) >= 3 { // shorter ones may be in any text by chance
					secrets = append(secrets, n)
				}
			}
		}
		if len(secrets) == 0 {
			continue
		}
		checked++
		walk(parseFile(t, out.Bytes()).elements, 0, func(el *element, depth int) {
			switch el.tag {
			case 0x00080100, 0x00080102, 0x00080103, 0x0008010F, 0x00080119, 0x00080120:
				return // a coded entry is never scrubbed
			}
			if el.tag == tagPixelData || !scrubbable(el) {
				// Not text: in Implicit VR a code string such as
				// PREDECESSOR is not cut for a name component "Pre".
				return
			}
			v := foldASCII(nil, el.value)
			for _, s := range secrets {
				if bytes.Contains(v, s) {
					t.Errorf("%s: %s at depth %d holds %q: %q", filepath.Base(f), el.tag, depth, s, el.value)
				}
			}
		})
	}
	if checked < 20 {
		t.Errorf("only %d samples with a Patient's Name or ID checked", checked)
	}
}
