package auth_test

import (
	"strings"
	"testing"

	"github.com/stowline/stowline/auth"
)

// RedactTokens removes the credentials a destination's answer may echo,
// and keeps the rest of the message.
func TestRedactTokens(t *testing.T) {
	tests := []struct{ in, secret, keep string }{
		{`{"error":"invalid token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"}`, "eyJzdWIi", "invalid token [REDACTED JWT]"},
		{"401: header was Authorization: Bearer 3f9a1c0d7e2b4a6f8c1d0e9b7a5f3c21 (unknown)", "3f9a1c0d7e2b", "Bearer [REDACTED] (unknown)"},
		{"token ya29.a0AfB_byC3xYz-123456789abcdef expired", "a0AfB_byC3", "token [REDACTED TOKEN] expired"},
		{"The canonical request was: host:medical-imaging.us-east-1.amazonaws.com\nx-amz-security-token:IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH\n",
			"IQoJb3JpZ2lu", "x-amz-security-token:[REDACTED]"},
		{"X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2Fw&X-Amz-Date=20261204T101500Z", "IQoJb3JpZ2lu", "X-Amz-Security-Token=[REDACTED]&X-Amz-Date"},
		{`Bearer realm="dicom", error="invalid_token"`, "", `Bearer realm="dicom", error="invalid_token"`},
		{"0xA700: out of resources", "", "0xA700: out of resources"},
	}
	for _, tt := range tests {
		got := auth.RedactTokens(tt.in)
		if (tt.secret != "" && strings.Contains(got, tt.secret)) || !strings.Contains(got, tt.keep) {
			t.Errorf("RedactTokens(%q) = %q, want %q kept and the token gone", tt.in, got, tt.keep)
		}
	}
}
