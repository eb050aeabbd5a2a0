package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// Transcoder is a source that tells an instance's transfer syntax and
// converts instances (orthancapi.Client). Sources are asked only when the
// destination has a transfer syntax list.
type Transcoder interface {
	InstanceMetadata(ctx context.Context, instanceID string) (orthancapi.InstanceMetadata, error)
	OpenTranscodedInstance(ctx context.Context, instanceID, transferSyntax string) (io.ReadCloser, error)
}

// Conversion results, the label of stowline_forwarder_conversions_total.
const (
	convConverted = "converted" // read from Orthanc converted
	convFailed    = "failed"    // Orthanc could not convert it
	convLossy     = "lossy"     // not converted: lossy source, not listed
	convNoTarget  = "no_target" // not converted: the list has no lossless syntax
	// convRefused: the destination refused the instance's syntax (0xC122)
	// and it is not converted again: no list, already converted, or sent
	// in a syntax the list names.
	convRefused = "refused"
)

// metadataReads bounds the metadata requests of one study in flight.
const metadataReads = 8

// measureConversions bounds the conversions one study counts at once
// (measure): each is a full conversion in the source Orthanc.
const measureConversions = 4

// dicmOffset is where a DICOM file's "DICM" prefix sits, after the
// 128-byte preamble (PS3.10 §7.1).
const dicmOffset = 128

// syntaxPlan is how one attempt fits a study to the destination's
// transfer syntaxes: every selected instance's source syntax, and which
// were converted.
type syntaxPlan struct {
	accepted []string
	target   string // first lossless syntax of accepted; "" if none
	src      Transcoder
	byUID    map[string]planned
	// converted are the SOP Instance UIDs sent converted. The answers of
	// a study's requests, running at once, add to it (refusedSyntax).
	mu        sync.Mutex
	converted map[string]bool
}

func (p *syntaxPlan) markConverted(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.converted[uid] = true
}

func (p *syntaxPlan) wasConverted(uid string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.converted[uid]
}

type planned struct {
	id, syntax string
	size       int64
}

// planSyntaxes reads the selected instances' transfer syntaxes and
// returns the parts to send and the instances refused before sending
// (lossy sources, nothing lossless to convert to). Without a list it
// returns a nil plan and every instance as stored in Orthanc.
func (f *Forwarder) planSyntaxes(ctx context.Context, src Source, instances []orthancapi.Instance) (*syntaxPlan, []dicomweb.Part, []Instance, error) {
	if len(f.opts.TransferSyntaxes) == 0 {
		parts := make([]dicomweb.Part, len(instances))
		for i, inst := range instances {
			parts[i] = f.plainPart(src, inst)
		}
		return nil, parts, nil, nil
	}
	tc, ok := src.(Transcoder)
	if !ok {
		return nil, nil, nil, Errorf(Permanent, "%s is set but the source cannot convert instances", f.syntaxVar())
	}
	syntaxes := make([]string, len(instances))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(metadataReads)
	for i, inst := range instances {
		g.Go(func() error {
			m, err := tc.InstanceMetadata(gctx, inst.ID)
			if err != nil {
				return fmt.Errorf("read the transfer syntax of instance %s: %w", inst.ID, instanceGone(err, inst.ID))
			}
			syntaxes[i] = m.TransferSyntaxUID
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, nil, err
	}
	p := &syntaxPlan{accepted: f.opts.TransferSyntaxes, src: tc, byUID: make(map[string]planned, len(instances)), converted: map[string]bool{}}
	if i := slices.IndexFunc(p.accepted, func(ts string) bool { return !lossySyntax(ts) }); i >= 0 {
		p.target = p.accepted[i]
	}
	var parts []dicomweb.Part
	var refused []Instance
	for i, inst := range instances {
		ts := syntaxes[i]
		p.byUID[inst.SOPInstanceUID] = planned{id: inst.ID, syntax: ts, size: inst.FileSize}
		// Orthanc records the syntax of every instance it stores; one
		// without is sent as it is and the destination decides.
		if ts == "" || slices.Contains(p.accepted, ts) {
			parts = append(parts, f.plainPart(src, inst))
			continue
		}
		if result, reason := f.cannotConvert(p, ts); reason != "" {
			f.m.conversions.WithLabelValues(result).Inc()
			refused = append(refused, Instance{SOPInstanceUID: inst.SOPInstanceUID, Text: reason})
			continue
		}
		parts = append(parts, f.convertedPart(p, inst.SOPInstanceUID, inst.FileSize))
	}
	if f.opts.ExactLength {
		var failed []Instance
		var err error
		if parts, failed, err = f.measure(ctx, parts); err != nil {
			return nil, nil, nil, err
		}
		refused = append(refused, failed...)
	}
	return p, parts, refused, nil
}

// warnConversionTarget warns when the list's first lossless syntax, the
// target of every conversion, is one Orthanc does not write by itself:
// without a plugin that does, every instance to convert is refused. A
// warning, not an error: the source Orthanc may have such a plugin,
// which stowline cannot see.
func (f *Forwarder) warnConversionTarget() {
	i := slices.IndexFunc(f.opts.TransferSyntaxes, func(ts string) bool { return !lossySyntax(ts) })
	if i < 0 || orthancWrites(f.opts.TransferSyntaxes[i]) {
		return
	}
	f.log.Warn("instances are converted to the first lossless syntax of "+f.syntaxVar()+", which Orthanc does not write by itself (a plugin may, such as GDCM for JPEG 2000): without one every conversion fails; put a syntax Orthanc writes itself, such as 1.2.840.10008.1.2.1 (Explicit VR Little Endian), first",
		"variable", f.syntaxVar(), "transfer_syntax", f.opts.TransferSyntaxes[i])
}

// cannotConvert says why an instance in syntax ts cannot be converted
// for the destination, and its conversions result; "" if it can.
func (f *Forwarder) cannotConvert(p *syntaxPlan, ts string) (result, reason string) {
	switch {
	case lossySyntax(ts):
		return convLossy, fmt.Sprintf("instance is in lossy %s, which the destination's %s does not list; converting it would pass lossy pixel data off as lossless: add %s to %s if the destination accepts it",
			syntaxName(ts), f.syntaxVar(), ts, f.syntaxVar())
	case p.target == "":
		return convNoTarget, fmt.Sprintf("instance is in %s and %s lists no lossless transfer syntax to convert it to", syntaxName(ts), f.syntaxVar())
	}
	return "", ""
}

// plainPart sends the instance's file as Orthanc stores it, made a
// Part-10 file if it is not one (partTenPrefix), but to a destination that
// signs the request's length (ExactLength, AWS) and does not de-identify:
// its size must be known before the request, and telling what goes in
// front needs the file's first bytes, which would cost every instance a
// second GET (and, closed unread, its connection) for the few stored
// without file meta. Those go as stored, as they came to Orthanc. The
// part's size stays the file's: one given a file meta goes some 330
// bytes over it in the request size STOW_MAX_BYTES bounds.
func (f *Forwarder) plainPart(src Source, inst orthancapi.Instance) dicomweb.Part {
	_, deid := f.opts.Destination.(*deidentified)
	asStored := f.opts.ExactLength && !deid
	return dicomweb.Part{
		SOPInstanceUID: inst.SOPInstanceUID,
		Size:           inst.FileSize,
		Open: func(ctx context.Context) (io.ReadCloser, error) {
			if asStored {
				rc, _, err := src.OpenInstanceFile(ctx, inst.ID)
				return rc, instanceUnread(instanceGone(err, inst.ID), inst.SOPInstanceUID)
			}
			pf, err := openPlain(ctx, src, inst)
			if err != nil {
				return nil, err // not a nil *plainFile in the interface
			}
			return pf, nil
		},
	}
}

// plainFile is an instance's file read from the source, with what it
// lacked in front to be a Part-10 file. Its first bytes are read at the
// first Read, as the file's, so that a de-identifying destination reads
// them inside its rewrite.
type plainFile struct {
	ctx  context.Context // the request's, for the metadata read
	src  Source
	inst orthancapi.Instance
	rc   io.ReadCloser
	r    io.Reader // what is left to send; nil before the first Read
	err  error     // the first Read's
}

func openPlain(ctx context.Context, src Source, inst orthancapi.Instance) (*plainFile, error) {
	rc, _, err := src.OpenInstanceFile(ctx, inst.ID)
	if err != nil {
		return nil, instanceUnread(instanceGone(err, inst.ID), inst.SOPInstanceUID)
	}
	// The metadata read of a file stored without file meta is made while
	// its stream is open: it must not wait for a slot of
	// ORTHANC_MAX_CONNECTIONS, which every caller could be holding.
	return &plainFile{ctx: orthancapi.WhileHoldingBody(ctx), src: src, inst: inst, rc: rc}, nil
}

// partTenPeek is what the first Read looks at: the preamble, "DICM" and
// the group after it.
const partTenPeek = dicmOffset + 6

func (p *plainFile) Read(b []byte) (int, error) {
	if p.r != nil {
		return p.r.Read(b)
	}
	if p.err != nil {
		return 0, p.err
	}
	// The first bytes are read into b where it takes them: a Part-10
	// file, nearly every one, then goes on from the source without a
	// copy or a short read.
	head := b
	if len(head) < partTenPeek {
		head = make([]byte, partTenPeek)
	}
	// io.ReadAtLeast says io.ErrUnexpectedEOF for a file shorter than
	// the peek, whole in head, and so does net/http for an answer cut
	// before its Content-Length (an Orthanc restart, a proxy's time-out):
	// only the second is the source's, to read again, not a short file
	// to send.
	src := &readErr{r: p.rc}
	n, _ := io.ReadAtLeast(src, head, partTenPeek)
	if src.err != nil {
		p.err = fmt.Errorf("read instance %s: %w", p.inst.ID, src.err)
		return 0, p.err
	}
	head = head[:n]
	front, skip, err := partTenPrefix(p.ctx, p.src, p.inst, head)
	if err != nil {
		p.err = err
		return 0, err
	}
	switch {
	case front == nil && skip == 0 && len(b) >= partTenPeek:
		p.r = p.rc
		return n, nil
	case front == nil && skip == 0:
		p.r = io.MultiReader(bytes.NewReader(head), p.rc)
	default:
		// Rare: head may be b, which the caller owns.
		p.r = io.MultiReader(bytes.NewReader(front), bytes.NewReader(bytes.Clone(head[skip:])), p.rc)
	}
	return p.r.Read(b)
}

func (p *plainFile) Close() error { return p.rc.Close() }

// partTenPrefix returns what a file that starts with head lacks in front
// to be a PS3.10 file, which every STOW-RS part must be, and how many of
// head's bytes that replaces: Orthanc stores a bare data set (no
// preamble, no file meta) as it came and answers it back so, and a strict
// archive refuses it. The file meta names the transfer syntax and SOP
// class Orthanc read the file in (its metadata), as a conversion by
// Orthanc or the de-identifying rewrite writes one.
func partTenPrefix(ctx context.Context, src Source, inst orthancapi.Instance, head []byte) (front []byte, skip int, err error) {
	switch {
	case len(head) >= dicmOffset+4 && string(head[dicmOffset:dicmOffset+4]) == "DICM":
		// The prefix but a data set (group 0008) where the file meta
		// goes: Orthanc stores such files as they came too (as the
		// rewrite's readMeta reads them).
		if len(head) < dicmOffset+6 || binary.LittleEndian.Uint16(head[dicmOffset+4:]) != 0x0008 {
			return nil, 0, nil
		}
		skip = dicmOffset + 4
	case len(head) >= 2 && binary.LittleEndian.Uint16(head) == 0x0002:
		// File meta without the preamble: Orthanc stores such files as
		// they came too.
		return append(make([]byte, dicmOffset), "DICM"...), 0, nil
	case len(head) == 0:
		// Orthanc stores no empty file (its storage was damaged): a file
		// meta alone would go as the instance, and the destination's
		// refusal would not say why. Other damage goes as a bare data
		// set would, and the destination (or the rewrite) refuses it.
		return nil, 0, &Error{Class: Permanent, Err: &conversionError{SOPInstanceUID: inst.SOPInstanceUID,
			Err: fmt.Errorf("the file Orthanc stores for instance %s is empty: not sent", inst.ID)}}
	}
	ms, ok := src.(Transcoder)
	if !ok {
		return nil, 0, nil // a source that cannot tell (tests): sent as stored
	}
	m, err := ms.InstanceMetadata(ctx, inst.ID)
	if err != nil {
		return nil, 0, instanceUnread(instanceGone(fmt.Errorf("read the metadata of instance %s, stored without file meta: %w", inst.ID, err), inst.ID), inst.SOPInstanceUID)
	}
	if m.TransferSyntaxUID == "" || m.SOPClassUID == "" {
		// Orthanc records both for every instance it stores; without
		// them it is sent as stored and the destination decides.
		return nil, 0, nil
	}
	meta, err := deident.FileMeta(m.SOPClassUID, inst.SOPInstanceUID, m.TransferSyntaxUID)
	if err != nil {
		return nil, 0, fmt.Errorf("write a file meta for instance %s, stored without one: %w", inst.ID, err)
	}
	return meta, skip, nil
}

// unreadError is an instance whose file the source Orthanc answered with
// an error of its own (a 500 with its JSON error: the file missing from
// its storage, "does not point to a regular file"). It fails that
// instance, not the study's others: they are sent without it, and it is
// read again in the instance retry rounds. Failing the request, it
// stopped the study's requests not started yet, at every delivery, so
// the instances after it never reached the destination.
type unreadError struct {
	SOPInstanceUID string
	Err            error
}

func (e *unreadError) Error() string { return e.Err.Error() }
func (e *unreadError) Unwrap() error { return e.Err }

// instanceUnread makes Orthanc's own 500 for one instance an unreadError.
// Other failures (Orthanc down or overloaded, a proxy's answer, refused
// credentials) are about every instance and fail the attempt as before.
func instanceUnread(err error, uid string) error {
	var oe *orthancapi.Error
	if errors.As(err, &oe) && oe.StatusCode == http.StatusInternalServerError && oe.OrthancMessage != "" {
		return &unreadError{SOPInstanceUID: uid, Err: err}
	}
	return err
}

// instanceGone makes Orthanc's 404 for one instance of a listed study a
// transient failure of the attempt: the instance was deleted after the
// listing (a technician removing a wrongly sent image), not the study.
// The next attempt lists the study again and sends what it holds; taken
// for the study gone (source-missing), it was dead-lettered at once with
// the rest of it unsent.
func instanceGone(err error, instanceID string) error {
	if !errors.Is(err, orthancapi.ErrNotFound) {
		return err
	}
	return &Error{Class: Transient, Err: fmt.Errorf(
		"instance %s left the source Orthanc while its study was forwarded; the next attempt lists the study again: %w", instanceID, err)}
}

// convertedPart reads the instance from Orthanc converted to the plan's
// target. Its size is unknown (-1). Between uncompressed syntaxes it
// hardly changes (explicit VR adds at most 4 bytes an element), so an
// estimate lets Batches group such instances; one from a compressed
// syntax, whose size cannot be guessed, goes in a request of its own.
func (f *Forwarder) convertedPart(p *syntaxPlan, uid string, size int64) dicomweb.Part {
	p.markConverted(uid)
	in := p.byUID[uid]
	part := dicomweb.Part{
		SOPInstanceUID: uid,
		Size:           -1,
		Open: func(ctx context.Context) (io.ReadCloser, error) {
			return f.openConverted(ctx, p, uid, in)
		},
	}
	if uncompressedSyntax(in.syntax) && uncompressedSyntax(p.target) && size > 0 {
		part.Estimate = size + size/8 + 4096
	}
	return part
}

// cannotTranscode reports whether Orthanc answered that it cannot convert
// the instance, for good: 400 (it cannot parse the file), 501, or a 500
// that says so ("Internal error", details "Cannot transcode to transfer
// syntax: …", as Orthanc 1.10 to 1.12 answer for a source they cannot
// decode). Any other 500 may pass (a storage or database fault) and is
// retried as an Orthanc failure.
func cannotTranscode(err error) bool {
	var oe *orthancapi.Error
	if !errors.As(err, &oe) {
		return false
	}
	switch oe.StatusCode {
	case http.StatusBadRequest, http.StatusNotImplemented:
		return true
	case http.StatusInternalServerError:
		return strings.Contains(strings.ToLower(oe.OrthancDetails+" "+oe.OrthancMessage), "transcode")
	}
	return false
}

// openConverted asks Orthanc for the converted instance and checks that
// the answer starts as a DICOM file, so a failed conversion is an error
// before any of it is sent.
// No span of its own: a study can have thousands (batchReads counts them
// on its read's span).
func (f *Forwarder) openConverted(ctx context.Context, p *syntaxPlan, uid string, in planned) (io.ReadCloser, error) {
	body, err := p.src.OpenTranscodedInstance(ctx, in.id, p.target)
	err = instanceGone(err, in.id)
	if cannotTranscode(err) {
		f.m.conversions.WithLabelValues(convFailed).Inc()
		return nil, f.conversionError(uid, in.syntax, p.target, err)
	}
	if err != nil {
		return nil, instanceUnread(err, uid)
	}
	head := make([]byte, dicmOffset+4)
	// io.ReadFull says io.ErrUnexpectedEOF for a short answer, and so
	// does net/http for one cut before its Content-Length: only the
	// second is the source's (an Orthanc restart, a proxy's time-out), a
	// read to retry, not an instance that cannot be converted.
	src := &readErr{r: body}
	n, rerr := io.ReadFull(src, head)
	if rerr != nil || !bytes.Equal(head[dicmOffset:], []byte("DICM")) {
		_ = body.Close()
		if src.err != nil {
			return nil, fmt.Errorf("read converted instance %s: %w", in.id, src.err)
		}
		f.m.conversions.WithLabelValues(convFailed).Inc()
		what := "not DICOM (no DICM prefix)"
		if n == 0 {
			what = "empty"
		}
		return nil, f.conversionError(uid, in.syntax, p.target, fmt.Errorf("its answer was %s (%d bytes)", what, n))
	}
	f.m.conversions.WithLabelValues(convConverted).Inc()
	return &convertedFile{Reader: io.MultiReader(bytes.NewReader(head), body), Closer: body, syntax: p.target}, nil
}

// convertedFile is an instance file Orthanc converted to syntax.
type convertedFile struct {
	io.Reader
	io.Closer
	syntax string
}

// readErr keeps the error its reader returned other than io.EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// conversionError is an instance Orthanc could not convert. It fails
// that instance for good, not the study's other instances.
type conversionError struct {
	SOPInstanceUID string
	Err            error
}

func (e *conversionError) Error() string { return e.Err.Error() }
func (e *conversionError) Unwrap() error { return e.Err }

func (f *Forwarder) conversionError(uid, from, to string, err error) error {
	hint := ""
	if gdcmSyntax(from) {
		hint = "; Orthanc cannot decode JPEG 2000 without its GDCM plugin (Debian: orthanc-gdcm)"
	}
	list := fmt.Sprintf("; or add %s to %s if the destination accepts it", from, f.syntaxVar())
	switch _, deid := f.opts.Destination.(*deidentified); {
	case !orthancWrites(to):
		// Every conversion fails then, whatever the source: listing
		// each source syntax is not the fix.
		list = fmt.Sprintf("; Orthanc does not write %s by itself (a plugin may, such as GDCM for JPEG 2000), so without one every conversion to it fails: put a syntax Orthanc writes itself, such as Explicit VR Little Endian (1.2.840.10008.1.2.1), first among the lossless syntaxes of %s",
			syntaxName(to), f.syntaxVar())
	case deid && !deident.ReadsSyntax(from):
		// Listed, it is still converted: the rewrite does not read it.
		list = fmt.Sprintf("; a de-identifying destination is sent %s only converted, listed or not", syntaxName(from))
	}
	return &Error{Class: Permanent, Err: &conversionError{SOPInstanceUID: uid, Err: fmt.Errorf(
		"the source Orthanc could not convert the instance from %s to %s: %w%s%s",
		syntaxName(from), syntaxName(to), err, hint, list)}}
}

// measure converts each part of unknown size once to count its bytes:
// a destination that signs the request's length (AWS Signature V4)
// needs every size before the request starts. Conversions that fail
// refuse their instance. Orthanc converts each such instance twice. Any
// other error (the source failing, the instance gone) is returned: sent
// at an unknown size, the request would be refused before it left, as if
// the destination were down. A source that stops serving mid-body is
// given up after measureStall, as in a request: otherwise the study,
// kept in progress, would wait for good.
func (f *Forwarder) measure(ctx context.Context, parts []dicomweb.Part) ([]dicomweb.Part, []Instance, error) {
	failed := make([]*Instance, len(parts))
	// Traced, the reads are one "orthanc read batch" under the attempt,
	// as a request's are; the parts returned keep their own Open.
	opens := parts
	var reads *batchReads
	if f.tracer != nil && trace.SpanFromContext(ctx).IsRecording() {
		reads = &batchReads{}
		opens = reads.wrap(parts)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(measureConversions)
	for i := range parts {
		if parts[i].Size >= 0 {
			continue
		}
		g.Go(func() error {
			n, err := dicomweb.CountBytes(gctx, opens[i].Open, f.measureStall)
			var ce *conversionError
			switch {
			case errors.As(err, &ce):
				failed[i] = &Instance{SOPInstanceUID: ce.SOPInstanceUID, Text: ce.Error()}
			case err != nil:
				return fmt.Errorf("read instance %s from the source to count its converted size: %w", parts[i].SOPInstanceUID, err)
			default:
				parts[i].Size = n
			}
			return nil
		})
	}
	err := g.Wait()
	if reads != nil {
		reads.record(ctx, f.tracer)
	}
	if err != nil {
		return nil, nil, err
	}
	var out []dicomweb.Part
	var refused []Instance
	for i, p := range parts {
		if failed[i] != nil {
			refused = append(refused, *failed[i])
			continue
		}
		out = append(out, p)
	}
	return out, refused, nil
}

// refusedSyntax decides what to do with an instance the destination
// refused with 0xC122 (transfer syntax not supported): a part to send
// converted, or the reason it is refused for good.
func (f *Forwarder) refusedSyntax(p *syntaxPlan, uid string) (*dicomweb.Part, string) {
	base := Describe(dicomweb.FailureTransferSyntaxNotSupported)
	if p == nil {
		f.m.conversions.WithLabelValues(convRefused).Inc()
		f.syntaxHint.Do(func() {
			f.log.Warn("the destination refuses a transfer syntax: set "+f.syntaxVar()+" to the syntaxes it accepts, and stowline converts instances to them",
				"variable", f.syntaxVar())
		})
		return nil, base + ": set " + f.syntaxVar() + " to the transfer syntaxes the destination accepts (e.g. 1.2.840.10008.1.2.1, Explicit VR Little Endian) and stowline converts such instances"
	}
	// With the forwarder's own list (TransferSyntaxesImplied) the advice
	// is to write one, a lossless syntax the destination accepts first:
	// the target of conversions.
	setTarget := "set " + f.syntaxVar() + " to the transfer syntaxes the destination accepts, a lossless one it accepts first: instances are converted to that one"
	in, known := p.byUID[uid]
	switch {
	case !known:
	case p.wasConverted(uid):
		f.m.conversions.WithLabelValues(convRefused).Inc()
		if f.opts.TransferSyntaxesImplied {
			return nil, fmt.Sprintf("%s: the destination refused the instance converted to %s; %s", base, syntaxName(p.target), setTarget)
		}
		return nil, fmt.Sprintf("%s: the destination refused the instance converted to %s; remove that syntax from %s or put an accepted one first", base, syntaxName(p.target), f.syntaxVar())
	case in.syntax == p.target, lossySyntax(in.syntax) && slices.Contains(p.accepted, in.syntax):
	default:
		if result, reason := f.cannotConvert(p, in.syntax); reason != "" {
			f.m.conversions.WithLabelValues(result).Inc()
			return nil, base + ": " + reason
		}
		part := f.convertedPart(p, uid, in.size)
		return &part, ""
	}
	f.m.conversions.WithLabelValues(convRefused).Inc()
	switch {
	case !f.opts.TransferSyntaxesImplied:
	case lossySyntax(in.syntax):
		// Never converted: the copy would pass lossy pixel data off as
		// lossless. Listed without it, it is refused before it is sent.
		return nil, fmt.Sprintf("%s: the destination refused %s, and stowline does not convert lossy instances, so it cannot be sent there; set %s to the transfer syntaxes the destination accepts without it, and such instances are refused before they are sent", base, syntaxName(in.syntax), f.syntaxVar())
	default:
		return nil, fmt.Sprintf("%s: the destination refused %s; %s", base, syntaxName(in.syntax), setTarget)
	}
	return nil, fmt.Sprintf("%s: the destination refused %s, which %s lists; remove it from the list", base, syntaxName(in.syntax), f.syntaxVar())
}

// syntaxVar names the destination's STOW_TRANSFER_SYNTAXES variable.
func (f *Forwarder) syntaxVar() string {
	if f.opts.TransferSyntaxesVar != "" {
		return f.opts.TransferSyntaxesVar
	}
	return "STOW_TRANSFER_SYNTAXES"
}
