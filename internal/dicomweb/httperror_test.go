package dicomweb

import (
	"errors"
	"fmt"
	"testing"
)

func TestTrimBody(t *testing.T) {
	tests := []struct {
		in    string
		limit int
		want  string
	}{
		{"  short  ", 10, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},             // do not split the two bytes of é
		{"\xff\xfe", 10, "\uFFFD"}, // one replacement per invalid run
	}
	for _, tt := range tests {
		if got := trimBody([]byte(tt.in), tt.limit); got != tt.want {
			t.Errorf("trimBody(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
		}
	}
}

func TestHTTPErrorMessage(t *testing.T) {
	he := &HTTPError{StatusCode: 504, ContentType: "text/html", Body: "<html><title>504 Gateway Time-out</title></html>"}
	want := "stow: server answered 504 Gateway Timeout (text/html): 504 Gateway Time-out"
	if he.Error() != want {
		t.Fatalf("Error() = %q, want %q", he.Error(), want)
	}
	var err error = fmt.Errorf("forward study: %w", he)
	var got *HTTPError
	if !errors.As(err, &got) || got.StatusCode != 504 {
		t.Fatal("errors.As through wrapping failed")
	}
}
