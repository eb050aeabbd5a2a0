package deident

import (
	"bytes"
	"slices"
	"strings"
)

// The scrub: every text value the copy keeps (at any depth, the Clean
// Descriptors option's descriptors and every other kept attribute) loses
// each occurrence of the instance's own identifying values: the values
// the profile removes or replaces, read from the same data set before
// anything is written. A modality that copies the Patient's Name into
// Image Comments, or into an attribute the profile does not list, thus
// does not send it on. It removes what the instance itself names; free
// text naming another person, or a date written another way, is not found.

// idKind says how an identifying value is searched for.
type idKind uint8

const (
	idWhole idKind = iota + 1 // each value as it is
	idName                    // a person name: each value, group and component
	idDate                    // a date: its DICOM form and its common printed forms
)

// identifyingAttrs are the attributes whose values are searched for in
// kept text (besides every value of VR PN, when the data set says so).
var identifyingAttrs = map[Tag]idKind{
	0x00080050: idWhole, // Accession Number
	0x00080080: idWhole, // Institution Name
	0x00080081: idWhole, // Institution Address
	0x00080092: idWhole, // Referring Physician's Address
	0x00080094: idWhole, // Referring Physician's Telephone Numbers
	0x00081040: idWhole, // Institutional Department Name
	0x00100020: idWhole, // Patient ID
	0x00101000: idWhole, // Other Patient IDs
	0x00101040: idWhole, // Patient's Address
	0x00101090: idWhole, // Medical Record Locator
	0x00102154: idWhole, // Patient's Telephone Numbers
	0x00380010: idWhole, // Admission ID
	0x00401001: idWhole, // Requested Procedure ID
	0x00402016: idWhole, // Placer Order Number / Imaging Service Request
	0x00402017: idWhole, // Filler Order Number / Imaging Service Request
	0x00080090: idName,  // Referring Physician's Name
	0x0008009C: idName,  // Consulting Physician's Name
	0x00081048: idName,  // Physician(s) of Record
	0x00081050: idName,  // Performing Physician's Name
	0x00081060: idName,  // Name of Physician(s) Reading Study
	0x00081070: idName,  // Operators' Name
	0x00100010: idName,  // Patient's Name
	0x00101001: idName,  // Other Patient Names
	0x00101005: idName,  // Patient's Birth Name
	0x00101060: idName,  // Patient's Mother's Birth Name
	0x00102297: idName,  // Responsible Person
	0x00321032: idName,  // Requesting Physician
	0x00400006: idName,  // Scheduled Performing Physician's Name
	0x00404037: idName,  // Human Performer's Name
	0x0040A075: idName,  // Verifying Observer Name
	0x0040A123: idName,  // Person Name
	0x00700084: idName,  // Content Creator's Name
	0x00100030: idDate,  // Patient's Birth Date
}

// minNeedle is the shortest value searched for: a one-letter initial
// would strip that letter from every kept text.
const minNeedle = 2

// identifiers are the byte strings removed from kept text, as the file
// encodes them (its Specific Character Set), ASCII letters folded to
// lower case, longest first so a whole name goes before its components.
type identifiers struct {
	needles [][]byte
	seen    map[string]bool
	sorted  bool   // needles are longest first
	lower   []byte // scratch: the value being searched, folded
}

// collect adds the identifying values of els, at every depth, except
// those of attributes the copy keeps (an option or STOW_DEIDENTIFY_KEEP:
// a kept Institution Name is not removed from itself).
func (ids *identifiers) collect(els []*element, kept func(Tag, string) bool) {
	for _, el := range els {
		for _, item := range el.items {
			ids.collect(item, kept)
		}
		if el.seq || el.encapsulated || len(el.value) == 0 {
			continue
		}
		kind := identifyingAttrs[el.tag]
		if kind == 0 && el.vr == "PN" {
			kind = idName
		}
		if kind == 0 || el.tag.Private() || kept(el.tag, el.vr) {
			continue
		}
		for v := range bytes.SplitSeq(el.value, []byte(`\`)) {
			ids.add(kind, v)
		}
	}
}

func (ids *identifiers) add(kind idKind, v []byte) {
	v = bytes.Trim(v, "\x00 ")
	switch kind {
	case idName:
		ids.addNeedle(v)
		for group := range bytes.SplitSeq(v, []byte("=")) {
			ids.addNeedle(group)
			for c := range bytes.SplitSeq(group, []byte("^")) {
				ids.addNeedle(c)
			}
		}
	case idDate:
		ids.addNeedle(v)
		if len(v) != 8 {
			return
		}
		y, m, d := string(v[:4]), string(v[4:6]), string(v[6:8])
		for _, f := range []string{y + "-" + m + "-" + d, y + "/" + m + "/" + d, y + "." + m + "." + d,
			d + "." + m + "." + y, d + "/" + m + "/" + y, d + "-" + m + "-" + y, m + "/" + d + "/" + y, m + "-" + d + "-" + y} {
			ids.addNeedle([]byte(f))
		}
	default:
		ids.addNeedle(v)
	}
}

// addNeedle adds v, and v without its ISO 2022 escape sequences when it
// has any (the same name may be written with other code extensions).
func (ids *identifiers) addNeedle(v []byte) {
	v = bytes.TrimSpace(v)
	if bytes.IndexByte(v, 0x1B) >= 0 {
		if s := bytes.TrimSpace(stripEscapes(v)); len(s) >= 2*minNeedle {
			ids.insert(s)
		}
	}
	if len(v) >= minNeedle {
		ids.insert(v)
	}
}

func (ids *identifiers) insert(v []byte) {
	n := foldASCII(nil, v)
	if ids.seen[string(n)] {
		return
	}
	if ids.seen == nil {
		ids.seen = map[string]bool{}
	}
	ids.seen[string(n)] = true
	ids.needles = append(ids.needles, n)
	ids.sorted = false
}

// scrub returns v without any identifying value (case-insensitive for
// ASCII letters), and whether it changed. v itself is not modified.
func (ids *identifiers) scrub(v []byte) ([]byte, bool) {
	if len(ids.needles) == 0 || len(v) < minNeedle {
		return v, false
	}
	if !ids.sorted {
		slices.SortStableFunc(ids.needles, func(a, b []byte) int { return len(b) - len(a) })
		ids.sorted = true
	}
	ids.lower = foldASCII(ids.lower[:0], v)
	changed := false
	for again := true; again; {
		again = false
		for _, n := range ids.needles {
			for {
				i := bytes.Index(ids.lower, n)
				if i < 0 {
					break
				}
				if !changed {
					v, changed = slices.Clone(v), true
				}
				v = slices.Delete(v, i, i+len(n))
				ids.lower = slices.Delete(ids.lower, i, i+len(n))
				again = true // a removal may join two halves of another match
			}
		}
	}
	if changed {
		v = bytes.Trim(v, "\x00 ")
	}
	return v, changed
}

// foldASCII appends v to dst with A-Z as a-z. Other bytes (other
// character sets) are compared as they are.
func foldASCII(dst, v []byte) []byte {
	for _, c := range v {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// stripEscapes removes ISO 2022 escape sequences (ESC, intermediate
// bytes 0x20-0x2F, a final byte 0x30-0x7E).
func stripEscapes(v []byte) []byte {
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] != 0x1B {
			out = append(out, v[i])
			continue
		}
		j := i + 1
		for j < len(v) && v[j] >= 0x20 && v[j] <= 0x2F {
			j++
		}
		i = j // the final byte
	}
	return out
}

// textVR: the VRs whose values are scrubbed.
func textVR(vr string) bool {
	switch vr {
	case "LO", "SH", "ST", "LT", "UT", "UC", "PN":
		return true
	}
	return false
}

// scrubbable reports whether a kept value is text to scrub. Its VR says
// so in an explicit data set. A value of unknown VR (Implicit VR, or UN)
// is scrubbed when every byte is text (printable, high-bit, ESC, CR, LF,
// FF, TAB) and one of them is outside what UIDs, numbers, dates, times
// and code strings are written with: a numeric Patient ID must not be
// cut out of a UID or a Slice Location. Groups that hold binary image
// data are left alone.
func scrubbable(el *element) bool {
	if el.vr != "" && el.vr != "UN" {
		return textVR(el.vr)
	}
	switch g := el.tag.Group(); {
	case g == 0x0028, g == 0x7FE0, g&0xFF00 == 0x6000, g&0xFF00 == 0x5000, g == 0x5400:
		return false
	}
	free := false
	for _, c := range bytes.TrimSuffix(el.value, []byte{0}) { // UIDs are padded with NUL, some writers pad text so
		switch {
		case c == 0x7F, c < 0x20 && c != 0x1B && c != '\r' && c != '\n' && c != '\f' && c != '\t':
			return false
		case !free:
			free = !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || strings.IndexByte(` _.+-:\`, c) >= 0)
		}
	}
	return free
}

// methodCodes is the De-identification Method Code Sequence
// (0012,0064): the profile and each option in use (PS3.16 CID 7050).
func (p *profile) methodCodes() []*element {
	type code struct{ value, meaning string }
	codes := []code{{"113100", "Basic Application Confidentiality Profile"}}
	if p.opts.CleanDescriptors {
		codes = append(codes, code{"113105", "Clean Descriptors Option"})
	}
	if p.opts.RetainDates {
		codes = append(codes, code{"113107", "Retain Longitudinal Temporal Information Modified Dates Option"})
	}
	if p.opts.RetainPatientCharacteristics {
		codes = append(codes, code{"113108", "Retain Patient Characteristics Option"})
	}
	if p.opts.RetainDeviceIdentity {
		codes = append(codes, code{"113109", "Retain Device Identity Option"})
	}
	seq := &element{tag: tagDeidentMethodCodes, vr: "SQ", seq: true}
	for _, c := range codes {
		seq.items = append(seq.items, []*element{
			{tag: 0x00080100, vr: "SH", value: pad(c.value, "SH")},
			{tag: 0x00080102, vr: "SH", value: pad("DCM", "SH")},
			{tag: 0x00080104, vr: "LO", value: pad(c.meaning, "LO")},
		})
	}
	return []*element{seq}
}
