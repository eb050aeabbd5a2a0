package dicomweb

import (
	"bytes"
	"strings"
	"unicode"
	"unicode/utf8"
)

// snippet makes a body fit for an error message or log line: the HTML
// <title> if there is one, whitespace collapsed, control characters and
// invalid UTF-8 dropped, cut to at most max bytes.
func snippet(b []byte, max int) string {
	if t := htmlTitle(b); len(t) > 0 {
		b = t
	}
	var sb strings.Builder
	space := false
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size <= 1:
			continue
		case unicode.IsSpace(r):
			space = sb.Len() > 0
			continue
		case !unicode.IsPrint(r):
			continue
		}
		need := utf8.RuneLen(r)
		if space {
			need++
		}
		if sb.Len()+need > max {
			sb.WriteString("…")
			break
		}
		if space {
			sb.WriteByte(' ')
			space = false
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func htmlTitle(b []byte) []byte {
	// ASCII-only lowering keeps byte offsets: bytes.ToLower may change the
	// length (invalid UTF-8, some case pairs), and the offsets index b.
	head := b[:min(len(b), 4096)]
	lower := make([]byte, len(head))
	for k, c := range head {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[k] = c
	}
	i := bytes.Index(lower, []byte("<title>"))
	if i < 0 {
		return nil
	}
	j := bytes.Index(lower[i:], []byte("</title>"))
	if j < 0 {
		return nil
	}
	return bytes.TrimSpace(b[i+len("<title>") : i+j])
}
