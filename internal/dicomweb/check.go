package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// errCheckFailed is returned (wrapped) when the check did not pass.
var errCheckFailed = errors.New("destination check failed")

// Credential is what the check may say about a credential.
type Credential struct {
	// Kind, e.g. "azure client certificate", "AWS SigV4 (medical-imaging, eu-west-1)".
	Kind string
	// Source is where it came from: a token endpoint URL, an AWS
	// credential provider name.
	Source string
	// Lifetime left, 0 if unknown or unlimited.
	Lifetime time.Duration
	Expiry   time.Time
	// Scopes granted, Roles (Entra application permissions), Audience.
	Scopes, Roles, Audience []string
	// Requested scopes, for comparison.
	Requested []string
	Issuer    string
	ClientID  string
	// OAuth says the credential is an OAuth2 token (scopes apply).
	OAuth bool
}

// CheckOptions configure Check.
type CheckOptions struct {
	// BaseURL is DICOMWEB_URL.
	BaseURL string
	// VarName names the destination's variable whose default
	// destination's name is given (DICOMWEB_URL, TLS_CA_FILE): verdicts
	// name what the operator set. Nil: the default destination's names.
	VarName func(string) string
	// Client sends authenticated requests to the destination.
	Client *http.Client
	// Credential obtains the credential; nil means the destination is
	// used without authentication.
	Credential func(ctx context.Context) (Credential, error)
	// Timeout bounds each step (default 30 s).
	Timeout time.Duration
	// SeriesSearch: the destination searches instances only within a
	// series (AWS HealthImaging, WithSeriesSearch), so the check also
	// sends the forwarder's two searches, a study's series and a series'
	// instances, for a study no archive holds.
	SeriesSearch bool
}

// CheckReport is the outcome of Check.
type CheckReport struct {
	Credential     *Credential // nil without authentication
	CredentialErr  error
	CredentialTook time.Duration
	RequestURL     string
	Status         int
	StatusText     string
	RequestTook    time.Duration
	RequestErr     error
	// Searches are the SeriesSearch requests and their answers.
	Searches []string
	// Detail is the start of an error answer's body or its WWW-Authenticate.
	Detail string
	OK     bool
	// Verdict is one line an operator can act on.
	Verdict string
}

// Check checks the destination's setup. It returns an error when the
// verdict is negative; the CheckReport says why either way.
func Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	r := &CheckReport{}
	if o.Credential != nil {
		cctx, cancel := context.WithTimeout(ctx, o.Timeout)
		start := time.Now()
		cred, err := o.Credential(cctx)
		cancel()
		r.CredentialTook = time.Since(start)
		if err != nil {
			r.CredentialErr = err
			r.Verdict = "FAIL: no credential could be obtained; the forwarder would fail every study the same way. Fix the identity provider settings (the error above quotes the provider's answer)."
			return r, fmt.Errorf("%w: %w", errCheckFailed, err)
		}
		r.Credential = &cred
	}

	u, err := url.Parse(o.BaseURL)
	if err != nil {
		return r, fmt.Errorf("%w: %s: %w", errCheckFailed, o.varName("DICOMWEB_URL"), err)
	}
	base := *u
	u = u.JoinPath("studies")
	// The base URL's own query (an API key) goes with the check, as with
	// every request, but never into its report.
	q := u.Query()
	q.Set("limit", "1")
	u.RawQuery = q.Encode()
	r.RequestURL = logSafe(u) + "?limit=1"
	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return r, fmt.Errorf("%w: %w", errCheckFailed, err)
	}
	req.Header.Set("Accept", "application/dicom+json")
	// A redirect is not followed but reported: a STOW-RS request cannot
	// follow one (the POST turns into a GET, or the streamed body cannot
	// be sent again), so a check that passed through one, even to the
	// same path under https://, would pass a destination that refuses
	// every study.
	hc := *o.Client
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	start := time.Now()
	resp, err := hc.Do(req)
	r.RequestTook = time.Since(start)
	if err != nil {
		err = redactURLError(err, r.RequestURL)
		r.RequestErr = err
		r.Verdict = "FAIL: the destination could not be reached (network, DNS, proxy or TLS: see " + o.varName("TLS_CA_FILE") + ", " + o.varName("TLS_CERT_FILE") + ")."
		return r, fmt.Errorf("%w: %w", errCheckFailed, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	r.Status, r.StatusText = resp.StatusCode, resp.Status
	baseVar := o.varName("DICOMWEB_URL")
	switch {
	case resp.StatusCode/100 == 3:
		// An authenticating proxy's login page would have answered 200.
		r.Detail = "(no Location)"
		if loc, err := resp.Location(); err == nil {
			r.Detail = headerValue(logSafe(loc))
		}
		r.Verdict = "FAIL: the destination redirected the request (to the answer's address above: https:// for http://, another base URL, or a login page), and STOW-RS requests do not follow redirects: set " + baseVar + " to the base URL the destination serves, and check that it takes this credential without a browser."
	case resp.StatusCode == http.StatusOK && !searchAnswer(body):
		ct := headerValue(resp.Header.Get("Content-Type"))
		if ct == "" {
			ct = "no Content-Type"
		}
		r.Detail = ct + ": " + redactedSnippet(body)
		r.Verdict = "FAIL: the destination answered 200, but not a DICOMweb search answer (a JSON array): something else answers at " + baseVar + " (a web application's page, another API); set it to the DICOMweb base URL, the one {" + baseVar + "}/studies is under."
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNoContent:
		r.OK = true
		r.Verdict = "OK: the destination accepted an authenticated DICOMweb request. (This proves authentication and read access; storing needs the write role too: Azure DICOM Data Owner, Google roles/healthcare.dicomEditor, AWS medical-imaging:StoreDICOM.)"
		if o.Credential == nil {
			r.Verdict = "OK: the destination answered without authentication."
		}
		if o.SeriesSearch {
			return r, checkSeriesSearches(ctx, o, &hc, &base, r)
		}
		return r, nil
	case resp.StatusCode == http.StatusUnauthorized:
		r.Detail = firstNonEmpty(redactedSnippet([]byte(resp.Header.Get("WWW-Authenticate"))), redactedSnippet(body))
		r.Verdict = "FAIL: the destination refused the credential (401): check the scope or audience the token is for, and that the destination trusts this identity provider."
		if o.Credential == nil {
			// No credential was sent: "refused" would send the reader
			// to scopes and audiences of a token that does not exist.
			r.Verdict = "FAIL: the destination wants authentication (401) and none is configured: set " + o.varName("OAUTH_PROVIDER") + " (azure, google, aws), or " +
				o.varName("OAUTH_TOKEN_URL") + " (or " + o.varName("OAUTH_ISSUER_URL") + ") with " + o.varName("OAUTH_CLIENT_ID") + " and " + o.varName("OAUTH_CLIENT_SECRET") + " (docs/auth.md)."
		}
	case resp.StatusCode == http.StatusForbidden:
		r.Detail = redactedSnippet(body)
		r.Verdict = "FAIL: authenticated, but not allowed (403): grant the identity its role on the destination (Azure DICOM Data Owner, Google roles/healthcare.dicomEditor, AWS medical-imaging:StoreDICOM, SearchDICOMSeries and SearchDICOMInstances, and SearchDICOMStudies for this check)."
	case resp.StatusCode == http.StatusNotFound:
		r.Detail = redactedSnippet(body)
		r.Verdict = "FAIL: no DICOMweb service at " + baseVar + " (404): check the base URL (it must be the one {" + baseVar + "}/studies is under)."
	default:
		r.Detail = redactedSnippet(body)
		r.Verdict = fmt.Sprintf("FAIL: the destination answered %s.", resp.Status)
	}
	return r, fmt.Errorf("%w: %s", errCheckFailed, resp.Status)
}

// checkUID names the study and series of the SeriesSearch requests: one
// no archive holds (a DICOM UID of the 2.25 UUID root), so that a
// search allowed is an empty result and one not allowed a 403 (AWS
// decides on the action before it looks).
const checkUID = "2.25.0"

// checkSeriesSearches sends the forwarder's searches of a destination
// that searches instances only within a series, the first answer
// allowed (r.OK), and fails r on the first refused.
func checkSeriesSearches(ctx context.Context, o CheckOptions, hc *http.Client, base *url.URL, r *CheckReport) error {
	searches := []struct {
		action, tag string
		path        []string
	}{
		{"SearchDICOMSeries", tagSeriesInstanceUID, []string{"studies", checkUID, "series"}},
		{"SearchDICOMInstances", tagSOPInstanceUID, []string{"studies", checkUID, "series", checkUID, "instances"}},
	}
	fail := func(verdict string, err error) error {
		r.OK, r.Verdict = false, verdict
		return fmt.Errorf("%w: %w", errCheckFailed, err)
	}
	for _, s := range searches {
		u := base.JoinPath(s.path...)
		q := u.Query()
		q.Set("includefield", s.tag)
		q.Set("limit", "1")
		u.RawQuery = q.Encode()
		shown := logSafe(u) + "?includefield=" + s.tag + "&limit=1"
		rctx, cancel := context.WithTimeout(ctx, o.Timeout)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
		if err != nil {
			cancel()
			return fail("FAIL: "+err.Error(), err)
		}
		req.Header.Set("Accept", acceptMediaType)
		resp, err := hc.Do(req)
		if err != nil {
			cancel()
			err = redactURLError(err, shown)
			r.Searches = append(r.Searches, fmt.Sprintf("GET %s: %v", shown, err))
			return fail("FAIL: the search the forwarder sends (medical-imaging:"+s.action+") got no answer.", err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		cancel()
		r.Searches = append(r.Searches, fmt.Sprintf("GET %s -> %s", shown, resp.Status))
		switch {
		case resp.StatusCode == http.StatusOK && searchAnswer(body), resp.StatusCode == http.StatusNoContent,
			resp.StatusCode == http.StatusNotFound && !notEmptyResult(resp, body):
			// An empty result: the action is allowed.
		case resp.StatusCode == http.StatusForbidden:
			r.Detail = redactedSnippet(body)
			return fail("FAIL: authenticated, but not allowed to search (403): grant the identity medical-imaging:"+s.action+
				" (the forwarder lists a study's series, then each series' instances: "+o.varName("STOW_VERIFY")+"=qido, the breaker's probe, the conflict check).",
				errors.New(resp.Status))
		default:
			r.Detail = redactedSnippet(body)
			return fail(fmt.Sprintf("FAIL: the destination answered %s to the search the forwarder sends (medical-imaging:%s).", resp.Status, s.action), errors.New(resp.Status))
		}
	}
	r.Verdict += " The forwarder's searches, a study's series and a series' instances, are allowed."
	return nil
}

// varName is the checked destination's own name of a variable (see VarName).
func (o CheckOptions) varName(name string) string {
	if o.VarName == nil {
		return name
	}
	return o.VarName(name)
}

// searchAnswer reports whether the start of a 200 answer (body is cut
// at 4 KiB) can be a QIDO-RS answer: a JSON array, or nothing.
func searchAnswer(body []byte) bool {
	b := bytes.TrimSpace(body)
	return len(b) == 0 || b[0] == '['
}

// WriteText prints the report for an operator. It never holds a token or
// a secret: the credential is described, not shown.
func (r *CheckReport) WriteText(w io.Writer) {
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "%-12s %s\n", k, fmt.Sprintf(format, args...)) }
	if c := r.Credential; c != nil {
		line("credential", "%s from %s (in %s)", c.Kind, c.Source, r.CredentialTook.Round(time.Millisecond))
		switch {
		case !c.Expiry.IsZero():
			line("lifetime", "%s (expires %s)", c.Lifetime.Round(time.Second), c.Expiry.UTC().Format(time.RFC3339))
		case c.OAuth:
			line("lifetime", "not stated by the provider")
		default:
			line("lifetime", "no expiry (long-term credentials)")
		}
		if c.OAuth {
			line("scopes", "%s", listOr(c.Scopes, "not stated by the provider"))
		}
		if len(c.Requested) > 0 {
			line("requested", "%s", strings.Join(c.Requested, " "))
		}
		if len(c.Roles) > 0 {
			line("roles", "%s", strings.Join(c.Roles, " "))
		}
		if len(c.Audience) > 0 {
			line("audience", "%s", strings.Join(c.Audience, " "))
		}
		if c.Issuer != "" {
			line("issuer", "%s", c.Issuer)
		}
		if c.ClientID != "" {
			line("client", "%s", c.ClientID)
		}
	} else if r.CredentialErr != nil {
		line("credential", "ERROR %v", r.CredentialErr)
	} else {
		line("credential", "none (requests are sent without authentication)")
	}
	if r.RequestURL != "" {
		switch {
		case r.RequestErr != nil:
			line("request", "GET %s: %v", r.RequestURL, r.RequestErr)
		case r.Status != 0:
			line("request", "GET %s -> %s in %s", r.RequestURL, r.StatusText, r.RequestTook.Round(time.Millisecond))
		}
	}
	for _, s := range r.Searches {
		line("search", "%s", s)
	}
	if r.Detail != "" {
		line("answer", "%s", r.Detail)
	}
	line("verdict", "%s", r.Verdict)
}

func listOr(list []string, none string) string {
	if len(list) == 0 {
		return none
	}
	return strings.Join(list, " ")
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// redactedSnippet is the start of a body, on one line, without tokens
// or patient values: a misrouted 200 may be a data set.
func redactedSnippet(b []byte) string {
	return redactBody(snippet(b, 300))
}
