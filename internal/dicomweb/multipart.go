package dicomweb

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"net/textproto"
	"slices"
	"strings"
)

// dicomMediaType is the media type of every part of a STOW-RS request.
const dicomMediaType = "application/dicom"

const (
	// maxBoundaryLen is the RFC 2046 §5.1.1 limit.
	maxBoundaryLen = 70
	// boundaryRandomBytes gives 40 base64 characters, 240 random bits,
	// which is why Client does not search the content for the delimiter
	// (a search cost about three times the copy itself): content holds
	// "\r\n--"+boundary at a given offset with probability 2^-240, so
	// even 2^60 bytes (an exabyte) ever sent hold it with probability
	// below 2^-180. The boundary is drawn from crypto/rand for each
	// request, after the content was stored, so crafted content cannot
	// aim at it. Go's mime/multipart Writer relies on the same 240 bits
	// without a search. MultipartWriter, whose caller chooses the
	// boundary, still searches.
	boundaryRandomBytes = 30
	boundaryPrefix      = "stowline."
	// defaultCopyBufferSize is the copy buffer of a MultipartWriter that
	// was not handed one from a Client's pool.
	defaultCopyBufferSize = 64 << 10
)

// newBoundary returns a fresh random multipart boundary made of RFC 2046
// bchars (letters, digits, '.', '-', '_'), 49 characters long.
func newBoundary() (string, error) {
	var b [boundaryRandomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("stow: generate boundary: %w", err)
	}
	return boundaryPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// validateBoundary checks the RFC 2046 §5.1.1 grammar: 1 to 70 bchars,
// not ending with a space.
func validateBoundary(b string) error {
	if b == "" || len(b) > maxBoundaryLen {
		return fmt.Errorf("%w: length %d, want 1 to %d", errInvalidBoundary, len(b), maxBoundaryLen)
	}
	for i := 0; i < len(b); i++ {
		if !isBChar(b[i]) {
			return fmt.Errorf("%w: character %q at %d is not allowed", errInvalidBoundary, b[i], i)
		}
	}
	if b[len(b)-1] == ' ' {
		return fmt.Errorf("%w: ends with a space", errInvalidBoundary)
	}
	return nil
}

func isBChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("'()+_,-./:=? ", c) >= 0
}

// requestContentType is the Content-Type of a STOW-RS request body framed
// with boundary.
func requestContentType(boundary string) string {
	return mime.FormatMediaType("multipart/related", map[string]string{
		"type":     dicomMediaType,
		"boundary": boundary,
	})
}

// MultipartWriter writes a multipart/related body part by part, copying
// each part's content through one reused buffer. It refuses to write a part
// whose content contains the delimiter ("\r\n--" + boundary): the body would
// be cut there by the server. After an error (other than a rejected
// header, which writes nothing) the body is corrupt and every later call
// returns that error.
type MultipartWriter struct {
	w        io.Writer
	boundary string
	det      delimiterDetector
	buf      []byte
	written  int64
	parts    int
	closed   bool
	err      error
}

// NewMultipartWriter returns a MultipartWriter that writes to w with the
// given boundary (see newBoundary).
func NewMultipartWriter(w io.Writer, boundary string) (*MultipartWriter, error) {
	return newMultipartWriter(w, boundary, nil)
}

// newMultipartWriter lets tests choose the copy buffer.
func newMultipartWriter(w io.Writer, boundary string, buf []byte) (*MultipartWriter, error) {
	if err := validateBoundary(boundary); err != nil {
		return nil, err
	}
	return &MultipartWriter{
		w:        w,
		boundary: boundary,
		det:      newDelimiterDetector(boundary),
		buf:      buf,
	}, nil
}

// ContentType returns the Content-Type header value for the body.
func (m *MultipartWriter) ContentType() string { return requestContentType(m.boundary) }

// bytesWritten returns how many bytes, framing included, went to the
// underlying writer.
func (m *MultipartWriter) bytesWritten() int64 { return m.written }

// WritePart writes one part: its delimiter, header (keys sorted, so the
// output is deterministic) and the content read from r until EOF. It
// returns the number of content bytes written.
//
// If the content contains the delimiter, WritePart stops before writing
// the chunk that holds it and returns errBoundaryCollision.
func (m *MultipartWriter) WritePart(header textproto.MIMEHeader, r io.Reader) (int64, error) {
	if m.err != nil {
		return 0, m.err
	}
	if m.closed {
		return 0, errWriterClosed
	}
	if err := validateHeader(header); err != nil {
		// Nothing was written yet: the body is still intact.
		return 0, err
	}
	m.parts++
	if err := m.writeString(partPreamble(m.boundary, header, m.parts == 1)); err != nil {
		return 0, err
	}
	return m.copyContent(r)
}

// partPreamble is what precedes a part's content: the CRLF that ends the
// previous part's content (unless first), the delimiter line and the
// header (keys sorted, so the output is deterministic), then the blank
// line.
func partPreamble(boundary string, header textproto.MIMEHeader, first bool) string {
	var hb strings.Builder
	if !first {
		hb.WriteString("\r\n")
	}
	hb.WriteString("--")
	hb.WriteString(boundary)
	hb.WriteString("\r\n")
	keys := make([]string, 0, len(header))
	for k := range header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range header[k] {
			hb.WriteString(k)
			hb.WriteString(": ")
			hb.WriteString(v)
			hb.WriteString("\r\n")
		}
	}
	hb.WriteString("\r\n")
	return hb.String()
}

// closeDelimiter ends a body of parts parts.
func closeDelimiter(boundary string, parts int) string {
	end := "--" + boundary + "--\r\n"
	if parts > 0 {
		end = "\r\n" + end
	}
	return end
}

func (m *MultipartWriter) copyContent(r io.Reader) (int64, error) {
	if m.buf == nil {
		m.buf = make([]byte, defaultCopyBufferSize)
	}
	m.det.reset()
	var n int64
	for {
		nr, rerr := r.Read(m.buf)
		if nr > 0 {
			chunk := m.buf[:nr]
			// Scan before writing: the bytes that would end the part early
			// never reach the wire.
			if m.det.scan(chunk) {
				return n, m.fail(errBoundaryCollision)
			}
			nw, werr := m.w.Write(chunk)
			n += int64(nw)
			m.written += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, m.fail(fmt.Errorf("write part content: %w", werr))
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, m.fail(fmt.Errorf("read part content: %w", rerr))
		}
	}
}

// Close writes the close delimiter. It does not close the underlying writer.
func (m *MultipartWriter) Close() error {
	if m.err != nil {
		return m.err
	}
	if m.closed {
		return nil
	}
	m.closed = true
	return m.writeString(closeDelimiter(m.boundary, m.parts))
}

func (m *MultipartWriter) writeString(s string) error {
	nw, err := io.WriteString(m.w, s)
	m.written += int64(nw)
	if err == nil && nw != len(s) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return m.fail(fmt.Errorf("write multipart framing: %w", err))
	}
	return nil
}

func (m *MultipartWriter) fail(err error) error {
	m.err = err
	return err
}

// validateHeader rejects header fields that would break the framing.
func validateHeader(h textproto.MIMEHeader) error {
	for k, vs := range h {
		if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ':' }) {
			return fmt.Errorf("%w: field name %q", errInvalidHeader, k)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				return fmt.Errorf("%w: value of %s contains CR, LF or NUL", errInvalidHeader, k)
			}
		}
	}
	return nil
}

// delimiterDetector finds "\r\n--"+boundary in a stream fed chunk by chunk.
// It keeps the last len(delim)-1 bytes seen (a rolling window), so a
// delimiter split across any chunk edge is still found, while each chunk
// itself is searched with the fast bytes.Index.
type delimiterDetector struct {
	delim   []byte
	tail    []byte // at most len(delim)-1 bytes
	scratch []byte // tail + head of the next chunk
	// key is the end of delim, up to maxKeyLen bytes of the boundary: what
	// contains searches for first.
	key []byte
}

// maxKeyLen bounds the part of the delimiter searched for first.
const maxKeyLen = 16

func newDelimiterDetector(boundary string) delimiterDetector {
	d := []byte("\r\n--" + boundary)
	return delimiterDetector{
		delim:   d,
		tail:    make([]byte, 0, len(d)),
		scratch: make([]byte, 0, 2*len(d)),
		key:     d[len(d)-min(maxKeyLen, len(boundary)):],
	}
}

// contains reports whether p holds the delimiter. It searches for the
// key, the boundary's last characters, and checks the whole delimiter
// only where the key occurs. bytes.Index looks for its pattern's first
// byte with IndexByte and restarts at every occurrence; searching for the
// delimiter itself would restart at every CR, and in 16-bit pixel data of
// 12-bit values every high byte is 0x00-0x0F, so CR is common there. The
// key of a newBoundary is random letters and digits, which such data holds
// far less often and in a pair almost never.
func (d *delimiterDetector) contains(p []byte) bool {
	off := len(d.delim) - len(d.key)
	for i := 0; ; {
		j := bytes.Index(p[i:], d.key)
		if j < 0 {
			return false
		}
		j += i
		if j >= off && bytes.Equal(p[j-off:j-off+len(d.delim)], d.delim) {
			return true
		}
		i = j + 1
	}
}

// reset starts a new part. The window starts as "\r\n", the end of the
// part's header, so content that begins with "--"+boundary is caught too:
// a parser would see the header's CRLF and the content as a delimiter.
func (d *delimiterDetector) reset() {
	d.tail = append(d.tail[:0], '\r', '\n')
}

// scan reports whether the delimiter occurs in everything seen since reset,
// up to and including p.
func (d *delimiterDetector) scan(p []byte) bool {
	keep := len(d.delim) - 1
	head := p[:min(keep, len(p))]
	d.scratch = append(append(d.scratch[:0], d.tail...), head...)
	if d.contains(d.scratch) || d.contains(p) {
		return true
	}
	if len(p) >= keep {
		d.tail = append(d.tail[:0], p[len(p)-keep:]...)
	} else {
		// p is short: the new window is the end of tail+p, which is
		// exactly scratch.
		d.tail = append(d.tail[:0], d.scratch[max(0, len(d.scratch)-keep):]...)
	}
	return false
}
