// The verifying audit (`forwarder audit --verify`) asks the destination
// itself, over QIDO-RS, whether it holds every instance of the studies the
// ledger records as forwarded to it: the ledger says what stowline
// believes, the archive's listing what it holds.

package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// Forwarded calls fn for each study the ledger records as forwarded (not
// merely not selected) at or after since, in the ledger's order. An error
// of fn stops the walk. The records come in one watch of the bucket, not
// one read a key: a ledger of millions of studies is read in one stream.
func (l *Ledger) Forwarded(ctx context.Context, since time.Time, fn func(source, orthancStudyID string, r Record) error) error {
	w, err := l.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("ledger: read: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return fmt.Errorf("ledger: read: %w", ctx.Err())
		case got, open := <-w.Updates():
			if !open {
				// nats.go closes the channel when ctx ends or the
				// connection closes: a partial walk must not pass for
				// a whole one.
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("ledger: read: %w", err)
				}
				return errors.New("ledger: read: the watch ended before the last record")
			}
			if got == nil {
				return nil // every record read
			}
			e = got
		}
		source, id, ok := strings.Cut(e.Key(), ".")
		if !ok {
			continue
		}
		var r Record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return fmt.Errorf("ledger: decode %s: %w", e.Key(), err)
		}
		if r.NotSelected || r.ForwardedAt.Before(since) {
			continue
		}
		if err := fn(source, id, r); err != nil {
			return err
		}
	}
}

// VerifySource is what the verifying audit reads from an Orthanc source.
type VerifySource interface {
	Study(ctx context.Context, studyID string) (orthancapi.Study, error)
	StudyInstances(ctx context.Context, studyID string) ([]orthancapi.Instance, error)
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	Destination string
	Ledger      *Ledger
	// Since: only forwards recorded at or after it are checked.
	Since time.Time
	// SourceFor returns the Orthanc of a source name.
	SourceFor func(source string) (VerifySource, error)
	// Select, if set, applies the destination's routing rules: what of
	// the study was for it.
	Select func(ctx context.Context, source, studyID string, instances []orthancapi.Instance) ([]orthancapi.Instance, error)
	// Listed asks the destination for the SOP Instance UIDs of a study
	// (QIDO-RS, *dicomweb.Client's StudyInstanceUIDs): want names the
	// instances checked for, as the destination names them, or (a study
	// under an earlier key's pseudonyms) only their number.
	Listed func(ctx context.Context, studyInstanceUID string, want dicomweb.Expected) ([]string, error)
	// Keyed, if set, is how the destination names a UID: a
	// de-identifying destination (STOW_DEIDENTIFY=basic) holds studies
	// and instances under their keyed UIDs, and is asked and matched
	// under those.
	Keyed func(uid string) string
	// Publish queues an event for the destination alone; required to
	// enqueue.
	Publish func(ctx context.Context, ev *events.StudyStable, msgID string) (*jetstream.PubAck, error)
	Logger  *slog.Logger
}

// MissingInstance is an instance the destination does not list.
type MissingInstance struct {
	OrthancInstanceID string `json:"orthancInstanceId"`
	SOPInstanceUID    string `json:"sopInstanceUid"`
}

// VerifyFinding is a forwarded study of which the destination lacks
// instances. It holds IDs and UIDs only, never patient data.
type VerifyFinding struct {
	Destination      string            `json:"destination"`
	Source           string            `json:"source"`
	OrthancStudyID   string            `json:"orthancStudyId"`
	StudyInstanceUID string            `json:"studyInstanceUid"`
	LastUpdate       string            `json:"lastUpdate"`
	ForwardedAt      time.Time         `json:"forwardedAt"`
	Instances        int               `json:"instances"`
	Missing          []MissingInstance `json:"missing"`
	Enqueued         bool              `json:"enqueued,omitempty"`
	Problem          string            `json:"problem,omitempty"`
}

// VerifySummary counts what a verifying audit saw.
type VerifySummary struct {
	// Studies forwarded within the window; Verified, those the destination
	// lists in full.
	Studies  int `json:"studies"`
	Verified int `json:"verified"`
	// Gone: no longer in the source (buffer mode deleted them), so what
	// was sent is unknown; Changed: changed since the forward (the plain
	// audit reports those).
	Gone    int `json:"gone"`
	Changed int `json:"changed"`
	// Findings counts studies with missing instances, MissingInstances
	// the instances.
	Findings         int `json:"findings"`
	MissingInstances int `json:"missingInstances"`
	Enqueued         int `json:"enqueued"`
	NotEnqueued      int `json:"notEnqueued,omitempty"`
	// OtherKey counts the studies forwarded under other pseudonyms than
	// the destination's key gives now (the key was rotated since): they
	// are checked by the number of instances the destination lists under
	// the recorded pseudonym. OtherKeyShort counts those it lists fewer
	// of: they are not re-forwarded, which would send them as new studies
	// under new pseudonyms.
	OtherKey      int `json:"otherKey,omitempty"`
	OtherKeyShort int `json:"otherKeyShort,omitempty"`
	// Capped counts the studies not verifiable in full: the destination
	// does not list some instances, and a listing reached its search
	// cap (dicomweb.ErrListingCapped: AWS HealthImaging lists 10,000
	// records at most), past which it may hold them. They are no
	// findings and never enqueued: forwarded again, they would be as
	// unverifiable.
	Capped int `json:"capped,omitempty"`
	// NotVerified counts the studies that could not be checked: their
	// source could not be read, the destination not asked, or the routing
	// rules failed on them. Verify's error says why.
	NotVerified int `json:"notVerified,omitempty"`
}

// Verify checks the destination's forwarded studies against its QIDO-RS
// listing and calls report for each study it lacks instances of; with
// enqueue it first publishes the study's event for that destination
// alone, under an ID of its own (the original would be dropped as a
// duplicate).
func Verify(ctx context.Context, o VerifyOptions, enqueue bool, report func(VerifyFinding) error) (VerifySummary, error) {
	var sum VerifySummary
	if enqueue && o.Publish == nil {
		return sum, errors.New("audit: a publisher is required to enqueue")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o.Logger = log
	// A source that cannot be read (down, refusing the audit, or taken
	// out of ORTHANC_SOURCES since its forwards) is not asked again; its
	// other studies are counted as not verified, and the others' are
	// verified all the same.
	unread := map[string]*unreadSource{}
	var unreadOrder []string
	// Likewise a study that cannot be checked (a QIDO request failing, a
	// rule failing on it) is counted and the walk goes on: a 30-day audit
	// must not end at the first bad study. The first few errors are kept
	// for the returned error; the log has them all.
	// So many failing in a row say the destination (or the way to it)
	// is down: asked study after study, each waiting out its time-out,
	// a long window would take hours to say so.
	const keptStudyErrors, failedInARow = 10, 20
	var studyErrs []error
	failed, inARow := 0, 0
	err := o.Ledger.Forwarded(ctx, o.Since, func(source, id string, rec Record) error {
		sum.Studies++
		if u, ok := unread[source]; ok {
			u.skipped++
			return nil
		}
		f, err := verifyStudy(ctx, o, source, id, rec, &sum)
		if se, ok := errors.AsType[*sourceError](err); ok && ctx.Err() == nil {
			log.Error("source not verified (its studies are skipped); the other sources' studies are verified", "source", source, "err", se.err)
			unread[source] = &unreadSource{err: se.err, skipped: 1}
			unreadOrder = append(unreadOrder, source)
			return nil
		}
		if err != nil && ctx.Err() == nil {
			log.Error("study not verified; the others are", "source", source, "orthanc_study_id", id, "err", err)
			failed++
			if len(studyErrs) < keptStudyErrors {
				studyErrs = append(studyErrs, err)
			}
			if inARow++; inARow == failedInARow {
				return fmt.Errorf("%d studies in a row could not be verified: stopped, the destination or the way to it looks down; the summary counts the studies read until then", failedInARow)
			}
			return nil
		}
		inARow = 0
		if err != nil || f == nil {
			return err
		}
		sum.Findings++
		sum.MissingInstances += len(f.Missing)
		if enqueue {
			publishVerifyFinding(ctx, o, f, log)
			if f.Enqueued {
				sum.Enqueued++
			} else {
				sum.NotEnqueued++
			}
		}
		return report(*f)
	})
	errs := []error{err}
	for _, source := range unreadOrder {
		u := unread[source]
		sum.NotVerified += u.skipped
		errs = append(errs, fmt.Errorf("source %s: %d forwarded studies not verified: %w", source, u.skipped, u.err))
	}
	errs = append(errs, studyErrs...)
	sum.NotVerified += failed
	if failed > len(studyErrs) {
		errs = append(errs, fmt.Errorf("%d more studies not verified (see the log)", failed-len(studyErrs)))
	}
	return sum, errors.Join(errs...)
}

// unreadSource is a source Verify could not read: the first error, and
// the studies it skipped.
type unreadSource struct {
	err     error
	skipped int
}

// sourceError is verifyStudy failing to read the study's source, not the
// destination.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func verifyStudy(ctx context.Context, o VerifyOptions, source, id string, rec Record, sum *VerifySummary) (*VerifyFinding, error) {
	src, err := o.SourceFor(source)
	if err != nil {
		return nil, &sourceError{fmt.Errorf("study %s of %s: %w", id, source, err)}
	}
	st, err := src.Study(ctx, id)
	if errors.Is(err, orthancapi.ErrNotFound) {
		sum.Gone++
		return nil, nil
	}
	if err != nil {
		return nil, &sourceError{fmt.Errorf("study %s of %s: %w", id, source, err)}
	}
	if st.LastUpdate != rec.LastUpdate {
		sum.Changed++
		return nil, nil
	}
	instances, err := src.StudyInstances(ctx, id)
	if errors.Is(err, orthancapi.ErrNotFound) {
		// Deleted since it was read: buffer mode deletes a study as soon
		// as it is forwarded, while the audit runs.
		sum.Gone++
		return nil, nil
	}
	if err != nil {
		return nil, &sourceError{fmt.Errorf("study %s of %s: list instances: %w", id, source, err)}
	}
	if o.Select != nil {
		instances, err = o.Select(ctx, source, id, instances)
		if errors.Is(err, orthancapi.ErrNotFound) {
			// Deleted while a rule read its instances' metadata.
			sum.Gone++
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("study %s of %s: routing rules: %w", id, source, err)
		}
	}
	keyed := o.Keyed
	if keyed == nil {
		keyed = func(uid string) string { return uid }
	}
	if p := rec.PseudonymStudyInstanceUID; p != "" && p != keyed(st.StudyInstanceUID) {
		return nil, verifyOtherKey(ctx, o, source, id, p, len(instances), sum)
	}
	// The UIDs looked for, not their number: the destination may hold
	// others of the study (a routing rule sent one series), listed
	// before them on pages it caps below the size asked.
	want := dicomweb.Expected{UIDs: make([]string, len(instances))}
	for i, in := range instances {
		want.UIDs[i] = keyed(in.SOPInstanceUID)
	}
	uids, err := o.Listed(ctx, keyed(st.StudyInstanceUID), want)
	capped := errors.Is(err, dicomweb.ErrListingCapped)
	if err != nil && !capped {
		return nil, fmt.Errorf("study %s of %s: ask the destination: %w", id, source, err)
	}
	listed := make(map[string]bool, len(uids))
	for _, u := range uids {
		listed[u] = true
	}
	f := &VerifyFinding{Destination: o.Destination, Source: source, OrthancStudyID: id, StudyInstanceUID: st.StudyInstanceUID,
		LastUpdate: st.LastUpdate, ForwardedAt: rec.ForwardedAt, Instances: len(instances)}
	for i, in := range instances {
		if !listed[want.UIDs[i]] {
			f.Missing = append(f.Missing, MissingInstance{OrthancInstanceID: in.ID, SOPInstanceUID: in.SOPInstanceUID})
		}
	}
	if len(f.Missing) == 0 {
		sum.Verified++
		return nil, nil
	}
	if capped {
		sum.Capped++
		o.Logger.Warn("study not verifiable in full: the destination does not list some instances, and its search cannot list every instance of the study (a series beyond its search cap); not reported missing, not enqueued",
			"destination", o.Destination, "source", source, "orthanc_study_id", id, "instances", len(instances), "unlisted", len(f.Missing), "err", err)
		return nil, nil
	}
	return f, nil
}

// verifyOtherKey checks a study the destination holds under pseudonyms
// of another key than today's (the key was rotated after its forward, as
// docs/deidentification.md allows): it is asked for the pseudonym the
// ledger recorded, and its instances, named by the old key, can only be
// counted. One it lists fewer of is reported in the log and the summary,
// never re-forwarded: the resent study would arrive under new pseudonyms
// as another study.
func verifyOtherKey(ctx context.Context, o VerifyOptions, source, id, pseudonym string, instances int, sum *VerifySummary) error {
	uids, err := o.Listed(ctx, pseudonym, dicomweb.Expected{Count: instances})
	capped := errors.Is(err, dicomweb.ErrListingCapped)
	if err != nil && !capped {
		return fmt.Errorf("study %s of %s: ask the destination: %w", id, source, err)
	}
	sum.OtherKey++
	if len(uids) >= instances {
		sum.Verified++
		return nil
	}
	if capped {
		sum.Capped++
		o.Logger.Warn("study forwarded under an earlier de-identification key not verifiable in full: the destination's search cannot list every instance of the study (a series beyond its search cap)",
			"destination", o.Destination, "source", source, "orthanc_study_id", id, "instances", instances, "listed", len(uids), "err", err)
		return nil
	}
	sum.OtherKeyShort++
	o.Logger.Warn("study forwarded under an earlier de-identification key lacks instances at the destination; not re-forwarded (it would arrive as a new study under new pseudonyms)",
		"destination", o.Destination, "source", source, "orthanc_study_id", id, "pseudonym_study_instance_uid", pseudonym,
		"instances", instances, "listed", len(uids))
	return nil
}

func publishVerifyFinding(ctx context.Context, o VerifyOptions, f *VerifyFinding, log *slog.Logger) {
	ev, err := events.NewStudyStable(f.Source, f.OrthancStudyID, f.StudyInstanceUID, f.LastUpdate)
	log = log.With("destination", f.Destination, "orthanc_study_id", f.OrthancStudyID, "study_instance_uid", f.StudyInstanceUID)
	if err != nil {
		f.Problem = "the event would be invalid: " + err.Error()
		log.Error("study not enqueued", "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msgID := ev.MsgID() + "/verify/" + f.Destination + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ack, err := o.Publish(pctx, ev, msgID)
	if err != nil {
		f.Problem = err.Error()
		log.Error("study not enqueued", "err", err)
		return
	}
	f.Enqueued = true
	log.Info("study enqueued by the verifying audit", "missing", len(f.Missing), "stream_seq", ack.Sequence)
}
