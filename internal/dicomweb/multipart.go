package dicomweb

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
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
	// without a search.
	boundaryRandomBytes = 30
	boundaryPrefix      = "stowline."
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
