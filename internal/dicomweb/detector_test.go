package dicomweb

import (
	"bytes"
	"fmt"
	"testing"
)

// feed runs content through a fresh detector in chunks cut at the given
// offsets and reports whether it fired.
func feed(boundary string, content []byte, cuts ...int) bool {
	d := newDelimiterDetector(boundary)
	d.reset()
	prev := 0
	for _, c := range append(cuts, len(content)) {
		if d.scan(content[prev:c]) {
			return true
		}
		prev = c
	}
	return false
}

func TestDelimiterDetectorEveryChunkEdge(t *testing.T) {
	for _, boundary := range []string{"b", "xy", testBoundary} {
		delim := "\r\n--" + boundary
		for _, prefix := range []string{"x", "DICM\r\n", "\r", "\r\r\n-", "---"} {
			for _, suffix := range []string{"", "\r\n", "--", "tail data"} {
				content := []byte(prefix + delim + suffix)
				name := fmt.Sprintf("%s/%q+delim+%q", boundary, prefix, suffix)
				t.Run(name, func(t *testing.T) {
					if !feed(boundary, content) {
						t.Fatal("missed in a single chunk")
					}
					// Two chunks: the delimiter split at every possible edge.
					for i := 0; i <= len(content); i++ {
						if !feed(boundary, content, i) {
							t.Fatalf("missed with a cut at %d", i)
						}
					}
					// Three chunks: a middle chunk shorter than the window.
					for i := 0; i <= len(content); i++ {
						for j := i; j <= len(content); j++ {
							if !feed(boundary, content, i, j) {
								t.Fatalf("missed with cuts at %d and %d", i, j)
							}
						}
					}
					// One byte at a time.
					cuts := make([]int, len(content))
					for i := range cuts {
						cuts[i] = i
					}
					if !feed(boundary, content, cuts...) {
						t.Fatal("missed byte by byte")
					}
				})
			}
		}
	}
}

func TestDelimiterDetectorNearMisses(t *testing.T) {
	b := testBoundary
	misses := []string{
		"",
		"plain data",
		"\n--" + b,                        // no CR
		"\r--" + b,                        // no LF
		"\r\n-" + b,                       // one dash
		"\r\n--" + b[:len(b)-1],           // truncated at the end of the stream
		"\r\n--" + b[:len(b)-1] + "X",     // last character differs
		"\r\n--X" + b[1:],                 // first character differs
		"\r\n\r\n-" + "-" + b[:10] + "\r", // interrupted
		"x--" + b,                         // dash-boundary not at the start
		"\r\n--" + b[:5] + "\r\n--" + b[:len(b)-1],
	}
	for _, content := range misses {
		c := []byte(content)
		for i := 0; i <= len(c); i++ {
			if feed(b, c, i) {
				t.Errorf("false hit on %q cut at %d", content, i)
			}
		}
	}
}

func TestDelimiterDetectorStartOfPart(t *testing.T) {
	// Right after reset, the window holds the header's CRLF, so content
	// starting with "--"+boundary is a delimiter for the server.
	if !feed("b", []byte("--b")) {
		t.Fatal(`content "--b" not caught at the start of a part`)
	}
	if !feed("b", []byte("--b"), 1) {
		t.Fatal(`content "--b" cut after one byte not caught`)
	}
	// But not later in the part.
	if feed("b", []byte("x--b")) {
		t.Fatal(`"x--b" is not a delimiter`)
	}
	// reset forgets the previous part's tail.
	d := newDelimiterDetector("b")
	d.reset()
	if d.scan([]byte("abc\r\n-")) {
		t.Fatal("early hit")
	}
	d.reset()
	if d.scan([]byte("-b")) {
		t.Fatal(`tail of a previous part leaked through reset`)
	}
}

func TestDelimiterDetectorMatchesOracle(t *testing.T) {
	// Random content over a tiny alphabet hits and misses often; the
	// detector must agree with a plain search on the whole stream.
	const boundary = "ab"
	delim := []byte("\r\n--" + boundary)
	alphabet := []byte("\r\n-ab")
	r := randomBytes(7, 200_000)
	for trial := 0; trial < 2000; trial++ {
		n := int(r[trial]) % 24
		content := make([]byte, n)
		for i := range content {
			content[i] = alphabet[int(r[trial*24+i+1000])%len(alphabet)]
		}
		want := bytes.Contains(append([]byte("\r\n"), content...), delim)
		for cut := 0; cut <= n; cut++ {
			if got := feed(boundary, content, cut); got != want {
				t.Fatalf("content %q cut at %d: detector %v, oracle %v", content, cut, got, want)
			}
		}
	}
}

func TestDelimiterDetectorLongBoundaryMatchesOracle(t *testing.T) {
	// A boundary longer than the key (maxKeyLen) is searched for by its
	// end first: content made of pieces of the delimiter puts the key
	// where there is no delimiter (too close to the start, after a
	// wrong prefix) and next to real ones, cut at every offset.
	const boundary = "stowline.0123456789abcdefghijKLMNOP"
	delim := "\r\n--" + boundary
	key := delim[len(delim)-maxKeyLen:]
	pieces := []string{"\r\n--", "\r\n", "-", key, boundary, delim[:len(delim)-len(key)], delim[1:], "x", "\r", delim}
	r := randomBytes(11, 100_000)
	for trial := 0; trial < 3000; trial++ {
		var content []byte
		for i := range int(r[trial])%5 + 1 {
			content = append(content, pieces[int(r[trial*5+i+5000])%len(pieces)]...)
		}
		want := bytes.Contains(append([]byte("\r\n"), content...), []byte(delim))
		for cut := 0; cut <= len(content); cut++ {
			if got := feed(boundary, content, cut); got != want {
				t.Fatalf("content %q cut at %d: detector %v, oracle %v", content, cut, got, want)
			}
		}
	}
}
