package forward

import (
	"log/slog"
	"time"

	"github.com/stowline/stowline/events"
)

// Attempt is one delivery of a study's event to this forwarder.
type Attempt struct {
	// Destination is the name of the destination it is for.
	Destination string
	Event       *events.StudyStable
	// Number counts the deliveries of the event, this one included.
	Number uint64
	// Seq is the event's position in the event stream.
	Seq uint64
	// again: an earlier run of this delivery (held for the destination
	// or the source, then sent again) may have stored some of the study.
	again bool
	// unrecorded are the entries (sentIDs; in buffer mode keptID and
	// uidID too) of what earlier runs of this delivery got stored and
	// could not write to the failure log (NATS unreachable): its own
	// copies all the same.
	unrecorded []string
	// lane is the lane it was pulled from ("": routine), for its
	// requests' priority in the limiter.
	lane events.Priority
	// beside: sent as the breaker's trial beside its study's held
	// delivery, without the study's turn (takeStudy); lateTurn ends the
	// turn it took once no longer the trial (transferGuarded).
	beside   bool
	lateTurn func()
	// trial is the token of the breaker's trial this run is (0: none),
	// for sendAll to end it at its first request stored (trialStored).
	trial trialToken
	// log is the delivery's logger (handle's: source, study, attempt,
	// stream_seq, trace_id), so that the study's lines from transfer
	// can be told apart when studies run at once; nil outside a
	// delivery, where attemptLog stands in.
	log *slog.Logger
}

// attemptLog is the logger for a's lines: the delivery's, or, for an
// attempt run outside one (tests), the forwarder's with the study's keys.
func (f *Forwarder) attemptLog(a *Attempt) *slog.Logger {
	if a.log != nil {
		return a.log
	}
	ev := a.Event
	return f.log.With("source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
		"study_instance_uid", ev.StudyInstanceUID, "last_update", ev.LastUpdate)
}

// Result is how an attempt ended: the label of
// stowline_forwarder_studies_total.
type Result string

// The results.
const (
	// ResultForwarded: every instance stored, the event acked.
	ResultForwarded Result = "forwarded"
	// ResultNotSelected: the destination's rules select nothing of the
	// study; the event is acked.
	ResultNotSelected Result = "not_selected"
	// ResultRetry: it failed and goes back to the queue after a delay.
	ResultRetry Result = "retry"
	// ResultDeadLettered: it failed for good, or ran out of deliveries.
	ResultDeadLettered Result = "dead_lettered"
	// ResultInterrupted: shutdown returned it to the queue.
	ResultInterrupted Result = "interrupted"
	// ResultAckFailed: done (stored, not selected or already forwarded),
	// but JetStream did not confirm the ack. If the ack was lost, the
	// event comes again: forwarded (found stored) or, once buffer mode
	// deleted the study, already_forwarded.
	ResultAckFailed Result = "ack_failed"
	// ResultUndecodable: the event could not be read; it is dead-lettered
	// as stored (DeadLetter.Raw), then terminated.
	ResultUndecodable Result = "undecodable"
	// ResultNewerVersion: a newer ingest wrote the event; it is given back
	// for a newer forwarder (a delivery spent each time).
	ResultNewerVersion Result = "newer_version"
	// ResultUnknownSource: the event names a source this forwarder does
	// not know (one being added); it is given back for a forwarder that
	// knows it, a delivery spent each time, and dead-lettered past
	// policy.unknownSource's bound.
	ResultUnknownSource Result = "unknown_source"
	// ResultAlreadyForwarded: the study is no longer in the source and
	// the destination's ledger holds this state of it or a newer one,
	// forwarded before buffer mode deleted it; the event is acked. The
	// forward itself was counted once already, as forwarded (ack_failed
	// when that event's ack was not confirmed).
	ResultAlreadyForwarded Result = "already_forwarded"
	// ResultAlreadyDeadLettered: the event's dead letter was stored by
	// an earlier delivery whose termination JetStream did not get (NATS
	// lost at that moment); the event is terminated now. That delivery
	// counted it (dead_lettered or undecodable; retry when it did not
	// learn that its letter was stored).
	ResultAlreadyDeadLettered Result = "already_dead_lettered"
)

// Observer is told what the forwarder does, as it happens. The status
// page implements it. Calls for one attempt come in order (Started, any
// number of Progress, Finished) but may come from several goroutines;
// calls for different attempts interleave.
type Observer interface {
	Started(a *Attempt)
	// Progress reports what the attempt has done so far.
	Progress(a *Attempt, rep Report)
	// Finished reports how it ended, once the message is settled.
	Finished(a *Attempt, result Result, rep Report)
}

// ParkObserver is an Observer also told of a study parked until its
// source answers (sourcepark.go): it stays in flight, without a worker,
// until Finished. The status page implements it, so that a parked study
// is not shown as one being sent.
type ParkObserver interface {
	// Parked says why, in words.
	Parked(a *Attempt, why string)
}

// HoldObserver is an Observer also told when a study's worker holds it,
// unsent, until its destination or its source answers (why, in words),
// and when it is sent again (why empty). The status page implements it,
// so that a held study does not look like one being sent.
type HoldObserver interface {
	Held(a *Attempt, why string)
}

// held tells f's observer, if it is a HoldObserver, that a is held.
func (f *Forwarder) held(a *Attempt, why string) {
	if o, ok := f.obs.(HoldObserver); ok {
		o.Held(a, why)
	}
}

// RetryObserver is an Observer also told, before Finished, why a failed
// attempt's study goes back to the queue (its class and error) and when
// it is due again. The status page implements it: between deliveries,
// hours apart late in the backoff, a study is on no other table, and the
// reason was in the log only.
type RetryObserver interface {
	Retrying(a *Attempt, class Class, reason string, due time.Time)
}

// retrying tells f's observer, if it is a RetryObserver, that a's study
// is due again after delay.
func (f *Forwarder) retrying(a *Attempt, class Class, err error, delay time.Duration) {
	if o, ok := f.obs.(RetryObserver); ok {
		o.Retrying(a, class, err.Error(), time.Now().Add(delay))
	}
}

// Lane is the lane a's study was pulled from: a retry waits for its
// lane's window, which the status page tells.
func (a *Attempt) Lane() events.Priority {
	if a.lane == "" {
		return events.PriorityRoutine
	}
	return a.lane
}

type noObserver struct{}

func (noObserver) Started(*Attempt)                  {}
func (noObserver) Progress(*Attempt, Report)         {}
func (noObserver) Finished(*Attempt, Result, Report) {}
