package forward

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// Class is what a failure means for the study: stowline's one failure
// taxonomy. Every error met while forwarding a study, and every
// per-instance Failure Reason a STOW-RS server returns, is classified
// here, and the forwarder acts on the class.
//
//	transient       retry with backoff (network, timeouts, 408, 429, 5xx,
//	                token endpoint or Orthanc unavailable, the destination
//	                refusing every STOW-RS request: refusesUs)
//	partial         some instances refused for good; the rest is stored;
//	                dead-letter with the list
//	permanent       retrying cannot help (400, 409 that is no duplicate,
//	                413 or IIS's 404.13, 415; a DELETE or query refused);
//	                dead-letter now
//	source-missing  the study is no longer in Orthanc; dead-letter
//	crash           forwarding it panicked, or its deliveries kept ending
//	                without an outcome (the process died); dead-letter now
//	conflict        the destination already holds instances with other
//	                content (STOW_ON_CONFLICT=deadletter, a replace that
//	                did not take) or kept them apart (AWS non-primary
//	                image set); a human decides; dead-letter now
type Class string

// The classes.
const (
	Transient     Class = "transient"
	Partial       Class = "partial"
	Permanent     Class = "permanent"
	SourceMissing Class = "source-missing"
	Crash         Class = "crash"
	Conflict      Class = "conflict"
)

// Classes lists every class, for metrics and validation.
var Classes = []Class{Transient, Partial, Permanent, SourceMissing, Crash, Conflict}

// ErrUnknownSource matches (errors.Is) Options.SourceFor's error for a
// source the forwarder is not configured with: handle gives such an
// event back for a forwarder that knows it (policy.unknownSource).
var ErrUnknownSource = errors.New("unknown source")

// DeadLetterNow reports whether a failure of class c goes to the
// dead-letter stream without further retries.
func (c Class) DeadLetterNow() bool { return c != Transient }

// Error is an error with a class decided where the context is known (the
// forwarder knows a 404 on the study listing means the study is gone).
type Error struct {
	Class Class
	Err   error
	// Instances are the per-instance failures (class partial).
	Instances []Instance
	// RetryAfter is the server's Retry-After, if any.
	RetryAfter time.Duration
	// conflicts: how many of Instances are conflicts dead-lettered
	// (STOW_ON_CONFLICT), counted once the letter is stored.
	conflicts int
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Instance is one instance the destination refused.
type Instance struct {
	SOPInstanceUID string `json:"sopInstanceUid"`
	FailureReason  int    `json:"failureReason"`
	Text           string `json:"text"`
}

// Classify returns the class of err. Unknown errors are transient: they
// are retried until the delivery limit, then dead-lettered, so nothing is
// lost to a misjudgement either way.
func Classify(err error) Class {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Class
	}
	if errors.As(err, new(*refusedError)) {
		// The destination refuses the request, whatever the study
		// (refusesUs): transient, and the destination down, as for a
		// token endpoint refusing the credentials below.
		return Transient
	}
	var he *dicomweb.HTTPError
	if errors.As(err, &he) {
		return classifyStatus(he.StatusCode)
	}
	var te *auth.TokenError
	if errors.As(err, &te) {
		// No token says nothing of the study, down or refusing alike:
		// a client secret that expired (every few months in Entra ID)
		// refuses every study the same, and as a permanent failure
		// dead-lettered the whole queue at once, for an operator to
		// replay. Transient, and the destination down
		// (DestinationDown): its breaker opens and holds the studies
		// until a probe gets a token again, once the credentials are
		// fixed.
		return Transient
	}
	var oe *orthancapi.Error
	if errors.As(err, &oe) {
		if oe.StatusCode >= 500 || oe.StatusCode == http.StatusRequestTimeout || oe.StatusCode == http.StatusTooManyRequests {
			return Transient
		}
		if errors.Is(err, orthancapi.ErrNotFound) {
			return SourceMissing
		}
		if oe.NotFromOrthanc != "" {
			return Transient // a proxy's 404: Orthanc may be back soon
		}
		return Permanent
	}
	if errors.Is(err, dicomweb.ErrRedirected) || errors.Is(err, dicomweb.ErrInvalidBaseURL) ||
		errors.Is(err, orthancapi.ErrInvalidID) || errors.Is(err, auth.ErrInvalidConfig) {
		return Permanent
	}
	// The rest, network errors, timeouts and a cut body among them.
	return Transient
}

// classifyStatus classifies a STOW-RS request's HTTP status (when the
// response carried no per-instance detail to act on).
func classifyStatus(status int) Class {
	switch {
	case status >= 200 && status < 300:
		return Transient // a success that did not confirm the instances
	case status >= 300 && status < 400:
		// A redirect the client did not follow (307, 308: the body is
		// streamed once). A STOW-RS request's is the destination
		// refusing us (refusesUs), classed before this; another
		// request's (a DELETE) says the base URL is to fix.
		return Permanent
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests,
		status == http.StatusInternalServerError, status == http.StatusBadGateway,
		status == http.StatusServiceUnavailable, status == http.StatusGatewayTimeout:
		return Transient
	case status == http.StatusFailedDependency:
		// Azure's DICOM service cannot reach what it depends on (its
		// Data Lake storage, the key vault of customer-managed keys):
		// its outage, not the study's fault (conformance statement v2).
		return Transient
	case status == http.StatusUnauthorized:
		// The forwarder retries a STOW-RS request once with a fresh
		// token; a 401 that survives it is the destination refusing us
		// (refusesUs), classed before this.
		return Permanent
	case status >= 400 && status < 500:
		return Permanent
	case status >= 500:
		return Transient
	}
	return Transient
}

// refusedError is a STOW-RS request's failure that refusesUs judged the
// destination refusing every request, not this study's: Classify and
// DestinationDown read it. Its text is the failure's own.
type refusedError struct{ err error }

func (r *refusedError) Error() string { return r.err.Error() }
func (r *refusedError) Unwrap() error { return r.err }

// markRefusal marks err, a STOW-RS request's failure, when refusesUs.
func markRefusal(err error) error {
	if err == nil || !refusesUs(err) {
		return err
	}
	return &refusedError{err: err}
}

// refusesUs reports whether a STOW-RS request's failure is the
// destination refusing the whole request rather than judging the
// study: a redirect (a maintenance page's 302, which turns the POST
// into a GET: ErrRedirected; a 307 or 308 not followed), a 401 after a
// fresh token, a 403, 404 or 405, without a STOW-RS answer naming any
// instance in the body (one that does is about them: it is sorted per
// instance). Azure's role not granted yet or removed (403 to every
// request), Google's IAM binding dropped (403) or its DICOM store
// re-created (404 for minutes), an ingress's default backend during an
// upgrade (404), a wrong base URL: every study gets the same answer
// until someone fixes it. As permanent failures they dead-lettered the
// whole queue one study after another at full speed, for an operator to
// replay; so does a token endpoint refusing the credentials, which has
// long held the queue instead (the breaker), as does the source
// Orthanc refusing the forwarder (sourceRefusesUs).
func refusesUs(err error) bool {
	if errors.Is(err, dicomweb.ErrRedirected) {
		return true
	}
	var he *dicomweb.HTTPError
	if !errors.As(err, &he) || he.Result != nil && len(he.Result.Stored)+len(he.Result.Failed)+len(he.Result.OtherFailures) > 0 || tooLargeAnswer(he) {
		return false
	}
	switch he.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
		return true
	}
	return he.StatusCode >= 300 && he.StatusCode < 400
}

// tooLargeAnswer reports whether he refuses a request for its size: a
// 413, or IIS request filtering's 404.13, which IIS (in front of a
// DICOMweb server on Windows) answers to any request over
// maxAllowedContentLength, 30,000,000 bytes by default. Taken for the
// destination refusing every request (refusesUs), such a study was held
// for ever, or dead-lettered after all its deliveries, instead of at
// once with what to change. IIS's detailed page names the substatus or
// the setting; its default page for remote clients ("404 - File or
// directory not found.") names neither and stays a refusal. Not every
// request filtering page: 404.7, 404.11, 404.15 refuse other things.
func tooLargeAnswer(he *dicomweb.HTTPError) bool {
	switch he.StatusCode {
	case http.StatusRequestEntityTooLarge:
		return true
	case http.StatusNotFound:
		b := strings.ToLower(he.Body)
		return strings.Contains(b, "404.13") || strings.Contains(b, "maxallowedcontentlength") ||
			strings.Contains(b, "exceeds the request content length")
	}
	return false
}

// Outcome is what to do with one instance the destination listed as
// failed.
type Outcome int

// The outcomes.
const (
	// Stored: the destination has the instance (already-stored forms).
	Stored Outcome = iota
	// Retry: re-send this instance.
	Retry
	// Reject: the destination refuses it for good.
	Reject
)

func (o Outcome) String() string {
	switch o {
	case Stored:
		return "stored"
	case Retry:
		return "retry"
	}
	return "reject"
}

// Duplicate SOP Instance (PS3.7 C.4.2.1.4): the destination already has
// it, so it counts as stored (when no conflict rule claims it first).
const failureDuplicateSOPInstance = 0x0111

// PS3.7 C.5 failures that say the destination is busy, not that the
// instance is at fault.
const (
	failureDuplicateInvocation = 0x0210
	failureResourceLimitation  = 0x0213
)

// classifyInstance decides from a FailedSOPSequence item's Failure Reason.
// A code not named here is judged by its class (PS3.7 C.1, PS3.4 B.2.3):
// 0xA7xx out of resources is retried; 0xA9xx, 0xCxxx, and the general
// failures 0x01xx and 0x02xx (an invalid instance, a missing or invalid
// attribute, a class-instance conflict: PS3.7 C.4, C.5) refuse the
// instance as sent, so retrying cannot help; any other, a vendor's
// code, is retried, bounded by the delivery limit.
func classifyInstance(reason int) Outcome {
	switch reason {
	case dicomweb.FailureAzureAlreadyExists, failureDuplicateSOPInstance:
		return Stored
	case dicomweb.FailureProcessing, dicomweb.FailureAzureBeingCreated, failureDuplicateInvocation, failureResourceLimitation:
		return Retry
	case dicomweb.FailureSOPClassNotSupported, dicomweb.FailureTransferSyntaxNotSupported, dicomweb.FailureNotAuthorized:
		return Reject
	}
	switch {
	case dicomweb.ArchiveRefusal(reason):
		// dcm4chee's refusals of the instance (a conflicting Patient
		// ID, one missing, a rejected instance sent again), in the
		// out-of-resources range: the same answer each time.
		return Reject
	case reason&0xFF00 == 0xA700: // Refused: out of resources
		return Retry
	case reason&0xFF00 == 0xA900, reason&0xF000 == 0xC000: // data set / cannot understand
		return Reject
	case reason == 0:
		// Listed as failed without a reason: worth another try.
		return Retry
	case reason&0xFF00 == 0x0100, reason&0xFF00 == 0x0200:
		return Reject
	}
	// Unknown codes: retry; the delivery limit bounds it.
	return Retry
}

// Describe gives a short text for a Failure Reason.
func Describe(reason int) string {
	if reason == failureDuplicateSOPInstance {
		return "duplicate SOP instance (already stored)"
	}
	return dicomweb.FailureReasonText(reason)
}

// Errorf builds a classified error.
func Errorf(c Class, format string, args ...any) *Error {
	return &Error{Class: c, Err: fmt.Errorf(format, args...)}
}
