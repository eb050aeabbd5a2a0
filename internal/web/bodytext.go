package web

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"github.com/stowline/stowline/internal/ellipsis"
)

// contentCodingProblem says why a request body sent with a content
// coding (gzip, deflate) is refused, "" for none: the body is read as
// it came, and a compressed event was refused as "malformed JSON",
// which sent the sender looking at its JSON. 415, as RFC 7694 answers an
// unsupported content coding.
func contentCodingProblem(h http.Header) string {
	for _, v := range h.Values("Content-Encoding") {
		for coding := range strings.SplitSeq(v, ",") {
			if c := strings.TrimSpace(coding); c != "" && !strings.EqualFold(c, "identity") {
				return fmt.Sprintf("Content-Encoding %q is not supported: send the body uncompressed", ellipsis.Truncate(c, 40))
			}
		}
	}
	return ""
}

// utf8BOM is the byte-order mark some Windows tools write before JSON.
var utf8BOM = []byte("\xef\xbb\xbf")

// jsonText returns the JSON text of body, a UTF-8 byte-order mark
// dropped (RFC 8259 8.1 lets a reader ignore it), or why body is no
// UTF-8 JSON text: UTF-16 or UTF-32 (a PowerShell or .NET sender's
// default) and gzip without its Content-Encoding were refused as
// "invalid character 'ï'" or "'\x1f'", which named no cause.
func jsonText(body []byte) ([]byte, string) {
	switch {
	case bytes.HasPrefix(body, utf8BOM):
		return body[len(utf8BOM):], ""
	case bytes.HasPrefix(body, []byte{0xfe, 0xff}), bytes.HasPrefix(body, []byte{0xff, 0xfe}),
		len(body) >= 2 && (body[0] == 0 || body[1] == 0):
		return nil, "the body is UTF-16 or UTF-32 text: send it as UTF-8"
	case bytes.HasPrefix(body, []byte{0x1f, 0x8b}):
		return nil, "the body is gzip-compressed: send it uncompressed"
	}
	return body, ""
}
