// Package events defines the event stowline moves through NATS JetStream:
// "this Orthanc study is stable and must be forwarded": its wire format,
// its validation and its de-duplication ID. Where it is stored is
// internal/natsjs.
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/orthancapi"
)

// TypeStudyStable is the only event type of version 1.
const TypeStudyStable = "orthanc.study.stable"

// Version is the event schema version this build writes and reads.
const Version = 1

// lastUpdateLayout is the layout of Orthanc's LastUpdate metadata: UTC,
// written without a zone (Orthanc 1.10 and 1.12 alike, whatever TZ).
const lastUpdateLayout = "20060102T150405"

// MaxLastUpdateAhead is how far after a clock an Orthanc LastUpdate may
// lie and still be taken for a real state of the study: the ingest warns
// of an event past it, and a ledger record past it moves back.
const MaxLastUpdateAhead = 24 * time.Hour

// LastUpdateAhead reports whether e.LastUpdate lies more than
// MaxLastUpdateAhead after now (an Orthanc clock ahead, or a forged
// event); false when it is no Orthanc timestamp.
func (e *StudyStable) LastUpdateAhead(now time.Time) bool {
	t, err := e.LastUpdateTime()
	return err == nil && t.Sub(now) > MaxLastUpdateAhead
}

// LastUpdateTime is e.LastUpdate as a time (UTC), for a Validated event.
func (e *StudyStable) LastUpdateTime() (time.Time, error) {
	t, err := time.Parse(lastUpdateLayout, e.LastUpdate)
	if err != nil {
		return time.Time{}, fmt.Errorf("lastUpdate: %w", err)
	}
	return t, nil
}

// StudyStable says that a study in an Orthanc source became stable and must
// be forwarded. Orthanc IDs and UIDs only: never patient data.
type StudyStable struct {
	Type             string    `json:"type"`
	Version          int       `json:"version"`
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid"`
	LastUpdate       string    `json:"lastUpdate"`
	ReceivedAt       time.Time `json:"receivedAt,omitzero"`
	// Priority picks the lane the forwarders take the study in (stat,
	// routine or low); empty is routine. It is not part of MsgID: the
	// same study announced twice with two priorities is stored once.
	Priority Priority `json:"priority,omitempty"`
}

// Priority is an event's lane: stat studies are pulled before routine
// ones, routine before low (backfills, replays); see docs/priority-lanes.md.
type Priority string

// The priorities, highest first. The empty priority is routine.
const (
	PriorityStat    Priority = "stat"
	PriorityRoutine Priority = "routine"
	PriorityLow     Priority = "low"
)

// Priorities lists the priorities, highest first.
var Priorities = []Priority{PriorityStat, PriorityRoutine, PriorityLow}

// ParsePriority reads a priority as an operator or a script writes it;
// the empty string is routine.
func ParsePriority(s string) (Priority, error) {
	switch p := Priority(s); p {
	case "":
		return PriorityRoutine, nil
	case PriorityStat, PriorityRoutine, PriorityLow:
		return p, nil
	}
	return "", fmt.Errorf("priority %q: want stat, routine or low", s)
}

// Lane is the priority with the empty one read as routine.
func (p Priority) Lane() Priority {
	if p == "" {
		return PriorityRoutine
	}
	return p
}

// NewStudyStable returns the event of a stable study of source, received
// now, as the Lua script would post it; the error names the first field
// that would make it invalid. Every publisher builds its event here, so
// that they all write the same event and de-duplicate with each other.
func NewStudyStable(source, orthancStudyID, studyInstanceUID, lastUpdate string) (*StudyStable, error) {
	ev := &StudyStable{
		Type:             TypeStudyStable,
		Version:          Version,
		Source:           source,
		OrthancStudyID:   orthancStudyID,
		StudyInstanceUID: studyInstanceUID,
		LastUpdate:       lastUpdate,
		ReceivedAt:       time.Now().UTC(),
	}
	return ev, ev.Validate()
}

// errInvalid is matched (errors.Is) by every validation error.
var errInvalid = errors.New("invalid event")

// fieldError names the JSON field that is missing or malformed.
type fieldError struct {
	Field   string
	Problem string
}

func (e *fieldError) Error() string { return fmt.Sprintf("field %q: %s", e.Field, e.Problem) }

// Is makes errors.Is(err, errInvalid) true for every fieldError.
func (e *fieldError) Is(target error) bool { return target == errInvalid }

// newerVersionError is the fieldError of a version above this build's.
type newerVersionError struct{ *fieldError }

func newerVersion(v int) error {
	return newerVersionError{&fieldError{"version", fmt.Sprintf("version %d, newer than this build's %d", v, Version)}}
}

func (e newerVersionError) Is(target error) bool { return target == ErrNewerVersion }
func (e newerVersionError) Unwrap() error        { return e.fieldError }

// ErrNewerVersion matches (errors.Is) an event written by a newer build:
// in a rolling upgrade an older forwarder leaves it to a newer one.
var ErrNewerVersion = errors.New("event of a newer version")

// The grammars below are checked byte by byte rather than with regular
// expressions: the ingest validates every webhook event, so they are on its
// hot path. The regular expression each function implements is in its
// comment, and TestValidatorsMatchTheirGrammar holds them to it. The
// Orthanc study ID is checked by orthancapi.ValidID, which owns that
// grammar.

// ValidSource reports whether name can be used as a source name. It
// becomes a NATS subject token and a KV key: no dots, wildcards or
// whitespace (^[A-Za-z0-9_-]{1,64}$).
func ValidSource(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(alnum(c) || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// PlausibleUID reports whether uid is safe to carry as a StudyInstanceUID:
// 1 to maxUIDLength printable ASCII characters other than '/', '\', '%',
// '*' and '>'. It is much looser than a DICOM UID (PS3.5 §9.1: at most
// 64 characters, numeric components without leading zeros) on purpose:
// Orthanc stores studies whose UIDs break PS3.5 (one shared sample has 64
// hex digits; Orthanc 1.10 and 1.12 take 74 characters, or a '+'), and
// refusing their events would lose the study: the destination decides
// whether it takes them. What it refuses could steer something: a path
// ('/', '\', '%'; internal/dicomweb escapes the rest of a UID it puts
// in a URL), a NATS wildcard, whitespace or a control character in a
// log line, or an unbounded value. Neither a subject nor a key is built
// from it (see docs/uids.md).
// (^[!-$&-)+-.0-=?-\[\]-~]{1,256}$: 0x21-0x7e without % * / > \)
func PlausibleUID(uid string) bool {
	if uid == "" || len(uid) > maxUIDLength {
		return false
	}
	for i := 0; i < len(uid); i++ {
		if c := uid[i]; c < '!' || c > '~' || c == '/' || c == '\\' || c == '%' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

// maxUIDLength bounds PlausibleUID: four times PS3.5's 64, for UIDs
// that overrun it (a root and a timestamp appended), while a value past
// it is no UID of any device.
const maxUIDLength = 256

// ValidUID reports whether s is a DICOM UID as PS3.5 §9.1 defines it: 1
// to 64 characters, dot-separated numeric components, none empty and none
// with a leading zero. Stricter than PlausibleUID: for values stowline
// writes or must recognise as UIDs (transfer syntaxes, what redaction
// keeps), not for UIDs Orthanc already stored.
func ValidUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for c := range strings.SplitSeq(s, ".") {
		if c == "" || (len(c) > 1 && c[0] == '0') {
			return false
		}
		for i := 0; i < len(c); i++ {
			if c[i] < '0' || c[i] > '9' {
				return false
			}
		}
	}
	return true
}

// Validate checks every field; the error names the first bad field.
func (e *StudyStable) Validate() error {
	switch {
	case e.Type == "":
		return &fieldError{"type", "is required"}
	case e.Type != TypeStudyStable:
		return &fieldError{"type", fmt.Sprintf("must be %q", TypeStudyStable)}
	case e.Version == 0:
		return &fieldError{"version", "is required"}
	case e.Version > Version:
		return newerVersion(e.Version)
	case e.Version != Version:
		return &fieldError{"version", fmt.Sprintf("unsupported version %d (this build reads %d)", e.Version, Version)}
	case e.Source == "":
		return &fieldError{"source", "is required"}
	case !ValidSource(e.Source):
		return &fieldError{"source", "must be 1-64 characters of A-Z a-z 0-9 _ -"}
	case e.OrthancStudyID == "":
		return &fieldError{"orthancStudyId", "is required"}
	case !orthancapi.ValidID(e.OrthancStudyID):
		return &fieldError{"orthancStudyId", "must be an Orthanc ID (five dash-separated groups of 8 lowercase hex digits)"}
	case e.StudyInstanceUID == "":
		return &fieldError{"studyInstanceUid", "is required"}
	case !PlausibleUID(e.StudyInstanceUID):
		return &fieldError{"studyInstanceUid", fmt.Sprintf("must be a UID of at most %d printable ASCII characters, without whitespace or any of / \\ %% * >", maxUIDLength)}
	case e.LastUpdate == "":
		return &fieldError{"lastUpdate", "is required"}
	}
	if _, err := time.Parse(lastUpdateLayout, e.LastUpdate); err != nil {
		return &fieldError{"lastUpdate", "must be an Orthanc timestamp such as 20261126T101500"}
	}
	if _, err := ParsePriority(string(e.Priority)); err != nil {
		return &fieldError{"priority", "must be stat, routine or low (or absent: routine)"}
	}
	return nil
}

// MsgID is the JetStream de-duplication ID (Nats-Msg-Id). It changes when
// the study changes (LastUpdate), so a study that gains instances later is
// forwarded again, while the same event posted twice, by Orthanc's Lua
// script and by the change-log reconciler, is stored once.
func (e *StudyStable) MsgID() string {
	return e.Source + "/" + e.OrthancStudyID + "/" + e.LastUpdate
}

// Decode parses and validates an event read from the stream. An event of
// a newer version is recognised before the rest is parsed: a newer build
// may have changed a field's shape, and such an event is to be left to it
// (ErrNewerVersion), not refused as invalid.
func Decode(data []byte) (*StudyStable, error) {
	var head struct {
		Type    string `json:"type"`
		Version int    `json:"version"`
	}
	if json.Unmarshal(data, &head) == nil && head.Type == TypeStudyStable && head.Version > Version {
		return nil, newerVersion(head.Version)
	}
	var ev StudyStable
	if err := json.Unmarshal(data, &ev); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalid, err)
	}
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return &ev, nil
}

// Publisher stores events in the event stream: the webhook, the
// reconciler and the audit publish through it (natsjs.Publisher).
// PubAck.Duplicate is true when the stream dropped the event as a repeat
// of one still inside its dedupe window.
type Publisher interface {
	Publish(ctx context.Context, ev *StudyStable) (*jetstream.PubAck, error)
}
