package faultproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
)

// droppedKey holds, in a STOW request's context, the SOP Instance UID of
// the part DropNext removed.
type droppedKey struct{}

// DropNext makes the next STOW request of two or more parts lose its
// first part on the way: the destination never receives it, and the
// answer still lists it as stored, as from a destination that answered
// 200 and lost an instance. Requests of one part pass untouched.
func (p *Proxy) DropNext() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropNext = true
}

// Dropped returns the SOP Instance UIDs DropNext removed, in order.
func (p *Proxy) Dropped() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dropped...)
}

// dropFirstPart reads the multipart body of r and returns the request
// without its first part (r itself when it has fewer than two).
func (p *Proxy) dropFirstPart(r *http.Request) (*http.Request, error) {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		return nil, fmt.Errorf("STOW request without a multipart boundary: %v", err)
	}
	boundary := params["boundary"]
	mr := multipart.NewReader(r.Body, boundary)
	type part struct {
		contentType string
		data        []byte
	}
	var parts []part
	for {
		pt, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read STOW request: %w", err)
		}
		data, err := io.ReadAll(pt)
		if err != nil {
			return nil, fmt.Errorf("read STOW request: %w", err)
		}
		parts = append(parts, part{pt.Header.Get("Content-Type"), data})
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if err := mw.SetBoundary(boundary); err != nil {
		return nil, err
	}
	keep, uid := parts, ""
	if len(parts) >= 2 {
		keep, uid = parts[1:], metaSOPInstanceUID(parts[0].data)
	}
	for _, pt := range keep {
		w, err := mw.CreatePart(map[string][]string{"Content-Type": {pt.contentType}})
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(pt.data); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if uid != "" {
		p.mu.Lock()
		p.dropNext = false
		p.dropped = append(p.dropped, uid)
		p.mu.Unlock()
		ctx = context.WithValue(ctx, droppedKey{}, uid)
	}
	r = r.Clone(ctx)
	r.Body = io.NopCloser(&body)
	r.ContentLength = int64(body.Len())
	r.TransferEncoding = nil
	return r, nil
}

// metaSOPInstanceUID reads Media Storage SOP Instance UID (0002,0003)
// from a DICOM file's meta group (always explicit VR little endian);
// "" if the file has none.
func metaSOPInstanceUID(b []byte) string {
	if len(b) < 132 || string(b[128:132]) != "DICM" {
		return ""
	}
	for i := 132; i+8 <= len(b); {
		group, elem := binary.LittleEndian.Uint16(b[i:]), binary.LittleEndian.Uint16(b[i+2:])
		if group != 0x0002 {
			return ""
		}
		vr := string(b[i+4 : i+6])
		var n, head int
		switch vr {
		case "OB", "OW", "OF", "SQ", "UT", "UN":
			if i+12 > len(b) {
				return ""
			}
			n, head = int(binary.LittleEndian.Uint32(b[i+8:])), 12
		default:
			n, head = int(binary.LittleEndian.Uint16(b[i+6:])), 8
		}
		if n < 0 || i+head+n > len(b) {
			return ""
		}
		if elem == 0x0003 {
			return strings.TrimRight(string(b[i+head:i+head+n]), "\x00 ")
		}
		i += head + n
	}
	return ""
}
