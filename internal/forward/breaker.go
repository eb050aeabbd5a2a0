package forward

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/flow"
)

// BreakerState is the state of a destination's circuit breaker.
type BreakerState int

// The states, in the order of stowline_forwarder_breaker_state's values.
const (
	// BreakerClosed: studies flow.
	BreakerClosed BreakerState = iota
	// BreakerHalfOpen: the destination answered a probe; one study
	// (held, or pulled from the queue: chooseTrial) is sent as a trial,
	// the others wait.
	BreakerHalfOpen
	// BreakerOpen: the destination is down. Nothing is pulled; studies
	// that failed for it are held, unsettled, until it closes.
	BreakerOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "closed"
}

// DestinationStatus is what a forwarder process reports of its
// destination on the status page: its circuit breaker and its adaptive
// limit of STOW-RS requests in flight.
type DestinationStatus struct {
	Destination string `json:"destination"`
	// State is the breaker's state.
	State string `json:"state"`
	// Since is when the breaker entered the state; zero while it never
	// left closed.
	Since time.Time `json:"since,omitzero"`
	// Held counts the studies waiting in this process for it to close.
	Held int `json:"held"`
	// Failures counts the consecutive destination-down failures since
	// a study was stored or the breaker closed.
	Failures int `json:"failures"`
	// Requests is the limit of STOW-RS requests in flight now, Ceiling
	// the most it may grow to (this replica's share); LimitReason and
	// LimitChanged say why and when it last changed (none yet: empty).
	Requests     int       `json:"requests"`
	Ceiling      int       `json:"ceiling"`
	LimitReason  string    `json:"limitReason,omitempty"`
	LimitChanged time.Time `json:"limitChanged,omitzero"`
	// ClosedLanes are its lanes outside their FORWARD_WINDOWS hours now,
	// highest first: their events wait, and the page says until when.
	ClosedLanes []ClosedLane `json:"closedLanes,omitempty"`
	// Paused: this process pulls nothing for the destination now
	// (Options.Paused: the de-identification key guard); studies in hand
	// go on. PausedReason says why (Options.PauseReason): "" from a
	// release before it, which paused for either.
	Paused       bool   `json:"paused,omitempty"`
	PausedReason string `json:"pausedReason,omitempty"`
	// LastDown is the last failure that said the destination is down
	// (a study's, or a probe's while the breaker is open), and
	// LastDownAt when: with the breaker open, what the operator asks
	// first, which only the log said.
	LastDown   string    `json:"lastDown,omitempty"`
	LastDownAt time.Time `json:"lastDownAt,omitzero"`
}

// Why the de-identification key guard pauses a forwarder
// (DestinationStatus.PausedReason); also the reason label of
// stowline_forwarder_deidentify_paused.
const (
	// PausedKeysDiffer: live forwarders serving the destination publish
	// another key fingerprint, or none (sending the originals).
	PausedKeysDiffer = "keys_differ"
	// PausedNotCompared: no read of the status bucket found this
	// process's own entry yet: the first seconds after start, a bucket
	// lost until the next put, or for good while the forwarder's NATS
	// user may not read or put it, or NATS storage is full.
	PausedNotCompared = "not_compared"
)

// Prober asks the destination whether it answers at all: one cheap
// authenticated request (a QIDO-RS query). An error for which
// probeDown is true keeps the breaker open (an error status included:
// a refusal of the credentials, an ingress's page; queryRefused aside);
// anything else means it answers.
type Prober interface {
	Probe(ctx context.Context, studyInstanceUID string) error
}

// DestinationDown reports whether err says the destination is down rather
// than that it refused a study: no answer (connection refused or reset,
// dial, TLS or request time-out), a 500, 502, 503, 504, 507 (its storage
// full) or 424 (Azure: its storage or key vault unreachable) on a whole
// request, a success answer that is not DICOMweb, or instances still
// refused with 0xA7xx (out of resources) after the attempt's rounds, or
// a token endpoint that fails the same way; or the destination refusing
// every STOW-RS request (refusesUs: a redirect, 401 after a fresh token,
// 403, 404, 405 without a STOW-RS answer). Another 4xx, a refusal of
// some instances, a conflict or a source (Orthanc) error are answers
// about the study, not about the destination.
func DestinationDown(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.As(err, new(*refusedError)) {
		return true
	}
	var te *auth.TokenError
	if errors.As(err, &te) {
		return true // unreachable, failing or refusing the credentials
	}
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
			http.StatusFailedDependency, // Azure: its storage or key vault unreachable
			// Its storage is full: every study gets the same answer
			// until an administrator frees space, hours perhaps; retried
			// study by study, each spent its deliveries and was
			// dead-lettered.
			http.StatusInsufficientStorage:
			return true
		case http.StatusTooManyRequests:
			// A throttle asking for longer than the limiter pauses (a
			// quota spent for the day): every study gets it until then,
			// and retried study by study each spent its deliveries. A
			// shorter one is load, which the limiter answers.
			return he.RetryAfter > flow.MaxPause
		}
		return false
	}
	// Instances refused, round after round, for the destination's
	// resources (0xA7xx): its storage full or failing answers every
	// study so, and each spent its deliveries. So did a success answer
	// that is not the DICOMweb service's (a proxy or firewall's page, a
	// wrong URL), and a probe that gets one must not close the breaker.
	return errors.Is(err, dicomweb.ErrNoAnswer) || errors.Is(err, errOutOfResources) || errors.Is(err, dicomweb.ErrNotDICOMweb)
}

// probeDown reports whether a probe's failure says the destination is
// not back: DestinationDown, or any error status or redirect. A probe
// names no study of its own to refuse (Probe takes a real empty result
// for an answer), so a 403 or an ingress's 404 page is the destination
// refusing us; taken for an answer, it let a trial study through at
// every probe. A destination whose queries alone fail still gets a
// trial every probesBeforeTrial probes; and see queryRefused.
func probeDown(err error) bool {
	return DestinationDown(err) || errors.As(err, new(*dicomweb.HTTPError)) || errors.Is(err, dicomweb.ErrRedirected)
}

// queryRefused reports whether a probe's failure is the destination
// refusing the query itself: a 4xx other than 401, 407 or 429 (those
// say the credentials or a throttle), or a 501. An identity allowed to
// store and not to search (AWS's medical-imaging:StoreDICOM alone), or a
// gateway that serves only STOW-RS, answers every probe so; counted as
// down, its breaker let a trial through every probesBeforeTrial probes
// only, minutes after the outage ended. The breaker lets a trial
// through at such a probe only when its last failure was no refusal (an
// outage: no answer, a 5xx) and no probe of it ever got an answer
// (queries work, so a refusal now is the destination refusing us): a
// URL that refuses everything opens it with refusals, and still looks
// down. The probe still counts as failed (failedProbes): it says
// nothing of whether the store is back, so its trial is not a vouched
// one (a 500 spends no delivery) and, nothing to try, the breaker stays
// open.
func queryRefused(err error) bool {
	var he *dicomweb.HTTPError
	if !errors.As(err, &he) || DestinationDown(err) {
		return false
	}
	switch he.StatusCode {
	case http.StatusUnauthorized, http.StatusProxyAuthRequired, http.StatusTooManyRequests:
		return false
	case http.StatusNotImplemented:
		return true
	}
	return he.StatusCode >= 400 && he.StatusCode < 500
}

// studyMayFail reports whether a destination-down failure may come from
// the study itself rather than the destination: an HTTP 500, a 502 or
// 504 (a proxy in front of a server that failed on the study or took too
// long over it: a large one), no answer on a connection that was made (a
// reset, a stall), a 507 or instances refused for resources (a server
// may refuse one too large for what it has left, while it stores
// others), or an answer that is not DICOMweb (a firewall's page for one
// study's content). Not a 503 or 424, a connection that could not be
// made (couldNotConnect), or no token: those say the destination
// whatever the study.
func studyMayFail(err error) bool {
	var he *dicomweb.HTTPError
	if errors.As(err, new(*auth.TokenError)) || couldNotConnect(err) {
		return false
	}
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout, http.StatusInsufficientStorage:
			return true
		}
	}
	return errors.Is(err, dicomweb.ErrNoAnswer) || errors.Is(err, errOutOfResources) || errors.Is(err, dicomweb.ErrNotDICOMweb)
}

// tlsHandshakeTimeout is the text of net/http's (unexported) error for a
// TLS handshake that did not end within TLSHandshakeTimeout.
const tlsHandshakeTimeout = "net/http: TLS handshake timeout"

// couldNotConnect reports whether err says no connection to the
// destination was made, before any of a study was sent: the STOW-RS
// request got no connection (a dial or a proxy's CONNECT that failed,
// the proxy's error status included), a TLS handshake that timed out,
// or a certificate or a peer that is not TLS refused in it.
func couldNotConnect(err error) bool {
	var (
		oe  *net.OpError
		cve *tls.CertificateVerificationError
		rhe tls.RecordHeaderError
		uae x509.UnknownAuthorityError
		hne x509.HostnameError
		cie x509.CertificateInvalidError
	)
	// "remote error": a TLS alert the server sent (the client
	// certificate of mutual TLS refused), never about a study.
	if errors.Is(err, dicomweb.ErrNotConnected) ||
		errors.As(err, &oe) && (oe.Op == "dial" || oe.Op == "proxyconnect" || oe.Op == "remote error") ||
		errors.As(err, &cve) || errors.As(err, &rhe) || errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) {
		return true
	}
	// The time-out's type is unexported: its own text, not a text
	// within another's (an answer's body may quote it).
	return anyError(err, func(e error) bool { return e.Error() == tlsHandshakeTimeout })
}

// anyError reports whether f is true of err or of any error it wraps.
func anyError(err error, f func(error) bool) bool {
	if err == nil {
		return false
	}
	if f(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyError(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyError(e, f) {
				return true
			}
		}
	}
	return false
}

// maxQuietPulls bounds the events one half-open breaker pulls in turn as
// its trial when each is settled without a request to the destination
// (its rules select none of it, its source deleted it, another lane's):
// the next is pulled at once, not a probe interval later, so that a queue
// headed by such studies does not delay seeing the store back by an
// interval each.
const maxQuietPulls = 16

// maxPulledTrials bounds the studies a process pulls as trials while the
// breaker is open, each then held with its message in progress: past it
// so many different studies failed a trial that the destination is what
// fails, and the held ones are tried again. A forwarder with fewer
// workers pulls at most as many as it has (startTrialPulls): when the
// breaker closes, the held ones go again at once beside the workers.
const maxPulledTrials = 16

// maxVouchedFailed bounds breaker.vouchedFailed: far more than the
// studies one process holds (its workers and maxPulledTrials).
const maxVouchedFailed = 1024

// settleWindow bounds the settling after a close on a stored study
// (breaker.settling): a first failure later than this, with no study
// stored since (a quiet destination), is no sign that the close was
// early, and counts as any. A close without a store is no sign that the
// destination stores: it settles until a store.
// It is longer than a request takes to fail once the destination stops
// answering (the dicomweb client's 5 min stall and 15 min response
// time-outs), so that the studies released at the close, large ones
// too, are still judged by the settling rule.
const settleWindow = 30 * time.Minute

// probesBeforeTrial is how many failed probes in a row let a held study
// through as a trial anyway: a destination whose queries fail while it
// stores (no QIDO-RS, a proxy refusing GETs) must not stay open for good.
const probesBeforeTrial = 4

// breakerConfig is a breaker's settings.
type breakerConfig struct {
	// failures is the number of consecutive destination-down failures
	// that opens the breaker; 0 turns it off.
	failures int
	// interval is the first wait before a probe, doubled after each
	// failed probe up to maxInterval.
	interval, maxInterval time.Duration
}

// breaker is the circuit breaker of one destination in one process. Its
// failures count whole study attempts (not requests): a success or a
// close resets them, a destination-down failure adds one, anything else
// leaves them.
//
// Open, it stops the workers' pulls and holds studies that failed for it
// with their message unsettled (still in progress), so an outage spends
// no delivery. After the probe interval a prober (QIDO-RS) asks the
// destination whether it answers; when it does, the breaker is half-open
// and one study is sent as a trial (chooseTrial): it closes the breaker
// when the destination stores its first request (trialStored), and the
// held studies go again at once within their delivery.
type breaker struct {
	cfg    breakerConfig
	prober Prober
	// onChange is called, under mu, on every change of state.
	onChange func(from, to BreakerState)
	now      func() time.Time

	mu       sync.Mutex
	state    BreakerState
	since    time.Time
	failures int
	// lastDown, at lastDownAt: see noteDown.
	lastDown   string
	lastDownAt time.Time
	// settling is true from a close until a study is stored, or, after
	// a close on a store, until settleUntil: the first destination-down
	// failure then opens the breaker again, so that a destination that
	// flaps does not cost failures-1 spent deliveries after each close
	// (record). A close without a store (zero settleUntil) settles until
	// a store, or a store outage could cost them again after a quiet
	// spell.
	settling    bool
	settleUntil time.Time
	// wait is the current probe interval.
	wait time.Duration
	// trial is the token of the half-open's trial while it is out, 0 when
	// none is. setState clears it: a trial still out when the state
	// changes is an ordinary study from then on, and its outcome counts
	// as one (record), so that it neither decides nor frees the trial of
	// a later half-open.
	trial trialToken
	// pulling is true while a trial pull's event has not come: it is the
	// trial of the half-open it comes in (pulledTrialArrived), and no
	// other starts meanwhile.
	pulling bool
	// probeStudy is a Study Instance UID of a held study, for the probe.
	probeStudy string
	// failedProbes counts the probes that failed in a row: 0 when the
	// breaker is half-open means a probe vouched for the destination
	// (else the trial was let through after probesBeforeTrial failures,
	// or after a refused query: queryRefused).
	failedProbes int
	// heldSeqs counts the held studies by the stream sequence of their
	// event, so that a half-open breaker tries a fresh one first.
	heldSeqs map[uint64]int
	// failedTrials holds the stream sequences of the studies whose trial
	// failed after a probe vouched for the destination, or so that the
	// study may be what fails (studyMayFail), since the last stored
	// study. Only the first failure that may be the study's since then,
	// of a trial a probe vouched for or while settling, spends a
	// delivery (spent): after it, such a failure of another study says
	// the destination, and is held. So that held studies that each fail for
	// themselves cannot keep the destination shut, a trial is a study not
	// in it whenever one is held or waits in the queue.
	failedTrials map[uint64]bool
	spent        bool
	// vouchedFailed holds the stream sequences of the studies whose
	// trial failed after a probe vouched for the destination, kept past
	// a store (unlike failedTrials), at most maxVouchedFailed: while
	// settling, a failure of one spends its delivery whatever its class
	// (still once per store), or a poison study answered 503 or 424 (a
	// proxy's "upstream connect error" when the server crashes on it)
	// would go held from trial to close to trial for ever. Each holds
	// the count of stores when it was marked (stores): as a trial, such
	// a study spends only when a study was stored since (a poison study
	// that lost the race to reopen the breaker), not in a plain store
	// outage answered 503 while queries answer, where every trial
	// fails and none is the study's own.
	vouchedFailed map[uint64]uint64
	stores        uint64
	// refused: the last down failure counted was the destination
	// refusing the STOW-RS request (refusesUs); queriesAnswered: a probe
	// got an answer once. Together they say whether a probe's refused
	// query is an answer (queryRefused).
	refused, queriesAnswered bool
	// trialSeq is the held study that is the next trial of the half-open
	// breaker (chooseTrial); triedAt the number of the trial each held
	// study last was (trials counts them), so that the one tried least
	// recently goes when every held study failed one.
	trialSeq uint64
	triedAt  map[uint64]uint64
	trials   uint64
	// cutShort holds the trials ended at their first request stored
	// (trialStored) whose outcome record has not counted yet, each
	// with whether a probe vouched for it: a later down failure marks
	// the study as a failed trial's.
	cutShort map[trialToken]bool
	// pullTrial, if set, pulls one event from the queue and handles it
	// as the trial, in a goroutine of its own; pulledTrials counts those
	// in hand (held ones too), at most maxPulledTrials.
	pullTrial    func()
	pulledTrials int
	// maxPulled bounds pulledTrials (0: maxPulledTrials).
	maxPulled int
	// quietPulls counts the events this half-open pulled in turn that
	// were settled without a request to the destination (maxQuietPulls).
	quietPulls int
	// changed is closed and replaced at every change a waiter cares for.
	changed chan struct{}
	// timer runs the next probe while open.
	timer *time.Timer
	// probing is true while a probe request is out: one at a time.
	probing bool
	// generation counts the changes of state, so a probe that outlived
	// the outage it was for does not decide the next one; a trial's
	// token is the generation of its half-open.
	generation uint64
	// stopped: the forwarder stopped; no further probes.
	stopped bool
	// probeCtx ends a probe request when the forwarder stops.
	probeCtx    context.Context
	cancelProbe context.CancelFunc
}

// trialToken names the trial of one half-open: the breaker's generation
// then. 0 is no trial.
type trialToken uint64

func newBreaker(cfg breakerConfig, prober Prober, onChange func(from, to BreakerState)) *breaker {
	if onChange == nil {
		onChange = func(BreakerState, BreakerState) {}
	}
	probeCtx, cancelProbe := context.WithCancel(context.Background())
	return &breaker{cfg: cfg, prober: prober, onChange: onChange, now: time.Now,
		changed: make(chan struct{}), wait: cfg.interval, probeCtx: probeCtx, cancelProbe: cancelProbe,
		heldSeqs: map[uint64]int{}, failedTrials: map[uint64]bool{}, vouchedFailed: map[uint64]uint64{}, triedAt: map[uint64]uint64{}, cutShort: map[trialToken]bool{}}
}

func (b *breaker) enabled() bool { return b != nil && b.cfg.failures > 0 }

// breakerStatus is what the breaker shows of itself.
type breakerStatus struct {
	state          BreakerState
	since          time.Time
	held, failures int
	lastDown       string
	lastDownAt     time.Time
}

// status is the breaker's state now.
func (b *breaker) status() breakerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	held := 0
	for _, n := range b.heldSeqs {
		held += n
	}
	return breakerStatus{state: b.state, since: b.since, held: held, failures: b.failures, lastDown: b.lastDown, lastDownAt: b.lastDownAt}
}

// maxLastDown bounds LastDown, shared every 5 s in the status bucket.
const maxLastDown = 300

// noteDown keeps err as the last failure that said the destination is
// down. Callers hold b.mu.
func (b *breaker) noteDown(err error) {
	b.lastDown, b.lastDownAt = ellipsis.Truncate(err.Error(), maxLastDown), b.now()
}

// waitClosed returns once the breaker is closed and the studies it held
// have gone again, or ctx ends: a worker calls it before it pulls, so
// that the events it pulls, newer, do not overtake the held ones.
func (b *breaker) waitClosed(ctx context.Context) error {
	if !b.enabled() {
		return nil
	}
	for {
		b.mu.Lock()
		state, held, changed := b.state, len(b.heldSeqs), b.changed
		b.mu.Unlock()
		if state == BreakerClosed && held == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// record counts the outcome of a study attempt (err nil: stored) and
// reports whether the study is to be held: it failed for a destination
// that is down, and the breaker is open. token is the trial token of the
// attempt that a half-open breaker let through (0: none); one of an
// earlier half-open counts as an ordinary study's. studyUID names the
// study for a later probe, seq its event's stream sequence.
func (b *breaker) record(err error, token trialToken, studyUID string, seq uint64) (hold bool) {
	if !b.enabled() || errors.Is(err, context.Canceled) {
		if token != 0 {
			b.endTrial(token)
		}
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	trial := b.takeTrial(token)
	vouched, cut := b.cutShort[token]
	delete(b.cutShort, token)
	if b.settling && !b.settleUntil.IsZero() && !b.now().Before(b.settleUntil) {
		b.settling = false // no failure came within settleWindow of a stored close
	}
	down := DestinationDown(err)
	switch {
	case err == nil:
		delete(b.vouchedFailed, seq)
		b.stored()
		return false
	case !down:
		// The destination answered (or the failure was the source's):
		// a trial that ends so frees the others; the count stays.
		if trial {
			b.setState(BreakerClosed)
		}
		return false
	}
	b.failures++
	b.noteDown(err)
	b.refused = errors.As(err, new(*refusedError))
	if cut && b.prober != nil {
		// A trial ended at its first request stored (trialStored) that
		// fails later for the destination counts as any study's, and is
		// marked as a failed trial all the same (after the settling
		// rule below read the marks): a study a proxy answers 503 for
		// past its first request (a poison one) would be the fresh
		// trial again at every half-open, close the breaker at its
		// first request, and be held again, for ever.
		defer b.markFailedTrial(seq, err, vouched)
	}
	if trial {
		// The destination answered the probe but failed the study. If
		// a prober vouched for it and the failure may be the study's
		// own (studyMayFail: a 500, 502, 504 or 507, a reset or a
		// stall, 0xA7xx, a page that is not DICOMweb), the first such
		// failure since a study was stored is settled like any
		// failure, and spends its delivery. Another's says the destination (its
		// store full while queries answer): held, as after a 503.
		// Every failed trial a probe vouched for is marked, and
		// trials go to studies whose trial has not failed (see
		// failedTrials), so held poison studies do not keep it shut:
		// one answered 504 whatever is sent was the trial after every
		// probe, and the queue waited. A trial no probe vouched for
		// (queries fail too) spends nothing, but one whose failure may
		// be its own is marked all the same, for the same reason.
		// A study whose vouched trial failed before a study was stored
		// (vouchedFailed) counts as failing on its own whatever the
		// answer: one whose 503 lost the race to reopen the breaker
		// after a close would otherwise spend nothing, cycle after
		// cycle.
		spend := false
		if b.prober != nil {
			vouched := b.failedProbes == 0
			if own := b.markFailedTrial(seq, err, vouched); vouched && own {
				spend = !b.spent
				b.spent = true
			}
		}
		b.open(studyUID)
		return !spend
	}
	if b.state == BreakerClosed && (b.failures >= b.cfg.failures || b.settling) {
		// Settling, nothing was stored since the close: the destination
		// is down again. A failure that may be the study's own is
		// settled as before the close, spending its delivery: held,
		// a study that makes the server fail would go first at every
		// close and open the breaker again, without end. Once per
		// stored study, shared with a vouched trial's (spent): a close
		// without a store (a probe with nothing held, a trial answered
		// 4xx) gives none, or a study alone in the queue of a store
		// that is down would spend one at each such close.
		marked, ok := b.vouchedFailed[seq]
		spend := b.settling && (studyMayFail(err) || ok && marked < b.stores) && !b.spent
		if spend {
			b.spent = true
		}
		b.open(studyUID)
		if spend {
			return false
		}
	}
	if b.state != BreakerClosed && b.probeStudy == "" {
		b.probeStudy = studyUID
	}
	return b.state != BreakerClosed
}

// stored closes the breaker on a study stored, or on a trial's first
// request stored (trialStored): the destination stores again. Under mu.
func (b *breaker) stored() {
	b.stores++
	closing := b.state != BreakerClosed
	b.settling = false // a close below makes it true again
	b.failures = 0
	b.spent = false
	clear(b.failedTrials)
	clear(b.triedAt)
	b.setState(BreakerClosed)
	if closing {
		b.settleUntil = b.now().Add(settleWindow)
	}
}

// trialStored is told that the destination stored instances of a request
// of the trial token let through, and reports whether that ended the
// trial: the breaker closes then, as at a study stored. Waiting for the
// whole study shut the destination for its whole re-send (hours for a
// large one, stat studies too) when its first answer already said the
// destination stores again. The study goes on as an ordinary one: its
// outcome, recorded with a token no longer the trial's, counts as any
// study's (a later failure too, which, settling, opens the breaker
// again).
func (b *breaker) trialStored(token trialToken) bool {
	if !b.enabled() || token == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.takeTrial(token) {
		return false // another half-open's, or this one's ended already
	}
	// Read before the close resets failedProbes; record reads it.
	b.cutShort[token] = b.failedProbes == 0
	b.stored()
	return true
}

// markFailedTrial marks the study at seq as one whose trial failed with
// err (failedTrials, vouchedFailed), and reports whether the failure may
// be its own: studyMayFail, or it failed a vouched trial before a study
// was stored since. vouched: a probe vouched for the destination. Under
// mu.
func (b *breaker) markFailedTrial(seq uint64, err error, vouched bool) (own bool) {
	marked, ok := b.vouchedFailed[seq]
	own = studyMayFail(err) || ok && marked < b.stores
	if vouched || own {
		b.failedTrials[seq] = true
	}
	if vouched {
		b.markVouchedFailed(seq)
	}
	return own
}

// markVouchedFailed adds seq to vouchedFailed, dropping the oldest (the
// lowest sequence, the likeliest gone) past maxVouchedFailed. Under mu.
func (b *breaker) markVouchedFailed(seq uint64) {
	if _, ok := b.vouchedFailed[seq]; !ok && len(b.vouchedFailed) >= maxVouchedFailed {
		oldest, first := uint64(0), true
		for s := range b.vouchedFailed {
			if first || s < oldest {
				oldest, first = s, false
			}
		}
		delete(b.vouchedFailed, oldest)
	}
	b.vouchedFailed[seq] = b.stores
}

// takeTrial reports whether token is the trial of the half-open now, and
// ends that trial. Under mu.
func (b *breaker) takeTrial(token trialToken) bool {
	if token == 0 || token != b.trial {
		return false
	}
	b.trial = 0
	return true
}

// trialSaidNothing ends a trial that failed before any request reached
// the destination: the next trial goes at once, as after a pulled trial
// settled without a request, up to maxQuietPulls in a half-open; then
// the breaker opens again and probes. pulled: the trial was pulled, and
// its place among the pulled trials is freed first. A trial of an earlier
// half-open only frees its place.
func (b *breaker) trialSaidNothing(token trialToken, pulled bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pulled {
		b.pulledTrials--
	}
	defer b.broadcast()
	switch {
	case !b.takeTrial(token):
	case b.state != BreakerHalfOpen || b.stopped:
	case b.quietPulls < maxQuietPulls:
		b.quietPulls++
		b.chooseTrial()
	default:
		b.open("")
	}
}

// endTrial frees the trial slot without an outcome (shutdown). Were it
// cancelled while the forwarder goes on, a half-open breaker would wait
// for a trial that never comes: it opens again and probes.
func (b *breaker) endTrial(token trialToken) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.cutShort, token)
	if b.takeTrial(token) && b.state == BreakerHalfOpen && !b.stopped {
		b.open("")
	}
	b.broadcast()
}

// hold waits, for a held study (its event at stream sequence seq), until
// the breaker closes (trial 0) or lets this study through as the trial of
// a half-open breaker (its token), or ctx ends. Once closed,
// the held studies go oldest first: each when none with a lower stream
// sequence is still held (the order JetStream delivers in, and deletes
// in at EVENTS_RETENTION). They leave at once, one after the other, and
// then run side by side.
func (b *breaker) hold(ctx context.Context, seq uint64) (trial trialToken, err error) {
	b.mu.Lock()
	b.heldSeqs[seq]++
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.heldSeqs[seq]--; b.heldSeqs[seq] <= 0 {
			delete(b.heldSeqs, seq)
		}
		if b.state == BreakerClosed {
			// The next oldest goes, or, none left, the workers pull.
			b.broadcast()
		}
		if b.state == BreakerHalfOpen && b.trialFree() && !b.stopped && b.heldSeqs[b.trialSeq] == 0 {
			// The study chosen as the trial is gone (its context
			// ended): choose again, else none would come.
			b.chooseTrial()
		}
	}()
	for {
		b.mu.Lock()
		switch {
		case b.stopped:
			b.mu.Unlock()
			return 0, errShutdown
		case b.state == BreakerClosed && !b.olderHeld(seq):
			b.mu.Unlock()
			return 0, nil
		case b.state == BreakerHalfOpen && b.trialFree() && seq == b.trialSeq:
			b.trial = trialToken(b.generation)
			b.trials++
			b.triedAt[seq] = b.trials
			trial := b.trial // read under the lock: a close or a new half-open rewrites it
			b.mu.Unlock()
			return trial, nil
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// olderHeld reports whether a study older than seq (a lower stream
// sequence) is held. Under mu.
func (b *breaker) olderHeld(seq uint64) bool {
	for s := range b.heldSeqs {
		if s < seq {
			return true
		}
	}
	return false
}

// open moves to open (or stays there, after a failed probe or trial,
// with a longer interval) and schedules the next probe. Under mu.
func (b *breaker) open(studyUID string) {
	if b.state == BreakerClosed {
		b.wait = b.cfg.interval
	} else {
		b.wait = min(2*b.wait, b.cfg.maxInterval)
	}
	if studyUID != "" {
		b.probeStudy = studyUID
	}
	b.setState(BreakerOpen)
	b.schedule()
}

// schedule runs the next probe after the current interval. Under mu.
func (b *breaker) schedule() {
	if b.stopped {
		return
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	b.timer = time.AfterFunc(b.wait, b.probe)
}

// probe asks the destination whether it answers; without a prober, the
// trial study is the probe.
func (b *breaker) probe() {
	b.mu.Lock()
	if b.state != BreakerOpen || b.stopped || b.probing {
		// A probe still out schedules the next when it ends.
		b.mu.Unlock()
		return
	}
	b.probing = true
	generation, study := b.generation, b.probeStudy
	b.mu.Unlock()
	var err error
	if b.prober != nil && study != "" {
		ctx, cancel := context.WithTimeout(b.probeCtx, probeTimeout)
		err = b.prober.Probe(ctx, study)
		cancel()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if b.state != BreakerOpen || b.stopped {
		return
	}
	if b.generation != generation {
		// The breaker closed and opened again while the probe was out:
		// its answer was about the outage before. Ask again.
		b.schedule()
		return
	}
	if err == nil && b.prober != nil && study != "" {
		b.queriesAnswered = true
	}
	if probeDown(err) {
		// A refused query after an outage (queryRefused) lets a trial
		// through at once, but vouches for nothing: failedProbes stays
		// above 0, so the trial's 500 spends no delivery, its refusal
		// is not marked vouched, and with nothing to try the breaker
		// stays open rather than closing untried.
		b.failedProbes++
		// A refused query (a 403: an identity that may store but not
		// search) says nothing of the outage: the failure that opened
		// the breaker stays the one shown.
		if err != nil && !queryRefused(err) {
			b.noteDown(fmt.Errorf("probe: %w", err))
		}
		passes := !b.refused && !b.queriesAnswered && queryRefused(err)
		if !passes && b.failedProbes%probesBeforeTrial != 0 || len(b.heldSeqs) == 0 && !b.canPullTrial() {
			b.wait = min(2*b.wait, b.cfg.maxInterval)
			b.schedule()
			return
		}
		// Queries keep failing: let a study tell whether it stores (a
		// held one, else one pulled from the queue: a destination whose
		// queries fail while it stores would otherwise stay shut).
	} else {
		b.failedProbes = 0
	}
	b.setState(BreakerHalfOpen)
	b.quietPulls = 0
	b.chooseTrial()
}

// chooseTrial says who is the trial of the half-open breaker: the oldest
// held study whose trial has not failed if there is one, else one pulled
// from the queue, else (nothing waits, or maxPulledTrials are in hand)
// the held study tried least recently. Nothing held: the breaker closes,
// to let the workers pull, and the next failures open it again; but when
// queries fail, a study pulled from the queue is the trial, or, none can
// be pulled, it opens again. Under mu.
func (b *breaker) chooseTrial() {
	seq, fresh, ok := b.pickHeld()
	switch {
	case !ok && b.failedProbes > 0 && b.canPullTrial():
		// Queries fail and nothing is held: a study of the queue is
		// the trial (held, not spent, if it fails).
		b.startPulledTrial()
	case !ok && b.failedProbes > 0:
		// Nothing to try (the trials pulled all out), and queries
		// fail: probe again later.
		b.open("")
	case !ok:
		b.setState(BreakerClosed)
	case fresh || !b.canPullTrial():
		// b.pulling: a pull of an earlier half-open whose event has
		// not come is this one's trial, and no second is pulled
		// beside it.
		b.trialSeq = seq
		b.broadcast()
	default:
		b.startPulledTrial()
	}
}

// pickHeld returns the held study to try: the oldest (lowest stream
// sequence) whose trial has not failed (fresh), else the one tried least
// recently. ok is false when none is held. Under mu.
func (b *breaker) pickHeld() (seq uint64, fresh, ok bool) {
	for s := range b.heldSeqs {
		f := !b.failedTrials[s]
		switch {
		case !ok, f && !fresh,
			f == fresh && (b.triedAt[s] < b.triedAt[seq] || b.triedAt[s] == b.triedAt[seq] && s < seq):
			seq, fresh, ok = s, f, true
		}
	}
	return seq, fresh, ok
}

// pulledTrialArrived decides what an event pulled as the trial is when
// its first attempt starts: the trial (its token) while the breaker is
// half-open (its pull held the trial slot). The breaker may have closed
// since the pull began (a study in flight was stored), and opened again:
// then the event is an ordinary study, sent if the breaker is closed,
// held (hold true) without an attempt if it is open (or, which its pull
// rules out, half-open with another trial out), so that no study
// goes to a destination no probe vouched for, and no failure of it is
// taken for a vouched trial's.
func (b *breaker) pulledTrialArrived() (trial trialToken, hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pulling = false
	if b.state == BreakerHalfOpen && b.trial == 0 {
		b.trial = trialToken(b.generation)
		return b.trial, false
	}
	// Stopping, the hold ends at once (errShutdown), with no request to
	// a destination that is down.
	return 0, b.state != BreakerClosed
}

// pulledTrialEnded is told that an event pulled as the trial was settled,
// or that the pull found none; used is false when no attempt of it was
// recorded as the trial (none found, another lane's, settled before any
// attempt): the trial slot is freed, for a held study when the queue had
// nothing.
func (b *breaker) pulledTrialEnded(found, used bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pulledTrials--
	if used {
		return
	}
	b.pulling = false
	switch {
	case b.state != BreakerHalfOpen || b.stopped:
	case found && b.quietPulls < maxQuietPulls && b.pullTrial != nil:
		// Settled without a request (not selected, gone from its
		// source): the next event is the trial, at once.
		b.quietPulls++
		b.startPulledTrial()
		return
	case found:
		// Settled otherwise, time after time (skipped, poison studies
		// at their last delivery): ask again later.
		b.open("")
	default:
		// Nothing waits in the queue: a held study is the trial.
		seq, _, ok := b.pickHeld()
		switch {
		case ok:
			b.trialSeq = seq
		case b.failedProbes > 0:
			// Nothing to try, and queries fail: probe again later.
			b.open("")
		default:
			b.setState(BreakerClosed)
		}
	}
	b.broadcast()
}

// startPulledTrial pulls the trial from the queue. Under mu.
func (b *breaker) startPulledTrial() {
	b.pulling = true
	b.pulledTrials++
	b.pullTrial()
}

// shut reports whether a study that is no trial must not go to the
// destination now: the breaker is open, or half-open (its trial is
// another's, or is chosen among the held studies).
func (b *breaker) shut() bool {
	if !b.enabled() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state != BreakerClosed
}

// trialFree reports whether no trial is out for the state now, nor a
// pull on its way to be one. Under mu.
func (b *breaker) trialFree() bool { return b.trial == 0 && !b.pulling }

// canPullTrial reports whether a trial may be pulled from the queue now.
// Under mu.
func (b *breaker) canPullTrial() bool {
	return b.pullTrial != nil && b.trialFree() && !b.stopped && b.pulledTrials < cmp.Or(b.maxPulled, maxPulledTrials)
}

// probeTimeout bounds one probe request.
const probeTimeout = 30 * time.Second

// errShutdown ends the hold of a study when the forwarder stops: it goes
// back to the queue at once, for another replica.
var errShutdown = errors.New("forwarder shutting down")

// stop ends the probes and the holds (the forwarder is stopping).
func (b *breaker) stop() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	if b.timer != nil {
		b.timer.Stop()
	}
	b.cancelProbe()
	b.broadcast()
}

// setState changes the state and wakes the waiters. Under mu.
func (b *breaker) setState(to BreakerState) {
	if to == b.state {
		return
	}
	from := b.state
	b.state, b.since = to, b.now().UTC()
	b.generation++
	b.trial = 0
	b.settling = to == BreakerClosed
	if to == BreakerClosed {
		// The count starts again at a close, stored or not: the outage's
		// failures (held studies' too) say nothing of the next, and the
		// "circuit breaker open" log's after_failures counts since.
		b.failures = 0
		b.settleUntil = time.Time{} // record sets it after a close on a store
		b.probeStudy, b.wait, b.failedProbes = "", b.cfg.interval, 0
		if b.timer != nil {
			b.timer.Stop()
		}
	}
	b.onChange(from, to)
	b.broadcast()
}

func (b *breaker) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// BreakerOptions configure a destination's circuit breaker.
type BreakerOptions struct {
	// Failures is the number of consecutive destination-down study
	// failures that opens the breaker (0: no breaker; after a close,
	// until a study is stored, for settleWindow at most, one does).
	// With a delivery limit, at most MaxDeliveries: a study then cannot
	// run out of deliveries in an outage before the breaker opens.
	Failures int
	// ProbeInterval is the first wait, once open, before the destination
	// is probed; it doubles after each failed probe up to
	// MaxProbeInterval (0: ProbeInterval).
	ProbeInterval, MaxProbeInterval time.Duration
	// Prober, if set, is the probe (a QIDO-RS query). Without it the
	// trial study is the probe, and a trial that fails for a down
	// destination stays held.
	Prober Prober
}

func (o *BreakerOptions) check() error {
	switch {
	case o.Failures < 0:
		return errors.New("breaker failures must not be negative")
	case o.Failures == 0:
		return nil
	case o.ProbeInterval <= 0:
		return errors.New("breaker probe interval must be positive")
	case o.MaxProbeInterval != 0 && o.MaxProbeInterval < o.ProbeInterval:
		return errors.New("breaker probe intervals must satisfy interval <= max interval")
	}
	return nil
}

// Status returns the state of the destination's circuit breaker and
// request limit in this process.
func (f *Forwarder) Status() DestinationStatus {
	st := DestinationStatus{Destination: f.opts.DestinationName, State: BreakerClosed.String(),
		Requests: f.limit.Limit(), Ceiling: f.limit.Ceiling()}
	reason, at := f.limit.LastChange()
	st.LimitReason, st.LimitChanged = string(reason), at
	st.ClosedLanes = f.plan.closed()
	if st.Paused = f.plan.isPaused(); st.Paused && f.opts.PauseReason != nil {
		st.PausedReason = f.opts.PauseReason()
	}
	if !f.breaker.enabled() {
		st.State = "off"
		return st
	}
	bs := f.breaker.status()
	st.State, st.Since, st.Held, st.Failures = bs.state.String(), bs.since, bs.held, bs.failures
	st.LastDown, st.LastDownAt = bs.lastDown, bs.lastDownAt
	return st
}

// transferGuarded is transferRecovering behind the breaker: a study that
// failed for a down destination while the breaker is open is held, its
// message kept in progress, and sent again within the same delivery once
// the breaker closes (or as its trial). On shutdown the last error is
// returned and the study goes back to the queue (one delivery).
func (f *Forwarder) transferGuarded(ctx context.Context, a *Attempt, log *slog.Logger) (Report, error) {
	trial, holdFirst := trialToken(0), false
	if t, ok := ctx.Value(pulledTrialKey{}).(*pulledTrial); ok && !t.used {
		// Pulled as the trial of the half-open breaker: this first
		// attempt is it, if the breaker is half-open still.
		t.used = true
		trial, holdFirst = f.breaker.pulledTrialArrived()
		if trial != 0 {
			log.Info("circuit breaker half-open: sending this study, pulled from the queue, as the trial")
		}
	} else if f.breaker.shut() {
		// A worker that passed waitClosed may wait in Next while the
		// breaker opens: its event must not go to a destination no
		// probe vouched for, nor beside a half-open's trial.
		holdFirst = true
	}
	// held counts the holds for the destination, sourceHeld those for the
	// source, for the log.
	held, sourceHeld := 0, 0
	if holdFirst {
		// It came once the breaker was shut (pulled as a trial, once it
		// had closed and opened again): held, as the studies that
		// failed for the outage.
		log.Warn("destination down: the study, pulled while the circuit breaker was shut, is held until it closes; no delivery is spent")
		held++
		var herr error
		if trial, herr = f.holdForDestination(ctx, a, log); herr != nil {
			return Report{}, fmt.Errorf("held while the destination was down: %w", herr)
		}
	}
	// unrecorded: what earlier runs stored and could not record (NATS
	// unreachable), for the settle to write with this run's, and for the
	// next run to know as its own copies.
	var unrecorded []string
	for {
		if a.beside && trial == 0 {
			// Sent beside the study's held delivery as the trial, it no
			// longer is (held since, or the breaker closed): both may
			// leave their holds at once, so it waits for the study's
			// turn as any study, or each takes the other's copies for
			// conflicts. handle's release ends the turn.
			a.beside = false
			release, err := f.takeStudy(ctx, a, log)
			a.lateTurn = release
			if err != nil {
				return Report{unrecorded: unrecorded}, fmt.Errorf("waiting for the study's other delivery: %w", err)
			}
		}
		a.unrecorded = unrecorded
		// Its first request stored ends the trial (trialStored), and
		// record then counts the outcome as an ordinary study's. Not
		// one sent beside its study's held delivery: closing the
		// breaker, it would let that delivery go at once, beside it.
		a.trial = 0
		if !a.beside {
			a.trial = trial
		}
		rep, err := f.transferRecovering(ctx, a)
		rep.unrecorded = append(unrecorded, rep.unrecorded...)
		unrecorded = rep.unrecorded
		if err == nil && rep.Requests == 0 && rep.Verify == 0 {
			// Nothing reached the destination (its rules selected no
			// instance): the outcome says nothing of it, so it neither
			// closes the breaker nor resets its count of failures; a
			// trial hands over to the next at once.
			if trial != 0 {
				f.breaker.trialSaidNothing(trial, releasePulled(ctx))
			}
			return rep, nil
		}
		// quiet is a trial that failed before any request reached the
		// destination (its source Orthanc, a conversion): it says
		// nothing of the destination, which closed on it would take the
		// held studies, each a failure, while its queries may fail too.
		// Another study is the trial (handOver), once it is known
		// whether this one stays in hand, held for its source: a
		// pulled one then keeps its place among the pulled trials, so
		// that no other is pulled into it; else it frees its place
		// first, so that the next may be pulled (at
		// FORWARDER_CONCURRENCY 1, the only place).
		quiet := trialToken(0)
		if trial != 0 && err != nil && rep.Requests == 0 && rep.Verify == 0 && !DestinationDown(err) {
			quiet, trial = trial, 0
		}
		handOver := func(leaves bool) {
			if quiet != 0 {
				f.breaker.trialSaidNothing(quiet, leaves && releasePulled(ctx))
				quiet = 0
			}
		}
		if !f.breaker.record(err, trial, a.Event.StudyInstanceUID, a.Seq) {
			if err != nil && f.opts.SourceProbe != nil && (Classify(err) == Transient || sourceRefusesUs(err)) && ctx.Err() == nil {
				wasHeld, herr := f.holdForSource(ctx, a, err, log, func() { handOver(false) })
				handOver(true)
				if herr != nil {
					return rep, herr
				}
				if wasHeld {
					sourceHeld++
					trial = 0 // record ended a trial
					a.again = true
					if f.breaker.shut() {
						// The destination went down while the study
						// waited for its source: held for it first, as a
						// late pulled trial, so that no study goes to a
						// destination no probe vouched for.
						log.Warn("destination down: the study, back from its source's hold, is held until the circuit breaker closes; no delivery is spent")
						held++
						var herr error
						if trial, herr = f.holdForDestination(ctx, a, log); herr != nil {
							return rep, fmt.Errorf("held while the destination was down: %w", herr)
						}
					}
					continue
				}
			}
			handOver(true)
			if err == nil && held > 0 {
				log.Info("held study forwarded after the destination came back", "holds", held)
			}
			if err == nil && sourceHeld > 0 {
				log.Info("held study forwarded after its source Orthanc came back", "holds", sourceHeld)
			}
			return rep, err
		}
		handOver(false) // a quiet trial is not held here (not the destination's failure); were it, it stays in hand
		if held == 0 {
			log.Warn("destination down: the study is held until the circuit breaker closes; no delivery is spent",
				"err", err, "instances_sent", rep.Instances)
		}
		held++
		var herr error
		trial, herr = f.holdForDestination(ctx, a, log)
		a.again = true
		if herr != nil {
			return rep, fmt.Errorf("held while the destination was down (%v): %w", err, herr)
		}
	}
}

// holdForDestination holds study a while the breaker is open, counted
// and shown on the status page, until it closes or lets a through as its
// trial (its token).
func (f *Forwarder) holdForDestination(ctx context.Context, a *Attempt, log *slog.Logger) (trial trialToken, err error) {
	f.m.held.Inc()
	f.held(a, "held: destination down (circuit breaker open)")
	f.turnHeld(a, true)
	trial, err = f.breaker.hold(ctx, a.Seq)
	f.turnHeld(a, false)
	f.held(a, "")
	f.m.held.Dec()
	if err == nil && trial != 0 {
		log.Info("circuit breaker half-open: sending this held study as the trial")
	}
	return trial, err
}

// pulledTrialKey is the context key of the pulledTrial of the event a
// trial pull handles.
type pulledTrialKey struct{}

// pulledTrial marks the event pulled as the trial; used once its first
// attempt began, as the trial (pulledTrialArrived) or, the breaker no
// longer half-open, as an ordinary study (its trial slot then freed).
type pulledTrial struct{ used, released bool }

// releasePulled reports whether ctx's event was pulled as a trial and
// still counts among the pulled trials in hand, and says it no longer
// does: a trial that said nothing and leaves (not held for its source)
// frees its place before the next is chosen, so that the next may be
// pulled (at FORWARDER_CONCURRENCY 1, the only place).
func releasePulled(ctx context.Context) bool {
	t, ok := ctx.Value(pulledTrialKey{}).(*pulledTrial)
	if !ok || t.released {
		return false
	}
	t.released = true
	return true
}

// runPulledTrial pulls one event and handles it as the trial of the
// half-open breaker (chooseTrial), beside the workers, which all hold
// studies whose trial failed: a failure is held, with its message in
// progress, as theirs. ctx stops the pull, workCtx the work, as a
// worker's. While the forwarder is paused (Options.Paused) the trial
// waits for the pause to end, the breaker half-open: a pull that took
// nothing because of the pause says nothing of the queue, and taken for
// an empty one it closed the breaker, every worker then going to the
// destination untried at the pause's end.
func (f *Forwarder) runPulledTrial(ctx, workCtx context.Context) {
	var msg jetstream.Msg
	var lane events.Priority
	var done func()
	for {
		paused := f.plan.isPaused()
		msg, lane, done = f.nextTrial(ctx)
		if msg != nil && f.givenBackPaused(ctx, msg, lane) {
			done()
			msg = nil
		}
		if msg != nil || ctx.Err() != nil || !paused && !f.plan.isPaused() {
			break
		}
		sleep(ctx, idlePull)
	}
	if msg == nil {
		f.breaker.pulledTrialEnded(false, false)
		return
	}
	t := &pulledTrial{}
	if f.plan.elsewhere(lane, msg.Subject()) {
		f.settleElsewhere(workCtx, msg, lane)
	} else {
		f.handle(context.WithValue(workCtx, pulledTrialKey{}, t), msg, lane)
	}
	done()
	if !t.released {
		f.breaker.pulledTrialEnded(true, t.used)
	}
}

// nextTrial is next for a trial: it takes an event from the highest open
// lane holding one, and does not wait for one to come: when none waits,
// a held study is the trial at once.
func (f *Forwarder) nextTrial(ctx context.Context) (msg jetstream.Msg, lane events.Priority, done func()) {
	if ctx.Err() != nil {
		return nil, "", nil // stopping: take nothing new
	}
	return f.takeWaiting(ctx, f.plan.open(false))
}

// startTrialPulls lets the breaker pull trials (runPulledTrial) until it
// stops; wait waits for those still in hand.
func (f *Forwarder) startTrialPulls(ctx, workCtx context.Context) (wait func()) {
	var wg sync.WaitGroup
	if !f.breaker.enabled() {
		return wg.Wait
	}
	f.breaker.mu.Lock()
	// Called under the breaker's lock, never once it stopped: no Go after
	// the Wait.
	f.breaker.pullTrial = func() { wg.Go(func() { f.runPulledTrial(ctx, workCtx) }) }
	f.breaker.maxPulled = min(maxPulledTrials, max(f.opts.Concurrency, 1))
	f.breaker.mu.Unlock()
	return func() {
		f.breaker.stop()
		wg.Wait()
	}
}

// breakerChanged counts and logs a change of the breaker's state.
func (f *Forwarder) breakerChanged(from, to BreakerState) {
	f.m.breakerState.Set(float64(to))
	f.m.breakerTransitions.WithLabelValues(to.String()).Inc()
	switch to {
	case BreakerOpen:
		if from == BreakerClosed {
			f.log.Error("circuit breaker open: the destination is down; studies are held and no more are pulled until a probe finds it back",
				"after_failures", f.breaker.failures, "probe_in", f.breaker.wait.String())
		} else {
			f.log.Warn("circuit breaker trial failed: open again", "probe_in", f.breaker.wait.String())
		}
	case BreakerHalfOpen:
		f.log.Info("circuit breaker half-open: the destination answers a probe; one study is tried")
	case BreakerClosed:
		f.log.Info("circuit breaker closed: the destination is back; held and queued studies go at full speed")
		if f.limit != nil && from != BreakerClosed {
			// The outage's refusals halved the limit down to its floor:
			// start again as at the beginning.
			f.limit.Recover()
		}
	}
}

// pseudonymProber makes a de-identifying destination (Deidentified) be
// probed under the study's pseudonym, as verify asks it: the original
// Study Instance UID must never reach it, nor its access logs.
func pseudonymProber(p Prober, d Destination) Prober {
	keyed := StudyPseudonym(d)
	if p == nil || keyed == nil {
		return p
	}
	return keyedProber{next: p, keyed: keyed}
}

type keyedProber struct {
	next  Prober
	keyed func(string) string
}

func (p keyedProber) Probe(ctx context.Context, studyInstanceUID string) error {
	return p.next.Probe(ctx, p.keyed(studyInstanceUID))
}
