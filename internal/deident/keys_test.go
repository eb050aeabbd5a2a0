package deident

import (
	"strings"
	"testing"
)

// The fingerprint names a key without revealing it, and is what openssl
// gives for it (docs/deidentification.md): printf 'stowline key
// fingerprint' | openssl dgst -sha256 -hmac "$(cat KEYFILE)".
func TestKeyFingerprint(t *testing.T) {
	tests := []struct {
		name, key, want string
	}{
		{name: "openssl's answer", key: strings.Repeat("k", 40), want: "699d18bff6df025f"},
		{name: "another key", key: strings.Repeat("k", 39) + "l"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeyer([]byte(tt.key), "")
			if err != nil {
				t.Fatal(err)
			}
			got := k.Fingerprint()
			if len(got) != 16 || strings.Contains(tt.key, got) {
				t.Errorf("Fingerprint() = %q: want 16 hex digits, no part of the key", got)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("Fingerprint() = %q, want %q", got, tt.want)
			}
			if tt.want == "" && got == "699d18bff6df025f" {
				t.Error("two keys, one fingerprint")
			}
		})
	}
}
