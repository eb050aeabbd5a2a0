package deident

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// rewriteBoth rewrites in with the discard path (dropped sequences not
// built) and with the full path (noDiscard), under the same options.
func rewriteBoth(t *testing.T, o Options, in []byte) (discard, full []byte, errDiscard, errFull error) {
	t.Helper()
	var a, b bytes.Buffer
	d := newTestDeidentifier(t, o)
	_, errDiscard = d.Rewrite(&a, bytes.NewReader(in))
	d.noDiscard = true
	_, errFull = d.Rewrite(&b, bytes.NewReader(in))
	return a.Bytes(), b.Bytes(), errDiscard, errFull
}

// privatePN is a data set whose Patient's Name of another person (Olga)
// is only at depth 3 of a private sequence, and in kept free text.
func privatePN() []*element {
	deep := seq(0x00091010, item(
		str(0x00091011, "LO", "level 1"),
		seq(0x00091012, item(
			seq(0x00091013, item(str(tagPatientName, "PN", "Other^Olga"), str(0x00091014, "LO", "level 3"))),
		)),
	))
	return []*element{
		str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
		str(0x00090010, "LO", "ACME 1.0"),
		deep,
		str(tagPatientID, "LO", "PAT-1"),
		str(0x00204000, "LT", "seen by Olga"),
		// An SR's Content Sequence, emptied, with a name at depth 2.
		seq(0x0040A730, item(str(0x0040A010, "CS", "CONTAINS"),
			seq(0x0040A730, item(str(0x0040A123, "PN", "Roe^Richard"))))),
		{tag: tagPixelData, vr: "OW", value: bytes.Repeat([]byte{0, 1}, 64)},
	}
}

// asUN turns the top-level sequences of els into values of VR UN, their
// items in Implicit VR (PS3.5 6.2.2).
func asUN(els []*element) []*element {
	out := make([]*element, len(els))
	for i, el := range els {
		c := *el
		if c.seq {
			c.vr, c.implicitItems = "UN", true
		}
		out[i] = &c
	}
	return out
}

// TestDiscardPathWritesWhatTheFullPathWrites: reading a dropped sequence
// without building it (3b15d8e) changes nothing in the copy: the same
// bytes as building it whole, over the real samples, the generated data
// sets, the fuzz corpus, and a name only at depth 3 of a private
// sequence (Implicit VR; as UN, defined and undefined lengths), which
// still counts for the scrub.
func TestDiscardPathWritesWhatTheFullPathWrites(t *testing.T) {
	type input struct {
		name string
		in   []byte
	}
	var inputs []input
	files, err := filepath.Glob(filepath.Join(testharness.SamplesDir(t), "*.dcm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, input{"sample " + filepath.Base(f), b})
	}
	corpus, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzRewrite", "*"))
	for _, f := range corpus {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lit, ok := strings.CutPrefix(strings.SplitN(string(b), "\n", 3)[1], "[]byte(")
		v, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if !ok || err != nil {
			t.Fatalf("fuzz corpus %s: %v", f, err)
		}
		inputs = append(inputs, input{"fuzz " + filepath.Base(f), []byte(v)})
	}
	px := &element{tag: tagPixelData, vr: "OW", value: []byte{1, 2, 3, 4}}
	for _, enc := range []struct {
		name             string
		syntax           string
		explicit, define bool
		un               bool
	}{
		{"explicit/undefined", syntaxExplicitLE, true, false, false},
		{"explicit/defined", syntaxExplicitLE, true, true, false},
		{"implicit/undefined", syntaxImplicitLE, false, false, false},
		{"implicit/defined", syntaxImplicitLE, false, true, false},
		{"UN/undefined", syntaxExplicitLE, true, false, true},
		{"UN/defined", syntaxExplicitLE, true, true, true},
	} {
		sets := map[string][]*element{"private PN at depth 3": privatePN(), "nested": nestedDataset(enc.un, px)}
		for name, p := range oddPatients {
			sets["odd places "+name] = oddDataset(p)
		}
		for name, els := range sets {
			if enc.un {
				els = asUN(els)
			}
			inputs = append(inputs, input{name + "/" + enc.name, testFile(t, enc.syntax, enc.explicit, enc.define, true, els)})
		}
	}
	inputs = append(inputs, input{"enhanced MR", enhancedMR(t, 20)})
	for _, o := range []Options{{IncludeBurnedIn: true}, {CleanDescriptors: true, RetainDates: true, IncludeBurnedIn: true}} {
		for _, in := range inputs {
			t.Run(fmt.Sprintf("%s/clean %v", in.name, o.CleanDescriptors), func(t *testing.T) {
				discard, full, errD, errF := rewriteBoth(t, o, in.in)
				if fmt.Sprint(errD) != fmt.Sprint(errF) {
					t.Fatalf("discard path: %v; full path: %v", errD, errF)
				}
				if !bytes.Equal(discard, full) {
					t.Fatalf("the discard path wrote %d bytes, the full path %d, not the same", len(discard), len(full))
				}
				if strings.HasPrefix(in.name, "private PN") {
					if errD != nil {
						t.Fatal(errD)
					}
					if bytes.Contains(discard, []byte("Olga")) || bytes.Contains(discard, []byte("Richard")) {
						t.Error("a name only in a dropped sequence is left in the copy's text")
					}
				}
			})
		}
	}
}

// TestDiscardPathRefusesMalformedDroppedSequences: a dropped sequence is
// still read and checked; one whose item overruns its length, with a
// stray delimiter, or nested deeper than maxDepth is refused
// (ErrMalformed) on both paths.
func TestDiscardPathRefusesMalformedDroppedSequences(t *testing.T) {
	lo := writeTestElement(t, str(0x00091011, "LO", "ABCD"))
	raw := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	hdr := func(tag Tag, vr string, n uint32, explicit bool) []byte {
		var b bytes.Buffer
		if err := writeHeader(&b, tag, vr, n, explicit); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	item := func(n uint32) []byte { return hdr(tagItem, "", n, false) }
	overrun := raw(item(uint32(len(lo)-2)), lo)
	deep := &element{tag: 0x00091010, vr: "SQ", seq: true}
	for range maxDepth + 1 {
		deep = seq(0x00091010, []*element{deep})
	}
	var deepBytes bytes.Buffer
	if err := writeElement(&deepBytes, deep, true); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		seq  []byte
	}{
		{"item overruns its length", raw(hdr(0x00091010, "SQ", uint32(len(overrun)), true), overrun)},
		{"stray item delimiter in a sequence", raw(hdr(0x00091010, "SQ", undefinedLength, true),
			hdr(tagItemDelim, "", 0, false), hdr(tagSeqDelim, "", 0, false))},
		{"sequence delimiter in an item", raw(hdr(0x00091010, "SQ", undefinedLength, true),
			item(undefinedLength), lo, hdr(tagSeqDelim, "", 0, false))},
		{"sequence delimiter before a defined length's end", raw(hdr(0x00091010, "SQ", uint32(len(lo)+24), true),
			item(uint32(len(lo))), lo, hdr(tagSeqDelim, "", 0, false), item(0))},
		{"nested deeper than 32", deepBytes.Bytes()},
		{"UN item overruns its length", raw(hdr(0x00091010, "UN", uint32(len(overrun)), true), item(uint32(len(lo)-2)),
			writeTestImplicit(t, str(0x00091011, "LO", "ABCD")))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			head := testFile(t, syntaxExplicitLE, true, false, true, []*element{
				str(tagSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
				str(tagSOPInstanceUID, "UI", "1.2.3.9.1"),
				str(0x00090010, "LO", "ACME 1.0"),
			})
			in := raw(head, tt.seq, writeTestElement(t, str(tagPatientID, "LO", "PAT-1")),
				writeTestElement(t, &element{tag: tagPixelData, vr: "OW", value: []byte{0, 1}}))
			_, _, errD, errF := rewriteBoth(t, Options{IncludeBurnedIn: true}, in)
			for path, err := range map[string]error{"discard": errD, "full": errF} {
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("%s path: %v, want ErrMalformed", path, err)
				}
			}
		})
	}
}

func writeTestImplicit(t *testing.T, el *element) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeElement(&b, el, false); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
