package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

const (
	// DefaultMaxResponseBytes bounds a response body. A STOW response is
	// well under 1 KiB per instance, so this covers studies of thousands
	// of instances.
	DefaultMaxResponseBytes = 16 << 20
	// DefaultBufferSize is the copy buffer used per request (pooled).
	DefaultBufferSize = 256 << 10
	// DefaultUserAgent is sent unless WithUserAgent says otherwise.
	DefaultUserAgent = "stowline-stow/1"
	// AcceptMediaType is the response media type the client asks for.
	AcceptMediaType = "application/dicom+json"
	// maxErrorBody is how much of an error body HTTPError keeps.
	maxErrorBody = 4 << 10
)

// Part is one DICOM instance to send. Open is called when the part is
// written, so instances stream one after another and a study is never held
// in memory. Open may be called more than once (Store retries once after a
// boundary collision). The context passed to Open is cancelled as soon as
// the request ends; Open and the reader it returns should honour it so that
// Store returns promptly when the server answers early.
type Part struct {
	SOPInstanceUID string
	// Size in bytes, -1 if unknown. Used by Batches.
	Size int64
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// Client sends STOW-RS requests. It is safe for concurrent use.
type Client struct {
	url              string
	logURL           string // url without password, for errors and logs
	hc               *http.Client
	userAgent        string
	header           http.Header
	maxResponseBytes int64
	bufferSize       int
	newBoundary      func() (string, error)
	bufPool          sync.Pool
	// contentLength: announce the body length (WithContentLength).
	contentLength bool
}

// Option configures a Client.
type Option func(*Client) error

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(c *Client) error {
		if strings.ContainsAny(ua, "\r\n") {
			return fmt.Errorf("stow: user agent contains CR or LF")
		}
		c.userAgent = ua
		return nil
	}
}

// WithMaxResponseBytes bounds the response body the client reads
// (default DefaultMaxResponseBytes). A larger success response fails with
// ErrResponseTooLarge; a larger error response is cut.
func WithMaxResponseBytes(n int64) Option {
	return func(c *Client) error {
		if n <= 0 {
			return fmt.Errorf("stow: max response bytes must be positive, got %d", n)
		}
		c.maxResponseBytes = n
		return nil
	}
}

// WithBufferSize sets the size of the pooled copy buffer (default
// DefaultBufferSize).
func WithBufferSize(n int) Option {
	return func(c *Client) error {
		if n < 512 {
			return fmt.Errorf("stow: buffer size must be at least 512, got %d", n)
		}
		c.bufferSize = n
		return nil
	}
}

// WithHeader adds a header to every request, for example a static
// Authorization header; token refresh belongs in the http.Client's
// transport.
func WithHeader(key, value string) Option {
	return func(c *Client) error {
		if strings.ContainsAny(key+value, "\r\n") {
			return fmt.Errorf("stow: header %q contains CR or LF", key)
		}
		c.header.Add(key, value)
		return nil
	}
}

// WithContentLength makes Store announce the request's exact length
// (Content-Length) instead of sending it chunked, whenever every part has
// a known Size; the body still streams. Destinations whose signatures
// cover the length need it (AWS HealthImaging). A part whose content is
// not exactly Size bytes then fails the request with ErrSizeMismatch
// before any excess byte is sent.
func WithContentLength() Option {
	return func(c *Client) error {
		c.contentLength = true
		return nil
	}
}

// WithBoundaryFunc replaces NewBoundary, mainly for tests.
func WithBoundaryFunc(f func() (string, error)) Option {
	return func(c *Client) error {
		if f == nil {
			return fmt.Errorf("stow: nil boundary func")
		}
		c.newBoundary = f
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
		return nil, fmt.Errorf("%w: %q: scheme must be http or https", ErrInvalidBaseURL, baseURL)
	}
	if u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w: %q: no host", ErrInvalidBaseURL, baseURL)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w: %q: fragment not allowed", ErrInvalidBaseURL, baseURL)
	}
	target := u.JoinPath("studies")
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	c := &Client{
		url:              target.String(),
		logURL:           target.Redacted(),
		hc:               httpClient,
		userAgent:        DefaultUserAgent,
		header:           make(http.Header),
		maxResponseBytes: DefaultMaxResponseBytes,
		bufferSize:       DefaultBufferSize,
		newBoundary:      NewBoundary,
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

// URL returns the STOW-RS endpoint the client POSTs to, with any password
// redacted.
func (c *Client) URL() string { return c.logURL }

// Store sends parts in one STOW-RS request and returns the parsed response.
// 200 and 202 both return a Result: use Result.Missing and Result.Failed to
// see what was not stored. Any other status returns an *HTTPError (use
// errors.As), whose Result is set when the body was a STOW response.
//
// If a part's content contains the multipart delimiter, Store retries once
// with a fresh boundary; a second collision returns an error wrapping
// ErrBoundaryCollision.
func (c *Client) Store(ctx context.Context, parts []Part) (*Result, error) {
	if len(parts) == 0 {
		return nil, ErrNoParts
	}
	for i, p := range parts {
		if p.Open == nil {
			return nil, fmt.Errorf("%w: part %d (SOP Instance UID %q) has no Open func", ErrInvalidPart, i+1, p.SOPInstanceUID)
		}
	}
	res, err := c.storeOnce(ctx, parts)
	if errors.Is(err, ErrBoundaryCollision) && ctx.Err() == nil {
		// A fresh random boundary colliding again is practically
		// impossible, so one retry is enough.
		res, err = c.storeOnce(ctx, parts)
	}
	return res, err
}

// errBodyAbandoned is what the body writer sees once the request is over
// and the server no longer reads the body.
var errBodyAbandoned = errors.New("stow: request finished before the body was fully sent")

func (c *Client) storeOnce(ctx context.Context, parts []Part) (*Result, error) {
	boundary, err := c.newBoundary()
	if err != nil {
		return nil, err
	}
	buf := c.bufPool.Get().(*[]byte)
	// The writer goroutine has exited on every return path below before
	// this runs, so the buffer is free.
	defer c.bufPool.Put(buf)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	mw, err := newMultipartWriter(pw, boundary, *buf)
	if err != nil {
		return nil, err
	}
	// Not from bufPool: the transport may still be inside WriteTo after
	// Do returned, so the buffer cannot go back to the pool here.
	reqBody := &bigChunks{r: pr, buf: make([]byte, c.bufferSize)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, reqBody)
	if err != nil {
		return nil, fmt.Errorf("stow: build request: %w", err)
	}
	req.ContentLength = -1 // stream: chunked on HTTP/1.1
	exact := c.contentLength && allSized(parts)
	if exact {
		req.ContentLength = multipartLength(boundary, parts)
	}
	for k, vs := range c.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	req.Header.Set("Content-Type", mw.ContentType())
	req.Header.Set("Accept", AcceptMediaType)
	req.Header.Set("User-Agent", c.userAgent)

	done := make(chan error, 1)
	go func() {
		err := writeParts(ctx, mw, parts, exact)
		pw.CloseWithError(err) // nil closes with EOF
		done <- err
	}()

	resp, doErr := c.hc.Do(req)
	if doErr != nil {
		pr.CloseWithError(errBodyAbandoned)
		cancel()
		if werr := <-done; isWriteFailure(werr) {
			// The transport only saw a broken body; the writer knows why.
			return nil, werr
		}
		return nil, fmt.Errorf("stow: POST %s: %w", c.logURL, doErr)
	}
	if r := resp.Request; r != nil && r.Method != http.MethodPost {
		// The http.Client followed a 301/302/303 and re-sent the request
		// as a GET: the answer is not about our instances (it may even be
		// a QIDO-RS search result that parses as an empty STOW response).
		resp.Body.Close()
		pr.CloseWithError(errBodyAbandoned)
		cancel()
		<-done
		return nil, fmt.Errorf("%w: POST %s ended as %s %s", ErrRedirected, c.logURL, r.Method, r.URL.Redacted())
	}
	body, tooLarge, readErr := readBody(resp.Body, c.maxResponseBytes)
	resp.Body.Close()
	// The server has answered, so it reads no more of the body: stop the
	// writer (it may be blocked on the pipe) and the sources it reads.
	pr.CloseWithError(errBodyAbandoned)
	cancel()
	werr := <-done
	return c.handleResponse(resp, body, tooLarge, readErr, werr, mw.BytesWritten())
}

// bigChunks is the request body: net/http copies a body that implements
// io.WriterTo through WriteTo, so each HTTP chunk is a full buffer
// (bufferSize, 256 KiB) instead of io.Copy's 32 KiB; the server then reads
// the body with far fewer system calls (Orthanc: half as many recv calls).
type bigChunks struct {
	r   io.Reader
	buf []byte
}

func (b *bigChunks) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bigChunks) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		n, rerr := io.ReadFull(b.r, b.buf)
		if n > 0 {
			m, werr := w.Write(b.buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		switch rerr {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, rerr
		}
	}
}

// isWriteFailure tells a real body failure (source error, boundary
// collision) from the writer merely being stopped.
func isWriteFailure(err error) bool {
	return err != nil &&
		!errors.Is(err, errBodyAbandoned) &&
		!errors.Is(err, io.ErrClosedPipe) &&
		!errors.Is(err, context.Canceled)
}

// partHeader is the header of every part.
var partHeader = textproto.MIMEHeader{"Content-Type": {DICOMMediaType}}

func writeParts(ctx context.Context, mw *MultipartWriter, parts []Part, exact bool) error {
	for i, p := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writePart(ctx, mw, partHeader, p, exact); err != nil {
			return fmt.Errorf("stow: part %d (SOP Instance UID %q): %w", i+1, p.SOPInstanceUID, err)
		}
	}
	return mw.Close()
}

func writePart(ctx context.Context, mw *MultipartWriter, header textproto.MIMEHeader, p Part, exact bool) error {
	rc, err := p.Open(ctx)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer rc.Close()
	var r io.Reader = ctxReader{ctx: ctx, r: rc}
	if exact {
		r = &exactReader{r: r, left: p.Size}
	}
	_, err = mw.WritePart(header, r)
	return err
}

// exactReader yields exactly left bytes of r and fails with
// ErrSizeMismatch, instead of returning the excess or an early EOF, when r
// holds more or fewer.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		var one [1]byte
		if n, err := e.r.Read(one[:]); n > 0 {
			return 0, fmt.Errorf("%w: longer than announced", ErrSizeMismatch)
		} else if err == nil {
			return 0, nil
		} else if err != io.EOF {
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("%w: %d bytes short", ErrSizeMismatch, e.left)
	}
	if err == io.EOF {
		err = nil // the next Read checks that nothing is left
	}
	return n, err
}

func allSized(parts []Part) bool {
	for _, p := range parts {
		if p.Size < 0 {
			return false
		}
	}
	return true
}

// multipartLength is the exact length of the body MultipartWriter writes
// for parts with boundary and partHeader.
func multipartLength(boundary string, parts []Part) int64 {
	var header int64
	for k, vs := range partHeader {
		for _, v := range vs {
			header += int64(len(k) + len(": ") + len(v) + len("\r\n"))
		}
	}
	delimiter := int64(len("--") + len(boundary) + len("\r\n"))
	var n int64
	for i, p := range parts {
		if i > 0 {
			n += int64(len("\r\n"))
		}
		n += delimiter + header + int64(len("\r\n")) + p.Size
	}
	if len(parts) > 0 {
		n += int64(len("\r\n"))
	}
	return n + int64(len("--")+len(boundary)+len("--\r\n"))
}

// ctxReader stops a copy between chunks once ctx is done, even if the
// source itself ignores ctx.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func readBody(r io.Reader, limit int64) (body []byte, tooLarge bool, err error) {
	body, err = io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(body)) > limit {
		return body[:limit], true, err
	}
	return body, false, err
}

func (c *Client) handleResponse(resp *http.Response, body []byte, tooLarge bool, readErr, writeErr error, sent int64) (*Result, error) {
	status := resp.StatusCode
	ct := resp.Header.Get("Content-Type")
	if status >= 200 && status <= 299 {
		if isWriteFailure(writeErr) {
			return nil, fmt.Errorf("stow: server answered %d but %w: %w", status, ErrIncompleteBody, writeErr)
		}
		if readErr != nil {
			return nil, fmt.Errorf("stow: read %d response: %w", status, readErr)
		}
		if tooLarge {
			return nil, fmt.Errorf("%w: %d response over %d bytes", ErrResponseTooLarge, status, c.maxResponseBytes)
		}
		res, err := parseResponse(ct, body)
		if err != nil {
			return nil, fmt.Errorf("stow: %d response: %w", status, err)
		}
		res.StatusCode, res.BytesSent = status, sent
		return res, nil
	}
	he := &HTTPError{
		StatusCode:  status,
		ContentType: ct,
		Location:    resp.Header.Get("Location"),
		Body:        trimBody(body, maxErrorBody),
		RetryAfter:  parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
	if !tooLarge && readErr == nil && len(bytes.TrimSpace(body)) > 0 {
		if res, err := parseResponse(ct, body); err == nil {
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
	if s := snippet([]byte(e.Body), 200); s != "" && e.Result == nil {
		sb.WriteString(": ")
		sb.WriteString(s)
	}
	return sb.String()
}

// Retryable reports whether the status suggests trying the same request
// again later (timeouts, throttling, server and gateway errors).
func (e *HTTPError) Retryable() bool {
	switch e.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
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

// parseRetryAfter reads delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
