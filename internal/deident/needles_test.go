package deident

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// needleFile is a data set whose identifying values are vals, one an
// item of a private sequence the profile drops, and whose text, kept in
// Manufacturer (0008,0070, written as UT so that it may be large), is
// scrubbed of them.
func needleFile(t *testing.T, vals []*element, text []byte) []byte {
	t.Helper()
	items := make([][]*element, len(vals))
	for i, v := range vals {
		items[i] = item(v)
	}
	return testFile(t, syntaxExplicitLE, true, false, true, []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.4.5.6.7"),
		str(0x00080070, "UT", string(text)),
		str(0x00090010, "LO", "ZZZZ"),
		seq(0x00091010, items...),
		str(tagPatientName, "PN", "Doe^John"),
		str(tagPatientID, "LO", "PAT1"),
		str(tagStudyInstanceUID, "UI", "1.2.3.4"),
		{tag: tagPixelData, vr: "OW", value: make([]byte, 16)},
	})
}

// dateValues are n distinct Study Dates, each searched for in 9 forms.
func dateValues(n int) []*element {
	els := make([]*element, n)
	for i := range els {
		els[i] = str(0x00080020, "DA", fmt.Sprintf("%08d", 20000101+i))
	}
	return els
}

// lengthValues are Other Patient IDs of each length from 2 to n that start
// with c: as many lookups at each word start that begins with c.
func lengthValues(c byte, n int) []*element {
	var els []*element
	for l := 2; l <= n; l++ {
		els = append(els, str(0x00101000, "LO", string(c)+strings.Repeat("a", l-1)))
	}
	return els
}

// wordText is n bytes of text of the one-character word w, then "seen
// 2000-01-01" (the first of dates, as printed).
func wordText(w byte, n int) []byte {
	return append(bytes.Repeat([]byte{w, ' '}, n/2), "seen 2000-01-01"...)
}

// dateIdentifiers are the identifying values of n distinct dates.
func dateIdentifiers(n int) *identifiers {
	var ids identifiers
	_ = ids.collect(dateValues(n), func(Tag, string) bool { return false })
	return &ids
}

// BenchmarkScrubManyNeedles: 64 KiB of text of digit words against the
// 9,000 forms of 1,000 distinct dates, every one of which starts with a
// digit. Comparing every needle at every word start took ~0.5 s an
// operation; a lookup by length takes well under a millisecond.
//
//	go test -run '^$' -bench ScrubManyNeedles ./internal/deident/
func BenchmarkScrubManyNeedles(b *testing.B) {
	ids := dateIdentifiers(1000)
	v := bytes.Repeat([]byte("1 2 2000-01-05 "), (64<<10)/15)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		ids.scrub(v)
	}
}

// TestRewriteManyIdentifyingValues: an instance of many distinct
// identifying values (here dates, in a sequence the copy drops) is
// rewritten in well under a second, its text scrubbed as before; one of
// more than maxNeedles needles, or of needles of lengths adding up to more
// than maxLengthSum, is refused as too large. Comparing every needle at
// every word start, the first took ~10 s, and the file of 100,000 dates
// (900,000 needles) with 200 KB of text 8.5 minutes.
func TestRewriteManyIdentifyingValues(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		refused string // in the error, "" when the rewrite succeeds
	}{
		{"11,000 dates, 400 KB of text", needleFile(t, dateValues(11_000), wordText('2', 400<<10)), ""},
		{"100,000 dates", needleFile(t, dateValues(100_000), wordText('2', 1<<10)), "more than 100000 identifying values"},
		{"values of 200 lengths", needleFile(t, lengthValues('2', 200), wordText('2', 1<<10)), "too many lengths"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestDeidentifier(t, Options{})
			var out bytes.Buffer
			start := time.Now()
			_, err := d.Rewrite(&out, bytes.NewReader(tt.in))
			took := time.Since(start)
			t.Logf("%d bytes rewritten in %v: %v", len(tt.in), took, err)
			if took > 5*time.Second {
				t.Errorf("the rewrite took %v", took)
			}
			if tt.refused != "" {
				if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("rewrite: %v, want ErrTooLarge saying %q", err, tt.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			el := find(parseFile(t, out.Bytes()).elements, 0x00080070)
			if el == nil || !bytes.HasSuffix(el.value, []byte("2 2 seen")) {
				t.Errorf("Manufacturer ends %q, want the text without the date", el.value[max(0, len(el.value)-32):])
			}
		})
	}
}

// nameValues are n distinct Patient's Names of three components of two or
// three words each: 12 needles a name, of 3 to 30 bytes.
func nameValues(n int) []*element {
	els := make([]*element, n)
	for i := range els {
		els[i] = str(tagPatientName, "PN", fmt.Sprintf("Aa%[1]d Bb%[1]d Cc%[1]d^Dd%[1]d Ee%[1]d Ff%[1]d^Gg%[1]d Hh%[1]d", i))
	}
	return els
}

// TestNeedleCostCoversItsMemory: what a needle is charged (needleCost and
// twice its bytes) is at least the heap the identifiers keep for it, from
// few to many, short (dates) and longer (names' parts).
func TestNeedleCostCoversItsMemory(t *testing.T) {
	for _, tt := range []struct {
		name string
		els  []*element
	}{
		{"212 dates", dateValues(212)}, // just after the map and the slice grew
		{"1,000 dates", dateValues(1_000)},
		{"11,000 dates", dateValues(11_000)},
		{"500 names", nameValues(500)},
		{"8,000 names", nameValues(8_000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var charged int64
			ids := &identifiers{charge: func(_ Tag, n int64) error { charged += n; return nil }}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			if err := ids.collect(tt.els, func(Tag, string) bool { return false }); err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(ids)
			runtime.KeepAlive(tt.els) // the values, not to count as freed
			kept := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("%d needles: %d bytes kept, %d charged", len(ids.needles), kept, charged)
			if kept > charged {
				t.Errorf("%d needles kept %d bytes, more than the %d charged", len(ids.needles), kept, charged)
			}
		})
	}
}

// TestNeedlesCountAgainstTheHold: the needles of the identifying values
// are held until the rewrite ends, and count against its hold: 7,000
// names in a dropped sequence, charged ~1.5 MB as values, build ~84,000
// needles, ~11 MB. Uncharged, they passed a hold of 8 MiB (and a header
// of 32 MB of dates, charged 168 MB, took 1.1 GB of heap).
func TestNeedlesCountAgainstTheHold(t *testing.T) {
	in := needleFile(t, nameValues(7_000), []byte("seen by Aa1 Bb1"))
	d := newTestDeidentifier(t, Options{})
	d.heldLimit = 8 << 20
	_, err := d.Rewrite(io.Discard, bytes.NewReader(in))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "identifying values of (0010,0010) to remove") {
		t.Fatalf("rewrite with a hold of 8 MiB: %v, want ErrTooLarge for the needles", err)
	}
	d.heldLimit = 0 // maxHeld
	var out bytes.Buffer
	if _, err := d.Rewrite(&out, bytes.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if el := find(parseFile(t, out.Bytes()).elements, 0x00080070); el == nil || string(trimValue(el.value)) != "seen by" {
		t.Errorf("Manufacturer %v, want %q", el, "seen by")
	}
}

// TestNeedlesHeldAfterPixelData: after Pixel Data, what a rewrite holds
// starts from its needles, not from nothing, and the large slot stays
// taken while they are over the allowance.
func TestNeedlesHeldAfterPixelData(t *testing.T) {
	d := newTestDeidentifier(t, Options{})
	d.mem = newMemory(1<<20, 1)
	dec := &decoder{mem: d.mem, ctx: context.Background(), limit: 4 << 20}
	ids := &identifiers{charge: dec.holdLasting}
	if err := ids.collect(nameValues(1_000), func(Tag, string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if err := dec.hold(tagPixelData, 2<<20); err != nil {
		t.Fatal(err)
	}
	dec.reset()
	if dec.held != dec.lasting || dec.held < 1<<20 || !dec.large {
		t.Errorf("after reset: %d held, %d lasting, large slot %v; want the needles' (over 1 MiB) held in the large slot", dec.held, dec.lasting, dec.large)
	}
	dec.release()
}

// doneAfter is a context done after its Err was asked n times.
type doneAfter struct {
	context.Context
	n int
}

func (c *doneAfter) Err() error {
	if c.n--; c.n < 0 {
		return context.Canceled
	}
	return nil
}

// TestScrubStopsWithContext: the scrub checks its context as it goes,
// not only before it starts, and leaves the value as it was.
func TestScrubStopsWithContext(t *testing.T) {
	ids := dateIdentifiers(10)
	v := wordText('2', 1<<20)
	ctx := &doneAfter{Context: context.Background(), n: 1}
	got, changed, err := ids.scrubContext(ctx, v)
	if !errors.Is(err, context.Canceled) || changed || !bytes.Equal(got, v) {
		t.Fatalf("scrub cancelled after it started: changed %v, err %v; want context.Canceled, v unchanged", changed, err)
	}
	if got, changed, err := ids.scrubContext(context.Background(), v); err != nil || !changed || bytes.Contains(got, []byte("2000-01-01")) {
		t.Fatalf("scrub: changed %v, err %v; want the date removed", changed, err)
	}
}

// TestScrubLookupsAreBounded: a rewrite's scrub does at most its number
// of lookups (maxLookups, here lowered), then refuses the instance as too
// large rather than scrub on until the request times out.
func TestScrubLookupsAreBounded(t *testing.T) {
	var ids identifiers
	if err := ids.collect(lengthValues('2', 100), func(Tag, string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	ids.lookupLimit = 4 << 20
	v := wordText('2', 32<<10) // 16 Ki word starts of 99 lookups each: 1.6 M
	for i := 1; ; i++ {
		_, _, err := ids.scrubContext(context.Background(), v)
		switch {
		case err == nil && i <= 3:
			continue
		case !errors.Is(err, ErrTooLarge) || ids.lookups <= ids.lookupLimit:
			t.Fatalf("scrub %d, after %d lookups: %v, want ErrTooLarge once over %d", i, ids.lookups, err, ids.lookupLimit)
		}
		break
	}
}

// TestClosedReaderFreesTheLargeSlot: closing a Reader whose rewrite is
// scrubbing (while holding the large slot) ends the scrub, and the slot
// is free again at once for the destination's other rewrites. Before,
// the scrub ran on to its end with no one to read the copy, the slot
// taken and a core busy: here hours comparing every needle at every word
// start, ~20 s with a lookup by length but no check of the context.
func TestClosedReaderFreesTheLargeSlot(t *testing.T) {
	// 4 MiB of word starts, each costing the most lookups allowed (179
	// lengths, maxLengthSum), and the 90,000 needles of 10,000 dates.
	vals := append(lengthValues('2', 179), dateValues(10_000)...)
	in := needleFile(t, vals, wordText('2', maxScrub-32))
	d := newTestDeidentifier(t, Options{})
	d.mem = newMemory(1<<20, 1) // the 4 MiB text takes the large slot
	r, err := d.Reader(context.Background(), opens(in))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rewrite to take the large slot", func() bool { return len(d.mem.large) == 1 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the large slot to be free after Close", func() bool { return len(d.mem.large) == 0 })
}

// waitFor waits up to 2 s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 2 s for %s", what)
		}
	}
}
