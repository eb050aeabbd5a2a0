package deident

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Transfer syntaxes the rewrite tells apart.
const (
	syntaxImplicitLE = "1.2.840.10008.1.2"
	syntaxExplicitLE = "1.2.840.10008.1.2.1"
	syntaxExplicitBE = "1.2.840.10008.1.2.2"
	syntaxDeflated   = "1.2.840.10008.1.2.1.99"
	// JPIP Referenced Deflate: a deflated data set whose pixel data is a link.
	syntaxJPIPDeflate = "1.2.840.10008.1.2.4.95"
)

// ReadsSyntax reports whether the rewrite reads data sets in transfer
// syntax ts: every one but Explicit VR Big Endian and the deflated ones,
// which Orthanc converts to Explicit VR Little Endian first.
func ReadsSyntax(ts string) bool {
	switch ts {
	case syntaxExplicitBE, syntaxDeflated, syntaxJPIPDeflate:
		return false
	}
	return true
}

// implementationUID names stowline's writer in the file meta (a UUID-derived UID).
const (
	implementationUID     = "2.25.225689138186435734186106196016427716761"
	implementationVersion = "STOWLINE"
)

// Deidentifier rewrites DICOM files under one profile and one key. It
// is safe for concurrent use.
type Deidentifier struct {
	k *Keyer
	p *profile
	// heldLimit replaces maxHeld when set (tests).
	heldLimit int64
	// mem bounds what all its rewrites hold at once.
	mem *memory
	// noDiscard builds dropped sequences whole, as before 3b15d8e
	// (tests: the discard path must write the same bytes).
	noDiscard bool
}

// New returns a Deidentifier for the basic profile with opts.
func New(k *Keyer, opts Options) (*Deidentifier, error) {
	if k == nil {
		return nil, errors.New("deident: a key is required")
	}
	p, err := newProfile(opts)
	if err != nil {
		return nil, err
	}
	return &Deidentifier{k: k, p: p, mem: newMemory(heldAllowance, largeSlots)}, nil
}

// CheckOptions reports what New would refuse in opts (an error matching
// ErrBadOptions), for a configuration check before any key is read.
func CheckOptions(opts Options) error {
	_, err := newProfile(opts)
	return err
}

// Keyer returns the key's pseudonym mapping (to map the SOP Instance
// UIDs of a destination's answer back).
func (d *Deidentifier) Keyer() *Keyer { return d.k }

// Instance is what a rewrite read and wrote.
type Instance struct {
	// SOPClassUID and SOPInstanceUID are the original's;
	// NewSOPInstanceUID is the copy's.
	SOPClassUID, SOPInstanceUID, NewSOPInstanceUID string
	// BurnedInAnnotation is the original's (0028,0301), "" if absent.
	BurnedInAnnotation string
	// DateShiftDays is how many days the dates moved back (0: dates not kept).
	DateShiftDays int
}

// Rewrite reads one DICOM file from r and writes its de-identified copy
// to w, as a Part-10 file in the same transfer syntax. On error, w holds
// a partial file that must be discarded. A header held beyond the
// per-rewrite allowance waits for the Deidentifier's large slot (see
// Reader, which stops waiting with its context).
func (d *Deidentifier) Rewrite(w io.Writer, r io.Reader) (Instance, error) {
	return d.rewrite(context.Background(), w, r, nil)
}

// slotRun is how one run of Reader's rewrite takes the large slot:
// never waiting for it with its source open (errSlotBusy instead).
type slotRun struct {
	// taken: the slot was taken before the run (after a wait), and is
	// kept until the input passes keepUntil.
	taken     bool
	keepUntil int64
	// busyAt is where the run stopped with errSlotBusy.
	busyAt int64
}

// errSlotBusy: a run (slotRun) needs the large slot, and it is taken.
var errSlotBusy = errors.New("the large slot is taken")

// rewrite is Rewrite under ctx; with run set, a slot not free at once
// ends it with errSlotBusy (see Reader).
func (d *Deidentifier) rewrite(ctx context.Context, w io.Writer, r io.Reader, run *slotRun) (Instance, error) {
	br, bw := readers.Get().(*bufio.Reader), writers.Get().(*bufio.Writer)
	br.Reset(sourceReader{r})
	bw.Reset(w)
	defer func() {
		br.Reset(nil)
		bw.Reset(nil)
		readers.Put(br)
		writers.Put(bw)
	}()
	rw := &rewrite{d: d, dec: &decoder{r: br, limit: d.heldLimit, mem: d.mem, ctx: ctx}, w: bw}
	if run != nil {
		rw.dec.noWait, rw.dec.large, rw.dec.keepUntil = true, run.taken, run.keepUntil
		defer func() { run.busyAt = rw.dec.busyAt }()
	}
	// The needles are held until the rewrite ends: their memory counts
	// against the hold, as the tree's does.
	rw.ids.charge = rw.dec.holdLasting
	// Every path gives the large slot back: errors, a closed reader,
	// a panic recovered by Reader.
	defer rw.dec.release()
	if err := rw.run(); err != nil {
		return rw.inst, err
	}
	return rw.inst, rw.w.Flush()
}

// errSourceCut is io.ErrUnexpectedEOF from the source itself: net/http
// reports so an answer cut before its Content-Length (Orthanc restarted,
// a proxy timed out), a failure to retry. The decoder reads
// io.ErrUnexpectedEOF as a file that ends inside an element (malformed,
// refused for good), so the source's own is told apart.
var errSourceCut = fmt.Errorf("the source ended before its length: %w", io.ErrUnexpectedEOF)

type sourceReader struct{ r io.Reader }

func (s sourceReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err == io.ErrUnexpectedEOF {
		err = errSourceCut
	}
	return n, err
}

// The buffers of a rewrite are reused: a small instance costs less than
// two fresh 64 KiB buffers.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}
)

// Reader returns the de-identified copy of the file open opens, as it
// is written: the rewrite runs while the caller reads. open is called at
// once (its error is Reader's), and again after each wait for the large
// slot: a source left unread through the wait would hold its Orthanc
// connection, and be cut after Orthanc's HttpRequestTimeout (30 s), so
// the rewrite closes it, waits, and runs again from a new one holding the
// slot. The rewrite is deterministic: the bytes of the copy the caller
// already read come again, and are dropped. Close stops it and closes
// the source. A wait for the slot stops when ctx is done or the reader
// is closed, failing with ctx's error.
func (d *Deidentifier) Reader(ctx context.Context, open func(context.Context) (io.ReadCloser, error)) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	src, err := open(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	pr, pw := io.Pipe()
	p := &pipeReader{pr: pr, src: src, cancel: cancel}
	go func() {
		defer cancel() // also when the caller never closes
		var err error
		defer func() {
			// A panic in this goroutine, not the caller's, would end
			// the process: the caller's recover cannot catch it.
			if v := recover(); v != nil {
				// Bounded, as a dead letter keeps it.
				text := fmt.Sprint(v)
				if len(text) > 300 {
					text = strings.ToValidUTF8(text[:300], "") + "…"
				}
				err = fmt.Errorf("%w: %s at %s", ErrPanicked, text, panicSite())
			}
			pw.CloseWithError(err)
		}()
		err = d.runs(ctx, pw, p, src, open)
	}()
	return p, nil
}

// runs rewrites src to w, and again from a source open opens after each
// wait for the large slot (see Reader).
func (d *Deidentifier) runs(ctx context.Context, w io.Writer, p *pipeReader, src io.Reader, open func(context.Context) (io.ReadCloser, error)) error {
	out := &skipWriter{w: w}
	run := &slotRun{}
	for {
		_, err := d.rewrite(ctx, out, src, run)
		if !errors.Is(err, errSlotBusy) {
			if err == nil && out.skip > 0 {
				return fmt.Errorf("deident: the source read again after a wait for the large slot gave a copy %d bytes shorter than the first", out.skip)
			}
			return err
		}
		p.swap(nil)
		if werr := d.mem.acquire(ctx); werr != nil {
			return fmt.Errorf("%w; stopped waiting: %w", err, werr)
		}
		next, oerr := open(ctx)
		if oerr == nil && !p.swap(next) {
			oerr = io.ErrClosedPipe
		}
		if oerr != nil {
			d.mem.release()
			return fmt.Errorf("deident: open the source again after waiting for the large slot: %w", oerr)
		}
		src, run = next, &slotRun{taken: true, keepUntil: run.busyAt}
		out.skip = out.n
	}
}

// skipWriter counts the bytes it passes to w, after dropping the first
// skip: those a run before gave already.
type skipWriter struct {
	w       io.Writer
	n, skip int64
}

func (s *skipWriter) Write(b []byte) (int, error) {
	k := min(s.skip, int64(len(b)))
	s.skip -= k
	n, err := s.w.Write(b[k:])
	s.n += int64(n)
	return int(k) + n, err
}

// panicSite names the function and line that panicked, from a deferred
// recover: the first frame outside the runtime.
func panicSite() string {
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		fr, more := frames.Next()
		if !strings.HasPrefix(fr.Function, "runtime.") {
			return fmt.Sprintf("%s (%s:%d)", fr.Function, filepath.Base(fr.File), fr.Line)
		}
		if !more {
			return "an unknown place"
		}
	}
}

type pipeReader struct {
	pr     *io.PipeReader
	cancel context.CancelFunc
	mu     sync.Mutex
	src    io.Closer // the source open now; nil while a wait has none
	closed bool
}

func (p *pipeReader) Read(b []byte) (int, error) { return p.pr.Read(b) }

func (p *pipeReader) Close() error {
	p.cancel()       // a wait for memory ends
	_ = p.pr.Close() // the writer's next write fails: the rewrite ends
	p.mu.Lock()
	src := p.src
	p.src, p.closed = nil, true
	p.mu.Unlock()
	if src == nil {
		return nil
	}
	return src.Close()
}

// swap closes the source open now and makes next (nil: none) the
// source. Once the reader is closed, it closes next too and reports false.
func (p *pipeReader) swap(next io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.src != nil {
		_ = p.src.Close()
	}
	p.src = nil
	if p.closed {
		if next != nil {
			_ = next.Close()
		}
		return false
	}
	p.src = next
	return true
}

type rewrite struct {
	d        *Deidentifier
	dec      *decoder
	w        *bufio.Writer
	explicit bool
	syntax   string
	meta     []*element // the original file meta; nil without one
	inst     Instance
	// sopClass is the SOP Class UID the copy's file meta names: the data
	// set's, else the original file meta's.
	sopClass string
	// patientID is the original top-level Patient ID, the key of the
	// pseudonym and the date offset.
	patientID string
	adds      []*element // attributes the copy gains, in tag order
	// ids are the instance's identifying values, removed from every text
	// value the copy keeps (clean.go).
	ids identifiers
	// err: a value transform could not write (text over maxScrub).
	err error
	// overlays are the overlay planes of the data set (groups 6000 to
	// 601E), to refuse one embedded in Pixel Data.
	overlays [16]overlayPlane
}

// overlayPlane is what the data set says of one overlay plane.
type overlayPlane struct {
	described     bool   // Overlay Rows, Columns, Bits Allocated or Bit Position
	data          bool   // Overlay Data (60xx,3000)
	bitsAllocated uint16 // Overlay Bits Allocated (60xx,0100)
}

// overlayPlane is the record of the overlay plane whose group holds
// tag, nil for a tag of another group.
func (rw *rewrite) overlayPlane(tag Tag) *overlayPlane {
	g := tag.Group()
	if g < 0x6000 || g > 0x601E || g&1 == 1 {
		return nil
	}
	return &rw.overlays[(g-0x6000)/2]
}

// noteOverlay records a top-level element of an overlay group: at its
// header (value nil), then with its value once read.
func (rw *rewrite) noteOverlay(tag Tag, value []byte) {
	p := rw.overlayPlane(tag)
	if p == nil {
		return
	}
	switch tag.Element() {
	case 0x0010, 0x0011, 0x0102: // Overlay Rows, Columns, Bit Position
		p.described = true
	case 0x0100:
		p.described = true
		if len(value) >= 2 {
			p.bitsAllocated = binary.LittleEndian.Uint16(value)
		}
	case 0x3000:
		p.data = true
	}
}

// checkOverlays refuses an overlay plane embedded in Pixel Data's unused
// high bits (the retired usage of PS3.3 C.9.2: Overlay Bits Allocated
// equal to Bits Allocated, no Overlay Data): removing the overlay group,
// as the profile does, leaves its bits, annotations that may name the
// patient, in the pixels the copy sends. A plane with Overlay Data has
// its bits there, removed; one of 1 bit without it has none left
// anywhere (what a tool applying Table E.1-1 as written leaves, and
// stowline itself did): neither is refused.
func (rw *rewrite) checkOverlays() error {
	if rw.d.p.opts.IncludeBurnedIn {
		return nil
	}
	for i, p := range rw.overlays {
		if p.described && !p.data && p.bitsAllocated != 1 {
			return fmt.Errorf("%w: overlay plane %04X is embedded in Pixel Data (Overlay Bits Allocated %d, Overlay Data present: %v)",
				ErrBurnedIn, 0x6000+2*i, p.bitsAllocated, p.data)
		}
	}
	return nil
}

func (rw *rewrite) run() error {
	rw.dec.kept = rw.kept // once: a method value is allocated where it is taken
	if err := rw.readMeta(); err != nil {
		return err
	}
	var pending []*element
	flushed := false
	flush := func() error {
		flushed = true
		err := rw.start(pending)
		pending = nil
		// What was held is written: the large slot goes back before
		// Pixel Data streams.
		rw.dec.reset()
		return err
	}
	var prev Tag
	for first := true; ; first = false {
		tag, vr, n, err := rw.dec.header(rw.explicit)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if tag.Group() == 0xFFFE {
			return fmt.Errorf("%w: %s outside a sequence at byte %d", ErrMalformed, tag, rw.dec.pos)
		}
		if tag.Group() == 0x0002 {
			return fmt.Errorf("%w: file meta element %s in the data set at byte %d", ErrMalformed, tag, rw.dec.pos)
		}
		// Tags ascend (PS3.5 7.1). A repeated one is read by DCMTK and
		// Orthanc as its first, here it would be the last: a second SOP
		// Class UID could pass a Secondary Capture as CT. Refused.
		if !first && tag <= prev {
			return fmt.Errorf("%w: %s after %s at byte %d (tags repeated or out of order)", ErrMalformed, tag, prev, rw.dec.pos)
		}
		prev = tag
		rw.noteOverlay(tag, nil)
		sequence := rw.dec.isSequence(tag, vr, n)
		large := n != undefinedLength && n > streamThreshold && !sequence
		a := rw.d.p.action(tag, dictionaryVR(tag, vr))
		var el *element
		switch {
		case large && a == actRemove:
			// A large private value (vendors put them in group 0009, before
			// the Patient ID), an overlay: dropped without holding it.
			if err := rw.copy(-int64(n)); err != nil {
				return err
			}
			continue
		case large && a == actEmpty:
			// An Encapsulated Document: emptied without holding it.
			if err := rw.copy(-int64(n)); err != nil {
				return err
			}
			el = &element{tag: tag, vr: vr}
		}
		if el == nil {
			stream, err := rw.streams(tag, vr, n, large, flushed)
			if err != nil {
				return err
			}
			// Everything before the first streamed value (Pixel Data) is
			// held: the identifying values (Patient's Name, in group 0010,
			// the Requesting Physician in 0032...) must be known before the
			// descriptors of group 0008 are written.
			if !flushed && stream {
				if err := flush(); err != nil {
					return err
				}
			}
			if stream {
				if err := rw.stream(tag, vr, n); err != nil {
					return err
				}
				continue
			}
			if flushed {
				rw.dec.reset()
			}
			// A sequence the copy drops (a private one, a Content
			// Sequence emptied): read without building its tree, only
			// its identifying values held, so that what is not sent
			// cannot make the instance too large.
			rw.dec.discard = sequence && (a == actRemove || a == actEmpty) && !rw.d.noDiscard
			el, err = rw.dec.readBody(tag, vr, n, rw.explicit, 0)
			dropped := rw.dec.dropped
			rw.dec.discard, rw.dec.dropped = false, nil
			if err != nil {
				if errors.Is(err, ErrTooLarge) && !flushed {
					return fmt.Errorf("%w; the elements before Pixel Data are held whole until the identifying values are known", err)
				}
				return err
			}
			// Nothing is written before the next top-level element: its
			// identifying values count for the text the copy keeps.
			if err := rw.ids.collect(dropped, rw.kept); err != nil {
				return err
			}
		}
		if !el.seq {
			rw.noteOverlay(tag, el.value)
		}
		if !flushed {
			pending = append(pending, el)
			continue
		}
		// After Pixel Data (rare): its identifying values still count
		// for the text that follows.
		if err := rw.ids.collect([]*element{el}, rw.kept); err != nil {
			return err
		}
		if err := rw.writeTop(el); err != nil {
			return err
		}
		rw.dec.reset()
	}
	if !flushed {
		if err := flush(); err != nil {
			return err
		}
	}
	// An overlay group after the first streamed value (a large
	// Waveform Data) is known only now.
	if err := rw.checkOverlays(); err != nil {
		return err
	}
	return rw.writeAdds(0xFFFFFFFF)
}

// streams decides whether a top-level value is copied through, never
// held: encapsulated Pixel Data, and large values that are not text
// (by VR, by the dictionary, or, of unknown VR, by their first bytes)
// in the bulk groups at the end of a data set (Waveform Data 5400,
// Overlays 60xx, Pixel Data 7FE0) or after Pixel Data. Every other value
// before Pixel Data is held (within maxHeld) so that no identifying value
// after it (Requesting Physician, Admission ID, Content Creator's Name)
// is unknown when text is written.
func (rw *rewrite) streams(tag Tag, vr string, n uint32, large, flushed bool) (bool, error) {
	if n == undefinedLength && tag == tagPixelData {
		return true, nil
	}
	if !large {
		return false, nil
	}
	bulk := flushed || tag.Group() >= 0x5400
	switch known := dictionaryVR(tag, vr); {
	case textVR(known):
		return false, nil // held and scrubbed, up to maxScrub
	case known != "" && known != "UN":
		return bulk, nil
	}
	// Unknown VR: text if it starts as text, held to be scrubbed.
	head, err := rw.dec.r.Peek(min(int(n), 256))
	if err == io.EOF {
		return false, fmt.Errorf("%w: file ends inside %s at byte %d", ErrMalformed, tag, rw.dec.pos)
	}
	if err != nil {
		return false, err
	}
	if textBytes(bytes.TrimSuffix(head, []byte{0})) {
		return false, nil
	}
	return bulk, nil
}

// readMeta reads the preamble and file meta, or recognises a bare data
// set (no preamble, no meta), and sets the encoding.
func (rw *rewrite) readMeta() error {
	head, err := rw.dec.r.Peek(132)
	if err != nil && err != io.EOF {
		return err // the source failed: not the file's fault
	}
	if len(head) == 0 {
		return fmt.Errorf("%w: the file is empty", ErrNotDICOM)
	}
	if err == nil && string(head[128:132]) == "DICM" {
		if _, err := rw.dec.r.Discard(132); err != nil {
			return err
		}
		rw.dec.pos = 132
		// The prefix but no file meta: Orthanc stores such files as
		// they came too.
		if b, err := rw.dec.r.Peek(8); err == nil && binary.LittleEndian.Uint16(b) == 0x0008 {
			rw.bareDataSet(b)
			return nil
		}
		return rw.readFileMeta()
	}
	// File meta without the preamble: DCMTK reads such files, and
	// Orthanc stores them as they came.
	if len(head) >= 8 && binary.LittleEndian.Uint16(head) == 0x0002 {
		return rw.readFileMeta()
	}
	// A bare data set: Orthanc stores such files as they came.
	if len(head) < 8 || binary.LittleEndian.Uint16(head) != 0x0008 {
		return fmt.Errorf("%w: no DICM prefix at byte 128, and neither file meta nor a data set in group 0008 at byte 0", ErrNotDICOM)
	}
	rw.bareDataSet(head)
	return nil
}

// bareDataSet sets the encoding of a data set without file meta, whose
// first bytes are head: Little Endian, Explicit VR when a VR follows
// the first tag.
func (rw *rewrite) bareDataSet(head []byte) {
	rw.explicit = knownVR(string(head[4:6]))
	rw.syntax = syntaxImplicitLE
	if rw.explicit {
		rw.syntax = syntaxExplicitLE
	}
}

func (rw *rewrite) readFileMeta() error {
	for {
		b, err := rw.dec.r.Peek(2)
		if err != nil || binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		tag, vr, n, err := rw.dec.header(true)
		if err != nil {
			return fmt.Errorf("file meta: %w", noEOF(err, 0x00020000))
		}
		v, err := rw.dec.value(tag, n)
		if err != nil {
			return fmt.Errorf("file meta: %w", err)
		}
		rw.meta = append(rw.meta, &element{tag: tag, vr: vr, value: v})
		if tag == tagTransferSyntax {
			rw.syntax = trimValue(v)
		}
	}
	if !ReadsSyntax(rw.syntax) {
		return fmt.Errorf("%w: %s (convert it to Explicit VR Little Endian first)", ErrUnsupportedSyntax, rw.syntax)
	}
	switch rw.syntax {
	case "":
		// Orthanc accepts such a file, its parser guessing the encoding:
		// read as a bare data set's, a Little Endian one in group 0008.
		if b, err := rw.dec.r.Peek(8); err == nil && binary.LittleEndian.Uint16(b) == 0x0008 {
			rw.bareDataSet(b)
			return nil
		}
		return fmt.Errorf("%w: the file meta has no Transfer Syntax UID", ErrMalformed)
	case syntaxImplicitLE:
		rw.explicit = false
	default:
		// Explicit VR Little Endian and every encapsulated syntax.
		rw.explicit = true
	}
	return nil
}

// start writes the preamble, the new file meta and the elements read
// before the first streamed value, once the Patient ID and the
// identifying values are known.
func (rw *rewrite) start(pending []*element) error {
	p := rw.d.p
	if err := rw.ids.collect(pending, rw.kept); err != nil {
		return err
	}
	var study string
	for _, el := range pending {
		switch el.tag {
		case tagPatientID:
			rw.patientID = trimValue(el.value)
		case tagStudyInstanceUID:
			study = strings.TrimSpace(trimValue(el.value))
		case tagSOPClassUID:
			// A leading space too is no part of a UID (Orthanc drops it):
			// " 1.2.840.10008.5.1.4.1.1.7" is Secondary Capture.
			rw.inst.SOPClassUID = strings.TrimSpace(trimValue(el.value))
		case tagSOPInstanceUID:
			rw.inst.SOPInstanceUID = strings.TrimSpace(trimValue(el.value))
			rw.inst.NewSOPInstanceUID = rw.d.k.UID(rw.inst.SOPInstanceUID)
		}
	}
	if rw.inst.SOPInstanceUID == "" {
		return fmt.Errorf("%w: the data set has no SOP Instance UID", ErrMalformed)
	}
	rw.sopClass = rw.inst.SOPClassUID
	if rw.sopClass == "" {
		// No SOP Class UID in the data set: the copy takes the file
		// meta's, so that one is checked.
		for _, m := range rw.meta {
			if m.tag == 0x00020002 {
				rw.sopClass = strings.TrimSpace(trimValue(m.value))
			}
		}
	}
	if kind := identifyingClass(rw.sopClass); kind != "" && !p.opts.IncludeBurnedIn {
		return fmt.Errorf("%w: SOP class %s (%s) commonly does", ErrBurnedIn, rw.sopClass, kind)
	}
	// Refused before anything is written.
	if err := rw.checkOverlays(); err != nil {
		return err
	}
	for _, el := range pending {
		if err := rw.checkBurnedIn(el); err != nil {
			return err
		}
	}
	longitudinal := "REMOVED"
	if p.opts.RetainDates {
		rw.inst.DateShiftDays = rw.d.k.instanceDateShift(rw.patientID, study)
		longitudinal = "MODIFIED"
	}
	rw.adds = []*element{
		{tag: tagIdentityRemoved, vr: "CS", value: pad("YES", "CS")},
		{tag: tagDeidentMethod, vr: "LO", value: pad(p.method(), "LO")},
	}
	rw.adds = append(rw.adds, p.methodCodes()...)
	rw.adds = append(rw.adds, &element{tag: tagLongitudinal, vr: "CS", value: pad(longitudinal, "CS")})
	if err := rw.writeFileMeta(); err != nil {
		return err
	}
	for _, el := range pending {
		if err := rw.writeTop(el); err != nil {
			return err
		}
	}
	return nil
}

// kept reports whether the copy keeps an attribute as it is: its values
// are then not identifying values to scrub.
func (rw *rewrite) kept(t Tag, vr string) bool { return rw.d.p.action(t, vr) == actKeep }

func (rw *rewrite) writeFileMeta() error {
	meta, err := FileMeta(rw.sopClass, rw.inst.NewSOPInstanceUID, rw.syntax)
	if err != nil {
		return err
	}
	_, err = rw.w.Write(meta)
	return err
}

// FileMeta returns the 128-byte preamble, "DICM" and a file meta group
// (PS3.10 7.1) naming sopClass, sopInstance and syntax, with stowline as
// its writer: what a data set needs in front to be a Part-10 file. It
// fails (ErrMalformed) only for a UID too long for its element.
func FileMeta(sopClass, sopInstance, syntax string) ([]byte, error) {
	// File Meta Information Version: always 00 01 (PS3.10 7.1), not
	// copied (any length) from the input.
	version := []byte{0, 1}
	meta := []*element{
		{tag: 0x00020001, vr: "OB", value: version},
		{tag: 0x00020002, vr: "UI", value: pad(sopClass, "UI")},
		{tag: tagMediaSOPInstanceUID, vr: "UI", value: pad(sopInstance, "UI")},
		{tag: tagTransferSyntax, vr: "UI", value: pad(syntax, "UI")},
		{tag: 0x00020012, vr: "UI", value: pad(implementationUID, "UI")},
		{tag: 0x00020013, vr: "SH", value: pad(implementationVersion, "SH")},
	}
	var body bytes.Buffer
	for _, m := range meta {
		if err := writeElement(&body, m, true); err != nil {
			return nil, err
		}
	}
	out := bytes.NewBuffer(make([]byte, 0, 128+4+12+body.Len()))
	out.Write(make([]byte, 128))
	out.WriteString("DICM")
	length := binary.LittleEndian.AppendUint32(nil, uint32(body.Len()))
	if err := writeElement(out, &element{tag: 0x00020000, vr: "UL", value: length}, true); err != nil {
		return nil, err
	}
	out.Write(body.Bytes())
	return out.Bytes(), nil
}

// writeAdds writes the added attributes that sort before tag.
func (rw *rewrite) writeAdds(before Tag) error {
	for len(rw.adds) > 0 && rw.adds[0].tag < before {
		if err := writeElement(rw.w, rw.adds[0], rw.explicit); err != nil {
			return err
		}
		rw.adds = rw.adds[1:]
	}
	return nil
}

// writeTop writes one top-level element de-identified, after the added
// attributes that sort before it; an added attribute replaces the
// original of the same tag.
func (rw *rewrite) writeTop(el *element) error {
	if err := rw.checkBurnedIn(el); err != nil {
		return err
	}
	if err := rw.writeAdds(el.tag); err != nil {
		return err
	}
	if len(rw.adds) > 0 && rw.adds[0].tag == el.tag {
		return nil
	}
	out := rw.transform(el, 0)
	if rw.err != nil {
		return rw.err
	}
	if out == nil {
		return nil
	}
	return writeElement(rw.w, out, rw.explicit)
}

// checkBurnedIn records Burned In Annotation, and refuses YES in it,
// in Recognizable Visual Features (a face, a tattoo) or in Specimen
// Label in Image (a slide label, with the patient's name or ID).
func (rw *rewrite) checkBurnedIn(el *element) error {
	var name string
	switch el.tag {
	case tagBurnedIn:
		rw.inst.BurnedInAnnotation = trimValue(el.value)
		name = "Burned In Annotation (0028,0301)"
	case tagRecognizable:
		name = "Recognizable Visual Features (0028,0302)"
	case tagSpecimenLabel:
		name = "Specimen Label in Image (0048,0010)"
	default:
		return nil
	}
	// Leading spaces mean nothing in a CS value either.
	if !rw.d.p.opts.IncludeBurnedIn && strings.EqualFold(strings.TrimSpace(trimValue(el.value)), "YES") {
		return fmt.Errorf("%w: %s is YES", ErrBurnedIn, name)
	}
	return nil
}

// transform applies the profile to an element and, for a sequence, to
// every element of its items (depth: nesting, 0 at the top). nil: removed.
func (rw *rewrite) transform(el *element, depth int) *element {
	a := rw.d.p.action(el.tag, el.knownVR())
	if a == actKeep && !el.seq && !el.encapsulated && unknownVR(el) && uidValues(el.value) {
		// An attribute newer than the dictionary, in Implicit VR or as UN:
		// a UID by its value, mapped as one the table does not list.
		a = actOtherUID
	}
	switch a {
	case actRemove:
		return nil
	case actEmpty:
		return &element{tag: el.tag, vr: el.vr, seq: el.seq, implicitItems: el.implicitItems}
	}
	if el.seq {
		if a != actKeep {
			return nil // a sequence where the profile expects a value
		}
		out := &element{tag: el.tag, vr: el.vr, seq: true, implicitItems: el.implicitItems}
		for _, item := range el.items {
			var kept []*element
			for _, c := range item {
				if t := rw.transform(c, depth+1); t != nil {
					kept = append(kept, t)
				}
			}
			out.items = append(out.items, kept)
		}
		return out
	}
	if el.encapsulated {
		if a != actKeep {
			return nil
		}
		return el
	}
	out := &element{tag: el.tag, vr: el.vr}
	switch a {
	case actKeep:
		if codedEntry(el.tag) || !scrubbable(el) {
			return el
		}
		if len(el.value) > maxScrub {
			rw.err = fmt.Errorf("%w: %s holds %d bytes of text, more than the %d the scrub holds", ErrTooLarge, el.tag, len(el.value), maxScrub)
			return nil
		}
		ctx := rw.dec.ctx
		if ctx == nil { // a rewrite built without one (tests)
			ctx = context.Background()
		}
		v, changed, err := rw.ids.scrubContext(ctx, el.value)
		if err != nil {
			rw.err = fmt.Errorf("deident: scrubbing %s: %w", el.tag, err)
			return nil
		}
		if !changed {
			return el
		}
		out.value = pad(string(v), "LO")
	case actUID, actOtherUID:
		vals := strings.Split(trimValue(el.value), `\`)
		for i, v := range vals {
			if u := strings.TrimSpace(v); (a == actOtherUID && strings.HasPrefix(u, "1.2.840.10008.")) || wellKnownFrame(el.tag, u) {
				continue // defined by the standard: names no instance
			}
			vals[i] = rw.d.k.UID(v)
		}
		out.value = pad(strings.Join(vals, `\`), "UI")
	case actPatientID:
		// A Patient ID in a sequence (another patient's) maps on its own.
		out.value = pad(rw.d.k.PatientID(trimValue(el.value)), "LO")
	case actPatientName:
		// The name becomes the patient's pseudonym; a name in a sequence,
		// whose Patient ID may not be at hand, is emptied.
		if depth == 0 {
			out.value = pad(rw.d.k.PatientID(rw.patientID), "PN")
		}
	case actShift:
		if v, ok := shiftDates(trimValue(el.value), rw.inst.DateShiftDays); ok {
			out.value = pad(v, "DA")
		}
	}
	return out
}

// stream copies a large top-level value through without holding it.
func (rw *rewrite) stream(tag Tag, vr string, n uint32) error {
	if tag == tagBurnedIn || tag == tagRecognizable || tag == tagSpecimenLabel {
		return fmt.Errorf("%w: %s, a CS flag, of %d bytes", ErrMalformed, tag, n)
	}
	if err := rw.writeAdds(tag); err != nil {
		return err
	}
	// As run and the element path decide: in implicit VR or UN, by the
	// dictionary's VR (a UID must be mapped, not copied).
	a := rw.d.p.action(tag, dictionaryVR(tag, vr))
	if n != undefinedLength {
		switch a {
		case actKeep:
			if err := writeHeader(rw.w, tag, vr, n, rw.explicit); err != nil {
				return err
			}
			return rw.copy(int64(n))
		case actRemove:
			return rw.copy(-int64(n))
		case actEmpty:
			if err := rw.copy(-int64(n)); err != nil {
				return err
			}
			return writeHeader(rw.w, tag, vr, 0, rw.explicit)
		}
		return fmt.Errorf("%w: %s of %d bytes cannot be mapped", ErrTooLarge, tag, n)
	}
	// Encapsulated Pixel Data: items copied as they come.
	if err := writeHeader(rw.w, tag, "OB", undefinedLength, rw.explicit); err != nil {
		return err
	}
	for {
		t, _, m, err := rw.dec.header(false)
		if err != nil {
			return noEOF(err, tag)
		}
		if t == tagSeqDelim {
			return writeHeader(rw.w, tagSeqDelim, "", 0, false)
		}
		if t != tagItem || m == undefinedLength {
			return fmt.Errorf("%w: encapsulated Pixel Data holds %s, not a fragment, at byte %d", ErrMalformed, t, rw.dec.pos)
		}
		if err := writeHeader(rw.w, tagItem, "", m, false); err != nil {
			return err
		}
		if err := rw.copy(int64(m)); err != nil {
			return err
		}
	}
}

// copy moves n bytes from the input to the output; -n skips them.
func (rw *rewrite) copy(n int64) error {
	var dst io.Writer = rw.w
	if n < 0 {
		dst, n = io.Discard, -n
	}
	c, err := io.CopyN(dst, rw.dec.r, n)
	rw.dec.pos += c
	if err == io.EOF {
		return fmt.Errorf("%w: file ends %d bytes into a value of %d at byte %d", ErrMalformed, c, n, rw.dec.pos)
	}
	return err
}

func writeHeader(w io.Writer, tag Tag, vr string, n uint32, explicit bool) error {
	b := make([]byte, 0, 12)
	b = binary.LittleEndian.AppendUint16(b, tag.Group())
	b = binary.LittleEndian.AppendUint16(b, tag.Element())
	switch {
	case tag.Group() == 0xFFFE || !explicit:
		b = binary.LittleEndian.AppendUint32(b, n)
	case longVR[vr]:
		b = append(b, vr...)
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, n)
	default:
		if n > 0xFFFF {
			return fmt.Errorf("%w: %s value of %d bytes does not fit VR %s", ErrMalformed, tag, n, vr)
		}
		b = append(b, vr...)
		b = binary.LittleEndian.AppendUint16(b, uint16(n))
	}
	_, err := w.Write(b)
	return err
}

// writeElement writes an element; sequences and items with undefined
// length, since the rewrite changes what they hold.
func writeElement(w io.Writer, el *element, explicit bool) error {
	switch {
	case el.seq:
		vr := el.vr
		if vr == "" {
			vr = "SQ"
		}
		if err := writeHeader(w, el.tag, vr, undefinedLength, explicit); err != nil {
			return err
		}
		itemsExplicit := explicit && !el.implicitItems
		for _, item := range el.items {
			if err := writeHeader(w, tagItem, "", undefinedLength, false); err != nil {
				return err
			}
			for _, c := range item {
				if err := writeElement(w, c, itemsExplicit); err != nil {
					return err
				}
			}
			if err := writeHeader(w, tagItemDelim, "", 0, false); err != nil {
				return err
			}
		}
		return writeHeader(w, tagSeqDelim, "", 0, false)
	case el.encapsulated:
		if err := writeHeader(w, el.tag, "OB", undefinedLength, explicit); err != nil {
			return err
		}
		for _, f := range el.fragments {
			if err := writeHeader(w, tagItem, "", uint32(len(f)), false); err != nil {
				return err
			}
			if _, err := w.Write(f); err != nil {
				return err
			}
		}
		return writeHeader(w, tagSeqDelim, "", 0, false)
	}
	if err := writeHeader(w, el.tag, el.vr, uint32(len(el.value)), explicit); err != nil {
		return err
	}
	_, err := w.Write(el.value)
	return err
}

// trimValue is a string value without its padding.
func trimValue(v []byte) string { return strings.TrimRight(string(v), "\x00 ") }

// pad makes a value even-length: UIDs with NUL, text with a space.
func pad(s, vr string) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		if vr == "UI" {
			b = append(b, 0)
		} else {
			b = append(b, ' ')
		}
	}
	return b
}

// shiftDates moves every DA or DT value back by days. A value that is
// not a full date (YYYYMMDD first) cannot be moved and is dropped
// (ok false): the element is then emptied.
// dateTimeRest is what may follow a DA or DT's date: a DT's time of day,
// its fraction and its UTC offset (PS3.5 Table 6.2-1).
var dateTimeRest = regexp.MustCompile(`^([0-9]{2}){0,3}(\.[0-9]{1,6})?([+-][0-9]{4})?$`)

func shiftDates(v string, days int) (string, bool) {
	if v == "" {
		return "", true
	}
	vals := strings.Split(v, `\`)
	for i, s := range vals {
		s = strings.TrimSpace(s)
		if len(s) < 8 {
			return "", false
		}
		d, err := time.Parse("20060102", s[:8])
		if err != nil || !dateTimeRest.MatchString(s[8:]) {
			// What follows the date is kept as it is: it must be a DT's
			// time and offset, not text (another date, a name).
			return "", false
		}
		vals[i] = d.AddDate(0, 0, -days).Format("20060102") + s[8:]
	}
	return strings.Join(vals, `\`), true
}

// wellKnownFrame reports whether uid, in attribute t, is a frame of
// reference the standard defines (PS3.6 Annex A): an atlas
// (1.2.840.10008.1.4.*) or UTC synchronization (1.2.840.10008.15.1.*),
// in one of the table's frame of reference attributes; or a standard
// color palette (1.2.840.10008.1.5.*) in its palette UID attributes. Mapped, the copy
// would lose what it refers to. Any other attribute's value under the
// standard's root is mapped, in case a device misuses that root for its
// own instances: a reference to such an instance must map as it does.
func wellKnownFrame(t Tag, uid string) bool {
	switch t {
	case 0x00200052, // Frame of Reference UID
		0x00200200, // Synchronization Frame of Reference UID
		0x00640003, // Source Frame of Reference UID
		0x30060024, // Referenced Frame of Reference UID
		0x300600C2: // Related Frame of Reference UID
		return strings.HasPrefix(uid, "1.2.840.10008.1.4.") || strings.HasPrefix(uid, "1.2.840.10008.15.1.")
	case 0x00281199, // Palette Color Lookup Table UID
		0x00281214: // Large Palette Color Lookup Table UID
		// A standard palette (Hot Iron, PET...): viewers know it by UID.
		return strings.HasPrefix(uid, "1.2.840.10008.1.5.")
	}
	return false
}

// unknownVR reports whether neither the file nor the dictionaries give
// el's VR: a public attribute newer than them, in Implicit VR or as UN.
func unknownVR(el *element) bool {
	vr := el.knownVR()
	return (vr == "" || vr == "UN") && !el.tag.Private() && !codedEntry(el.tag)
}

// uidValues reports whether v holds only UIDs (PS3.5 9.1): components of
// digits without leading zeros, the first 0, 1 or 2, at least three of
// them and 12 characters, so a decimal, a time or a version ("1.10.1")
// is not taken for one.
func uidValues(v []byte) bool {
	t := strings.Trim(string(v), "\x00 ")
	if t == "" {
		return false
	}
	for u := range strings.SplitSeq(t, `\`) {
		parts := strings.Split(u, ".")
		if len(u) < 12 || len(u) > 64 || len(parts) < 3 || len(parts[0]) != 1 || parts[0][0] > '2' {
			return false
		}
		for _, p := range parts {
			if p == "" || (len(p) > 1 && p[0] == '0') || strings.Trim(p, "0123456789") != "" {
				return false
			}
		}
	}
	return true
}
