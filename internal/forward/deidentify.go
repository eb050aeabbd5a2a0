package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
// study's other instances are sent again.
func Deidentified(next Destination, d *deident.Deidentifier, o DeidentifyOptions) (Destination, error) {
	x := &deidentified{next: next, d: d, setting: o.Setting, exact: o.ExactLength, measureStall: dicomweb.StallTimeout}
	x.copies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "stowline_forwarder_deidentified_total",
		Help:        "Instances rewritten for a destination with STOW_DEIDENTIFY=basic, once per copy sent, by result: written, burned_in (kept out), refused (unreadable).",
		ConstLabels: prometheus.Labels{"destination": o.DestinationName},
	}, []string{"result"})
	// Every result from the start: an alert's increase() then counts the
	// first burned-in instance after a restart.
	for _, r := range []string{"written", "burned_in", "refused"} {
		x.copies.WithLabelValues(r)
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(x.copies); err != nil {
			return nil, fmt.Errorf("forward: register de-identification metrics: %w", err)
		}
	}
	return x, nil
}

// DeidentifyOptions configures Deidentified.
type DeidentifyOptions struct {
	// Setting is the variable refusals name (DESTINATION_AI_STOW_DEIDENTIFY).
	Setting string
	// ExactLength: the destination needs every size before the request
	// (AWS Signature V4), so each copy is written once to count it, then
	// again as it is sent.
	ExactLength bool
	// DestinationName labels the metric; Registerer, if set, registers it.
	DestinationName string
	Registerer      prometheus.Registerer
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
	copies  *prometheus.CounterVec
	// measureStall gives up measuring a copy (measure) once its source
	// gave no byte for it: dicomweb.StallTimeout; tests shorten it.
	measureStall time.Duration
}

// grown bounds a copy of an instance of size bytes: the rewrite adds a
// new file meta, three attributes, longer UIDs (up to 44 bytes each) and
// the delimiters of sequences rewritten with undefined length (16 bytes a
// sequence and item); the scrub and the removals only shorten it. Half
// the size again covers the objects made of references (a key object
// selection, an RT structure set: about 80 bytes an item, 30 more once
// rewritten); a file of nothing but short UIDs could grow more, and its
// request then meets the destination's 413. The forwarder cuts requests
// by it (growingDestination).
func (x *deidentified) grown(size int64) int64 { return size + size/2 + 16<<10 }

func (x *deidentified) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	k := x.d.Keyer()
	back := make(map[string]string, len(parts))
	out := make([]dicomweb.Part, len(parts))
	for i, p := range parts {
		uid := k.UID(p.SOPInstanceUID)
		back[uid] = p.SOPInstanceUID
		// The request is already cut (by grown): a size is needed only
		// where the destination signs the body (ExactLength).
		out[i] = dicomweb.Part{SOPInstanceUID: uid, Size: -1, Open: x.open(p, false)}
		if x.exact {
			n, err := x.measure(ctx, x.open(p, true))
			if err != nil {
				return nil, err
			}
			out[i].Size = n
		}
	}
	res, err := x.next.Store(ctx, out)
	mapBack(res, back)
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		mapBack(he.Result, back)
	}
	// The part a broken body names is the caller's too: send marks the
	// parts before it as perhaps stored.
	err = dicomweb.RenameBroken(err, func(uid string) (string, bool) { o, ok := back[uid]; return o, ok })
	return res, err
}

// open opens p through the rewrite. A measuring copy (ExactLength) is
// not counted as written: the copy sent after it is, so that each copy
// sent counts once. A refusal counts either way, since the instance is
// not sent after it.
func (x *deidentified) open(p dicomweb.Part, measuring bool) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := x.d.Reader(ctx, p.Open)
		if err != nil {
			return nil, err
		}
		return &refusingReader{ReadCloser: rc, uid: p.SOPInstanceUID, setting: x.setting, copies: x.copies,
			measuring: measuring}, nil
	}
}

// measure writes the copy once to count its bytes: the rewrite is
// deterministic, so the copy sent next has that size. It runs inside
// Store, holding a request place: a source that stops serving mid-body
// is given up after measureStall, as in the request itself.
func (x *deidentified) measure(ctx context.Context, open func(context.Context) (io.ReadCloser, error)) (int64, error) {
	n, err := dicomweb.CountBytes(ctx, open, x.measureStall)
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
	copies       *prometheus.CounterVec
	// measuring: the copy only measures the length (see open).
	measuring, counted bool
}

func (r *refusingReader) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	if err == io.EOF && !r.counted {
		r.counted = true
		if !r.measuring {
			r.copies.WithLabelValues("written").Inc()
		}
	}
	if errors.Is(err, deident.ErrPanicked) {
		// A bug, not this instance's fault: the study is dead-lettered
		// as a crash, with the panic, for a fixed version to replay.
		return n, &Error{Class: Crash, Err: fmt.Errorf("de-identifying instance %s: %w", r.uid, err)}
	}
	if err != nil && err != io.EOF && refusal(err) {
		what, result := "could not be de-identified", "refused"
		if errors.Is(err, deident.ErrBurnedIn) {
			what, result = "was kept out of the de-identified destination", "burned_in"
		}
		if !r.counted {
			r.counted = true
			r.copies.WithLabelValues(result).Inc()
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
	for i := range res.Warnings {
		if o, ok := back[res.Warnings[i].SOPInstanceUID]; ok {
			res.Warnings[i].SOPInstanceUID = o
		}
	}
}
