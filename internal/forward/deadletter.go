package forward

import (
	"time"

	"github.com/stowline/stowline/events"
)

// DeadLetter is one dead-lettered study: the original event and why it failed.
type DeadLetter struct {
	// Destination is the destination the study failed at; empty in
	// letters from before destinations, which were the default one's.
	Destination string             `json:"destination,omitempty"`
	Event       events.StudyStable `json:"event"`
	Class       Class              `json:"class"`
	Reason      string             `json:"reason"`
	Attempts    uint64             `json:"attempts"`
	Failures    []Instance         `json:"failures,omitempty"`
	// MoreFailures counts the failed instances beyond those Failures
	// names (deadletter.MaxLetterFailures).
	MoreFailures   int       `json:"moreFailures,omitempty"`
	FirstFailure   time.Time `json:"firstFailure"`
	LastFailure    time.Time `json:"lastFailure"`
	LastResponse   string    `json:"lastResponse,omitempty"`
	OriginalSeq    uint64    `json:"originalSeq"`
	DeadLetteredAt time.Time `json:"deadLetteredAt"`
	// Raw is the event as JetStream stored it, for a letter of an event
	// the forwarder could not read (Reason "undecodable: ..."): a replay
	// stores it again unchanged, for a build that reads it. Event then
	// holds only what could be read of it, its source from its subject.
	Raw *RawEvent `json:"raw,omitempty"`
}

// RawEvent is a message of the event stream, as stored.
type RawEvent struct {
	Subject string              `json:"subject"`
	Header  map[string][]string `json:"header,omitempty"`
	Data    []byte              `json:"data"`
	// Size is the message's length when Data keeps only its start; 0
	// when Data is whole.
	Size int `json:"size,omitempty"`
	// Partial: the message was not kept whole (no event of stowline's,
	// or one past deadletter.MaxRawBytes): it cannot be replayed. An
	// event's headers past 4 KiB are dropped without it (trace context
	// only).
	Partial bool `json:"partial,omitempty"`
}

// FailureTimes are the first and last failure of one event.
type FailureTimes struct {
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}
