package dicomweb

import "errors"

// Sentinel errors; match them with errors.Is. Errors returned by this
// package wrap them with context.
var (
	// ErrBoundaryCollision means a part's content contains the multipart
	// delimiter. The request was aborted before the delimiter was sent;
	// retry with a fresh boundary (Store already retries once).
	ErrBoundaryCollision = errors.New("stow: part content contains the multipart boundary")

	// ErrInvalidBoundary means a boundary breaks the RFC 2046 grammar.
	ErrInvalidBoundary = errors.New("stow: invalid multipart boundary")

	// ErrInvalidHeader means a part header field would break the framing.
	ErrInvalidHeader = errors.New("stow: invalid part header")

	// ErrWriterClosed means WritePart was called after Close.
	ErrWriterClosed = errors.New("stow: multipart writer closed")

	// ErrInvalidBaseURL means New was given an unusable base URL.
	ErrInvalidBaseURL = errors.New("stow: invalid base URL")

	// ErrInvalidPart means a Part cannot be sent (no Open function).
	ErrInvalidPart = errors.New("stow: invalid part")

	// ErrNoParts means Store was called with nothing to send.
	ErrNoParts = errors.New("stow: no parts to store")

	// ErrResponseTooLarge means a success response body exceeded the
	// client's limit (WithMaxResponseBytes).
	ErrResponseTooLarge = errors.New("stow: response body too large")

	// ErrUnexpectedContentType means the response is neither DICOM JSON
	// nor DICOM XML (for example an HTML error page from a proxy).
	ErrUnexpectedContentType = errors.New("stow: unexpected response content type")

	// ErrMalformedResponse means the body claims to be DICOM JSON or XML
	// but cannot be decoded.
	ErrMalformedResponse = errors.New("stow: malformed STOW-RS response")

	// ErrNotSTOWResponse means the body is well-formed JSON or XML but not
	// a DICOM data set (for example Orthanc's {"HttpError": ...} object).
	ErrNotSTOWResponse = errors.New("stow: response is not a STOW-RS response")

	// ErrRedirected means the http.Client followed a redirect that turned
	// the POST into a GET; fix the base URL (often http:// instead of
	// https://).
	ErrRedirected = errors.New("stow: request was redirected")

	// ErrIncompleteBody means the server answered with success although
	// the request body could not be sent completely.
	ErrIncompleteBody = errors.New("stow: request body was not sent completely")

	// ErrSizeMismatch means a part's content was not Part.Size bytes long
	// while the request announced its length (WithContentLength).
	ErrSizeMismatch = errors.New("stow: part content does not match its size")
)
