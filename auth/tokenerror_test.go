package auth

import (
	"errors"
	"fmt"
	"net"
	"testing"
)

// TestTokenErrorTemporary: which token endpoint failures are tried again
// (the fetch's retries, the forwarder's backoff) and which need an
// operator.
func TestTokenErrorTemporary(t *testing.T) {
	tests := []struct {
		name string
		te   TokenError
		want bool
	}{
		{"no answer", TokenError{Err: errors.New("connection refused")}, true},
		{"408 (the endpoint timed the request out)", TokenError{StatusCode: 408}, true},
		{"429", TokenError{StatusCode: 429}, true},
		{"503", TokenError{StatusCode: 503}, true},
		{"400 invalid_client", TokenError{StatusCode: 400, Code: "invalid_client"}, false},
		{"404", TokenError{StatusCode: 404}, false},
		{"404, one of the endpoint's retry statuses (IMDS updating)", TokenError{StatusCode: 404, retryStatus: true}, true},
		{"client certificate refused (a TLS alert from the endpoint)", TokenError{Err: &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}}, false},
		{"configuration", TokenError{Err: fmt.Errorf("%w: no key", ErrInvalidConfig)}, false},
	}
	for _, tt := range tests {
		if got := tt.te.Temporary(); got != tt.want {
			t.Errorf("%s: Temporary() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
