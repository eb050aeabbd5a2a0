package orthancapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/stowline/stowline/internal/ellipsis"
)

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotFound: Orthanc answered 404 (unknown resource). A 404 that
	// may be a proxy's (see Error.NotFromOrthanc) does not match.
	ErrNotFound = errors.New("orthancapi: not found")
	// ErrInvalidID: an Orthanc ID is malformed; no request was sent.
	ErrInvalidID = errors.New("orthancapi: invalid Orthanc ID")
)

// Error is a non-200 answer from Orthanc.
type Error struct {
	Method, Path string
	StatusCode   int
	// OrthancMessage and OrthancDetails come from Orthanc's JSON error
	// body ("Message", "Details"); empty when there is none (Orthanc sends
	// an empty 404 for unknown studies, for example).
	OrthancMessage string
	OrthancDetails string
	// NotFromOrthanc, for a 404, says why the answer is not taken for
	// Orthanc's own: a reverse proxy in front of Orthanc answers 404 too
	// (Traefik or an ingress while Orthanc's pod is replaced, a path not
	// routed), and reading that as "deleted" would skip a study for good.
	// Empty when Orthanc's answer is confirmed.
	NotFromOrthanc string
	// refused, for a 401, says what it means: Orthanc's own has no body.
	refused string
}

// Error returns a one-line description.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "orthancapi: %s %s: HTTP %d", e.Method, e.Path, e.StatusCode)
	if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteString(" " + t)
	}
	if e.OrthancMessage != "" {
		b.WriteString(": " + e.OrthancMessage)
	}
	if e.OrthancDetails != "" {
		b.WriteString(" (" + e.OrthancDetails + ")")
	}
	if e.NotFromOrthanc != "" {
		b.WriteString(", not taken for Orthanc's answer: " + e.NotFromOrthanc)
	}
	if e.refused != "" {
		b.WriteString(" (" + e.refused + ")")
	}
	return b.String()
}

// Is makes errors.Is(err, ErrNotFound) true for Orthanc's own 404.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound && e.NotFromOrthanc == ""
}

// orthancErrorBody is Orthanc's JSON error answer (with "HttpDescribeErrors",
// on by default).
type orthancErrorBody struct {
	Message      string
	Details      string
	OrthancError string
	HttpStatus   int
}

func newError(method, path string, resp *http.Response) *Error {
	e := &Error{Method: method, Path: path, StatusCode: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var body orthancErrorBody
	// Only Orthanc's own JSON is used: other bodies (a proxy's HTML page)
	// say nothing useful and could be large.
	isJSON := json.Unmarshal(b, &body) == nil
	if isJSON {
		e.OrthancMessage = oneLine(body.Message)
		if e.OrthancMessage == "" {
			e.OrthancMessage = oneLine(body.OrthancError)
		}
		e.OrthancDetails = oneLine(body.Details)
	}
	// Orthanc's 404 is empty (an unknown study) or its JSON error (an
	// unknown route or child resource); anything else is someone else's.
	if e.StatusCode == http.StatusNotFound && len(b) > 0 && (!isJSON || body.HttpStatus != http.StatusNotFound) {
		e.NotFromOrthanc = "its body is not Orthanc's"
	}
	return e
}

// oneLine keeps an error message on one line and short.
func oneLine(s string) string {
	return ellipsis.Truncate(strings.Join(strings.Fields(s), " "), 300)
}
