package dicomweb

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/retryafter"
)

func readBody(r io.Reader, limit int64) (body []byte, tooLarge bool, err error) {
	body, err = io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(body)) > limit {
		return body[:limit], true, err
	}
	return body, false, err
}

func (c *Client) handleResponse(resp *http.Response, body []byte, tooLarge bool, readErr, writeErr error, sent int64, parts int, limit int64) (*Result, error) {
	status := resp.StatusCode
	ct := resp.Header.Get("Content-Type")
	if status >= 200 && status <= 299 {
		if isWriteFailure(writeErr) {
			return nil, fmt.Errorf("stow: server answered %d but %w: %w", status, errIncompleteBody, writeErr)
		}
		if readErr != nil {
			return nil, answerUnread(fmt.Errorf("stow: read %d response: %w", status, readErr))
		}
		if tooLarge {
			// Not read, so not known stored: the next delivery may
			// find them "already there" (MaybeStored).
			return nil, answerUnread(fmt.Errorf("%w: %d answer to a request of %d instances over %d bytes: not read, so none of them is known stored (the destination may hold them)",
				errResponseTooLarge, status, parts, limit))
		}
		res, err := parseResponse(ct, body, parts)
		if err != nil {
			return nil, notDICOMweb(fmt.Errorf("stow: %d response: %w", status, err))
		}
		if len(res.Stored)+len(res.Failed)+len(res.OtherFailures) == 0 {
			// An empty body, {} or a search answer is not a Store
			// Instances Response (PS3.18 requires the
			// ReferencedSOPSequence): something else answers at the URL,
			// or the destination could not read the request (Orthanc
			// answers 200 with empty sequences to a multipart body it
			// cannot split). Read as an answer that left every instance
			// out, it sent the whole request again each instance round,
			// then failed as "refused transiently".
			got := headerValue(ct)
			if got == "" {
				got = "none"
			}
			return nil, notDICOMweb(fmt.Errorf("stow: %w: %d answer (content type %q, %d bytes) names none of the %d instances sent, so none is known stored "+
				"(another service or a proxy answers at the URL, or the destination could not read the request)",
				errNoInstanceAnswered, status, got, len(body), parts))
		}
		res.StatusCode, res.BytesSent = status, sent
		return res, nil
	}
	he := newHTTPError(resp, body)
	if !tooLarge && readErr == nil && len(bytes.TrimSpace(body)) > 0 {
		if res, err := parseResponse(ct, body, parts); err == nil {
			res.StatusCode, res.BytesSent = status, sent
			he.Result = res
		}
	}
	return nil, he
}

// HTTPError is a non-2xx STOW-RS answer.
type HTTPError struct {
	StatusCode  int
	ContentType string
	// Body is the start of the response body (about 4 KiB), for logs and
	// failure reasons.
	Body string
	// Result is the parsed body when it was a STOW response (409 Conflict
	// per PS3.18; Orthanc also answers 400 with one, listing the instances
	// it did store).
	Result *Result
	// RetryAfter is the server's Retry-After, 0 if none.
	RetryAfter time.Duration
	// Location is the Location header of a redirect the client did not
	// follow (307 and 308 are not followed: the streamed body cannot be
	// sent twice). Point the base URL there.
	Location string
	// Challenge is why a bearer token was refused, from the answer's
	// WWW-Authenticate (RFC 6750 3: error, error_description), e.g.
	// "invalid_token: The access token is from wrong audience or
	// resource."; "" without one. A 401's body may be empty.
	Challenge string
}

func (e *HTTPError) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "stow: server answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Result != nil {
		fmt.Fprintf(&sb, " (stored %d, failed %d)", len(e.Result.Stored), len(e.Result.Failed)+len(e.Result.OtherFailures))
	} else if e.ContentType != "" {
		fmt.Fprintf(&sb, " (%s)", e.ContentType)
	}
	if e.Location != "" {
		fmt.Fprintf(&sb, " redirecting to %s", e.Location)
	}
	if e.Challenge != "" {
		sb.WriteString(": ")
		sb.WriteString(e.Challenge)
	}
	if s := snippet([]byte(e.Body), 200); s != "" && e.Result == nil {
		sb.WriteString(": ")
		sb.WriteString(s)
	}
	return sb.String()
}

// newHTTPError keeps an error answer as an HTTPError, fit for logs and
// dead letters: its headers bounded, its body's start with tokens
// redacted.
func newHTTPError(resp *http.Response, body []byte) *HTTPError {
	return &HTTPError{
		StatusCode:  resp.StatusCode,
		ContentType: headerValue(resp.Header.Get("Content-Type")),
		Location:    safeLocation(resp.Header.Get("Location")),
		Body:        errorBody(body),
		RetryAfter:  retryafter.FromHeader(resp.Header, time.Now()),
		Challenge:   bearerChallenge(resp.Header.Values("WWW-Authenticate")),
	}
}

// challengeParam matches an error or error_description parameter of a
// WWW-Authenticate challenge, quoted (RFC 6750 3) or a token.
var challengeParam = regexp.MustCompile(`(?i)(?:^|[\s,])(error|error_description)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))`)

// bearerChallenge is "error: error_description" of the first challenge
// that names an error, bounded and without tokens (it goes to logs and
// dead letters); "" if none does.
func bearerChallenge(challenges []string) string {
	for _, c := range challenges {
		var code, desc string
		for _, m := range challengeParam.FindAllStringSubmatch(c, -1) {
			v := m[2] + m[3]
			if strings.EqualFold(m[1], "error") {
				code = v
			} else {
				desc = v
			}
		}
		if code == "" {
			continue
		}
		if desc != "" {
			code += ": " + desc
		}
		return auth.RedactTokens(snippet([]byte(code), 300))
	}
	return ""
}

// headerValue is a header of an error answer as kept in an HTTPError:
// the server's to choose, so bounded.
func headerValue(v string) string { return snippet([]byte(v), 100) }

// safeLocation is a redirect's target fit for logs and dead letters:
// without user info or query (a signed URL's token), bounded.
func safeLocation(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(not a URL)"
	}
	return headerValue(logSafe(u))
}

// errorBody is the start of an error answer as kept in an HTTPError,
// which goes to logs and dead letters: a gateway that echoes the request
// could show the bearer token, so credentials are redacted, and so are
// the attribute values a DICOM server quotes (patient data).
func errorBody(body []byte) string {
	return redactBody(trimBody(body, maxErrorBody))
}

// trimBody keeps the start of body, cut on a character boundary, as valid
// UTF-8.
func trimBody(body []byte, limit int) string {
	b := bytes.TrimSpace(body)
	if len(b) > limit {
		cut := limit
		for i := limit; i > max(0, limit-utf8.UTFMax); i-- {
			if utf8.RuneStart(b[i]) {
				cut = i
				break
			}
		}
		b = b[:cut]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
