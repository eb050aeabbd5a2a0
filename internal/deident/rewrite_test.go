package deident

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

var testKey = []byte("0123456789abcdef0123456789abcdef-test-key")

func newTestDeidentifier(t *testing.T, o Options) *Deidentifier {
	t.Helper()
	k, err := NewKeyer(testKey, "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(k, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// parsed is a whole file read back with the package's own decoder.
type parsed struct {
	meta     []*element
	elements []*element
	explicit bool
}

func parseFile(t *testing.T, b []byte) parsed {
	t.Helper()
	rw := &rewrite{dec: &decoder{r: bufio.NewReader(bytes.NewReader(b))}}
	if err := rw.readMeta(); err != nil {
		t.Fatalf("read back: %v", err)
	}
	p := parsed{meta: rw.meta, explicit: rw.explicit}
	for {
		tag, vr, n, err := rw.dec.header(rw.explicit)
		if err == io.EOF {
			return p
		}
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
		el, err := rw.dec.readBody(tag, vr, n, rw.explicit, 0)
		if err != nil {
			t.Fatalf("read back %s: %v", tag, err)
		}
		p.elements = append(p.elements, el)
	}
}

// walk visits every element, in sequences too, with its nesting depth.
func walk(els []*element, depth int, f func(el *element, depth int)) {
	for _, el := range els {
		f(el, depth)
		for _, item := range el.items {
			walk(item, depth+1, f)
		}
	}
}

func find(els []*element, tag Tag) *element {
	for _, el := range els {
		if el.tag == tag {
			return el
		}
	}
	return nil
}

func dcmdump(t *testing.T, b []byte) {
	t.Helper()
	path, err := exec.LookPath("dcmdump")
	if err != nil {
		return
	}
	f := filepath.Join(t.TempDir(), "out.dcm")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "-E", f).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("E: ")) {
		t.Errorf("dcmdump of the copy: %v\n%s", err, out)
	}
}

// checkDeidentified checks the copy against its original: no attribute
// the profile removes, empties or maps keeps its original value anywhere
// in the copy, no private or group-length element remains, the UIDs are
// the keyed ones.
func checkDeidentified(t *testing.T, d *Deidentifier, orig, copy parsed) {
	t.Helper()
	secrets := map[Tag]map[string]bool{}
	walk(orig.elements, 0, func(el *element, _ int) {
		a := d.p.action(el.tag, el.vr)
		if el.seq || el.encapsulated || a == actKeep || a == actShift {
			return
		}
		v := trimValue(el.value)
		if len(v) < 2 {
			return
		}
		if secrets[el.tag] == nil {
			secrets[el.tag] = map[string]bool{}
		}
		secrets[el.tag][v] = true
	})
	origPatient := find(orig.elements, tagPatientID)
	walk(copy.elements, 0, func(el *element, depth int) {
		if el.tag.Private() {
			t.Errorf("private element %s remains (depth %d)", el.tag, depth)
		}
		if el.tag.Element() == 0 {
			t.Errorf("group length %s remains", el.tag)
		}
		if d.p.action(el.tag, el.vr) == actRemove {
			t.Errorf("element %s the profile removes remains (depth %d)", el.tag, depth)
		}
		if !el.seq && secrets[el.tag][trimValue(el.value)] {
			t.Errorf("element %s keeps its original value %q (depth %d)", el.tag, trimValue(el.value), depth)
		}
	})
	for _, tag := range []Tag{tagStudyInstanceUID, tagSeriesInstanceUID, tagSOPInstanceUID} {
		o, c := find(orig.elements, tag), find(copy.elements, tag)
		if o == nil {
			continue
		}
		if c == nil || trimValue(c.value) != d.k.UID(trimValue(o.value)) {
			t.Errorf("%s: copy %v, want the keyed UID of %q", tag, c, trimValue(o.value))
		}
	}
	if origPatient != nil {
		want := d.k.PatientID(trimValue(origPatient.value))
		for _, tag := range []Tag{tagPatientID, tagPatientName} {
			if c := find(copy.elements, tag); c != nil && trimValue(c.value) != want {
				t.Errorf("%s: copy %q, want the pseudonym %q", tag, trimValue(c.value), want)
			}
		}
	}
	if ms := find(copy.meta, tagMediaSOPInstanceUID); ms == nil || trimValue(ms.value) != trimValue(find(copy.elements, tagSOPInstanceUID).value) {
		t.Errorf("Media Storage SOP Instance UID %v does not match the copy's SOP Instance UID", ms)
	}
	if c := find(copy.elements, tagIdentityRemoved); c == nil || trimValue(c.value) != "YES" {
		t.Errorf("Patient Identity Removed: %v, want YES", c)
	}
}

func TestRewriteSamples(t *testing.T) {
	dir := testharness.SamplesDir(t)
	refused := map[string]error{
		"broken-empty.dcm":                  ErrNotDICOM,
		"broken-gzip-not-dicom.dcm":         ErrNotDICOM,
		"broken-no-preamble-stray-byte.dcm": ErrNotDICOM,
		"broken-truncated-pixeldata.dcm":    ErrMalformed,
		"invalid-dicomdir.dcm":              ErrMalformed, // no SOP Instance UID
		"sc-deflated.dcm":                   ErrUnsupportedSyntax,
		"us-rgb-explicit-be.dcm":            ErrUnsupportedSyntax,
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", dir, err)
	}
	for _, o := range []Options{{IncludeBurnedIn: true}, {RetainDates: true, RetainPatientCharacteristics: true, RetainDeviceIdentity: true, CleanDescriptors: true, IncludeBurnedIn: true}} {
		d := newTestDeidentifier(t, o)
		for _, f := range files {
			name := filepath.Base(f)
			t.Run(name, func(t *testing.T) {
				in, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				inst, err := d.Rewrite(&out, bytes.NewReader(in))
				if want, ok := refused[name]; ok {
					if !errors.Is(err, want) {
						t.Fatalf("Rewrite: %v, want %v", err, want)
					}
					return
				}
				if err != nil {
					t.Fatalf("Rewrite: %v", err)
				}
				if inst.NewSOPInstanceUID != d.k.UID(inst.SOPInstanceUID) || inst.SOPInstanceUID == "" {
					t.Errorf("instance %+v", inst)
				}
				checkDeidentified(t, d, parseFile(t, in), parseFile(t, out.Bytes()))
				dcmdump(t, out.Bytes())
				// Idempotent: a resend writes the same bytes.
				var again bytes.Buffer
				if _, err := d.Rewrite(&again, bytes.NewReader(in)); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
					t.Errorf("second rewrite differs (err %v)", err)
				}
			})
		}
	}
}

func TestRewriteRefusesBurnedIn(t *testing.T) {
	dir := testharness.SamplesDir(t)
	d := newTestDeidentifier(t, Options{})
	for name, want := range map[string]error{
		"sc-rgb-jpeg-baseline.dcm": ErrBurnedIn, // Secondary Capture
		"us-palette-rle.dcm":       ErrBurnedIn, // Ultrasound
		"ct-explicit-le.dcm":       nil,
	} {
		in, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := d.Rewrite(&out, bytes.NewReader(in)); !errors.Is(err, want) && (want != nil || err != nil) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
		if want != nil && out.Len() > 0 {
			t.Errorf("%s: %d bytes written before the refusal", name, out.Len())
		}
	}
}

// panickingFile panics as the rewrite reads it, as a parser bug would.
type panickingFile struct{}

func (panickingFile) Read([]byte) (int, error) { panic("a parser bug") }
func (panickingFile) Close() error             { return nil }

// A panic in Reader's rewrite runs in its own goroutine, where no
// caller's recover reaches: it ended the process, and every study in
// flight with it. It is the reader's error instead.
func TestReaderPanicIsAnError(t *testing.T) {
	rc, err := newTestDeidentifier(t, Options{}).Reader(t.Context(), func(context.Context) (io.ReadCloser, error) { return panickingFile{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	if !errors.Is(err, ErrPanicked) || !strings.Contains(err.Error(), "a parser bug") || !strings.Contains(err.Error(), "panickingFile.Read") {
		t.Fatalf("err %v, want ErrPanicked with the value and where", err)
	}
}
