package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/auth"
)

const (
	// defaultMaxResponseBytes bounds a response body. A STOW response is
	// well under 1 KiB per instance, so this covers studies of thousands
	// of instances.
	defaultMaxResponseBytes = 16 << 20
	// answerBytesPerInstance raises that bound for a STOW-RS request of
	// many instances (STOW_MAX_INSTANCES has no upper limit): an item of
	// the answer with a long RetrieveURL and a few warnings' comments
	// stays under it. The bound is on what a broken server may make the
	// client hold; a sound answer takes what it takes.
	answerBytesPerInstance = 8 << 10
	// DefaultBufferSize is the buffer each request's body is written
	// through (pooled): on HTTP/1.1 without a Content-Length, each HTTP
	// chunk is one full buffer.
	DefaultBufferSize = 256 << 10
	// userAgent is the User-Agent of every request.
	userAgent = "stowline-stow/1"
	// acceptMediaType is the response media type the client asks for.
	acceptMediaType = "application/dicom+json"
	// maxErrorBody is how much of an error body HTTPError keeps.
	maxErrorBody = 4 << 10
)

// Part is one DICOM instance to send. Open is called when the part is
// written, so instances stream one after another and a study is never held
// in memory; each Store calls it once, or twice when it sends the request
// again (after a reused connection broke before any answer, or the signing
// transport's refusal of this host's clock: auth.ErrClockSkew), so Open
// must give the instance from its start each time. The context passed to Open
// is cancelled as soon as the request ends; Open and the reader it returns
// should honour it so that Store returns promptly when the server answers
// early.
type Part struct {
	SOPInstanceUID string
	// Size in bytes, -1 if unknown. Used by Batches.
	Size int64
	// Estimate, when Size is unknown, is an upper bound of the size that
	// Batches uses instead (0: none). The request is then sent chunked.
	Estimate int64
	Open     func(ctx context.Context) (io.ReadCloser, error)
}

// Client sends STOW-RS requests. It is safe for concurrent use.
type Client struct {
	url              string
	target           *url.URL // url, parsed: {base}/studies, the base's query kept
	logURL           string   // url without password, for errors and logs
	hc               *http.Client
	maxResponseBytes int64
	perInstance      int64 // raises it for a STOW-RS request of many instances (0 with a test's fixed limit)
	qidoPageSize     int
	bufferSize       int
	newBoundary      func() (string, error)
	bufPool          sync.Pool
	// contentLength: announce the body length (WithContentLength).
	contentLength bool
	// seriesSearch: list a study's instances series by series
	// (WithSeriesSearch).
	seriesSearch bool
	// searchCap: the most records a search returns, 0 none
	// (WithSeriesSearch: awsSearchCap; lower in tests).
	searchCap int
	// stallTimeout and responseTimeout bound a request that stopped
	// moving (watch): StallTimeout, defaultResponseTimeout.
	stallTimeout, responseTimeout time.Duration
}

// A request is given up when no byte of its body moved for
// StallTimeout, or no answer came defaultResponseTimeout after the
// whole body was sent: a destination that never answers must not hold a
// study, its worker and a request place for good. It is unanswered
// (ErrNoAnswer) unless the body was waiting on a part's source (the
// source Orthanc stopped serving): then it is that part's failure.
// CountBytes gives a part's source the same StallTimeout. A source's
// wait bounded elsewhere (flow.BoundedWait: Orthanc's answer, which
// ORTHANC_RESPONSE_TIMEOUT bounds and may allow far longer) is no stall.
const (
	StallTimeout           = 5 * time.Minute
	defaultResponseTimeout = 15 * time.Minute
)

// errStalled is a request given up by watch; it wraps
// context.DeadlineExceeded, so callers see a time-out. errSourceStalled
// is one given up while it waited on a part's source: the source's
// failure, not the destination's (no ErrNoAnswer, which the breaker takes
// for a destination down).
var (
	errStalled       = fmt.Errorf("stow: request given up: %w", context.DeadlineExceeded)
	errSourceStalled = fmt.Errorf("stow: request given up: %w", context.DeadlineExceeded)
)

// Option configures a Client.
type Option func(*Client) error

// WithContentLength makes Store announce the request's exact length
// (Content-Length) instead of sending it chunked, whenever every part has
// a known Size; the body still streams. Destinations whose signatures
// cover the length need it (AWS HealthImaging). A part whose content is
// not exactly Size bytes then fails the request with errSizeMismatch
// before any excess byte is sent.
func WithContentLength() Option {
	return func(c *Client) error {
		c.contentLength = true
		return nil
	}
}

// WithSeriesSearch makes StudyInstanceUIDs and Probe use only the
// searches AWS HealthImaging offers: series of a study
// (SearchDICOMSeries) and instances of a series (SearchDICOMInstances).
// It has no study-level instance search, GET studies/{study}/instances.
// Its searches return at most awsSearchCap records (ErrListingCapped).
func WithSeriesSearch() Option {
	return func(c *Client) error {
		c.seriesSearch = true
		c.searchCap = awsSearchCap
		return nil
	}
}

// New returns a Client that POSTs to url.JoinPath(baseURL, "studies").
// baseURL must be an absolute http or https URL, for example
// https://host/v2 for Azure or http://orthanc:8042/dicom-web. A nil
// httpClient means a fresh http.Client with no timeout: bound each Store
// with its context instead, since a whole-request timeout would also bound
// the upload of a large study.
func New(baseURL string, httpClient *http.Client, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBaseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w: %q: scheme must be http or https", ErrInvalidBaseURL, logSafe(u))
	}
	if u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w: %q: no host", ErrInvalidBaseURL, logSafe(u))
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w: %q: fragment not allowed", ErrInvalidBaseURL, logSafe(u))
	}
	target := u.JoinPath("studies")
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	c := &Client{
		url:              target.String(),
		target:           target,
		logURL:           logSafe(target),
		hc:               httpClient,
		maxResponseBytes: defaultMaxResponseBytes,
		perInstance:      answerBytesPerInstance,
		qidoPageSize:     qidoPageSize,
		bufferSize:       DefaultBufferSize,
		newBoundary:      newBoundary,
		stallTimeout:     StallTimeout,
		responseTimeout:  defaultResponseTimeout,
	}
	for _, opt := range opts {
		if err := opt(c); err != nil {
			return nil, err
		}
	}
	size := c.bufferSize
	c.bufPool.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return c, nil
}

// Store sends parts in one STOW-RS request and returns the parsed response.
// 200 and 202 both return a Result: use Result.Missing and Result.Failed to
// see what was not stored. Any other status returns an *HTTPError (use
// errors.As), whose Result is set when the body was a STOW response.
func (c *Client) Store(ctx context.Context, parts []Part) (*Result, error) {
	return c.send(ctx, http.MethodPost, parts)
}

// Upsert is Store with PUT: Azure's DICOM service (API v2) stores the
// instances and replaces those it already holds ("PUT ../studies: Upsert
// instances", DICOM Conformance Statement v2). Other servers may refuse
// the method (405): the answer is an *HTTPError like Store's.
func (c *Client) Upsert(ctx context.Context, parts []Part) (*Result, error) {
	return c.send(ctx, http.MethodPut, parts)
}

func (c *Client) send(ctx context.Context, method string, parts []Part) (*Result, error) {
	if len(parts) == 0 {
		return nil, errNoParts
	}
	for i, p := range parts {
		if p.Open == nil {
			return nil, fmt.Errorf("%w: part %d (SOP Instance UID %q) has no Open func", errInvalidPart, i+1, p.SOPInstanceUID)
		}
	}
	res, resend, err := c.sendOnce(ctx, method, parts)
	// skewed: AWS refused the request for the time it was signed at
	// (auth.ErrClockSkew). Every request in flight when the signing
	// transport learnt AWS's time is refused alike, and the next one is
	// signed at AWS's time: sent again at once, it goes through instead
	// of failing its study. AWS stored nothing of it: not Resent.
	skewed := errors.Is(err, auth.ErrClockSkew)
	if (resend || skewed) && ctx.Err() == nil {
		// resend: the connection was a reused one and broke before any
		// answer: a keep-alive connection the server or a load balancer
		// closed as the request left, an HTTP/2 GOAWAY. net/http resends
		// such a request only with GetBody, which would also make it
		// follow 307 and 308 redirects and, on HTTP/2, resend up to 6
		// times, so the request is sent again here, once, its parts read
		// again, on the connection the pool gives next: a new one, or
		// another idle one that may be as stale (its failure is then
		// returned). Storing an instance twice is harmless: a study's
		// next attempt would do just that, after a backoff and with all
		// its other requests. The server may have stored the first
		// sending's instances before the connection broke: the answer
		// says so (Result.Resent), for the caller to read an "already
		// exists" as perhaps its own copy.
		res, _, err = c.sendOnce(ctx, method, parts)
		if resend && err != nil && !MaybeStored(err) {
			// The first sending went unanswered: whatever became of
			// this one (no connection, a refusal), it may have stored.
			err = answerUnread(err)
		}
		if resend && res != nil {
			res.Resent = true
		}
		if he, ok := errors.AsType[*HTTPError](err); ok && resend && he.Result != nil {
			he.Result.Resent = true
		}
	}
	return res, err
}

// sendOnce sends one STOW-RS request; resend reports a request that got
// no answer on a reused connection.
func (c *Client) sendOnce(ctx context.Context, method string, parts []Part) (res *Result, resend bool, err error) {
	boundary, err := c.newBoundary()
	if err != nil {
		return nil, false, err
	}
	if err := validateBoundary(boundary); err != nil {
		return nil, false, err
	}
	ctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	defer cancel()
	// The trace is the request's own: the parts' sources are read with
	// ctx, without it, since their requests (Orthanc's, on kept-alive
	// connections) would otherwise make a new connection count as a
	// reused one.
	var reused, connected atomic.Bool
	reqCtx := withConnTrace(ctx, &reused, &connected)
	buf := c.bufPool.Get().(*[]byte)
	exact := c.contentLength && allSized(parts)
	body := newRequestBody(ctx, boundary, parts, exact, *buf)
	// finish ends the request's body: the server reads no more of it (it
	// answered, or the request failed), so stop the sources and wait for
	// the transport to leave Read or WriteTo, which it may still be in
	// after Do returned. Only then can the buffer go back to the pool.
	stopWatch := c.watch(body, cancelCause)
	finish := func() (int64, error) {
		stopWatch()
		cancel()
		sent, werr := body.stop()
		c.bufPool.Put(buf)
		return sent, werr
	}

	req, err := http.NewRequestWithContext(reqCtx, method, c.url, body)
	if err != nil {
		finish()
		return nil, false, fmt.Errorf("stow: build request: %w", err)
	}
	req.ContentLength = -1 // stream: chunked on HTTP/1.1
	if exact {
		req.ContentLength = multipartLength(boundary, parts)
	}
	req.Header.Set("Content-Type", requestContentType(boundary))
	req.Header.Set("Accept", acceptMediaType)
	req.Header.Set("User-Agent", userAgent)

	resp, doErr := c.hc.Do(req)
	if doErr != nil {
		cause := context.Cause(ctx)
		stalled := cause == errStalled
		_, werr := finish()
		if cause == errSourceStalled {
			name, uid := body.current()
			return nil, false, &brokenBodyError{uid: uid, err: fmt.Errorf("stow: %s %s: %s: %w (its source gave no byte for %s)",
				method, c.logURL, name, errSourceStalled, c.stallTimeout)}
		}
		if isWriteFailure(werr) && !stalled {
			// The transport only saw a broken body; the body knows why.
			return nil, false, werr
		}
		if stalled {
			err := noAnswer(fmt.Errorf("stow: %s %s: %w (no byte moved for %s, or no answer %s after the body)",
				method, c.logURL, errStalled, c.stallTimeout, c.responseTimeout))
			if connected.Load() {
				err = answerUnread(err) // the body may have gone
			}
			return nil, false, err
		}
		if refusedRedirect(doErr) {
			return nil, false, fmt.Errorf("%w: stow: %s %s: %w", ErrRedirected, method, c.logURL, c.redact(doErr))
		}
		if !connected.Load() {
			return nil, false, noAnswer(fmt.Errorf("stow: %s %s: %w", method, c.logURL, notConnected(c.redact(doErr))))
		}
		// Only a request with no answer is sent again as Resent: noAnswer
		// leaves unmarked a refusal of this host's clock, an answer the
		// signing transport turned into an error (nothing was stored;
		// send sends it again as skewed).
		err := noAnswer(fmt.Errorf("stow: %s %s: %w", method, c.logURL, c.redact(doErr)))
		resend := reused.Load() && errors.Is(err, ErrNoAnswer)
		if errors.Is(err, ErrNoAnswer) {
			// Connected, so the body may have gone (MaybeStored).
			err = answerUnread(err)
		}
		return nil, resend, err
	}
	if r := resp.Request; r != nil && r.Method != method {
		// The http.Client followed a 301/302/303 and re-sent the request
		// as a GET: the answer is not about our instances (it may even be
		// a QIDO-RS search result that parses as an empty STOW response).
		resp.Body.Close()
		finish()
		return nil, false, fmt.Errorf("%w: %s %s ended as %s %s", ErrRedirected, method, c.logURL, r.Method, logSafe(r.URL))
	}
	// A request of 5,000 instances has an answer of 5,000 items: it must
	// not fail for its size alone, with every instance stored and none
	// known to stowline (the next delivery would find them "already
	// there": conflicts).
	limit := max(c.maxResponseBytes, int64(len(parts))*c.perInstance)
	respBody, tooLarge, readErr := readBody(resp.Body, limit)
	resp.Body.Close()
	sent, werr := finish()
	res, err = c.handleResponse(resp, respBody, tooLarge, readErr, werr, sent, len(parts), limit)
	return res, false, err
}

// withConnTrace is ctx with a trace that sets connected to whether the
// request got a connection (after a proxy's CONNECT and the TLS
// handshake), and reused to whether it was a kept-alive one. GetConn
// forgets a connection an earlier request under the trace got (AWS
// credentials fetched by the signing transport).
func withConnTrace(ctx context.Context, reused, connected *atomic.Bool) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn: func(string) { reused.Store(false); connected.Store(false) },
		GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused); connected.Store(true) },
	})
}

// resource is the URL of a resource below {base}/studies (elements
// such as a study's UID and "instances"), with the base URL's query (an
// API key goes with every request) and q's parameters. Each element is
// one path segment: escaped, and never empty, "." or "..", nor holding a
// slash, backslash or percent sign (a UID comes from the modality's data,
// and a path cleaned of ".." could name another study).
func (c *Client) resource(q url.Values, elem ...string) (string, error) {
	escaped := make([]string, len(elem))
	for i, e := range elem {
		// A UID has no '/', '\' or '%' (a proxy that decodes %2F would
		// let ".." climb again).
		if e == "" || e == "." || e == ".." || strings.ContainsAny(e, `/\%`) {
			return "", fmt.Errorf("%w: %q", errPathSegment, e)
		}
		escaped[i] = url.PathEscape(e)
	}
	u := c.target.JoinPath(escaped...)
	if len(q) > 0 {
		merged := u.Query()
		for k, vs := range q {
			merged[k] = vs
		}
		u.RawQuery = merged.Encode()
	}
	return u.String(), nil
}

// bodilessContext bounds a request without a body (a QIDO-RS page, a
// probe, a DELETE), its answer's body included, by the response time-out
// watch gives a STOW-RS request once its body is sent: a destination that
// takes the request and never answers must not hold a study and its
// worker for good (verification, delete-and-replace).
func (c *Client) bodilessContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, c.responseTimeout, errStalled)
}

// gaveUp says why a bodiless request ended, when bodilessContext gave it
// up ("" otherwise).
func (c *Client) gaveUp(ctx context.Context) string {
	if context.Cause(ctx) == errStalled {
		return fmt.Sprintf(" (no answer in %s)", c.responseTimeout)
	}
	return ""
}

// doBodiless sends a request without a body (a QIDO-RS page, a probe, a
// DELETE) and sends it once more, at once, if the destination answers 401:
// the auth transport has dropped the refused token (a token revoked, or
// expired before its announced expiry), so the second request carries a
// fresh one, as Forwarder.send does for STOW-RS. Without it the 401
// reached the forwarder, which takes a 401 for a refusal that survived a
// refresh (permanent). A second 401 is returned.
//
// So it does when the signing transport refuses this host's clock
// (auth.ErrClockSkew), as send does for STOW-RS: it signs the next
// request at AWS's time, so the second sending goes through; its error,
// if refused again, is for the caller to return as an answer, not as
// ErrNoAnswer (the destination down for its breaker).
func (c *Client) doBodiless(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	switch {
	case req.Context().Err() != nil:
		return resp, err
	case errors.Is(err, auth.ErrClockSkew):
		// The transport closed AWS's refusal: no answer to read.
	case err != nil || resp.StatusCode != http.StatusUnauthorized:
		return resp, err
	default:
		// Read what is left of the short answer, so the connection is
		// reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
	}
	return c.hc.Do(req.Clone(req.Context()))
}

// refusedRedirect reports a request the destination answered with a
// redirect to another origin, which the authenticating transport refused
// to follow (the credential goes only where it was configured for): a
// base URL to fix, not a destination that did not answer. A token
// endpoint's redirect (a TokenError naming OAUTH_TOKEN_URL) is not the
// destination's.
func refusedRedirect(err error) bool {
	var te *auth.TokenError
	return errors.Is(err, auth.ErrCrossOriginRedirect) && !errors.As(err, &te)
}

// redact names the destination by its safe URL in an error of the HTTP
// client: Go's *url.Error names the request's whole URL, query included,
// where an API key can sit. The error keeps its type and cause (time-outs
// are still told apart).
func (c *Client) redact(err error) error { return redactURLError(err, c.logURL) }

// redactURLError is err, a *url.Error, naming safe instead of its URL.
func redactURLError(err error, safe string) error {
	if ue, ok := err.(*url.Error); ok {
		return &url.Error{Op: ue.Op, URL: safe, Err: ue.Err}
	}
	return err
}

// logSafe is a URL fit for errors and logs: without user info, query or
// fragment, where a credential could sit.
func logSafe(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment, c.RawFragment = nil, "", false, "", ""
	return c.String()
}

// watch gives the request up (cancel with errStalled) once its body has
// not moved for stallTimeout, or its answer has not come responseTimeout
// after the body was sent. stop ends the watch.
func (c *Client) watch(body *requestBody, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(min(c.stallTimeout, c.responseTimeout) / 4)
		defer t.Stop()
		moving := newProgress(body.moved.Load(), time.Now())
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				if since, sent := body.sinceSent(now); sent {
					if since > c.responseTimeout {
						cancel(errStalled)
						return
					}
					continue
				}
				if moving.stalledWaiting(&body.waits, body.moved.Load(), now, c.stallTimeout) {
					if body.inSource.Load() {
						cancel(errSourceStalled)
					} else {
						cancel(errStalled)
					}
					return
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}
