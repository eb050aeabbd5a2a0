package auth

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/stowline/stowline/internal/retryafter"
)

// TokenError is the error returned when the token endpoint could not be
// reached or refused to issue a token. It matches ErrToken with errors.Is.
// Its text names the provider, the server's error and error_description
// verbatim, and never contains the client secret or a JWT.
type TokenError struct {
	Provider    string // "generic", "azure", "google"
	TokenURL    string // without user info or query
	StatusCode  int    // HTTP status of the token endpoint; 0 if none was received
	Code        string // RFC 6749 "error", e.g. "invalid_client"
	Description string // RFC 6749 "error_description", e.g. Entra's "AADSTS7000215: ..."
	// RetryAfter is the server's Retry-After (429, 503), at most
	// maxTokenRetryAfter; 0 if none.
	RetryAfter time.Duration
	// Attempts is how many requests were made (retries included).
	Attempts int
	msg      string // scrubbed text of Err
	// retryStatus: StatusCode is one of the endpoint's RetryStatuses.
	retryStatus bool
	// Err is the underlying error, e.g. *oauth2.RetrieveError or a network
	// error. Its own text is not scrubbed: log the TokenError, not Err.
	Err error
}

func (e *TokenError) Error() string {
	where := e.TokenURL
	if e.Provider != "" {
		where = e.Provider + " token endpoint " + e.TokenURL
	}
	return fmt.Sprintf("%v from %s: %s", ErrToken, where, e.msg)
}

// Unwrap lets errors.Is match ErrToken and the underlying error.
func (e *TokenError) Unwrap() []error { return []error{ErrToken, e.Err} }

// Temporary reports whether trying again later may succeed: no answer at
// all, or 408, 429, 5xx or one of the endpoint's RetryStatuses. A refusal
// (other 4xx), a configuration error, a refused certificate or a
// redirect to another origin needs an operator.
func (e *TokenError) Temporary() bool {
	if errors.Is(e.Err, ErrInvalidConfig) || isTLSRefusal(e.Err) || errors.Is(e.Err, ErrCrossOriginRedirect) {
		return false
	}
	s := e.StatusCode
	return s == 0 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500 || e.retryStatus
}

// isTLSRefusal reports a certificate the client or the server refused:
// a configuration problem (TLS_CA_FILE, TLS_CERT_FILE) that retrying now
// cannot fix.
func isTLSRefusal(err error) bool {
	var verr *tls.CertificateVerificationError
	var alert tls.AlertError
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var op *net.OpError // a TLS alert from the peer, e.g. "certificate required"
	return errors.As(err, &verr) || errors.As(err, &alert) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		(errors.As(err, &op) && op.Op == "remote error")
}

// maxBodyInError limits how much of a non-OAuth2 error body ends up in logs.
const maxBodyInError = 200

func (ts *TokenSource) tokenError(err error) *TokenError {
	raw := ts.ep.TokenURL()
	te := &TokenError{Provider: ts.ep.Provider, TokenURL: safeURL(raw), Err: err}
	var msg string
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		te.Code, te.Description = re.ErrorCode, re.ErrorDescription
		if te.Code == "" {
			// Some grants (x/oauth2/jwt) leave the RFC 6749 body unparsed.
			var body struct {
				Code        string `json:"error"`
				Description string `json:"error_description"`
			}
			if json.Unmarshal(re.Body, &body) == nil {
				te.Code, te.Description = body.Code, body.Description
			}
		}
		if re.Response != nil {
			te.StatusCode = re.Response.StatusCode
			te.retryStatus = slices.Contains(ts.ep.RetryStatuses, te.StatusCode)
			msg = re.Response.Status
			te.RetryAfter = min(retryafter.FromHeader(re.Response.Header, time.Now()), maxTokenRetryAfter)
		}
		if prefix := strings.TrimSuffix(strings.TrimSpace(strings.TrimSuffix(err.Error(), re.Error())), ":"); prefix != "" && prefix != err.Error() {
			// Context added by the endpoint, e.g. "OpenID discovery at ...".
			msg = prefix + ": " + msg
		}
		switch {
		case te.Code != "":
			msg += ": " + te.Code
			if te.Description != "" {
				msg += ": " + te.Description
			}
		case len(re.Body) > 0:
			// Scrub before truncating, so no partial secret survives the cut.
			body := []rune(oneLine(ts.scrub(string(re.Body))))
			if len(body) > maxBodyInError {
				body = append(body[:maxBodyInError], []rune("...")...)
			}
			msg += ": " + string(body)
		}
	} else {
		msg = err.Error()
	}
	if u, perr := url.Parse(raw); perr == nil && u.RawQuery != "" {
		// Go's *url.Error quotes the request's URL, query included.
		msg = strings.ReplaceAll(msg, "?"+u.RawQuery, "")
	}
	// One line: an HTML error page or Entra's description (CR LF before
	// its trace IDs) would break a text log line and forwarder check's
	// table. Scrubbed again: joining lines must not rebuild a secret.
	te.msg = ts.scrub(oneLine(ts.scrub(msg)))
	return te
}

// oneLine joins s's lines, and runs of spaces, into single spaces.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// safeURL is a URL fit for errors: without user info, query or fragment,
// where a credential could sit (as the startup log shows it).
func safeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// jwtPattern matches compact JWS/JWT strings (access tokens, client
// assertions) that a server might echo back.
var jwtPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)

// Other credentials an answer may echo: an Authorization header's token
// (opaque tokens of OAuth servers), Google's access tokens (ya29.), and
// an AWS session token (a SignatureDoesNotMatch answer quotes the
// canonical request, headers included).
var (
	bearerPattern     = regexp.MustCompile(`(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}`)
	googlePattern     = regexp.MustCompile(`\bya29\.[A-Za-z0-9._-]{8,}`)
	awsSessionPattern = regexp.MustCompile(`(?i)(x-amz-security-token\s*[:=]\s*)[A-Za-z0-9/+=%_-]{16,}`)
)

// RedactTokens replaces everything in s that looks like a credential
// stowline sends (a JWT, a bearer or Google access token, an AWS session
// token): a server's answer may echo what it was sent.
func RedactTokens(s string) string {
	s = jwtPattern.ReplaceAllString(s, "[REDACTED JWT]")
	s = bearerPattern.ReplaceAllString(s, "Bearer [REDACTED]")
	s = googlePattern.ReplaceAllString(s, "[REDACTED TOKEN]")
	return awsSessionPattern.ReplaceAllString(s, "${1}[REDACTED]")
}

// scrub removes the endpoint's secrets, as sent and as form-encoded, and
// anything that looks like a token from s: a misbehaving server may echo the
// request back in its error body.
func (ts *TokenSource) scrub(s string) string {
	var secrets []string
	if ts.ep.Secrets != nil {
		secrets = ts.ep.Secrets()
	}
	// Longest first: a secret that holds another (a half-written file's
	// part of the real one) is replaced whole, not in pieces.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, secret := range secrets {
		if secret == "" {
			continue
		}
		for _, v := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret)} {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return RedactTokens(s)
}
