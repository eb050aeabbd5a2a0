package deident

import (
	"encoding/binary"
	"fmt"
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

// A date shift is 1 to MaxDateShiftDays days, at both ends: never 0,
// which would leave a patient's dates as they are. The Patient IDs are
// searched for whose keyed value falls on each end of the range.
func TestDateShiftBounds(t *testing.T) {
	k, err := NewKeyer(testKey, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		residue uint64 // the keyed value modulo MaxDateShiftDays
		want    int
	}{
		{"lowest", 0, 1},
		{"highest", MaxDateShiftDays - 1, MaxDateShiftDays},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The key is fixed, so every run finds the same ID: a
			// residue comes about once in MaxDateShiftDays IDs.
			for i := range 100 * MaxDateShiftDays {
				id := fmt.Sprintf("PAT-%d", i)
				if binary.BigEndian.Uint64(k.mac("date", id)[:8])%MaxDateShiftDays != tt.residue {
					continue
				}
				if got := k.DateShift(id); got != tt.want {
					t.Errorf("DateShift(%q) = %d, want %d", id, got, tt.want)
				}
				return
			}
			t.Fatalf("no Patient ID with a keyed value of %d modulo %d", tt.residue, MaxDateShiftDays)
		})
	}
}
