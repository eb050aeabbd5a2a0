package dicomweb

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/stowline/stowline/auth"
)

// Sentinel errors, matched with errors.Is; errors returned by this package
// wrap them with context.
var (
	// errInvalidBoundary means a boundary breaks the RFC 2046 grammar.
	errInvalidBoundary = errors.New("stow: invalid multipart boundary")

	// ErrInvalidBaseURL means New was given an unusable base URL.
	ErrInvalidBaseURL = errors.New("stow: invalid base URL")

	// errInvalidPart means a Part cannot be sent (no Open function).
	errInvalidPart = errors.New("stow: invalid part")
	// errPathSegment: a UID that cannot be one segment of a URL's path.
	errPathSegment = errors.New("dicomweb: not a path segment")

	// errNoParts means Store was called with nothing to send.
	errNoParts = errors.New("stow: no parts to store")

	// errResponseTooLarge means a success response body exceeded the
	// client's limit (maxResponseBytes, raised by answerBytesPerInstance).
	errResponseTooLarge = errors.New("stow: response body too large")

	// errUnexpectedContentType means the response is neither DICOM JSON
	// nor DICOM XML (for example an HTML error page from a proxy).
	errUnexpectedContentType = errors.New("stow: unexpected response content type")

	// errNoInstanceAnswered means a success answer names no instance at
	// all: not a Store Instances Response.
	errNoInstanceAnswered = errors.New("not a STOW-RS answer")

	// errMalformedResponse means the body claims to be DICOM JSON or XML
	// but cannot be decoded.
	errMalformedResponse = errors.New("stow: malformed STOW-RS response")

	// errNotSTOWResponse means the body is well-formed JSON or XML but not
	// a DICOM data set (for example Orthanc's {"HttpError": ...} object).
	errNotSTOWResponse = errors.New("stow: response is not a STOW-RS response")

	// ErrRedirected means the http.Client followed a redirect that turned
	// the POST into a GET; fix the base URL (often http:// instead of
	// https://).
	ErrRedirected = errors.New("stow: request was redirected")

	// errIncompleteBody means the server answered with success although
	// the request body could not be sent completely.
	errIncompleteBody = errors.New("stow: request body was not sent completely")

	// ErrNoAnswer means a request got no HTTP answer: the connection was
	// refused or reset, a dial, TLS or response time-out, or the
	// authentication transport could not get a token. The destination (or
	// the way to it) is down, whatever the request was.
	ErrNoAnswer = errors.New("no answer from the destination")

	// ErrNotConnected marks an ErrNoAnswer whose request got no
	// connection to the destination: nothing of it was sent, so the
	// failure says the way to the destination, never the request. A
	// proxy that answers its CONNECT with an error status (a 502 from an
	// egress proxy whose upstream refused) is told apart from a failure
	// on a connection that was made only so: net/http returns its status
	// text as a plain error.
	ErrNotConnected = errors.New("no connection to the destination")

	// ErrNotDICOMweb means a success answer was not the DICOMweb
	// service's: an HTML page, an empty body, another API's JSON. Something
	// else answers at the URL (a proxy or firewall's page, a wrong base
	// URL), most likely for every request, whatever the study.
	ErrNotDICOMweb = errors.New("not a DICOMweb answer")

	// errSizeMismatch means a part's content was not Part.Size bytes long
	// while the request announced its length (WithContentLength).
	errSizeMismatch = errors.New("stow: part content does not match its size")
)

// noAnswer marks err as ErrNoAnswer and keeps its text; not a refusal of
// this host's clock by the signing transport (auth.ErrClockSkew): the
// destination answered that, and a request signed at its time goes
// through (send and doBodiless send it again), so it must not count the
// destination down for its breaker.
func noAnswer(err error) error {
	if errors.Is(err, auth.ErrClockSkew) {
		return err
	}
	return &noAnswerError{err: err}
}

type noAnswerError struct{ err error }

func (e *noAnswerError) Error() string   { return e.err.Error() }
func (e *noAnswerError) Unwrap() []error { return []error{e.err, ErrNoAnswer} }

// errAnswerUnread marks a STOW-RS request whose body went, whole or in
// part, and whose answer could not be read (MaybeStored).
var errAnswerUnread = errors.New("stow: the request's answer was not read")

// answerUnread marks err as errAnswerUnread and keeps its text.
func answerUnread(err error) error { return &answerUnreadError{err: err} }

type answerUnreadError struct{ err error }

func (e *answerUnreadError) Error() string   { return e.err.Error() }
func (e *answerUnreadError) Unwrap() []error { return []error{e.err, errAnswerUnread} }

// MaybeStored reports whether a failed Store or Upsert may have stored
// its instances all the same: its body went, whole or in part, and no
// answer saying what became of them was read (the connection broke or
// stalled after it was sent, on a new connection or twice; a 2xx answer
// unreadable or too large; a 408 or 5xx without a STOW-RS body, such as
// a proxy's 502 or 504 while the server behind it went on storing, but
// 501, 503 and 505, which say it was not served). A
// later "already exists" for one of them may then be the caller's own
// copy.
func MaybeStored(err error) bool {
	if errors.Is(err, errAnswerUnread) {
		return true
	}
	he, ok := errors.AsType[*HTTPError](err)
	if !ok || he.Result != nil && len(he.Result.Stored)+len(he.Result.Failed) > 0 {
		return false
	}
	switch he.StatusCode {
	case http.StatusNotImplemented, http.StatusServiceUnavailable, http.StatusHTTPVersionNotSupported:
		return false // the request was not served (RFC 9110 15.6)
	}
	return he.StatusCode == http.StatusRequestTimeout || he.StatusCode >= 500
}

// brokenBodyError is a request whose body broke off on one part: its
// source failed, stalled or did not hold Part.Size bytes.
type brokenBodyError struct {
	uid string
	err error
}

func (e *brokenBodyError) Error() string { return e.err.Error() }
func (e *brokenBodyError) Unwrap() error { return e.err }

// BrokenAt reports the SOP Instance UID of the part on which a failed
// Store or Upsert's body broke off, whatever broke it (its source's
// error, a stall, a size other than Part.Size), answered or not: the
// parts before it went whole, so a destination that stores parts as it
// reads them may hold them.
func BrokenAt(err error) (uid string, ok bool) {
	be, ok := errors.AsType[*brokenBodyError](err)
	if !ok {
		return "", false
	}
	return be.uid, true
}

// RenameBroken returns err with the part BrokenAt names renamed by
// rename: a wrapper that sends parts under other UIDs (a de-identifying
// destination) maps the name back to the caller's. err is returned as it
// is when its body did not break or rename does not know the name.
func RenameBroken(err error, rename func(uid string) (string, bool)) error {
	uid, ok := BrokenAt(err)
	if !ok {
		return err
	}
	to, ok := rename(uid)
	if !ok {
		return err
	}
	return &brokenBodyError{uid: to, err: err}
}

// notDICOMweb marks err as ErrNotDICOMweb and keeps its text.
func notDICOMweb(err error) error { return &notDICOMwebError{err: err} }

type notDICOMwebError struct{ err error }

func (e *notDICOMwebError) Error() string   { return e.err.Error() }
func (e *notDICOMwebError) Unwrap() []error { return []error{e.err, ErrNotDICOMweb} }

// notConnected marks err, a request's that got no connection to the
// destination, as ErrNotConnected; worded "no token" when the request
// had no token to send (the token endpoint refused the credentials or
// failed): said "no connection", it sent the operator to the network.
func notConnected(err error) error {
	if errors.As(err, new(*auth.TokenError)) {
		return noToken{err}
	}
	return fmt.Errorf("%w: %w", ErrNotConnected, err)
}

// noToken is an ErrNotConnected for want of a token.
type noToken struct{ err error }

func (e noToken) Error() string   { return "no token for the destination: " + e.err.Error() }
func (e noToken) Unwrap() []error { return []error{ErrNotConnected, e.err} }
