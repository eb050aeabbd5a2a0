// Package ledger records completed forwards in a JetStream key-value
// bucket: for each study of each source, the LastUpdate the forwarder last
// delivered and when. The audit (audit.go) compares it with the studies
// in Orthanc.
package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotRecorded: no completed forward of the study is recorded.
	ErrNotRecorded = errors.New("ledger: no completed forward recorded")
	// ErrForwardedBefore: Completed was told a state of the study not
	// selected whose forward the ledger records; the record is kept.
	ErrForwardedBefore = errors.New("ledger: this state of the study is recorded forwarded")
	// ErrNoBucket: the destination's bucket does not exist (no forwarder
	// of it ever ran).
	ErrNoBucket = errors.New("ledger: the destination's bucket does not exist")
)

// Record is one completed forward.
type Record struct {
	// LastUpdate is the study's Orthanc LastUpdate delivered: the earlier
	// of the event's and the one the forwarder read from Orthanc before
	// listing the study's instances (the event's with a source that cannot
	// tell). Every instance Orthanc held at that time that the
	// destination's rules select was delivered. Not the event's alone,
	// which the webhook takes as sent: a record moves back only from more
	// than a day ahead of the forwarder's clock (Completed).
	LastUpdate       string    `json:"lastUpdate"`
	StudyInstanceUID string    `json:"studyInstanceUid,omitempty"`
	ForwardedAt      time.Time `json:"forwardedAt"`
	// Stored is when the ledger's NATS server stored the record (its KV
	// entry's creation time), set by Lookup: the server's clock, as the
	// event stream's times are, where ForwardedAt is the forwarder's.
	Stored time.Time `json:"-"`
	// NotSelected: the destination's rules selected nothing of the study,
	// so nothing was sent; the study is done for the destination all the
	// same.
	NotSelected bool `json:"notSelected,omitempty"`
	// PseudonymStudyInstanceUID is the Study Instance UID the destination
	// holds the study under when it receives de-identified copies
	// (STOW_DEIDENTIFY=basic); the mapping stays in the site's own store.
	PseudonymStudyInstanceUID string `json:"pseudonymStudyInstanceUid,omitempty"`
	// Selected is the SelectionDigest of the SOP Instance UIDs the
	// destination's rules selected of this state, and Kept those of them
	// it does not hold as sent (a conflict skipped: it holds other
	// content; stored with a warning: it may have changed them). Buffer
	// mode deletes an instance for another destination only when this
	// one's rules still select what they selected then, and it is not
	// kept. A later record of the same state keeps what this one kept
	// (keepingAlso). Records of releases before 2026-12-03 have neither.
	Selected string   `json:"selected,omitempty"`
	Kept     []string `json:"kept,omitempty"`
	// KeptAll stands for a Kept list longer than maxKept (a record must
	// stay far below JetStream's message size): every instance counts as
	// kept.
	KeptAll bool `json:"keptAll,omitempty"`
	// Rules, on a NotSelected record another destination's forwarder
	// wrote before buffer mode deleted the study, identifies the rules of
	// this destination it applied: this destination trusts the record
	// only while its own rules are those.
	Rules string `json:"rules,omitempty"`
}

// maxKept bounds Record.Kept: 1000 UIDs of at most 64 characters.
const maxKept = 1000

// Outcome is what a destination holds of a study state it is done with.
type Outcome struct {
	// NotSelected: its rules selected nothing of the study; Rules, when
	// another destination's forwarder found so, identifies the rules it
	// applied (Record.Rules).
	NotSelected bool
	Rules       string
	// Selected are the instances its rules selected; Kept the SOP
	// Instance UIDs of those it does not hold as sent (Record.Kept).
	Selected []orthancapi.Instance
	Kept     []string
	// Replaced are the SOP Instance UIDs of those it replaced (a conflict
	// replaced, STOW_ON_CONFLICT=replace): it holds them as sent now, so a
	// record of this state that kept them keeps them no more.
	Replaced []string
	// StoredAsSent are the SOP Instance UIDs of those this delivery got
	// confirmed as sent and did not keep (a conflict the operator deleted
	// in the archive, then stored by a backfill): no longer kept either.
	StoredAsSent []string
}

// SelectionDigest identifies a set of instances by their SOP Instance
// UIDs, in any order.
func SelectionDigest(instances []orthancapi.Instance) string {
	sorted := make([]string, len(instances))
	for i, in := range instances {
		sorted[i] = in.SOPInstanceUID
	}
	slices.Sort(sorted)
	h := sha256.New()
	for _, u := range sorted {
		h.Write([]byte(u))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Ledger reads and writes the bucket.
type Ledger struct {
	// js reads records from the leader of the bucket's stream (latest);
	// kv writes them.
	js jetstream.JetStream
	kv jetstream.KeyValue
	// read is latest; tests give a reader answering stale first.
	read func(ctx context.Context, key string) (entry, error)
	now  func() time.Time
	log  *slog.Logger
	// pseudonym maps a Study Instance UID to the destination's; nil: the
	// destination receives the originals.
	pseudonym func(uid string) string
}

// Option configures a Ledger.
type Option func(*Ledger)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(l *Ledger) { l.now = now } }

// WithLogger logs through log rather than slog.Default().
func WithLogger(log *slog.Logger) Option { return func(l *Ledger) { l.log = log } }

// WithPseudonyms returns the ledger recording, for a destination that
// receives de-identified copies, the Study Instance UID it holds each
// study under (f maps the original). nil f: l itself.
func (l *Ledger) WithPseudonyms(f func(uid string) string) *Ledger {
	if f == nil {
		return l
	}
	c := *l
	c.pseudonym = f
	return &c
}

// New returns the ledger kept in kv (natsjs.Topology.EnsureLedger), read
// through js, kv's JetStream.
func New(js jetstream.JetStream, kv jetstream.KeyValue, opts ...Option) *Ledger {
	return newLedger(js, kv, opts)
}

// Open returns the Ledger of a destination's existing bucket, ErrNoBucket
// if there is none. It never creates or changes the bucket (the audit
// uses it).
func Open(ctx context.Context, js jetstream.JetStream, destination string, opts ...Option) (*Ledger, error) {
	kv, err := natsjs.OpenKV(ctx, js, natsjs.LedgerBucketOf(destination))
	if errors.Is(err, natsjs.ErrNotProvisioned) {
		return nil, ErrNoBucket
	}
	if err != nil {
		return nil, err
	}
	return newLedger(js, kv, opts), nil
}

func newLedger(js jetstream.JetStream, kv jetstream.KeyValue, opts []Option) *Ledger {
	l := &Ledger{js: js, kv: kv, now: time.Now, log: slog.Default()}
	l.read = l.latest
	for _, o := range opts {
		o(l)
	}
	return l
}

// Key is the bucket key of a study. Source names and Orthanc IDs are
// validated (events.ValidSource, orthancapi.ValidID) before they get
// here, so the key holds only A-Z a-z 0-9 _ - and one dot.
func Key(source, orthancStudyID string) string { return source + "." + orthancStudyID }

// maxAttempts bounds the compare-and-set retries of Completed when
// replicas record the same study at once; a pause of attemptPause times
// the attempts so far comes between two, so that they do not meet again.
const (
	maxAttempts  = 5
	attemptPause = 20 * time.Millisecond
)

// Record stores that ev's study was forwarded, without saying what of it
// (tests; a forwarder records with Completed).
func (l *Ledger) Record(ctx context.Context, ev *events.StudyStable) error {
	return l.Completed(ctx, ev, Outcome{})
}

// Completed stores that ev's study is done for the destination: forwarded,
// or not selected by its rules. A record is never moved back to an older
// LastUpdate (events may be forwarded out of order), unless it lies more
// than events.MaxLastUpdateAhead after l's clock and the older state does not: an Orthanc
// whose clock ran ahead stamped
// it, and kept, it would stand for every later change up to that date
// (the audit counting them forwarded, buffer mode never releasing the
// study). Nor is a state recorded forwarded recorded again as not
// selected (ErrForwardedBefore).
func (l *Ledger) Completed(ctx context.Context, ev *events.StudyStable, o Outcome) error {
	notSelected := o.NotSelected
	if !events.ValidSource(ev.Source) || !orthancapi.ValidID(ev.OrthancStudyID) {
		return fmt.Errorf("ledger: record %s: invalid source or study ID", ev.MsgID())
	}
	key := Key(ev.Source, ev.OrthancStudyID)
	rec := Record{LastUpdate: ev.LastUpdate, StudyInstanceUID: ev.StudyInstanceUID, ForwardedAt: l.now().UTC(), NotSelected: notSelected}
	if notSelected {
		rec.Rules = o.Rules
	}
	if len(o.Selected) > 0 && !notSelected {
		rec.Selected, rec.Kept = SelectionDigest(o.Selected), o.Kept
		if len(o.Kept) > maxKept {
			rec.Kept, rec.KeptAll = nil, true
		}
	}
	if l.pseudonym != nil && ev.StudyInstanceUID != "" && !notSelected {
		rec.PseudonymStudyInstanceUID = l.pseudonym(ev.StudyInstanceUID)
	}
	for attempt := range maxAttempts {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * attemptPause)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("ledger: write %s: %w", key, ctx.Err())
			case <-t.C:
			}
		}
		e, err := l.read(ctx, key)
		if err != nil {
			return err
		}
		write := rec
		if e.live {
			var old Record
			if json.Unmarshal(e.value, &old) == nil {
				// A newer state of the study was already forwarded. Moved
				// back only to a state within the day: while the Orthanc
				// clock is still ahead, an older attempt finishing late
				// (a retry, another replica) is no mended state.
				if old.LastUpdate > ev.LastUpdate && (!l.ahead(old.LastUpdate) || l.ahead(ev.LastUpdate)) {
					return nil
				}
				if old.LastUpdate > ev.LastUpdate {
					l.log.Warn("the ledger's record of the study is dated more than a day after this forwarder's clock (an Orthanc clock that ran ahead, or a forged event): recorded at this forward's state instead",
						"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
						"recorded_last_update", old.LastUpdate, "last_update", ev.LastUpdate)
				}
				if old.LastUpdate == ev.LastUpdate && notSelected && !old.NotSelected {
					// A redelivery after an ack not confirmed, buffer
					// mode having deleted what was forwarded: the rules
					// select none of what is left, but this state was
					// forwarded. Overwritten, the audit would take it
					// for never selected.
					return fmt.Errorf("%w: %s", ErrForwardedBefore, key)
				}
				if old.LastUpdate == ev.LastUpdate {
					write = rec.keepingAlso(old, o.Replaced, o.StoredAsSent)
				}
			}
		}
		val, err := encode(write)
		if err != nil {
			return err
		}
		before := l.js.Conn().LastError()
		if e.revision == 0 {
			_, err = l.kv.Create(ctx, key, val)
		} else {
			// Also over a delete marker (its revision).
			_, err = l.kv.Update(ctx, key, val, e.revision)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another replica recorded it first: compare again
		}
		if err != nil {
			return fmt.Errorf("ledger: write %s: %w", key, natsjs.StorageFull(l.refused(err, before)))
		}
		return nil
	}
	return fmt.Errorf("ledger: write %s: still conflicting after %d attempts", key, maxAttempts)
}

// ahead reports whether lastUpdate, an Orthanc timestamp (UTC), is more
// than events.MaxLastUpdateAhead after l's clock. No real state of a study is: once the
// Orthanc clock is mended, its later changes are stamped earlier.
func (l *Ledger) ahead(lastUpdate string) bool {
	return (&events.StudyStable{LastUpdate: lastUpdate}).LastUpdateAhead(l.now())
}

// refused is err, a write that timed out, as the refusal it was when
// NATS refused this client a publish to the bucket during the write: the
// connection's last error, set since before (the error it held when the
// write began). nats-server drops a publish the user may not make and
// says so only asynchronously, so the write times out as during a leader
// election, which callers wait through (forward's whileUnanswered). The
// last error stays until a reconnect, a permission granted since too: one
// set before the write is not this write's refusal.
func (l *Ledger) refused(err, before error) error {
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		return err
	}
	nc := l.js.Conn()
	last := nc.LastError()
	// Disconnected, the write timed out for that, whatever was refused.
	if !nc.IsConnected() || !errors.Is(last, nats.ErrPermissionViolation) || !strings.Contains(last.Error(), `"$KV.`+l.kv.Bucket()+`.`) {
		return err
	}
	// nats.go makes a new error of each refusal it is told (a pointer:
	// comparable); the same one is the refusal seen before the write.
	if last == before {
		return err
	}
	return fmt.Errorf("%w (this NATS user may not publish to $KV.%s.>: docs/nats-permissions.md)", last, l.kv.Bucket())
}

func encode(r Record) ([]byte, error) {
	val, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("ledger: encode record: %w", err)
	}
	return val, nil
}

// keepingAlso is r, which replaces old, a record of the same state of the
// study, still keeping what old kept but what r's delivery replaced or
// stored as sent: a later delivery of that state (an ack not confirmed, a
// duplicate event, a backfill) may find those instances stored already
// and keep none of them, and buffer mode would delete the originals of
// instances the destination changed; one it replaced (STOW_ON_CONFLICT
// switched from skip to replace, then a backfill) or stored as sent (the
// archive's copy deleted, then a backfill) the destination holds as sent.
func (r Record) keepingAlso(old Record, replaced, storedAsSent []string) Record {
	if r.NotSelected || old.NotSelected {
		return r // nothing was kept of a study not selected
	}
	held := make(map[string]bool, len(replaced)+len(storedAsSent))
	for _, uid := range slices.Concat(replaced, storedAsSent) {
		held[uid] = true
	}
	oldKept := slices.DeleteFunc(slices.Clone(old.Kept), func(uid string) bool { return held[uid] })
	kept := slices.Compact(slices.Sorted(slices.Values(slices.Concat(oldKept, r.Kept))))
	if r.KeptAll || old.KeptAll || len(kept) > maxKept {
		r.Kept, r.KeptAll = nil, true
		return r
	}
	r.Kept = kept
	return r
}

// Lookup returns the record of a study, ErrNotRecorded if there is none.
// It reads from the leader of the bucket's stream, as Completed does:
// buffer mode deletes a study on what it reads here.
func (l *Ledger) Lookup(ctx context.Context, source, orthancStudyID string) (Record, error) {
	key := Key(source, orthancStudyID)
	e, err := l.read(ctx, key)
	if err != nil {
		return Record{}, err
	}
	if !e.live {
		return Record{}, ErrNotRecorded
	}
	var r Record
	if err := json.Unmarshal(e.value, &r); err != nil {
		return Record{}, fmt.Errorf("ledger: decode %s: %w", key, err)
	}
	r.Stored = e.created
	return r, nil
}

// entry is the latest message of a key: revision 0 when there is none,
// live when it is a record, not a delete marker.
type entry struct {
	value    []byte
	revision uint64
	created  time.Time
	live     bool
}

// latest reads key's latest message from the leader of the bucket's
// stream ($JS.API.STREAM.MSG.GET). kv.Get sends a direct get, which any
// replica answers once it is nearly current (nats-server's
// AllowDirect, on for every bucket): a follower that has not yet applied
// a write answers with the record before it. Two destinations finishing a
// study at once then each missed the other's record and neither deleted
// it, and a study buffer mode deleted read as not recorded and was
// dead-lettered as source-missing. The leader answers only with what it
// stored, and it stores a write before acknowledging it. Each read waits
// at most the JetStream API's timeout, whatever ctx allows: until the
// other servers elect a new leader after one is lost (4 to 9 s), nobody
// answers, and the callers read again through the election (forward's
// whileUnanswered) only once a read gave up.
func (l *Ledger) latest(ctx context.Context, key string) (entry, error) {
	ctx, cancel := context.WithTimeout(ctx, l.js.Options().DefaultTimeout)
	defer cancel()
	bucket := l.kv.Bucket()
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{"$KV." + bucket + "." + key})
	if err != nil {
		return entry{}, fmt.Errorf("ledger: read %s: %w", key, err)
	}
	// stowline's JetStream has the default API prefix (natsjs.Connect).
	msg, err := l.js.Conn().RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return entry{}, fmt.Errorf("ledger: read %s: %w", key, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs"`
			Data     []byte    `json:"data"`
			Time     time.Time `json:"time"`
		} `json:"message"`
	}
	switch err := json.Unmarshal(msg.Data, &resp); {
	case err != nil:
		return entry{}, fmt.Errorf("ledger: read %s: %w", key, err)
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return entry{}, nil
	case resp.Error != nil:
		return entry{}, fmt.Errorf("ledger: read %s: %w", key, resp.Error)
	case resp.Message == nil:
		return entry{}, fmt.Errorf("ledger: read %s: %w", key, jetstream.ErrInvalidJetStreamResponse)
	}
	e := entry{value: resp.Message.Data, revision: resp.Message.Sequence, created: resp.Message.Time, live: true}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return entry{}, fmt.Errorf("ledger: read %s: %w", key, err)
		}
		// A delete or purge marker (KV-Operation), or a server's marker.
		e.live = h.Get("KV-Operation") == "" && h.Get(jetstream.MarkerReasonHeader) == ""
	}
	return e, nil
}
