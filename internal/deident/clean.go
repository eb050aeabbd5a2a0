package deident

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
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
	idWhole    idKind = iota + 1 // each value as it is
	idName                       // a person name: each value, group and component
	idDate                       // a date: its DICOM form and its common printed forms
	idDateTime                   // a DT: its date part (YYYYMMDD), as idDate
	idStation                    // a device's name: each value of minStation characters or more
)

// minStation is the shortest Station Name searched for in kept text: a
// station named by its modality ("CT", "MRI", "US") would cut that word
// out of every description ("CT HEAD W/O" sent as "HEAD W/O").
const minStation = 4

// identifyingAttrs are the attributes whose values are searched for in
// kept text (besides every value of VR PN, and every date, DA or DT,
// the copy does not keep as it is: identifying).
var identifyingAttrs = map[Tag]idKind{
	0x00080050: idWhole,   // Accession Number
	0x00080080: idWhole,   // Institution Name
	0x00080081: idWhole,   // Institution Address
	0x00080092: idWhole,   // Referring Physician's Address
	0x00080094: idWhole,   // Referring Physician's Telephone Numbers
	0x00081040: idWhole,   // Institutional Department Name
	0x00100020: idWhole,   // Patient ID
	0x00101000: idWhole,   // Other Patient IDs
	0x00101040: idWhole,   // Patient's Address
	0x00101090: idWhole,   // Medical Record Locator
	0x00102154: idWhole,   // Patient's Telephone Numbers
	0x00380010: idWhole,   // Admission ID
	0x00401001: idWhole,   // Requested Procedure ID
	0x00402016: idWhole,   // Placer Order Number / Imaging Service Request
	0x00402017: idWhole,   // Filler Order Number / Imaging Service Request
	0x00200010: idWhole,   // Study ID
	0x00400009: idWhole,   // Scheduled Procedure Step ID
	0x00400253: idWhole,   // Performed Procedure Step ID
	0x00380060: idWhole,   // Service Episode ID
	0x00380300: idWhole,   // Current Patient Location
	0x00102155: idWhole,   // Patient's Telecom Information
	0x00401102: idWhole,   // Person's Address
	0x00401103: idWhole,   // Person's Telephone Numbers
	0x00401104: idWhole,   // Person's Telecom Information
	0x00100033: idWhole,   // Patient's Birth Date in Alternative Calendar
	0x00100034: idWhole,   // Patient's Death Date in Alternative Calendar
	0x00102295: idWhole,   // Breed Registration Number
	0x00401006: idWhole,   // Placer Order Number / Procedure (retired)
	0x00401007: idWhole,   // Filler Order Number / Procedure (retired)
	0x00402006: idWhole,   // Placer Order Number / Imaging Service Request (retired)
	0x00402007: idWhole,   // Filler Order Number / Imaging Service Request (retired)
	0x0040E001: idWhole,   // HL7 Instance Identifier
	0x00081010: idStation, // Station Name
	0x00080090: idName,    // Referring Physician's Name
	0x0008009C: idName,    // Consulting Physician's Name
	0x00081048: idName,    // Physician(s) of Record
	0x00081050: idName,    // Performing Physician's Name
	0x00081060: idName,    // Name of Physician(s) Reading Study
	0x00081070: idName,    // Operators' Name
	0x00100010: idName,    // Patient's Name
	0x00101001: idName,    // Other Patient Names
	0x00101005: idName,    // Patient's Birth Name
	0x00101060: idName,    // Patient's Mother's Birth Name
	0x00102297: idName,    // Responsible Person
	0x00321032: idName,    // Requesting Physician
	0x00400006: idName,    // Scheduled Performing Physician's Name
	0x00404037: idName,    // Human Performer's Name
	0x0040A075: idName,    // Verifying Observer Name
	0x0040A123: idName,    // Person Name
	0x00700084: idName,    // Content Creator's Name
	0x00100030: idDate,    // Patient's Birth Date
}

// minNeedle is the shortest value searched for: a one-letter initial
// would strip that letter from every kept text.
const minNeedle = 2

// maxScrub bounds a text value held to be scrubbed: the scrub copies it
// (and a folded copy), so memory per rewrite stays bounded. A kept text
// value larger than this fails the instance (ErrTooLarge).
const maxScrub = 4 << 20

// codedEntry reports whether t is an attribute of a coded entry that is
// never scrubbed: codes are matched by machines, and a Patient ID of
// digits must not be cut out of a SNOMED code. Code Meaning (0008,0104),
// which people write, is scrubbed.
func codedEntry(t Tag) bool {
	switch t {
	case 0x00080100, // Code Value
		0x00080102, // Coding Scheme Designator
		0x00080103, // Coding Scheme Version
		0x0008010F, // Context Identifier
		0x00080119, // Long Code Value
		0x00080120: // URN Code Value
		return true
	}
	return false
}

// identifiers are the byte strings removed from kept text, as the file
// encodes them (its Specific Character Set), ASCII letters folded to
// lower case.
type identifiers struct {
	needles [][]byte
	seen    map[string]struct{} // the needles, looked up by the scrub
	// lengths[c] are the distinct lengths of the needles that start with
	// byte c, longest first (a whole name goes before its components),
	// and lengthSum[c] their sum: the scrub looks each up at a word
	// start, whatever the number of needles.
	lengths   [256][]int32
	lengthSum [256]int
	// lookups counts the scrub's lookups, up to maxLookups (or
	// lookupLimit, when set: tests).
	lookups, lookupLimit int
	lower                []byte // scratch: the value being searched, folded
	// charge, when set, counts a needle's memory against the rewrite's
	// hold (decoder.holdLasting), for the element at.
	charge func(at Tag, n int64) error
	at     Tag
	// err is the first needle refused (too many, over the hold): the
	// rewrite fails with it (collect returns it).
	err error
}

// Bounds of the needles of one rewrite, beyond which the instance is
// refused (ErrTooLarge): real headers give a few thousand needles (a
// name gives up to ~20, a date 9) of a few dozen lengths.
const (
	// maxNeedles bounds their number.
	maxNeedles = 100_000
	// maxLengthSum bounds, for the needles that start with one byte, the
	// sum of their distinct lengths: what the scrub may hash at one word
	// start. It lets through a longest LT value (10,240 characters).
	maxLengthSum = 16 << 10
	// maxLookups bounds the scrub's lookups over a rewrite (7 to 15 s at
	// maxLengthSum's worst, 4 MiB of one-character words costing 350
	// million): kept text and needles crafted to cost more are refused
	// at the first attempt, not stalled on until the request times out at
	// every delivery. A megabyte of real text needs a few million.
	maxLookups = 1 << 28
	// needleCost is the heap a needle costs beside twice its bytes (its
	// copy and its key in seen, each rounded up to a size class): its
	// slot in needles (24 bytes, up to 2.25 times while append copies),
	// its entry in seen (16 bytes and a control byte, the table at most
	// 7/8 and at least 7/16 full). TestNeedleCostCoversItsMemory checks it.
	needleCost = 128
)

// collect adds the identifying values of els, at every depth, except
// those of attributes the copy keeps (an option or STOW_DEIDENTIFY_KEEP:
// a kept Institution Name is not removed from itself). It returns the
// first needle refused (ErrTooLarge, or the error of charge).
func (ids *identifiers) collect(els []*element, kept func(Tag, string) bool) error {
	for _, el := range els {
		if ids.err != nil {
			break
		}
		for _, item := range el.items {
			_ = ids.collect(item, kept)
		}
		kind := identifying(el, kept)
		if kind == 0 {
			continue
		}
		ids.at = el.tag
		for v := range bytes.SplitSeq(el.value, []byte(`\`)) {
			ids.add(kind, v)
		}
	}
	return ids.err
}

// identifying is the kind of identifying value el holds, 0 for none: a
// value of an identifying attribute, a person's name or a date, not
// private and not kept. Every date the copy shifts, removes or empties
// counts (Study, Series, Acquisition, Content Date...), not only the
// birth date: the shift is per patient, so one original date left in a
// description next to its shifted copy gives the offset of all the
// patient's studies.
func identifying(el *element, kept func(Tag, string) bool) idKind {
	if el.seq || el.encapsulated || len(el.value) == 0 {
		return 0
	}
	kind := identifyingAttrs[el.tag]
	if kind == 0 {
		switch el.knownVR() {
		case "PN":
			kind = idName
		case "DA":
			kind = idDate
		case "DT":
			kind = idDateTime
		}
	}
	if kind == 0 || el.tag.Private() || kept(el.tag, el.knownVR()) {
		return 0
	}
	return kind
}

func (ids *identifiers) add(kind idKind, v []byte) {
	v = bytes.Trim(v, "\x00 ")
	switch kind {
	case idName:
		ids.addNeedle(v)
		for group := range bytes.SplitSeq(v, []byte("=")) {
			ids.addNeedle(group)
			i := 0
			for c := range bytes.SplitSeq(group, []byte("^")) {
				// Family, given and middle names; not the prefix and
				// suffix (Mr, Dr, Jr, III), common words of any text.
				if i < 3 {
					ids.addNeedle(c)
					ids.addWords(c)
				}
				i++
			}
		}
	case idDateTime:
		// Its date part; a DT of a year or a month alone names no day.
		if len(v) < 8 {
			return
		}
		ids.add(idDate, v[:8])
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
	case idStation:
		if len(v) >= minStation {
			ids.addNeedle(v)
		}
	default:
		ids.addNeedle(v)
	}
}

// addWords adds each word of a name component of several ("GARCIA
// LOPEZ", "van der Berg", "Jan-Pieter", "DOE,JOHN" written without
// carets): text often names the person by one of them. Not the
// particles, common words of any text, nor the words of a component
// with ISO 2022 escapes, whose multi-byte characters may hold the bytes
// of a space, a hyphen or a comma.
func (ids *identifiers) addWords(c []byte) {
	if bytes.IndexByte(c, 0x1B) >= 0 {
		return
	}
	words := bytes.FieldsFunc(c, func(r rune) bool { return r == ' ' || r == '-' || r == ',' })
	if len(words) < 2 {
		return
	}
	for _, w := range words {
		if !nameParticles[strings.TrimSuffix(string(foldASCII(nil, w)), ".")] {
			ids.addNeedle(w)
		}
	}
}

// nameParticles are the particles of family names, and the titles of a
// name written without carets ("MR JOHN ROE"), not searched for on their
// own: common words of any text ("MR Brain", "informe de la TC").
var nameParticles = map[string]bool{
	"al": true, "bin": true, "da": true, "dal": true, "das": true, "de": true, "dei": true, "del": true,
	"della": true, "den": true, "der": true, "des": true, "di": true, "do": true, "dos": true, "du": true,
	"el": true, "la": true, "le": true, "les": true, "lo": true, "st": true, "ten": true, "ter": true,
	"van": true, "von": true, "zu": true,
	"dr": true, "jr": true, "miss": true, "mr": true, "mrs": true, "ms": true, "prof": true, "sr": true,
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
	// A needle longer than the longest text scrubbed matches nothing.
	if ids.err != nil || len(v) == 0 || len(v) > maxScrub {
		return
	}
	n := foldASCII(make([]byte, 0, len(v)), v)
	if _, ok := ids.seen[string(n)]; ok {
		return
	}
	if len(ids.needles) >= maxNeedles {
		ids.err = fmt.Errorf("%w: more than %d identifying values (names and their parts, IDs, dates in their printed forms) to remove from kept text, at element %s",
			ErrTooLarge, maxNeedles, ids.at)
		return
	}
	c, l := n[0], int32(len(n))
	lens := ids.lengths[c]
	k, found := slices.BinarySearchFunc(lens, l, func(a, b int32) int { return int(b - a) })
	if !found && ids.lengthSum[c]+int(l) > maxLengthSum {
		ids.err = fmt.Errorf("%w: identifying values of too many lengths (%d bytes of distinct lengths, at most %d) to remove from kept text, at element %s",
			ErrTooLarge, ids.lengthSum[c]+int(l), maxLengthSum, ids.at)
		return
	}
	if ids.charge != nil {
		if err := ids.charge(ids.at, needleCost+2*int64(len(n))); err != nil {
			ids.err = fmt.Errorf("identifying values of %s to remove from kept text: %w", ids.at, err)
			return
		}
	}
	if !found {
		ids.lengths[c] = slices.Insert(lens, k, l)
		ids.lengthSum[c] += int(l)
	}
	if ids.seen == nil {
		ids.seen = map[string]struct{}{}
	}
	ids.seen[string(n)] = struct{}{}
	ids.needles = append(ids.needles, n)
}

// scrubContext returns v without any identifying value (case-insensitive
// for ASCII letters), and whether it changed. v itself is not modified.
//
// A match must stand as a word: where the value starts or ends with an
// ASCII letter or digit, the character before (after) the match must
// not be one, nor a letter of another character set (wordBefore), so a
// name "Me" does not cut "SIEMENS" and an ID "3037" does not cut
// "123037004"; a no-break space or a typographic quote is a boundary.
// Values that start or end with a byte of another character set (a CJK
// or Cyrillic name, an ISO 2022 escape) are matched anywhere there:
// such text is often written without spaces. One pass, longest needle
// first at each position, into a new buffer: at each position, one
// lookup per distinct length of the needles that start with its byte
// (bounded by maxLengthSum, and over the rewrite by maxLookups),
// however many needles there are. Only
// trailing spaces and NULs (padding) are trimmed from a changed value:
// leading spaces of ST, LT, UT are text.
//
// It stops with ctx's error once ctx is done: a closed Reader must not
// leave it running, holding the large slot.
func (ids *identifiers) scrubContext(ctx context.Context, v []byte) ([]byte, bool, error) {
	if len(ids.needles) == 0 || len(v) < minNeedle {
		return v, false, nil
	}
	low := foldASCII(ids.lower[:0], v)
	ids.lower = low
	var out []byte
	copied := 0 // v[copied:i] is not yet in out
	for i, next := 0, 0; i < len(low); {
		if i >= next {
			if err := ctx.Err(); err != nil {
				return v, false, err
			}
			if limit := cmp.Or(ids.lookupLimit, maxLookups); ids.lookups > limit {
				return v, false, fmt.Errorf("%w: kept text takes more than %d lookups to scrub of the instance's identifying values", ErrTooLarge, limit)
			}
			next = i + 1<<16
		}
		c := low[i]
		lens := ids.lengths[c]
		if len(lens) == 0 || (alnum(c) && i > 0 && wordBefore(low, i)) {
			i++
			continue
		}
		ids.lookups += len(lens)
		m := 0
		for _, l := range lens {
			end := i + int(l)
			if end > len(low) {
				continue
			}
			if _, ok := ids.seen[string(low[i:end])]; !ok {
				continue
			}
			if end < len(low) && alnum(low[end-1]) && wordAt(low, end) {
				continue
			}
			m = int(l)
			break
		}
		if m == 0 {
			i++
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(v))
		}
		out = append(out, v[copied:i]...)
		i += m
		copied = i
	}
	if out == nil {
		return v, false, nil
	}
	out = append(out, v[copied:]...)
	return bytes.TrimRight(out, "\x00 "), true, nil
}

// alnum: an ASCII letter (folded) or digit.
func alnum(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// wordBefore and wordAt report whether the character that ends before
// low[i] (starts at low[i]) continues a word next to an ASCII needle: an
// ASCII letter or digit, or a letter, digit or mark of another
// character set. A no-break space, a typographic quote, apostrophe or
// dash ends a word as a space does: "Roe’s" must lose "Roe". UTF-8
// is read as such; a byte that is not part of a UTF-8 character is read
// as ISO 8859-1, the common single-byte set, whose 0x80-0xBF (C1
// controls, where windows-1252 puts its quotes and dashes, no-break
// space, punctuation), multiplication and division signs end a word.
// Where the text is in another set, that can only remove a name joined
// to a letter of that set: the acceptable error.
func wordBefore(low []byte, i int) bool {
	if c := low[i-1]; c < 0x80 {
		return alnum(c)
	}
	if r, n := utf8.DecodeLastRune(low[:i]); n > 1 {
		return wordRune(r)
	}
	return highLetter(low[i-1])
}

func wordAt(low []byte, i int) bool {
	if c := low[i]; c < 0x80 {
		return alnum(c)
	}
	if r, n := utf8.DecodeRune(low[i:]); n > 1 {
		return wordRune(r)
	}
	return highLetter(low[i])
}

func wordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r) }

// highLetter: a byte of a single-byte set that may be a letter (ISO
// 8859-1 0xC0-0xFF but the multiplication and division signs).
func highLetter(c byte) bool { return c >= 0xC0 && c != 0xD7 && c != 0xF7 }

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

// textVR: the VRs whose values are scrubbed. UR: a URL the copy keeps
// may hold a name or an ID in its path or query.
func textVR(vr string) bool {
	switch vr {
	case "LO", "SH", "ST", "LT", "UT", "UC", "PN", "UR":
		return true
	}
	return false
}

// knownVR is the element's VR: as the file says it, or, in Implicit VR
// and for values of VR UN, as the data dictionary (dictvr.go, and the
// profile's date and time attributes) knows it; "" when no one says.
func (el *element) knownVR() string {
	if el.vr != "" && el.vr != "UN" {
		return el.vr
	}
	return dictionaryVR(el.tag, el.vr)
}

// dictionaryVR is the VR of tag where the file does not say (vr "" or UN).
func dictionaryVR(tag Tag, vr string) string {
	if vr != "" && vr != "UN" {
		return vr
	}
	if tag.Private() {
		return vr
	}
	if v, ok := temporalVR[tag]; ok {
		return v
	}
	if v, ok := dictVR[tag]; ok {
		return v
	}
	if v, ok := newerVR[tag]; ok {
		return v
	}
	if g := tag.Group(); g&0xFF00 == 0x6000 && g&1 == 0 {
		if v, ok := overlayTextVR[tag.Element()]; ok {
			return v
		}
	}
	return vr
}

// overlayTextVR are the text attributes of the overlay planes, a
// repeating group (60xx) the dictionary leaves out. The profile removes
// the group; one a destination keeps (Options.Keep) is scrubbed, in
// Implicit VR too.
var overlayTextVR = map[uint16]string{
	0x0022: "LO", // Overlay Description
	0x0045: "LO", // Overlay Subtype
	0x1500: "LO", // Overlay Label
}

// newerVR are text attributes of the profile's tables newer than the
// dictionary (PS3.6 after 2022b).
var newerVR = map[Tag]string{
	0x003A0329: "ST", // Waveform Filter Description
	0x003A032B: "ST", // Filter Lookup Table Description
	0x30020121: "LO", // Position Acquisition Template Name
	0x30020123: "LT", // Position Acquisition Template Description
}

// scrubbable reports whether a kept value is text to scrub. Its VR says
// so, as the file or the dictionary gives it. A value whose VR no one
// knows (a private attribute a destination keeps, an attribute newer
// than the dictionary, in Implicit VR or VR UN) is scrubbed when every
// byte is text (printable, high-bit, ESC, CR, LF, FF, TAB) and one of
// them is outside what UIDs, numbers, dates and times are written with
// (digits, space, . + - E : \): a numeric Patient ID must not be cut
// out of a UID or a Slice Location, but an upper-case name must go.
// Groups that hold binary image data are left alone.
func scrubbable(el *element) bool {
	if vr := el.knownVR(); vr != "" && vr != "UN" {
		return textVR(vr)
	}
	switch g := el.tag.Group(); {
	case g == 0x0028, g == 0x7FE0, g&0xFF00 == 0x6000, g&0xFF00 == 0x5000, g == 0x5400:
		return false
	}
	if !textBytes(bytes.TrimSuffix(el.value, []byte{0})) { // UIDs are padded with NUL, some writers pad text so
		return false
	}
	for _, c := range el.value {
		if !(c >= '0' && c <= '9' || c == 0 || strings.IndexByte(` .+-Ee:\`, c) >= 0) {
			return true
		}
	}
	return false
}

// textBytes reports whether every byte of b is text in some character
// set: printable, high-bit, ESC, CR, LF, FF, TAB.
func textBytes(b []byte) bool {
	for _, c := range b {
		if c == 0x7F || c < 0x20 && c != 0x1B && c != '\r' && c != '\n' && c != '\f' && c != '\t' {
			return false
		}
	}
	return true
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
