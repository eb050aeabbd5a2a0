package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"
)

// errBodyAbandoned is what the body writer sees once the request is over
// and the server no longer reads the body.
var errBodyAbandoned = errors.New("stow: request finished before the body was fully sent")

// requestBody is the body of one STOW-RS request: the multipart/related
// encoding of parts, produced as the transport consumes it, in the
// transport's goroutine. There is no pipe and no goroutine of its own:
// sources are read straight into the buffer that goes to the connection.
//
// net/http sends a body that implements io.WriterTo through WriteTo
// (HTTP/1.1 with an unknown length, chunked): WriteTo fills the client's
// pooled buffer and writes it whole, so each HTTP chunk is a full buffer.
// Where WriteTo is hidden (a known Content-Length, which net/http reads
// through io.LimitReader; a RoundTripper that wraps the body, such as the
// bandwidth cap; HTTP/2), Read fills the caller's buffer the same way.
//
// Read and WriteTo hold use for their whole call; stop takes it too, so
// once stop returns nothing touches the pooled buffer or the sources.
type requestBody struct {
	ctx      context.Context
	parts    []Part
	exact    bool
	boundary string
	buf      []byte // the pooled buffer; only WriteTo uses it
	// preamble precedes the first part's content, nextPreamble every
	// other's.
	preamble, nextPreamble string

	use sync.Mutex
	// done: the transport closed the body after it started, or stop was
	// called; Read and WriteTo then fail at once. started: Read or
	// WriteTo was called.
	done, started atomic.Bool

	// The encoder, under use.
	framing string        // framing bytes not yet produced
	next    int           // index of the current or next part
	src     io.ReadCloser // the current part's source, nil between parts
	content io.Reader     // src through ctxReader (and exactReader)
	err     error         // the encoder's first failure, sticky
	ended   bool          // the close delimiter is queued in framing

	// moved counts the bytes handed to the transport, and sentAt is when
	// the last of them was, as time since made plus one (0: not yet):
	// atomic, for Client.watch, which must not wait for use. Measured on
	// the monotonic clock: a wall-clock step (NTP, a VM resumed) must not
	// read as 15 minutes without an answer.
	moved  atomic.Int64
	sentAt atomic.Int64
	made   time.Time
	// inSource: the encoder waits on the current part's source (its
	// Open or a Read), so a stall is the source's, not the destination's.
	inSource atomic.Bool
	// waits are the sources' waits bounded elsewhere (flow.BoundedWait),
	// which watch does not count as a stall.
	waits boundedWaits
}

func newRequestBody(ctx context.Context, boundary string, parts []Part, exact bool, buf []byte) *requestBody {
	b := &requestBody{
		parts: parts, exact: exact, boundary: boundary, buf: buf, made: time.Now(),
		preamble:     partPreamble(boundary, partHeader, true),
		nextPreamble: partPreamble(boundary, partHeader, false),
	}
	b.ctx = b.waits.context(ctx)
	return b
}

// markSent notes that the last byte was handed to the transport.
func (b *requestBody) markSent() { b.sentAt.Store(int64(time.Since(b.made)) + 1) }

// sinceSent is how long ago, at now, the last byte was handed to the
// transport; ok is false while it was not.
func (b *requestBody) sinceSent(now time.Time) (d time.Duration, ok bool) {
	sent := b.sentAt.Load()
	if sent == 0 {
		return 0, false
	}
	return now.Sub(b.made) - time.Duration(sent-1), true
}

// Read fills p with the next bytes of the body: until p is full, the
// body ends (io.EOF) or the encoder fails. Filling p, rather than
// returning after each source read, keeps a part's framing and content in
// one write of the caller's.
func (b *requestBody) Read(p []byte) (int, error) {
	b.use.Lock()
	defer b.use.Unlock()
	b.started.Store(true)
	if b.done.Load() {
		return 0, errBodyAbandoned
	}
	n, err := b.fill(p)
	b.moved.Add(int64(n))
	if err == io.EOF {
		b.markSent()
	}
	return n, err
}

// WriteTo writes the body to w in writes of a full buffer (the last one
// shorter): with net/http's chunked writer, one HTTP chunk each.
func (b *requestBody) WriteTo(w io.Writer) (int64, error) {
	b.use.Lock()
	defer b.use.Unlock()
	b.started.Store(true)
	var total int64
	for {
		if b.done.Load() {
			return total, errBodyAbandoned
		}
		n, err := b.fill(b.buf)
		if n > 0 {
			m, werr := w.Write(b.buf[:n])
			total += int64(m)
			b.moved.Add(int64(m))
			if werr == nil && m != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				// The rest of the body cannot follow a lost write.
				b.done.Store(true)
				return total, werr
			}
		}
		if err == io.EOF {
			b.markSent()
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Close is the transport's: it reads no more of the body. It does not
// wait for a Read under way (net/http may close the body from another
// goroutine while one is); stop does. A body not started yet stays
// usable: Go's HTTP/2 client closes the body of a request a connection
// could not take (GOAWAY, no free stream) and sends the same request
// again on another.
func (b *requestBody) Close() error {
	if b.started.Load() {
		b.done.Store(true)
	}
	return nil
}

// stop ends the body for good once the request is over and ctx is
// cancelled (so a Read waiting on a source returns): it waits for a Read
// or WriteTo under way, closes the open source and returns the bytes
// handed to the transport and the encoder's failure, if any. Afterwards
// the pooled buffer is free.
func (b *requestBody) stop() (int64, error) {
	b.done.Store(true)
	b.use.Lock()
	defer b.use.Unlock()
	b.closeSource()
	return b.moved.Load(), b.err
}

// fill is the encoder: it puts the next bytes of the body into p, opening
// the parts in turn.
func (b *requestBody) fill(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		switch {
		case b.err != nil:
			return n, b.err
		case b.framing != "":
			k := copy(p[n:], b.framing)
			b.framing = b.framing[k:]
			n += k
		case b.content != nil:
			// The content is not searched for the delimiter: see
			// boundaryRandomBytes.
			b.inSource.Store(true)
			k, err := b.content.Read(p[n:])
			b.inSource.Store(false)
			n += k
			switch {
			case err == io.EOF:
				b.closeSource()
				b.queueNext()
			case err != nil:
				return n, b.fail(fmt.Errorf("read part content: %w", err))
			}
		case b.ended:
			return n, io.EOF
		default:
			if err := b.openPart(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// openPart opens the next part and queues its preamble: the first part at
// the first Read, each later one when the previous one has ended.
func (b *requestBody) openPart() error {
	if err := b.ctx.Err(); err != nil {
		b.err = err
		return err
	}
	if b.done.Load() {
		// Closed while a Read fills its buffer: no source is opened
		// for bytes nobody will send.
		return errBodyAbandoned
	}
	p := b.parts[b.next]
	b.inSource.Store(true)
	rc, err := p.Open(b.ctx)
	b.inSource.Store(false)
	if err != nil {
		return b.fail(fmt.Errorf("open: %w", err))
	}
	b.src = rc
	var r io.Reader = ctxReader{ctx: b.ctx, r: rc}
	if b.exact {
		r = &exactReader{r: r, left: p.Size}
	}
	b.content = r
	b.framing = b.nextPreamble
	if b.next == 0 {
		b.framing = b.preamble
	}
	return nil
}

// queueNext, after a part's content, moves to the next part or queues the
// close delimiter.
func (b *requestBody) queueNext() {
	b.next++
	if b.next == len(b.parts) {
		b.framing = closeDelimiter(b.boundary, len(b.parts))
		b.ended = true
	}
}

// fail records err, about the current part, as the encoder's failure and
// closes the part's source.
func (b *requestBody) fail(err error) error {
	p := b.parts[b.next]
	b.err = &brokenBodyError{uid: p.SOPInstanceUID,
		err: fmt.Errorf("stow: part %d (SOP Instance UID %q): %w", b.next+1, p.SOPInstanceUID, err)}
	b.closeSource()
	return b.err
}

// current names the part being encoded, for an error, and gives its SOP
// Instance UID; call it after stop.
func (b *requestBody) current() (name, uid string) {
	b.use.Lock()
	defer b.use.Unlock()
	i := min(b.next, len(b.parts)-1)
	uid = b.parts[i].SOPInstanceUID
	return fmt.Sprintf("part %d (SOP Instance UID %q)", i+1, uid), uid
}

func (b *requestBody) closeSource() {
	if b.src != nil {
		_ = b.src.Close()
	}
	b.src, b.content = nil, nil
}

// isWriteFailure tells a real body failure (source error, size mismatch)
// from the writer merely being stopped.
func isWriteFailure(err error) bool {
	return err != nil &&
		!errors.Is(err, errBodyAbandoned) &&
		!errors.Is(err, context.Canceled)
}

// partHeader is the header of every part.
var partHeader = textproto.MIMEHeader{"Content-Type": {dicomMediaType}}

// exactReader yields exactly left bytes of r and fails with
// errSizeMismatch, instead of returning the excess or an early EOF, when r
// holds more or fewer.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		var one [1]byte
		if n, err := e.r.Read(one[:]); n > 0 {
			return 0, fmt.Errorf("%w: longer than announced", errSizeMismatch)
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
		return n, fmt.Errorf("%w: %d bytes short", errSizeMismatch, e.left)
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

// multipartLength is the exact length of the body requestBody writes
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
