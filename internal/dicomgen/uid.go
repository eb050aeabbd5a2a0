package dicomgen

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"strings"
)

// implementationClassUID identifies files written by this package in the
// file meta information. It is a fixed UUID-derived UID (2.25 root), so it
// needs no registered organisation root.
const implementationClassUID = "2.25.209422125073601309855816795378881616190"

// implementationVersionName is (0002,0013); SH, at most 16 characters.
const implementationVersionName = "STOWLINE_DCMGEN"

// NewUID returns a new random UID under the 2.25 root (ITU-T X.667): the
// decimal form of a version 4 UUID. It is at most 44 characters long.
func NewUID() string {
	var b [16]byte
	// crypto/rand.Read never fails on supported platforms (Go 1.24+).
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return "2.25." + new(big.Int).SetBytes(b[:]).String()
}

// ValidUID reports whether s is a syntactically valid DICOM UID: 1 to 64
// characters, dot-separated numeric components without leading zeros.
func ValidUID(s string) bool {
	return validateUID(s) == nil
}

func validateUID(s string) error {
	if s == "" {
		return fmt.Errorf("empty UID")
	}
	if len(s) > 64 {
		return fmt.Errorf("uid is %d characters, more than 64", len(s))
	}
	for _, c := range strings.Split(s, ".") {
		if c == "" {
			return fmt.Errorf("uid %q has an empty component", s)
		}
		if len(c) > 1 && c[0] == '0' {
			return fmt.Errorf("uid %q has a component with a leading zero", s)
		}
		for i := 0; i < len(c); i++ {
			if c[i] < '0' || c[i] > '9' {
				return fmt.Errorf("uid %q has a non-digit character", s)
			}
		}
	}
	return nil
}
