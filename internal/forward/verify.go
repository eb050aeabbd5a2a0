package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/tracing"
)

// Verifier lists the instances of a study a destination holds
// (QIDO-RS, *dicomweb.Client): STOW_VERIFY=qido.
type Verifier interface {
	StudyInstanceUIDs(ctx context.Context, studyInstanceUID string, want dicomweb.Expected) ([]string, error)
}

// Verification results, the result label of the verifications metric.
const (
	verifyVerified = "verified"
	verifyMissing  = "missing"
	verifyError    = "error"
	verifyCapped   = "capped"
)

// maxMissingNamed bounds the SOP Instance UIDs a failure reason names.
const maxMissingNamed = 3

// verify asks the destination which instances of the study it holds and
// returns the parts it does not list. A STOW-RS answer says what the
// server meant to store; the archive's own listing is what it holds.
// A de-identifying destination (Deidentified) holds the study and its
// instances under their keyed UIDs: it is asked for the study's
// pseudonym, and what it lists is mapped back to the UIDs sent.
// A listing capped by the destination's search limit (AWS HealthImaging,
// dicomweb.ErrListingCapped) cannot show the instances past it: those
// are taken as stored on the strength of the STOW-RS answer, not
// missing (sent again at every delivery, then dead-lettered, though
// held).
func (f *Forwarder) verify(ctx context.Context, studyInstanceUID string, sent []dicomweb.Part, rep *Report, log *slog.Logger) ([]dicomweb.Part, error) {
	vctx, span := f.startSpan(ctx, "verify study (QIDO-RS)", trace.SpanKindClient)
	defer endPanicked(span)
	start := time.Now()
	listed, n, err := f.listed(vctx, f.opts.Verifier, studyInstanceUID, sent)
	took := time.Since(start)
	rep.Verify += took
	f.m.verifyDuration.Observe(took.Seconds())
	if errors.Is(err, dicomweb.ErrListingCapped) {
		endSpan(span, nil)
		f.m.verifications.WithLabelValues(verifyCapped).Inc()
		log.Warn("destination's search cannot list every instance of the study (a series beyond its search cap): those it does not list are taken as stored on its STOW-RS answer",
			"instances", len(sent), "listed", n, "unlisted", len(sent)-countListed(listed, sent), "err", err)
		return nil, nil
	}
	if err != nil {
		f.m.verifications.WithLabelValues(verifyError).Inc()
		err = fmt.Errorf("verify study %s at the destination (QIDO-RS): %w", studyInstanceUID, err)
		endSpan(span, err)
		return nil, err
	}
	var missing []dicomweb.Part
	for _, p := range sent {
		if !listed[p.SOPInstanceUID] {
			missing = append(missing, p)
		}
	}
	if span.IsRecording() {
		span.SetAttributes(tracing.Instances.Int(len(sent)), tracing.Listed.Int(n))
	}
	endSpan(span, nil)
	if len(missing) > 0 {
		f.m.verifications.WithLabelValues(verifyMissing).Inc()
		f.m.verifyMissing.Add(float64(len(missing)))
	} else {
		f.m.verifications.WithLabelValues(verifyVerified).Inc()
	}
	return missing, nil
}

// countListed is how many of sent listed names.
func countListed(listed map[string]bool, sent []dicomweb.Part) int {
	n := 0
	for _, p := range sent {
		if listed[p.SOPInstanceUID] {
			n++
		}
	}
	return n
}

// listed asks v which of sent the destination lists in the study (by
// their original UIDs: a de-identifying destination is asked for the
// study's pseudonym, and what it lists mapped back), and how many
// instances it listed in all. The listing goes on until it names every
// one sent (or ends): the destination may hold others of the study, listed
// first. A capped listing (dicomweb.ErrListingCapped) returns what it
// listed with the error.
func (f *Forwarder) listed(ctx context.Context, v Verifier, studyInstanceUID string, sent []dicomweb.Part) (map[string]bool, int, error) {
	asked, back := studyInstanceUID, map[string]string(nil)
	want := dicomweb.Expected{UIDs: make([]string, 0, len(sent))}
	if keyed := StudyPseudonym(f.opts.Destination); keyed != nil {
		asked = keyed(studyInstanceUID)
		back = make(map[string]string, len(sent))
		for _, p := range sent {
			k := keyed(p.SOPInstanceUID) // an HMAC: once an instance
			back[k] = p.SOPInstanceUID
			want.UIDs = append(want.UIDs, k)
		}
	} else {
		for _, p := range sent {
			want.UIDs = append(want.UIDs, p.SOPInstanceUID)
		}
	}
	uids, err := v.StudyInstanceUIDs(ctx, asked, want)
	if err != nil && !errors.Is(err, dicomweb.ErrListingCapped) {
		return nil, 0, err
	}
	listed := make(map[string]bool, len(uids))
	for _, u := range uids {
		if back != nil {
			orig, ok := back[u]
			if !ok {
				continue // not one this forwarder sent for the study
			}
			u = orig
		}
		listed[u] = true
	}
	return listed, len(uids), err
}

// missingError is the transient failure of a study whose destination still
// does not list some instances it confirmed, after the instance rounds.
func missingError(missing []dicomweb.Part, total, rounds int) error {
	first := make([]string, 0, maxMissingNamed)
	for _, p := range missing[:min(len(missing), maxMissingNamed)] {
		first = append(first, p.SOPInstanceUID)
	}
	return &Error{Class: Transient, Err: fmt.Errorf("destination does not list %d of %d instances it confirmed, after %d rounds (STOW_VERIFY=qido; first: %s)",
		len(missing), total, rounds, strings.Join(first, ", "))}
}
