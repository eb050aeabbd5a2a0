package forward

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
)

// action is what becomes of a delivery once its attempt ended.
type action int

const (
	// ack: every instance is stored.
	ack action = iota
	// retry: back to the queue after a delay (NAK with delay).
	retry
	// deadLetter: keep it as a dead letter, then terminate the event.
	deadLetter
	// giveBack: shutdown; back to the queue at once for another replica.
	giveBack
)

// decision is the outcome policy's answer for one attempt.
type decision struct {
	action action
	class  Class         // of the failure, if any
	delay  time.Duration // retry
	reason string        // deadLetter
}

// policy decides what a finished attempt means. It holds no state and
// talks to nothing, so every rule is a row of a table test.
type policy struct {
	// maxDeliveries is FORWARDER_MAX_DELIVERIES (0: no limit).
	maxDeliveries uint64
	retryDelay    time.Duration
	retryMaxDelay time.Duration
	// canDeadLetter is false without a dead-letter store: then every
	// failure is retried, forever.
	canDeadLetter bool
	// jitter returns a number in [0, n]; nil is math/rand.
	jitter func(n int64) int64
	// replacesByDelete names the destination's STOW_ON_CONFLICT when it
	// replaces by DELETE, then POST: a delivery that ended between the
	// two left the archive without the instance (empty: it does not).
	replacesByDelete string
}

// decide answers for an attempt that returned err (nil: stored).
func (p policy) decide(attempt uint64, err error, shuttingDown bool) decision {
	switch {
	case err == nil:
		return decision{action: ack}
	case shuttingDown:
		return decision{action: giveBack}
	}
	class := Classify(err)
	outOfDeliveries := p.maxDeliveries > 0 && attempt >= p.maxDeliveries
	if !p.canDeadLetter || (!class.DeadLetterNow() && !outOfDeliveries) {
		return decision{action: retry, class: class, delay: p.backoff(attempt, err)}
	}
	reason := err.Error()
	if outOfDeliveries && !class.DeadLetterNow() {
		reason = fmt.Sprintf("gave up after %d deliveries: %s", attempt, reason)
	}
	return decision{action: deadLetter, class: class, reason: reason}
}

// unknownSourceDelay is how long an event of a source this forwarder
// does not know waits before it is offered again, for a forwarder that
// knows it: most often the source is being added (a rolling
// configuration change, the new Orthanc's Lua script installed before
// the forwarders know it), which takes minutes. Never longer than
// FORWARDER_RETRY_MAX_DELAY: a site that lowered it wants studies back
// sooner.
//
// unknownSourceDeliveries bounds the give-backs: the delivery that
// reaches it, about 30 min of give-backs, or FORWARDER_MAX_DELIVERIES if
// lower, dead-letters the event as of an unknown source. A count, not
// the event's age: an event of a backlog, queued long ago and first
// pulled during a rollout, still gets the whole wait. Below
// FORWARDER_MAX_DELIVERIES (48 by default) it leaves the study deliveries
// for its retries once a forwarder knows the source, and it is the
// bound when FORWARDER_MAX_DELIVERIES is 0.
const (
	unknownSourceDelay      = time.Minute
	unknownSourceDeliveries = 30
)

// unknownSource answers for an attempt whose event names a source this
// forwarder does not know (err matches ErrUnknownSource): give it back
// after unknownSourceDelay (action retry), or, at the bound, dead-letter
// it. Without a dead-letter store it is given back for ever, as any
// failure.
func (p policy) unknownSource(attempt uint64, err error) decision {
	limit := uint64(unknownSourceDeliveries)
	if p.maxDeliveries > 0 {
		limit = min(limit, p.maxDeliveries)
	}
	delay := unknownSourceDelay
	if p.retryMaxDelay > 0 {
		delay = min(delay, p.retryMaxDelay)
	}
	if !p.canDeadLetter || attempt < limit {
		return decision{action: retry, class: Permanent, delay: delay}
	}
	return decision{action: deadLetter, class: Permanent, reason: fmt.Sprintf(
		"%s; no forwarder that knows the source took the event in %d deliveries, given back every %s: "+
			"add the source to the forwarders' ORTHANC_SOURCES, then replay", err, attempt, delay)}
}

// exhausted reports a delivery past the limit. Attempts normally end by
// the limit (decide dead-letters the last one), so the deliveries before
// this one ended without an outcome: the forwarder that had them crashed,
// was killed (out of memory) or lost JetStream. Trying again would do the
// same, so the study is dead-lettered before any work. Rarely the last
// delivery ended otherwise: a graceful shutdown gave it back, or its ack
// was not confirmed; the reason says so, and a replay sends the study
// again (an instance already stored is confirmed again). Or the limit
// was lowered while the study was being retried (natsjs keeps the
// consumer's higher MaxDeliver for it): then it has failed as often as
// the new limit allows.
//
// A destination replacing conflicts by DELETE may have lost instances
// to such a delivery, deleted and not yet stored again, which nothing
// recorded: the reason says so, for the letter to be replayed.
func (p policy) exhausted(attempt uint64) (decision, bool) {
	if !p.canDeadLetter || p.maxDeliveries == 0 || attempt <= p.maxDeliveries {
		return decision{}, false
	}
	reason := fmt.Sprintf(
		"delivered %d times, past FORWARDER_MAX_DELIVERIES (%d), and the last deliveries ended without an outcome: "+
			"the forwarder handling the study stopped (a crash or an out-of-memory kill; or, for the last one only, a shutdown "+
			"that returned it to the queue or an ack JetStream did not confirm) or could not store its dead letter; "+
			"or FORWARDER_MAX_DELIVERIES was lowered while the study was being retried; "+
			"or older forwarders gave the event back, of a newer version than they read; "+
			"not tried again (replay it once the cause is known)", attempt, p.maxDeliveries)
	if p.replacesByDelete != "" {
		reason += fmt.Sprintf("; the destination replaces conflicts by DELETE, then POST (%s=%s, STOW_REPLACE_METHOD=%s): "+
			"a delivery that stopped between the two left instances deleted there and not stored again: replay it",
			p.replacesByDelete, ConflictReplace, ReplaceDelete)
	}
	return decision{action: deadLetter, class: Crash, reason: reason}, true
}

// backoff is exponential with jitter in [d/2, d]: studies that failed
// together (a destination outage) don't all come back at once, and the
// floor keeps the request rate during an outage bounded. A server's
// Retry-After is honoured (up to an hour).
func (p policy) backoff(attempt uint64, err error) time.Duration {
	d := p.retryDelay
	for i := uint64(1); i < attempt && d < p.retryMaxDelay; i++ {
		d *= 2
	}
	d = min(d, p.retryMaxDelay)
	jitter := p.jitter
	if jitter == nil {
		jitter = func(n int64) int64 { return rand.Int64N(n + 1) }
	}
	d = d/2 + time.Duration(jitter(int64(d/2)))
	var he *dicomweb.HTTPError
	if errors.As(err, &he) && he.RetryAfter > d {
		d = min(he.RetryAfter, time.Hour)
	}
	var te *auth.TokenError
	if errors.As(err, &te) && te.RetryAfter > d {
		d = min(te.RetryAfter, time.Hour)
	}
	return d
}
