package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/stowline/stowline/orthancapi"
)

const (
	// sourceHoldWait is the first wait before a held study's source is
	// probed again, doubled up to sourceHoldMaxWait.
	sourceHoldWait    = 5 * time.Second
	sourceHoldMaxWait = time.Minute
	// sourceProbeTimeout bounds one probe of a source.
	sourceProbeTimeout = 10 * time.Second
)

// sourceDown reports whether a probe's error says the source Orthanc is
// unreachable or failing as a whole (no answer, a 5xx, a proxy's answer)
// rather than answering: a 404 is an answer.
func sourceDown(probeErr error) bool {
	return probeErr != nil && Classify(probeErr) == Transient
}

// sourceRefusesUs reports whether err is the source Orthanc refusing the
// forwarder's credentials (401, or 403 from an authorization plugin):
// every study fails so until an operator mends them, none by its own
// fault.
func sourceRefusesUs(err error) bool {
	oe, ok := errors.AsType[*orthancapi.Error](err)
	return ok && oe.NotFromOrthanc == "" && (oe.StatusCode == http.StatusUnauthorized || oe.StatusCode == http.StatusForbidden)
}

// sourceUnavailable reports whether a probe's error holds studies: the
// source is down or refuses the forwarder.
func sourceUnavailable(probeErr error) bool {
	return sourceDown(probeErr) || sourceRefusesUs(probeErr)
}

// sourceState says what an unavailable source does, for logs and errors.
func sourceState(probeErr error) string {
	oe, _ := errors.AsType[*orthancapi.Error](probeErr)
	switch {
	case !sourceRefusesUs(probeErr):
		return "unreachable"
	case oe.StatusCode == http.StatusUnauthorized:
		return "refusing the forwarder's credentials"
	default:
		// 403: Orthanc's RemoteAccessAllowed, an authorization plugin or
		// a proxy in front of it, as well as the credentials.
		return "refusing the forwarder (403)"
	}
}

// holdForSource is called after an attempt failed transiently, or for
// the source's refusal of its credentials, for a reason other than the
// destination. When the source does not answer a probe either (or
// refuses it too), the study is held, its message kept in progress, until
// the source answers again, and the attempt runs again within its
// delivery: an outage of the source of any length spends no delivery
// and dead-letters nothing (each failed attempt did, so an Orthanc down
// for a weekend dead-lettered every study queued meanwhile). With every
// worker holding, nothing more is pulled. Where several sources feed
// the forwarder the study is parked instead, if it can be (reservePark): err
// is then a *parkError, and the worker is free for other sources.
//
// held is false when the source answers (the failure is the study's: the
// usual retry follows). err is set, with held, when the forwarder stops
// or ctx ends while held: the study goes back to the queue; and without,
// a transient failure, when the study of a source refusing the
// forwarders could be neither parked nor held (reserveHold). holding, if
// set, is called once the study is held, before the wait.
func (f *Forwarder) holdForSource(ctx context.Context, a *Attempt, cause error, log *slog.Logger, holding func()) (held bool, err error) {
	probe := func() error {
		pctx, cancel := context.WithTimeout(ctx, sourceProbeTimeout)
		defer cancel()
		return f.opts.SourceProbe(pctx, a.Event.Source)
	}
	perr := probe()
	if !sourceUnavailable(perr) {
		return false, nil
	}
	state := sourceState(perr)
	if f.reservePark(a.Number) {
		return false, &parkError{source: a.Event.Source, state: state, cause: cause}
	}
	release, ok := f.reserveHold(sourceRefusesUs(perr))
	if !ok {
		log.Warn("source Orthanc "+state+": its studies parked reach their limit and every worker but one holds a study for its source; "+
			"this one is retried as a transient failure, spending a delivery, so that the other sources' studies keep a worker",
			"err", cause, "probe_err", perr)
		// Transient even for credentials refused (permanent as a study's
		// own failure): the source's, retried once it is fixed.
		return false, Errorf(Transient, "source Orthanc %q %s, its parked studies at their limit and the other workers but one held: %w", a.Event.Source, state, cause)
	}
	defer release()
	if holding != nil {
		holding()
	}
	f.m.sourceHeld.Inc()
	defer f.m.sourceHeld.Dec()
	f.held(a, "held: source Orthanc "+state)
	defer f.held(a, "")
	f.turnHeld(a, true)
	defer f.turnHeld(a, false)
	switch oe, _ := errors.AsType[*orthancapi.Error](perr); {
	case !sourceRefusesUs(perr):
		log.Warn("source Orthanc unreachable: the study is held until it answers; no delivery is spent",
			"err", cause, "probe_err", perr)
	case oe.StatusCode == http.StatusUnauthorized:
		log.Warn("source Orthanc refuses the forwarder's credentials: the study is held until it accepts them; no delivery is spent",
			"err", cause, "probe_err", perr)
	default:
		log.Warn("source Orthanc refuses the forwarder (403: its user's rights, an authorization plugin, RemoteAccessAllowed or a proxy): the study is held until it accepts it; no delivery is spent",
			"err", cause, "probe_err", perr)
	}
	start := time.Now()
	for wait := sourceHoldWait; ; wait = min(2*wait, sourceHoldMaxWait) {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return true, fmt.Errorf("held while the source Orthanc %q was %s (%v): %w", a.Event.Source, state, cause, ctx.Err())
		case <-f.stopping:
			// As the breaker's holds: the study waits for its source,
			// not for work to finish; another replica takes it.
			t.Stop()
			return true, fmt.Errorf("held while the source Orthanc %q was %s (%v): %w", a.Event.Source, state, cause, errShutdown)
		case <-t.C:
		}
		if perr = probe(); !sourceUnavailable(perr) {
			log.Info("source Orthanc answers again: the held study is sent", "was", state,
				"held_s", int(time.Since(start).Seconds()))
			return true, nil
		}
	}
}
