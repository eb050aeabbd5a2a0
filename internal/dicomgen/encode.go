package dicomgen

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// tag is a DICOM attribute tag, group in the high 16 bits.
type tag uint32

func (t tag) group() uint16   { return uint16(t >> 16) }
func (t tag) element() uint16 { return uint16(t) }
func (t tag) String() string  { return fmt.Sprintf("(%04X,%04X)", t.group(), t.element()) }

// element is one encoded data element; value is already padded to even
// length.
type element struct {
	tag   tag
	vr    string
	value []byte
}

// longVR reports whether vr uses the 4-byte length form in Explicit VR
// (PS3.5 7.1.2).
func longVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		return true
	}
	return false
}

// strElem pads s to even length: UI with NUL, other string VRs with a
// space (PS3.5 6.2).
func strElem(t tag, vr, s string) element {
	b := []byte(s)
	if len(b)%2 == 1 {
		pad := byte(' ')
		if vr == "UI" {
			pad = 0
		}
		b = append(b, pad)
	}
	return element{tag: t, vr: vr, value: b}
}

func usElem(t tag, v uint16) element {
	return element{tag: t, vr: "US", value: binary.LittleEndian.AppendUint16(nil, v)}
}

func isElem(t tag, v int) element { return strElem(t, "IS", strconv.Itoa(v)) }

// writeHeader writes an Explicit VR Little Endian element header.
func writeHeader(w io.Writer, t tag, vr string, length uint32) error {
	var h [12]byte
	binary.LittleEndian.PutUint16(h[0:], t.group())
	binary.LittleEndian.PutUint16(h[2:], t.element())
	copy(h[4:6], vr)
	if longVR(vr) {
		binary.LittleEndian.PutUint32(h[8:], length)
		_, err := w.Write(h[:12])
		return err
	}
	if length > 0xFFFF {
		return fmt.Errorf("%s %s: value of %d bytes does not fit a 16-bit length", t, vr, length)
	}
	binary.LittleEndian.PutUint16(h[6:], uint16(length))
	_, err := w.Write(h[:8])
	return err
}

func encodedLen(e element) int {
	if longVR(e.vr) {
		return 12 + len(e.value)
	}
	return 8 + len(e.value)
}

// writeElements writes elements in ascending tag order, as PS3.5 7.1
// requires; the input order does not matter.
func writeElements(w io.Writer, elems []element) error {
	sorted := slices.Clone(elems)
	slices.SortFunc(sorted, func(a, b element) int {
		switch {
		case a.tag < b.tag:
			return -1
		case a.tag > b.tag:
			return 1
		}
		return 0
	})
	for i, e := range sorted {
		if i > 0 && sorted[i-1].tag == e.tag {
			return fmt.Errorf("duplicate element %s", e.tag)
		}
		if len(e.value)%2 != 0 {
			return fmt.Errorf("element %s has odd length %d", e.tag, len(e.value))
		}
		if err := writeHeader(w, e.tag, e.vr, uint32(len(e.value))); err != nil {
			return err
		}
		if _, err := w.Write(e.value); err != nil {
			return err
		}
	}
	return nil
}

// writeMeta writes the preamble, the DICM prefix and the file meta group
// with its group length (PS3.10 7.1).
func writeMeta(w io.Writer, sopClassUID, sopInstanceUID, transferSyntaxUID string) error {
	elems := []element{
		{tag: 0x00020001, vr: "OB", value: []byte{0x00, 0x01}},
		strElem(0x00020002, "UI", sopClassUID),
		strElem(0x00020003, "UI", sopInstanceUID),
		strElem(0x00020010, "UI", transferSyntaxUID),
		strElem(0x00020012, "UI", implementationClassUID),
		strElem(0x00020013, "SH", implementationVersionName),
	}
	n := 0
	for _, e := range elems {
		n += encodedLen(e)
	}
	groupLength := element{tag: 0x00020000, vr: "UL", value: binary.LittleEndian.AppendUint32(nil, uint32(n))}

	var preamble [132]byte
	copy(preamble[128:], "DICM")
	if _, err := w.Write(preamble[:]); err != nil {
		return err
	}
	return writeElements(w, append([]element{groupLength}, elems...))
}
