package deident

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
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

// overheadFile is an explicit VR file whose body holds millions of
// empty elements or items: ~32 MB that a decoder counting only value
// bytes held as a tree ~15 times that size.
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

const overheadCount = 4 << 20 // 32 MiB of 8-byte headers

// TestRewriteChargesElementOverhead: a data set of millions of empty
// elements (in a private sequence, at top level) or empty items is
// refused as too large once what its tree costs in memory reaches the
// hold, not only its values: counted by value bytes alone, a 32 MB file
// built a tree of ~500 MB, and a few such instances at once ended the
// forwarder. The bound compares the bytes allocated (deterministic,
// unlike a sampled peak) to a generous multiple of the hold.
func TestRewriteChargesElementOverhead(t *testing.T) {
	tests := []struct {
		name string
		body func(b *bytes.Buffer)
	}{
		{"elements in a private sequence", func(b *bytes.Buffer) {
			_ = writeElement(b, str(0x00090010, "LO", "ACME 1.0"), true)
			_ = writeHeader(b, 0x00091010, "SQ", undefinedLength, true)
			_ = writeHeader(b, tagItem, "", undefinedLength, false)
			emptyElements(b, overheadCount)
			_ = writeHeader(b, tagItemDelim, "", 0, false)
			_ = writeHeader(b, tagSeqDelim, "", 0, false)
		}},
		{"empty items in a private sequence", func(b *bytes.Buffer) {
			_ = writeElement(b, str(0x00090010, "LO", "ACME 1.0"), true)
			_ = writeHeader(b, 0x00091010, "SQ", undefinedLength, true)
			for range overheadCount {
				_ = writeHeader(b, tagItem, "", 0, false)
			}
			_ = writeHeader(b, tagSeqDelim, "", 0, false)
		}},
		{"elements at top level", func(b *bytes.Buffer) { emptyElements(b, overheadCount) }},
	}
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
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
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("Rewrite: %v, want ErrTooLarge", err)
			}
			if limit := uint64(3 * maxHeld); allocated > limit {
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
