package dicomgen

import (
	"crypto/rand"
	"math/big"
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
