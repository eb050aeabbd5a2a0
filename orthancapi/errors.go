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
	// ErrNotFound: Orthanc answered 404 (unknown resource).
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
	return b.String()
}

// Is makes errors.Is(err, ErrNotFound) true for a 404.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
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
	if json.Unmarshal(b, &body) == nil {
		e.OrthancMessage = oneLine(body.Message)
		if e.OrthancMessage == "" {
			e.OrthancMessage = oneLine(body.OrthancError)
		}
		e.OrthancDetails = oneLine(body.Details)
	}
	return e
}

// oneLine keeps an error message on one line and short.
func oneLine(s string) string {
	return ellipsis.Truncate(strings.Join(strings.Fields(s), " "), 300)
}
