package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
)

// errBodyAbandoned is what the body writer sees once the request is over
// and the server no longer reads the body.
var errBodyAbandoned = errors.New("stow: request finished before the body was fully sent")

// bigChunks is the request body: net/http copies a body that implements
// io.WriterTo through WriteTo, so each HTTP chunk is a full buffer
// (bufferSize) instead of io.Copy's 32 KiB, and the server reads the body
// with fewer system calls.
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
var partHeader = textproto.MIMEHeader{"Content-Type": {dicomMediaType}}

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
