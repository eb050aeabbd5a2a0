package deident

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Errors of the rewrite; the message says where in the file.
var (
	// ErrNotDICOM: the input is not a DICOM file (no DICM prefix and no
	// data set that starts like one), or it is empty.
	ErrNotDICOM = errors.New("not a DICOM file")
	// ErrUnsupportedSyntax: the data set is in an encoding the rewrite
	// does not read (Explicit VR Big Endian, deflated: ReadsSyntax):
	// convert it first.
	ErrUnsupportedSyntax = errors.New("transfer syntax not supported by the de-identifier")
	// ErrMalformed: the data set breaks the encoding rules or ends early.
	ErrMalformed = errors.New("malformed DICOM data set")
	// ErrTooLarge: a sequence, a kept text value (over maxScrub) or the
	// data set before Pixel Data (over maxHeld) is larger than the rewrite
	// holds in memory. The instance is refused rather than sent with text
	// that could not be scrubbed.
	ErrTooLarge = errors.New("DICOM data set too large to de-identify")
	// ErrBurnedIn: the instance's pixels may show who the patient is
	// (Burned In Annotation, Recognizable Visual Features or Specimen
	// Label in Image YES, or a SOP class that commonly does: burned-in
	// text, photographs), and Options.IncludeBurnedIn is off.
	ErrBurnedIn = errors.New("instance may carry burned-in text")
	// ErrPanicked: the rewrite panicked (a bug); the message gives the
	// panic's value and where. Reader returns it instead of ending the
	// process, with every other study in flight.
	ErrPanicked = errors.New("the de-identifier panicked")
)

const (
	undefinedLength = 0xFFFFFFFF
	// streamThreshold: top-level values larger than this may be copied
	// through, never held in memory: binary values in the bulk groups
	// (5400 and up: Waveform Data, Overlays, Pixel Data) or after Pixel
	// Data (rewrite.streams); values the profile removes are skipped.
	streamThreshold = 64 << 10
	// maxHeld bounds what one top-level element (with its sequences),
	// or the elements before Pixel Data (held until the identifying
	// values are known), may hold in memory; beyond it the instance is
	// refused (ErrTooLarge). Charged as the tree costs (elementCost),
	// a header costs 8 to 10 times its bytes on disk: 256 MiB lets an
	// enhanced MR or CT of ~12,000 frames (per-frame functional groups,
	// ~2.5 KB a frame on disk, ~20 KB in memory) through.
	maxHeld = 256 << 20
	// maxDepth bounds sequence nesting.
	maxDepth = 32
	// elementCost and itemCost are the heap bytes a held element and a
	// held item (or fragment) cost beside their value, charged against
	// the hold: counted by value bytes alone, a file of millions of
	// empty elements (8 bytes each) built a tree ~15 times its size.
	// An element is 112 bytes, its VR string 2 (8 or more in a -race
	// build) and its slot in its item 8, a slot in a sequence's items (or
	// fragments) 24; append's growth holds a slot up to 2.25 times while
	// it copies. TestElementCostCoversTheTree checks them against the
	// heap the decoder keeps.
	elementCost = 160
	itemCost    = 64
)

// longVR are the explicit VRs with a 4-byte length (PS3.5 7.1.2).
var longVR = map[string]bool{"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true, "SQ": true,
	"UC": true, "UN": true, "UR": true, "UT": true, "SV": true, "UV": true}

var shortVR = map[string]bool{"AE": true, "AS": true, "AT": true, "CS": true, "DA": true, "DS": true, "DT": true,
	"FD": true, "FL": true, "IS": true, "LO": true, "LT": true, "PN": true, "SH": true, "SL": true, "SS": true,
	"ST": true, "TM": true, "UI": true, "UL": true, "US": true}

func knownVR(vr string) bool { return longVR[vr] || shortVR[vr] }

// decoder reads Little Endian data set elements and counts the bytes
// it consumed (for defined-length items and sequences).
type decoder struct {
	r    *bufio.Reader
	pos  int64
	held int64 // bytes held in memory since the last reset
	// lasting is the part of held kept until the rewrite ends (the
	// scrub's needles): reset starts from it.
	lasting int64
	// limit replaces maxHeld when set (tests).
	limit int64
	// mem is the bound shared with the other rewrites: held beyond its
	// allowance needs a large slot (large: taken), waited for under ctx.
	mem   *memory
	ctx   context.Context
	large bool
	// noWait: a slot not free at once fails the hold with errSlotBusy
	// instead of waiting with the source open (Reader), at byte busyAt.
	noWait bool
	busyAt int64
	// keepUntil: the slot, taken before the rewrite started (Reader's
	// run after a wait), is kept until the input passes this byte, where
	// the run before it stopped; the next wait, if any, comes later.
	keepUntil int64
	// discard: the element being read is dropped whole (a sequence the
	// profile removes or empties). Its structure is read, but only the
	// values the scrub needs (identifying, kept telling the attributes
	// the copy keeps, as identifiers.collect) are held and charged, in
	// dropped: the rest of its tree is never built. Values over
	// streamThreshold are read past.
	discard bool
	kept    func(Tag, string) bool
	dropped []*element
	buf     [8]byte
}

func (d *decoder) full(b []byte) error {
	n, err := io.ReadFull(d.r, b)
	d.pos += int64(n)
	if err == io.ErrUnexpectedEOF || (err == io.EOF && len(b) > 0) {
		return fmt.Errorf("%w: file ends inside an element at byte %d", ErrMalformed, d.pos)
	}
	return err
}

// header reads an element header. Item and delimiter tags (FFFE,xxxx)
// have no VR in either encoding. io.EOF is returned only at a clean end.
func (d *decoder) header(explicit bool) (tag Tag, vr string, n uint32, err error) {
	start := d.pos
	b := d.buf[:4]
	m, err := io.ReadFull(d.r, b)
	d.pos += int64(m)
	if err == io.EOF {
		return 0, "", 0, io.EOF
	}
	if err == io.ErrUnexpectedEOF {
		return 0, "", 0, fmt.Errorf("%w: file ends inside an element header at byte %d", ErrMalformed, d.pos)
	}
	if err != nil {
		return 0, "", 0, err // the source failed: not the file's fault
	}
	tag = Tag(uint32(binary.LittleEndian.Uint16(b[0:]))<<16 | uint32(binary.LittleEndian.Uint16(b[2:])))
	if tag.Group() == 0xFFFE || !explicit {
		if err := d.full(b); err != nil {
			return 0, "", 0, err
		}
		return tag, "", binary.LittleEndian.Uint32(b), nil
	}
	if err := d.full(d.buf[:2]); err != nil {
		return 0, "", 0, err
	}
	vr = string(d.buf[:2])
	switch {
	case longVR[vr]:
		if err := d.full(b); err != nil { // 2 reserved bytes and the first half of the length
			return 0, "", 0, err
		}
		if err := d.full(d.buf[4:6]); err != nil {
			return 0, "", 0, err
		}
		n = uint32(binary.LittleEndian.Uint16(b[2:])) | uint32(binary.LittleEndian.Uint16(d.buf[4:]))<<16
	case shortVR[vr], vr == "  ":
		if err := d.full(d.buf[:2]); err != nil {
			return 0, "", 0, err
		}
		n = uint32(binary.LittleEndian.Uint16(d.buf[:2]))
		if vr == "  " {
			// Two spaces: some writers' VR when they know none. DCMTK,
			// so Orthanc, reads it with a 2-byte length; held as UN,
			// whose VR the dictionary gives, and written back as UN.
			vr = "UN"
		}
	default:
		return 0, "", 0, fmt.Errorf("%w: element %s at byte %d has no valid VR (%q)", ErrMalformed, tag, start, vr)
	}
	return tag, vr, n, nil
}

// value reads n bytes into memory, within the held budget.
func (d *decoder) value(tag Tag, n uint32) ([]byte, error) {
	if n == undefinedLength {
		return nil, fmt.Errorf("%w: element %s at byte %d has undefined length", ErrMalformed, tag, d.pos)
	}
	if d.discard && n > streamThreshold {
		c, err := io.CopyN(io.Discard, d.r, int64(n))
		d.pos += c
		if err == io.EOF {
			return nil, fmt.Errorf("%w: file ends %d bytes into a value of %d at byte %d", ErrMalformed, c, n, d.pos)
		}
		return nil, err
	}
	// Dropped, a value is charged only if it is kept (dropLeaf).
	if !d.discard {
		if err := d.hold(tag, int64(n)); err != nil {
			return nil, err
		}
	}
	if n <= 64<<10 {
		b := make([]byte, n)
		if err := d.full(b); err != nil {
			return nil, err
		}
		return b, nil
	}
	// Grown as the bytes arrive: a length that lies costs no memory.
	var buf bytes.Buffer
	c, err := io.CopyN(&buf, d.r, int64(n))
	d.pos += c
	if err == io.EOF {
		return nil, fmt.Errorf("%w: file ends %d bytes into a value of %d at byte %d", ErrMalformed, c, n, d.pos)
	}
	return buf.Bytes(), err
}

// hold counts n more bytes held in memory, refusing them (ErrTooLarge)
// beyond the limit.
func (d *decoder) hold(tag Tag, n int64) error {
	limit := int64(maxHeld)
	if d.limit > 0 {
		limit = d.limit
	}
	if d.held+n > limit {
		return fmt.Errorf("%w: element %s at byte %d needs %d bytes in memory, %d held already (limit %d; each element counts %d bytes beside its value, each item %d)",
			ErrTooLarge, tag, d.pos, n, d.held, limit, elementCost, itemCost)
	}
	if d.mem != nil && !d.large && d.held+n > d.mem.allowance {
		if err := d.takeSlot(); err != nil {
			return fmt.Errorf("deident: waiting to hold more than %d bytes (element %s at byte %d): %w", d.mem.allowance, tag, d.pos, err)
		}
		d.large = true
	}
	d.held += n
	return nil
}

// takeSlot takes a large slot, waiting for one; with noWait, only one
// free at once (errSlotBusy otherwise, noted at busyAt).
func (d *decoder) takeSlot() error {
	if !d.noWait {
		return d.mem.acquire(d.ctx)
	}
	if err := d.ctx.Err(); err != nil {
		return err // stopped: takes no slot
	}
	if d.mem.tryAcquire() {
		return nil
	}
	d.busyAt = d.pos
	return errSlotBusy
}

// holdLasting holds n bytes until the rewrite ends (see hold).
func (d *decoder) holdLasting(tag Tag, n int64) error {
	if err := d.hold(tag, n); err != nil {
		return err
	}
	d.lasting += n
	return nil
}

// release gives back the large slot, if taken: call it once what was
// held is no longer referenced (written, or the rewrite ended).
func (d *decoder) release() {
	if d.large {
		d.large = false
		d.mem.release()
	}
}

// reset starts a new hold, after the previous one was written, from
// what is held until the rewrite ends; the large slot is kept while
// that is over the allowance, or the input has not passed keepUntil
// (the byte that asked for it: released there, another waiter would
// take it, and the rerun fail busy at the same byte again and again).
func (d *decoder) reset() {
	d.held = d.lasting
	if d.mem == nil || (d.held <= d.mem.allowance && d.pos > d.keepUntil) {
		d.release()
	}
}

// startsWithItem reports whether the next bytes are an Item tag: how a
// sequence shows in Implicit VR, or in a value of VR UN.
func (d *decoder) startsWithItem() bool {
	b, err := d.r.Peek(4)
	return err == nil && b[0] == 0xFE && b[1] == 0xFF && b[2] == 0x00 && b[3] == 0xE0
}

// element is a data set element held in memory.
type element struct {
	tag   Tag
	vr    string // "" when the data set is implicit
	value []byte
	// seq: a sequence of items; implicitItems: its items are Implicit VR
	// (a sequence in a value of VR UN, PS3.5 6.2.2).
	seq           bool
	implicitItems bool
	items         [][]*element
	// encapsulated: Pixel Data of undefined length, as fragments.
	encapsulated bool
	fragments    [][]byte
}

// isSequence decides, from its header, whether an element is a sequence.
func (d *decoder) isSequence(tag Tag, vr string, n uint32) bool {
	switch {
	case vr == "SQ":
		return true
	case tag == tagPixelData:
		return false
	case vr == "" || vr == "UN":
		return n == undefinedLength || (n >= 8 && d.startsWithItem())
	}
	return false
}

// readBody reads the value of an element whose header was read.
func (d *decoder) readBody(tag Tag, vr string, n uint32, explicit bool, depth int) (*element, error) {
	if !d.discard || depth == 0 { // the dropped element itself is returned
		if err := d.hold(tag, elementCost); err != nil {
			return nil, err
		}
	}
	el := &element{tag: tag, vr: vr}
	switch {
	case d.isSequence(tag, vr, n):
		el.seq = true
		itemsExplicit := explicit && vr != "UN"
		el.implicitItems = !itemsExplicit
		items, err := d.items(tag, n, itemsExplicit, depth+1)
		if err != nil {
			return nil, err
		}
		el.items = items
	case n == undefinedLength && tag == tagPixelData:
		el.encapsulated = true
		for {
			t, _, m, err := d.header(false)
			if err != nil {
				return nil, noEOF(err, tag)
			}
			if t == tagSeqDelim {
				break
			}
			if t != tagItem {
				return nil, fmt.Errorf("%w: encapsulated Pixel Data holds %s, not an item, at byte %d", ErrMalformed, t, d.pos)
			}
			if d.discard {
				if _, err := d.value(tag, m); err != nil {
					return nil, err
				}
				continue
			}
			if err := d.hold(tag, itemCost); err != nil {
				return nil, err
			}
			f, err := d.value(tag, m)
			if err != nil {
				return nil, err
			}
			el.fragments = append(el.fragments, f)
		}
	default:
		v, err := d.value(tag, n)
		if err != nil {
			return nil, err
		}
		el.value = v
	}
	return el, nil
}

// items reads a sequence's items, of defined length n or up to the
// sequence delimiter.
func (d *decoder) items(tag Tag, n uint32, explicit bool, depth int) ([][]*element, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: sequences nested deeper than %d at %s", ErrMalformed, maxDepth, tag)
	}
	end := d.pos + int64(n)
	var items [][]*element
	for n == undefinedLength || d.pos < end {
		t, _, m, err := d.header(false)
		if err != nil {
			return nil, noEOF(err, tag)
		}
		if t == tagSeqDelim {
			// One that ends a sequence of defined length too, as some
			// writers add it (DCMTK, so Orthanc, reads such files).
			if n != undefinedLength && d.pos != end {
				return nil, fmt.Errorf("%w: sequence %s of defined length holds a sequence delimiter before its end", ErrMalformed, tag)
			}
			return items, nil
		}
		if t != tagItem {
			return nil, fmt.Errorf("%w: sequence %s holds %s, not an item, at byte %d", ErrMalformed, tag, t, d.pos)
		}
		if d.discard {
			if _, err := d.item(m, explicit, depth); err != nil {
				return nil, err
			}
			continue
		}
		if err := d.hold(tag, itemCost); err != nil {
			return nil, err
		}
		item, err := d.item(m, explicit, depth)
		if err != nil {
			return nil, err
		}
		items = append(items, item)
	}
	if d.pos != end {
		return nil, fmt.Errorf("%w: sequence %s overruns its length", ErrMalformed, tag)
	}
	return items, nil
}

func (d *decoder) item(n uint32, explicit bool, depth int) ([]*element, error) {
	end := d.pos + int64(n)
	var els []*element
	for n == undefinedLength || d.pos < end {
		t, vr, m, err := d.header(explicit)
		if err != nil {
			return nil, noEOF(err, tagItem)
		}
		if t == tagItemDelim {
			return els, nil
		}
		if t.Group() == 0xFFFE {
			return nil, fmt.Errorf("%w: item holds %s at byte %d", ErrMalformed, t, d.pos)
		}
		if d.discard && !d.isSequence(t, vr, m) && (m != undefinedLength || t != tagPixelData) {
			if err := d.dropLeaf(t, vr, m); err != nil {
				return nil, err
			}
			continue
		}
		el, err := d.readBody(t, vr, m, explicit, depth)
		if err != nil {
			return nil, err
		}
		if !d.discard {
			els = append(els, el)
		}
	}
	if d.pos != end {
		return nil, fmt.Errorf("%w: item overruns its length at byte %d", ErrMalformed, d.pos)
	}
	return els, nil
}

// dropLeaf reads the value of an element inside a dropped one, holding
// it (in dropped, charged) only if it is identifying. Nothing else is
// allocated for it beyond the value's bytes.
func (d *decoder) dropLeaf(tag Tag, vr string, n uint32) error {
	v, err := d.value(tag, n)
	if err != nil {
		return err
	}
	el := element{tag: tag, vr: vr, value: v}
	if identifying(&el, d.kept) == 0 {
		return nil
	}
	if err := d.hold(tag, elementCost+int64(len(v))); err != nil {
		return err
	}
	d.dropped = append(d.dropped, &element{tag: tag, vr: vr, value: v})
	return nil
}

func noEOF(err error, in Tag) error {
	if err == io.EOF {
		return fmt.Errorf("%w: file ends inside %s", ErrMalformed, in)
	}
	return err
}
