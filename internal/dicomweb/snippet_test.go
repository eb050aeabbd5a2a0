package dicomweb

import (
	"strings"
	"testing"
)

func TestSnippet(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"  a \n\t b  ", 100, "a b"},
		{"<html><head><TITLE> 503 Service Unavailable </TITLE></head>...", 100, "503 Service Unavailable"},
		{"abc\x00\x01def", 100, "abcdef"},
		{"\xff\xfeok", 100, "ok"},
		{"héllo wörld", 6, "héllo…"},
		{strings.Repeat("a", 10), 5, "aaaaa…"},
	}
	for _, tt := range tests {
		if got := snippet([]byte(tt.in), tt.max); got != tt.want {
			t.Errorf("snippet(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}
