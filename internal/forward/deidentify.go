package forward

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomweb"
)

// Deidentified wraps a destination so that it receives de-identified
// copies (STOW_DEIDENTIFY=basic): every part is read through the
// rewrite and sent under its keyed SOP Instance UID, and the answer is
// mapped back to the originals' UIDs, which the rest of the forwarder
// (accounting, retries, buffer mode, the ledger) keeps using. An
// instance the rewrite refuses (not DICOM, an encoding it cannot read,
// burned-in text) fails alone and for good, naming the reason; the
// study's other instances are sent again. exact: the destination needs
// every size before the request (ExactLength, AWS Signature V4), so each
// copy is written once to count it, then again as it is sent.
func Deidentified(next Destination, d *deident.Deidentifier, settingVar string, exact bool) Destination {
	return &deidentified{next: next, d: d, setting: settingVar, exact: exact}
}

// StudyPseudonym returns how d maps a Study Instance UID when it is a
// de-identifying destination (Deidentified), nil otherwise: the ledger
// records what each study was sent as.
func StudyPseudonym(d Destination) func(uid string) string {
	if x, ok := d.(*deidentified); ok {
		return x.d.Keyer().UID
	}
	return nil
}

type deidentified struct {
	next    Destination
	d       *deident.Deidentifier
	setting string
	exact   bool
}

// deidentMargin bounds what the rewrite adds to an instance: a new file
// meta, three attributes, longer UIDs and the delimiters of sequences
// rewritten with undefined length (16 bytes a sequence and item).
func deidentMargin(size int64) int64 { return size/8 + 16<<10 }

func (x *deidentified) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	k := x.d.Keyer()
	back := make(map[string]string, len(parts))
	out := make([]dicomweb.Part, len(parts))
	for i, p := range parts {
		uid := k.UID(p.SOPInstanceUID)
		back[uid] = p.SOPInstanceUID
		out[i] = dicomweb.Part{SOPInstanceUID: uid, Size: -1, Open: x.open(p)}
		switch {
		case x.exact:
			n, err := x.measure(ctx, out[i])
			if err != nil {
				return nil, err
			}
			out[i].Size = n
		case p.Size > 0:
			out[i].Estimate = p.Size + deidentMargin(p.Size)
		case p.Estimate > 0:
			out[i].Estimate = p.Estimate + deidentMargin(p.Estimate)
		}
	}
	res, err := x.next.Store(ctx, out)
	mapBack(res, back)
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		mapBack(he.Result, back)
	}
	return res, err
}

func (x *deidentified) open(p dicomweb.Part) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := p.Open(ctx)
		if err != nil {
			return nil, err
		}
		return &refusingReader{ReadCloser: x.d.Reader(rc), uid: p.SOPInstanceUID, setting: x.setting}, nil
	}
}

// measure writes the copy once and counts it: the rewrite is
// deterministic, so the copy sent next has that size.
func (x *deidentified) measure(ctx context.Context, p dicomweb.Part) (int64, error) {
	rc, err := p.Open(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		return 0, fmt.Errorf("measure the de-identified copy: %w", err)
	}
	return n, nil
}

// refusingReader turns the rewrite's refusals into the permanent failure
// of one instance (conversionError: the forwarder refuses it and sends
// the rest of its request again). Errors of the source stay as they are.
type refusingReader struct {
	io.ReadCloser
	uid, setting string
}

func (r *refusingReader) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	if err != nil && err != io.EOF && refusal(err) {
		what := "could not be de-identified"
		if errors.Is(err, deident.ErrBurnedIn) {
			what = "was kept out of the de-identified destination"
		}
		return n, &Error{Class: Permanent, Err: &conversionError{SOPInstanceUID: r.uid,
			Err: fmt.Errorf("the instance %s (%s): %w", what, r.setting, err)}}
	}
	return n, err
}

func refusal(err error) bool {
	for _, e := range []error{deident.ErrNotDICOM, deident.ErrMalformed, deident.ErrUnsupportedSyntax, deident.ErrTooLarge, deident.ErrBurnedIn} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func mapBack(res *dicomweb.Result, back map[string]string) {
	if res == nil {
		return
	}
	for i := range res.Stored {
		if o, ok := back[res.Stored[i].SOPInstanceUID]; ok {
			res.Stored[i].SOPInstanceUID = o
		}
	}
	for _, l := range [][]dicomweb.FailedInstance{res.Failed, res.OtherFailures} {
		for i := range l {
			if o, ok := back[l[i].SOPInstanceUID]; ok {
				l[i].SOPInstanceUID = o
			}
		}
	}
}
