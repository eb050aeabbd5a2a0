package deident

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// emptyElements writes n zero-length LO elements in ascending private
// tags from group 0011 on: 8 bytes of file each.
func emptyElements(b *bytes.Buffer, n int) {
	for i := range n {
		tag := Tag(uint32(0x0011+2*(i>>16))<<16 | uint32(i&0xFFFF))
		_ = writeHeader(b, tag, "LO", 0, true)
	}
}

// overheadFile is an explicit VR file whose body holds a million empty
// elements or items: 8 MB that a decoder counting only value bytes held
// as a tree ~15 times that size.
func overheadFile(t *testing.T, body func(b *bytes.Buffer)) []byte {
	t.Helper()
	b := bytes.NewBuffer(testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
	}))
	body(b)
	_ = writeElement(b, &element{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)}, true)
	return b.Bytes()
}

const (
	overheadCount = 1 << 20 // 8 MiB of 8-byte headers
	// overheadLimit replaces maxHeld in these tests, so that they stay
	// fast: the files charge 20 times it.
	overheadLimit = 8 << 20
)

// TestRewriteChargesElementOverhead: a data set of a million empty
// elements (in a sequence, at top level) or empty items is refused as too
// large once what its tree costs in memory reaches the hold, not only its
// values: counted by value bytes alone, a 32 MB file built a tree of
// ~500 MB, and a few such instances at once ended the forwarder. In a
// sequence the copy drops (a private one), none of it is held: the
// instance is de-identified. The bound compares the bytes allocated
// (deterministic, unlike a sampled peak) to a generous multiple of the
// hold, here overheadLimit.
func TestRewriteChargesElementOverhead(t *testing.T) {
	elements := func(tag Tag) func(b *bytes.Buffer) {
		return func(b *bytes.Buffer) {
			_ = writeHeader(b, tag, "SQ", undefinedLength, true)
			_ = writeHeader(b, tagItem, "", undefinedLength, false)
			emptyElements(b, overheadCount)
			_ = writeHeader(b, tagItemDelim, "", 0, false)
			_ = writeHeader(b, tagSeqDelim, "", 0, false)
		}
	}
	items := func(tag Tag) func(b *bytes.Buffer) {
		return func(b *bytes.Buffer) {
			_ = writeHeader(b, tag, "SQ", undefinedLength, true)
			for range overheadCount {
				_ = writeHeader(b, tagItem, "", 0, false)
			}
			_ = writeHeader(b, tagSeqDelim, "", 0, false)
		}
	}
	private := func(body func(b *bytes.Buffer)) func(b *bytes.Buffer) {
		return func(b *bytes.Buffer) {
			_ = writeElement(b, str(0x00090010, "LO", "ACME 1.0"), true)
			body(b)
		}
	}
	const perFrame = 0x52009230 // a sequence the copy keeps
	tests := []struct {
		name string
		body func(b *bytes.Buffer)
		want error
	}{
		{"elements in a kept sequence", elements(perFrame), ErrTooLarge},
		{"empty items in a kept sequence", items(perFrame), ErrTooLarge},
		{"elements at top level", func(b *bytes.Buffer) { emptyElements(b, overheadCount) }, ErrTooLarge},
		{"elements in a private sequence", private(elements(0x00091010)), nil},
		{"empty items in a private sequence", private(items(0x00091010)), nil},
	}
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	d.heldLimit = overheadLimit
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := overheadFile(t, tt.body)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := d.Rewrite(io.Discard, bytes.NewReader(in))
			runtime.ReadMemStats(&after)
			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d MB file: %d MB allocated: %v", len(in)>>20, allocated>>20, err)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("Rewrite: %v, want %v", err, tt.want)
			}
			if limit := uint64(3 * overheadLimit); allocated > limit {
				t.Errorf("%d MB allocated, want at most %d MB (3 times the hold)", allocated>>20, limit>>20)
			}
		})
	}
}

// TestElementCostCoversTheTree: the fixed costs charged per element and
// per item are at least the heap the decoder keeps for them (the
// element, its slot in its item, the item's slot in its sequence), from
// few to many, as append's growth leaves slices up to twice too large.
func TestElementCostCoversTheTree(t *testing.T) {
	elements := func(b *bytes.Buffer, n int) {
		_ = writeHeader(b, tagItem, "", undefinedLength, false)
		emptyElements(b, n)
		_ = writeHeader(b, tagItemDelim, "", 0, false)
	}
	items := func(b *bytes.Buffer, n int) {
		for range n {
			_ = writeHeader(b, tagItem, "", 0, false)
		}
	}
	tests := []struct {
		name string
		n    int
		body func(b *bytes.Buffer, n int)
		cost int64
	}{
		{"elements", 10_000, elements, elementCost},
		{"elements", 300_000, elements, elementCost},
		{"items", 10_000, items, itemCost},
		{"items", 300_000, items, itemCost},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.n, tt.name), func(t *testing.T) {
			var b bytes.Buffer
			_ = writeHeader(&b, 0x00091010, "SQ", undefinedLength, true)
			tt.body(&b, tt.n)
			_ = writeHeader(&b, tagSeqDelim, "", 0, false)
			dec := &decoder{r: bufio.NewReader(bytes.NewReader(b.Bytes())), limit: 1 << 40}
			tag, vr, n, err := dec.header(true)
			if err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			el, err := dec.readBody(tag, vr, n, true, 0)
			runtime.GC()
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			runtime.KeepAlive(el)
			runtime.KeepAlive(dec) // its input, not to count as freed
			per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / int64(tt.n)
			t.Logf("%d bytes kept a %s, %d charged", per, tt.name, tt.cost)
			if per > tt.cost {
				t.Errorf("%d bytes kept a %s, more than the %d charged", per, tt.name, tt.cost)
			}
		})
	}
}

// enhancedMR is an enhanced multi-frame MR header as real ones are
// built: a Per-frame Functional Groups Sequence of one item a frame, each
// of 10 functional group sequences of one item of 9 short values (100
// elements, ~2.6 KB a frame on disk, ~20 KB charged), and a few bytes of
// Pixel Data.
func enhancedMR(t *testing.T, frames int) []byte {
	t.Helper()
	return enhancedMRWith(t, frames, bytes.Repeat([]byte{0, 1}, 64))
}

// enhancedMRWith is enhancedMR with pixels as its Pixel Data, and more
// elements.
func enhancedMRWith(t *testing.T, frames int, pixels []byte, more ...*element) []byte {
	t.Helper()
	groups := make([]*element, 10)
	for g := range groups {
		vals := make([]*element, 9)
		for v := range vals {
			vals[v] = str(Tag(0x00189100+uint32(v)), "DS", fmt.Sprintf("%016d", g*10+v))
		}
		groups[g] = seq(Tag(0x00209100+uint32(g)), item(vals...))
	}
	perFrame := make([][]*element, frames)
	for i := range perFrame {
		perFrame[i] = groups
	}
	return testFile(t, syntaxExplicitLE, true, false, true, append([]*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.4.1"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.2"),
		str(tagPatientID, "LO", "PID-1"),
		seq(0x52009230, perFrame...),
		{tag: tagPixelData, vr: "OW", value: pixels},
	}, more...))
}

// TestRewritePassesEnhancedMultiframe: an enhanced MR of 5,000 frames
// (13 MB of header, ~100 MB charged) is de-identified, its frames kept.
// Under the 64 MiB hold it was refused (~3,600 frames at most).
func TestRewritePassesEnhancedMultiframe(t *testing.T) {
	const frames = 5000
	in := enhancedMR(t, frames)
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var out bytes.Buffer
	_, err := d.Rewrite(&out, bytes.NewReader(in))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("Rewrite of a %d MB header: %v", len(in)>>20, err)
	}
	t.Logf("%d frames, %d MB file: %d MB allocated", frames, len(in)>>20, (after.TotalAlloc-before.TotalAlloc)>>20)
	perFrame := find(parseFile(t, out.Bytes()).elements, 0x52009230)
	if perFrame == nil {
		t.Fatal("the copy has no Per-frame Functional Groups Sequence")
	}
	if n := len(perFrame.items); n != frames {
		t.Errorf("the copy has %d per-frame items, want %d", n, frames)
	}
}

// TestRewriteDoseReportContentNotHeld: an X-Ray Radiation Dose SR of
// 40,000 NUM content items (~8 MB) is de-identified, its Content Sequence
// emptied: the sequence the copy drops is read without building its tree
// (~90 MB charged when it was), only its identifying values held, and
// they still count for the scrub. The hold is lowered to 16 MiB.
func TestRewriteDoseReportContentNotHeld(t *testing.T) {
	code := func(value, scheme, meaning string) []*element {
		return item(str(0x00080100, "SH", value), str(0x00080102, "SH", scheme), str(0x00080104, "LO", meaning))
	}
	num := item(
		str(0x0040A010, "CS", "CONTAINS"),
		str(0x0040A040, "CS", "NUM"),
		seq(0x0040A043, code("113838", "DCM", "DLP")),
		seq(0x0040A300, item(
			seq(0x004008EA, code("mGy.cm", "UCUM", "mGy.cm")),
			str(0x0040A30A, "DS", "123.45"),
		)),
	)
	const count = 40_000
	content := make([][]*element, count)
	for i := range content {
		content[i] = num
	}
	// A person observer's name, deep in the report, is an identifying value.
	content[count/2] = item(str(0x0040A010, "CS", "HAS OBS CONTEXT"), str(0x0040A040, "CS", "PNAME"),
		str(0x0040A123, "PN", "Roe^Richard"))
	in := testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.88.67"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.3"),
		str(tagPatientID, "LO", "PID-1"),
		str(0x00204000, "LT", "checked by Roe"),
		seq(0x0040A730, content...),
	})
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	d.heldLimit = 16 << 20
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Rewrite of a %d MB dose report: %v", len(in)>>20, err)
	}
	t.Logf("%d KB dose report, %d KB copy", len(in)>>10, out.Len()>>10)
	got := parseFile(t, out.Bytes()).elements
	if c := find(got, 0x0040A730); c == nil || len(c.items) != 0 {
		t.Errorf("Content Sequence %+v, want present and empty", c)
	}
	if c := find(got, 0x00204000); c == nil || strings.Contains(string(c.value), "Roe") {
		t.Errorf("Image Comments %+v, want kept without the observer's name", c)
	}
}
