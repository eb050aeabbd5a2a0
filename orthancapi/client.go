// Package orthancapi is a client for the parts of Orthanc's REST API the
// forwarder uses: studies, their instances, instance files, /system and
// /changes.
//
// Orthanc IDs are validated before they are put into a URL; invalid IDs
// fail with ErrInvalidID without a request. HTTP errors are *Error values;
// errors.Is(err, ErrNotFound) is true for Orthanc's own 404, confirmed by
// Orthanc answering GET /system right after it.
package orthancapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/secretfile"
)

// Defaults.
const (
	defaultRequestTimeout = 30 * time.Second
	// defaultResponseHeaderTimeout also bounds how long Orthanc may take to
	// read a file from its storage before it starts answering.
	defaultResponseHeaderTimeout = 2 * time.Minute
	defaultMaxIdleConnsPerHost   = 16
	// maxJSONBytes bounds a JSON answer (a study of 10,000 instances is
	// about 5 MB).
	maxJSONBytes = 64 << 20
	// maxJSONArrayBytes bounds an answer decoded element by element
	// (eachJSON). Its memory is what the caller keeps of each element, a
	// few hundred bytes an instance: 256 MiB is some 250,000 instances
	// of 1 KB (a 100,000-instance study is about 100 MB).
	maxJSONArrayBytes = 256 << 20
	// maxJSONElementBytes bounds one element of such an answer, with the
	// whitespace before it: json.Decoder holds an element whole, in a
	// buffer that grows to twice what it read, so '[' and endless
	// whitespace, or one endless string, would otherwise grow it up to
	// the answer's bound. An instance is about 1 KB; 8 MiB leaves room for
	// ExtraMainDicomTags holding long texts or sequences.
	maxJSONElementBytes = 8 << 20
	// maxErrorBytes bounds how much of an error body is read.
	maxErrorBytes = 64 << 10
	userAgent     = "stowline-orthancapi"
)

// Client talks to one Orthanc server. It is safe for concurrent use and
// reuses connections.
type Client struct {
	base           *url.URL
	httpClient     *http.Client
	username       string
	password       atomic.Pointer[string]
	passwordFile   string // read again when Orthanc answers 401
	basicAuth      bool
	requestTimeout time.Duration
	// listTimeout bounds a study's instance list (eachJSON): the longer of
	// the request and response header timeouts. Up to 1.12.4 Orthanc
	// builds the whole list before its headers, an index lookup an
	// instance: tens of seconds for a study of 20,000 instances on a
	// remote PostgreSQL index, which failed every delivery at 30 s
	// whatever ORTHANC_RESPONSE_TIMEOUT said.
	listTimeout time.Duration
	// headerTimeout is the transport's ResponseHeaderTimeout
	// (ORTHANC_RESPONSE_TIMEOUT), named in its errors.
	headerTimeout time.Duration
	// maxJSONElementBytes is the constant, but for tests.
	maxJSONElementBytes int64

	// probe, a one-slot semaphore, serializes the /system probes that
	// confirm 404s, so that the 404s of a whole study share one; probedAt
	// is when the last probe Orthanc answered was sent.
	probe    chan struct{}
	probedAt time.Time

	// slots caps the requests in flight (nil: no cap): one is taken
	// before a request is sent and given back when its body is closed,
	// so a file stream holds one while it streams. Not the transport's
	// MaxConnsPerHost: short metadata reads would wait there, unseen,
	// behind long streams until their request timeout.
	slots chan struct{}
	// owners are the shares of slots ShareSlots gave each owner (a
	// destination), nil before.
	owners atomic.Pointer[map[string]*slotShare]
	// waits counts the requests that found every slot taken, waited
	// their total wait in nanoseconds (Slots).
	waits, waited atomic.Int64
}

type options struct {
	username       string
	password       string
	passwordFile   string
	basicAuth      bool
	requestTimeout time.Duration
	headerTimeout  time.Duration
	tls            *tls.Config
	maxRequests    int
}

// Option configures a Client.
type Option func(*options)

// WithBasicAuth sends HTTP basic credentials with every request.
func WithBasicAuth(username, password string) Option {
	return func(o *options) {
		o.username, o.password, o.basicAuth = username, password, true
	}
}

// WithBasicAuthFile is WithBasicAuth with the password in a file (a
// mounted Kubernetes or Docker secret; a trailing newline is not part of
// it). The file is read by New, and again when Orthanc answers 401: if it
// then holds another password, the request is sent again with it, so a
// password changed in the file before Orthanc's needs no restart.
func WithBasicAuthFile(username, path string) Option {
	return func(o *options) {
		o.username, o.password, o.passwordFile, o.basicAuth = username, "", path, true
	}
}

// WithTLSConfig sets the TLS client configuration of the client's
// transport (an extra CA for an Orthanc behind a private PKI).
func WithTLSConfig(c *tls.Config) Option {
	return func(o *options) { o.tls = c }
}

// WithRequestTimeout bounds each JSON call (default 30 s); a study's
// instance list, by the longer of it and the response header timeout.
// File downloads are bounded only by their context: a file can be
// gigabytes.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) { o.requestTimeout = d }
}

// WithResponseHeaderTimeout bounds how long Orthanc may take to start
// answering a request (default 2 min): reading a file from its storage,
// or converting it to another transfer syntax, which for a large
// multi-frame instance can take minutes.
func WithResponseHeaderTimeout(d time.Duration) Option {
	return func(o *options) { o.headerTimeout = d }
}

// WithMaxRequests caps the requests the client has in flight at once
// (default 0: no cap), so that stowline leaves Orthanc's HTTP threads to
// its viewers. A request waits for a slot before it is sent, within its
// context, and holds it until its body is closed: a file stream holds
// one while it streams. A request made while the caller holds another's
// body open must use WhileHoldingBody, or it could wait for its own slot.
func WithMaxRequests(n int) Option {
	return func(o *options) { o.maxRequests = n }
}

// New returns a client for the Orthanc at baseURL, for example
// "http://orthanc:8042" or "https://host/orthanc/" behind a proxy.
func New(baseURL string, opts ...Option) (*Client, error) {
	base, err := parseBaseURL(baseURL)
	if err != nil {
		return nil, err
	}
	o := options{requestTimeout: defaultRequestTimeout, headerTimeout: defaultResponseHeaderTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.requestTimeout <= 0 {
		return nil, fmt.Errorf("orthancapi: request timeout must be positive, got %v", o.requestTimeout)
	}
	if o.headerTimeout <= 0 {
		return nil, fmt.Errorf("orthancapi: response header timeout must be positive, got %v", o.headerTimeout)
	}
	if o.maxRequests < 0 {
		return nil, fmt.Errorf("orthancapi: max requests must be 0 (no cap) or more, got %d", o.maxRequests)
	}
	if o.basicAuth && o.username == "" {
		return nil, errors.New("orthancapi: WithBasicAuth with an empty username")
	}
	if o.passwordFile != "" {
		pw, err := readPasswordFile(o.passwordFile)
		if err != nil {
			return nil, err
		}
		o.password = pw
	}
	t := newTransport()
	t.TLSClientConfig = o.tls
	t.ResponseHeaderTimeout = o.headerTimeout
	c := &Client{
		base: base,
		// Redirects are not followed: SetBasicAuth's header would follow
		// one to another port or to plain http on the same host, and a
		// login page's 200 would read as the instance. A 3xx is an Error.
		httpClient: &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		username:       o.username,
		passwordFile:   o.passwordFile,
		basicAuth:      o.basicAuth,
		requestTimeout: o.requestTimeout,
		listTimeout:    max(o.requestTimeout, o.headerTimeout),
		headerTimeout:  o.headerTimeout,
		probe:          make(chan struct{}, 1),

		maxJSONElementBytes: maxJSONElementBytes,
	}
	if o.maxRequests > 0 {
		c.slots = make(chan struct{}, o.maxRequests)
	}
	c.password.Store(&o.password)
	return c, nil
}

// readPasswordFile reads a password file.
func readPasswordFile(path string) (string, error) {
	pw, err := secretfile.Read(path)
	if err != nil {
		return "", fmt.Errorf("orthancapi: password file: %w", err)
	}
	return pw, nil
}

// passwordChanged is called after Orthanc refused the password used: it
// reads the password file again and reports whether the password to send
// is now another one; fileErr says why the file did not read.
func (c *Client) passwordChanged(used *string) (changed bool, fileErr error) {
	if c.passwordFile == "" {
		return false, nil
	}
	pw, fileErr := readPasswordFile(c.passwordFile)
	if fileErr == nil {
		if cur := c.password.Load(); *cur != pw {
			c.password.CompareAndSwap(cur, &pw)
		}
	}
	return *c.password.Load() != *used, fileErr
}

func parseBaseURL(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errors.New("orthancapi: empty Orthanc URL")
	}
	u, err := url.Parse(raw)
	if ue, ok := errors.AsType[*url.Error](err); ok {
		// A url.Error quotes the whole URL, password included.
		err = ue.Err
	}
	if err != nil {
		return nil, fmt.Errorf("orthancapi: Orthanc URL: %w", err)
	}
	switch {
	case u.Opaque != "" && u.Scheme != "http" && u.Scheme != "https":
		// "orthanc:8042" parses as scheme "orthanc".
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q: scheme must be http or https (missing \"http://\"?)", quotable(u))
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q: scheme must be http or https", quotable(u))
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q has no host", quotable(u))
	case u.User != nil:
		// Credentials in a URL end up in logs and error messages.
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q holds credentials; use WithBasicAuth", quotable(u))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q must not have a query or fragment", quotable(u))
	case u.Opaque != "":
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q is not hierarchical", quotable(u))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("orthancapi: Orthanc URL %q: invalid port %q", quotable(u), p)
		}
	}
	// A rooted path without trailing slash: JoinPath then yields
	// "/prefix/studies/..." (with an empty path it would yield a relative
	// "studies/...").
	esc := "/" + strings.Trim(u.EscapedPath(), "/")
	unesc, err := url.PathUnescape(esc)
	if err != nil {
		return nil, fmt.Errorf("orthancapi: Orthanc URL %q: path: %w", quotable(u), err)
	}
	u.Path, u.RawPath = unesc, esc
	return u, nil
}

// quotable is u fit for an error message: url.Redacted masks only a
// password, and would keep a token-style user (http://token@host), a
// query (?apikey=...) and the user info of a URL missing its scheme
// ("user:password@orthanc:8042" parses as scheme "user").
func quotable(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment, c.RawFragment = nil, "", false, "", ""
	if i := strings.LastIndex(c.Opaque, "@"); i >= 0 {
		return c.Opaque[i+1:]
	}
	return c.String()
}

// newTransport is tuned for one Orthanc: a few concurrent downloads reuse
// their connections, and a server that accepts but never answers is
// noticed.
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4 * defaultMaxIdleConnsPerHost,
		MaxIdleConnsPerHost:   defaultMaxIdleConnsPerHost,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// endpoint joins escaped path segments to the base URL. Callers validate
// IDs first; escaping keeps any other segment from changing the path.
func (c *Client) endpoint(segments ...string) *url.URL {
	esc := make([]string, len(segments))
	for i, s := range segments {
		esc[i] = url.PathEscape(s)
	}
	return c.base.JoinPath(esc...)
}

// get sends a GET and returns the response if its status is 200;
// otherwise it returns an *Error and closes the body.
func (c *Client) get(ctx context.Context, u *url.URL, accept string) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, u, accept, nil)
}

// do sends a request with the client's credentials and returns the
// response if its status is 200; otherwise it returns an *Error (matching
// ErrNotFound for a 404) and closes the body.
func (c *Client) do(ctx context.Context, method string, u *url.URL, accept string, header http.Header) (*http.Response, error) {
	return c.doBody(ctx, method, u, accept, header, nil)
}

// doBody is do with a request body (nil: none). The body is a byte
// slice so that a request sent again gets a reader of its own: the
// transport may still read the first one's after its answer came.
func (c *Client) doBody(ctx context.Context, method string, u *url.URL, accept string, header http.Header, body []byte) (*http.Response, error) {
	pw := c.password.Load()
	resp, err := c.sendAs(ctx, pw, method, u, accept, header, bodyReader(body))
	var fileErr error
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		var changed bool
		if changed, fileErr = c.passwordChanged(pw); changed {
			drainClose(resp.Body)
			resp, err = c.send(ctx, method, u, accept, header, bodyReader(body))
		}
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		answered := time.Now()
		e := newError(method, u.EscapedPath(), resp)
		drainClose(resp.Body)
		if e.StatusCode == http.StatusUnauthorized {
			e.refused = "Orthanc refused the user name and password sent"
			if !c.basicAuth {
				e.refused = "Orthanc wants a user name and password, and none is set"
			}
		}
		if e.StatusCode == http.StatusNotFound && e.NotFromOrthanc == "" {
			if err := c.confirmOrthanc(ctx, answered); err != nil {
				e.NotFromOrthanc = err.Error()
			}
		}
		if fileErr != nil {
			// Refused while the file was not read: the 401 alone would
			// blame a password the file may hold right.
			return nil, fmt.Errorf("%w (%v; the password read before was sent)", e, fileErr)
		}
		return nil, e
	}
	return resp, nil
}

// bodyReader reads body from its start; nil for no body (a nil
// *bytes.Reader in an io.Reader would not be nil).
func bodyReader(body []byte) io.Reader {
	if body == nil {
		return nil
	}
	return bytes.NewReader(body)
}

// idempotent marks a request that Go's transport may send again on a new
// connection when a kept-alive one closes as it is reused (nothing sent
// on the wire: an empty Idempotency-Key). Go does so by itself only for
// GET and HEAD, and Orthanc closes connections idle for a second (1.10
// and 1.12), which can meet a request the client sends at that moment.
func idempotent() http.Header {
	return http.Header{"Idempotency-Key": nil}
}

// send sends a request with the client's credentials and returns the
// response, whatever its status.
func (c *Client) send(ctx context.Context, method string, u *url.URL, accept string, header http.Header, body io.Reader) (*http.Response, error) {
	return c.sendAs(ctx, c.password.Load(), method, u, accept, header, body)
}

// sendAs is send with the password pw.
func (c *Client) sendAs(ctx context.Context, pw *string, method string, u *url.URL, accept string, header http.Header, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("orthancapi: build request: %w", err)
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", userAgent)
	// Orthanc gzips answers for clients that accept it (Go's transport
	// asks by default): on the LAN between Orthanc and stowline that costs
	// Orthanc more CPU than it saves time. A 2,000-instance study's
	// listing (1.1 MB of JSON) cost Orthanc 1.10 58-71 ms of CPU gzipped,
	// 46-49 ms not; a file's gzip also hides its size.
	req.Header.Set("Accept-Encoding", "identity")
	for k, v := range header {
		req.Header[k] = v
	}
	if c.basicAuth {
		req.SetBasicAuth(c.username, *pw)
	}
	release, err := c.takeSlot(ctx)
	if err != nil {
		return nil, fmt.Errorf("orthancapi: %s %s: waiting for a free request slot (ORTHANC_MAX_CONNECTIONS): %w", method, u.EscapedPath(), err)
	}
	// The wait for Orthanc's answer (a file read from its storage, a
	// conversion: minutes for a large multi-frame instance) is bounded by
	// the transport's ResponseHeaderTimeout: a stall watch of the caller's
	// (the STOW-RS request's body this stream feeds) must not give it up
	// sooner.
	end := flow.BoundedWait(ctx)
	resp, err := c.httpClient.Do(req)
	end()
	if err != nil {
		release()
		if isHeaderTimeout(err) {
			return nil, fmt.Errorf("orthancapi: %s %s: no answer within %s (ORTHANC_RESPONSE_TIMEOUT): %w", method, u.EscapedPath(), c.headerTimeout, err)
		}
		return nil, fmt.Errorf("orthancapi: %s %s: %w", method, u.EscapedPath(), err)
	}
	if c.slots != nil {
		resp.Body = &slotBody{ReadCloser: resp.Body, release: sync.OnceFunc(release)}
	}
	return resp, nil
}

// isHeaderTimeout reports a request given up by the transport's
// ResponseHeaderTimeout: net/http tells it by its message alone.
func isHeaderTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && strings.Contains(err.Error(), "timeout awaiting response headers")
}

// holdingBodyKey marks a context of WhileHoldingBody.
type holdingBodyKey struct{}

// WhileHoldingBody returns ctx for a request made while the caller holds
// another response's body open (the metadata read a file stream needs
// before it goes on): such a request is sent without waiting for a slot
// of WithMaxRequests. Waiting, callers that each hold a slot and want a
// second would wait on one another for good. At most one such request
// per body held, so the requests in flight stay within twice the cap.
func WhileHoldingBody(ctx context.Context) context.Context { return unslotted(ctx) }

// unslotted returns ctx for a request sent without a slot.
func unslotted(ctx context.Context) context.Context {
	return context.WithValue(ctx, holdingBodyKey{}, true)
}

// slotOwnerKey carries the owner of ForSlotOwner.
type slotOwnerKey struct{}

// ForSlotOwner returns ctx for requests made for owner (a destination),
// which take a slot of owner's share (ShareSlots) as well.
func ForSlotOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, slotOwnerKey{}, owner)
}

// ShareSlots bounds the slots of WithMaxRequests each owner's requests
// (ForSlotOwner) hold at once to the cap less one for each other owner
// and less unowned, at least one: the file streams of a destination that
// stopped reading its STOW-RS bodies hold their slots until its stall
// time-out (minutes), and must leave a slot to each other destination,
// and unowned to the requests of no owner (the single-host process's
// reconciler and PRIORITY_RULE reads), which take a slot of the cap
// alone. Call it before the owners' requests; a client without a cap
// ignores it.
func (c *Client) ShareSlots(owners []string, unowned int) {
	if c.slots == nil {
		return
	}
	share := max(1, cap(c.slots)-(len(owners)-1)-unowned)
	m := make(map[string]*slotShare, len(owners))
	for _, o := range owners {
		m[o] = &slotShare{sem: make(chan struct{}, share)}
	}
	c.owners.Store(&m)
}

// slotShare is an owner's share of the slots.
type slotShare struct {
	// sem is taken before a slot of the cap, and given back with it: a
	// request waiting for the cap holds one too.
	sem chan struct{}
	// held counts the slots of the cap the owner's requests hold.
	held atomic.Int32
	// waits counts the owner's requests that found its share full, waited
	// their total wait for it in nanoseconds (Slots).
	waits, waited atomic.Int64
}

// takeSlot waits for a request slot, or for ctx to end (its error, then),
// and returns the function that gives it back.
func (c *Client) takeSlot(ctx context.Context) (release func(), err error) {
	if c.slots == nil || ctx.Value(holdingBodyKey{}) != nil {
		return func() {}, nil
	}
	var sh *slotShare
	if m := c.owners.Load(); m != nil {
		if o, ok := ctx.Value(slotOwnerKey{}).(string); ok {
			sh = (*m)[o]
		}
	}
	if sh == nil {
		if err := waitFor(ctx, c.slots, &c.waits, &c.waited); err != nil {
			return nil, err
		}
		return func() { <-c.slots }, nil
	}
	// The owner's share first: waiting for it holds none of the cap.
	// Counted as the owner's wait, not as a wait for the cap (Slots).
	if err := waitFor(ctx, sh.sem, &sh.waits, &sh.waited); err != nil {
		return nil, fmt.Errorf("%w (all %d of this destination's share are its requests in flight or waiting; held: %s)",
			err, cap(sh.sem), c.heldByOwners())
	}
	if err := waitFor(ctx, c.slots, &c.waits, &c.waited); err != nil {
		<-sh.sem
		return nil, fmt.Errorf("%w (held: %s)", err, c.heldByOwners())
	}
	sh.held.Add(1)
	return func() { sh.held.Add(-1); <-c.slots; <-sh.sem }, nil
}

// waitFor takes a place of sem (the cap's slots, or an owner's share),
// waiting for one within ctx; a request that waits is counted in waits,
// and its wait, whether or not it got the place, added to waited in
// nanoseconds (Slots).
func waitFor(ctx context.Context, sem chan struct{}, waits, waited *atomic.Int64) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	waits.Add(1)
	start := time.Now()
	defer func() { waited.Add(int64(time.Since(start))) }()
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// heldByOwners names the owners holding slots of the cap now, with their
// counts, for the error of a request that found none free; only asked
// once ShareSlots ran.
func (c *Client) heldByOwners() string {
	m := c.owners.Load()
	var held []string
	for _, o := range slices.Sorted(maps.Keys(*m)) {
		if n := (*m)[o].held.Load(); n > 0 {
			held = append(held, fmt.Sprintf("%s %d", o, n))
		}
	}
	if len(held) == 0 {
		return "no destination's"
	}
	return strings.Join(held, ", ")
}

// RequestSlots is how a client's WithMaxRequests cap is used.
type RequestSlots struct {
	Max   int // the cap; 0: none, and the other fields stay 0
	InUse int // slots taken now
	// Waits counts the requests that found every slot taken, Waited is
	// their total wait (including those whose context ended first).
	Waits  int64
	Waited time.Duration
	// Shares are the owners' shares (ShareSlots), by owner; nil before.
	Shares []SlotShare
}

// SlotShare is how one owner (a destination) uses its share of the cap.
type SlotShare struct {
	Owner string
	Size  int // the most slots the owner's requests hold at once
	Held  int // slots of the cap its requests hold now
	// Waits counts its requests that found the share full, Waited is
	// their total wait for it (not for the cap: RequestSlots.Waited).
	Waits  int64
	Waited time.Duration
}

// Slots reports how the WithMaxRequests cap is used: a cap that keeps
// requests waiting while Orthanc has threads to spare is set too low; a
// share held whole for long is a destination whose file streams stall.
func (c *Client) Slots() RequestSlots {
	if c.slots == nil {
		return RequestSlots{}
	}
	u := RequestSlots{Max: cap(c.slots), InUse: len(c.slots), Waits: c.waits.Load(), Waited: time.Duration(c.waited.Load())}
	if m := c.owners.Load(); m != nil {
		for _, o := range slices.Sorted(maps.Keys(*m)) {
			sh := (*m)[o]
			u.Shares = append(u.Shares, SlotShare{Owner: o, Size: cap(sh.sem), Held: int(sh.held.Load()),
				Waits: sh.waits.Load(), Waited: time.Duration(sh.waited.Load())})
		}
	}
	return u
}

// slotBody gives its request's slot back when it is closed.
type slotBody struct {
	io.ReadCloser
	release func()
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

// confirmOrthanc checks that Orthanc itself answers at the client's base
// URL after answered, the time a 404 arrived: an empty 404 looks the same
// from Orthanc and from a proxy whose upstream is gone (Envoy without a
// route), and only Orthanc answers GET /system with its version. The
// 404s of a study's instances share one probe.
func (c *Client) confirmOrthanc(ctx context.Context, answered time.Time) error {
	select {
	case c.probe <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("GET /system: %w", context.Cause(ctx))
	}
	defer func() { <-c.probe }()
	if c.probedAt.After(answered) {
		return nil
	}
	sent := time.Now()
	ctx, cancel := context.WithTimeout(unslotted(ctx), c.requestTimeout) // as System
	defer cancel()
	resp, err := c.send(ctx, http.MethodGet, c.endpoint("system"), "application/json", nil, nil)
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	var sys System
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /system: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxErrorBytes)).Decode(&sys); err != nil || sys.Version == "" {
		return errors.New("GET /system: not Orthanc's answer")
	}
	c.probedAt = sent
	return nil
}

// getJSON decodes the JSON answer of GET u into v, within the request
// timeout.
func (c *Client) getJSON(ctx context.Context, u *url.URL, v any) error {
	return c.decodeJSON(ctx, u, c.requestTimeout, maxJSONBytes, 0, func(dec *json.Decoder) error { return dec.Decode(v) })
}

// eachJSON GETs u, whose answer is a JSON array, and calls fn with each
// element as it is decoded: memory grows with what fn keeps, not with the
// size of the answer (each element at most c.maxJSONElementBytes). fn's
// errors are returned as they are.
func eachJSON[T any](ctx context.Context, c *Client, u *url.URL, fn func(T) error) error {
	var fnErr error
	err := c.decodeJSON(ctx, u, c.listTimeout, maxJSONArrayBytes, c.maxJSONElementBytes, func(dec *json.Decoder) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return fmt.Errorf("want a JSON array, got %v", tok)
		}
		for dec.More() {
			var v T
			if err := dec.Decode(&v); err != nil {
				return err
			}
			if fnErr = fn(v); fnErr != nil {
				return fnErr
			}
		}
		_, err = dec.Token() // the closing bracket
		return err
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// decodeJSON GETs u within timeout and hands its body, at most limit
// bytes, to decode; with elementLimit > 0, the decoder may hold at most
// elementLimit bytes it has not decoded yet (one element of an array
// decoded element by element). Errors name the request.
func (c *Client) decodeJSON(ctx context.Context, u *url.URL, timeout time.Duration, limit, elementLimit int64, decode func(*json.Decoder) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.get(ctx, u, "application/json")
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	lr := &io.LimitedReader{R: resp.Body, N: limit + 1}
	var dec *json.Decoder
	if elementLimit > 0 {
		er := &elementLimitReader{r: lr, limit: elementLimit}
		dec = json.NewDecoder(er)
		er.dec = dec
	} else {
		dec = json.NewDecoder(lr)
	}
	if err := decode(dec); err != nil {
		switch {
		case errors.Is(err, errElementTooLarge):
			return fmt.Errorf("orthancapi: GET %s: refused the answer: an element of its array is larger than %d bytes (at byte %d)",
				u.EscapedPath(), elementLimit, dec.InputOffset())
		case lr.N <= 0:
			return fmt.Errorf("orthancapi: GET %s: answer larger than %d bytes", u.EscapedPath(), limit)
		}
		return fmt.Errorf("orthancapi: GET %s: decode answer: %w", u.EscapedPath(), err)
	}
	return nil
}

// errElementTooLarge is elementLimitReader's refusal.
var errElementTooLarge = errors.New("JSON element too large")

// elementLimitReader reads for dec no further than limit bytes past
// dec.InputOffset(), the end of what dec has decoded: what dec buffers
// of the value it is decoding stays within limit.
type elementLimitReader struct {
	r     io.Reader
	dec   *json.Decoder
	limit int64
	read  int64
}

func (e *elementLimitReader) Read(p []byte) (int, error) {
	room := e.limit - (e.read - e.dec.InputOffset())
	if room <= 0 {
		return 0, errElementTooLarge
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := e.r.Read(p)
	e.read += int64(n)
	return n, err
}

// drainClose reads a little of what is left so the connection can be
// reused, then closes. A large remainder is not worth reading: the
// connection is dropped instead.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxErrorBytes)
	_ = body.Close()
}
