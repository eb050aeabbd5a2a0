package deident

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// MinKeyLen is the shortest site key accepted: 32 bytes, the size of
// the HMAC-SHA256 output, so the key is not the weak link.
const MinKeyLen = 32

// MaxDateShiftDays bounds the per-patient date offset: dates move back
// by 1 to MaxDateShiftDays days (about ten years).
const MaxDateShiftDays = 3650

// ErrKeyTooShort is returned for a key shorter than MinKeyLen.
var ErrKeyTooShort = errors.New("de-identification key is too short")

// Keyer derives pseudonyms from a site's secret key. Every value is an
// HMAC-SHA256 of the original under the key, with a purpose prefix so a
// UID and a Patient ID that happen to be equal do not map alike. Without
// the key no pseudonym can be linked back; with it the site recomputes
// the pseudonym of a known original (forwarder pseudonym).
type Keyer struct {
	key    []byte
	prefix string
}

// NewKeyer returns a Keyer for key (at least MinKeyLen bytes). Patient
// IDs map to prefix followed by 20 base32 characters.
func NewKeyer(key []byte, patientPrefix string) (*Keyer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("%w: %d bytes, want at least %d", ErrKeyTooShort, len(key), MinKeyLen)
	}
	if len(patientPrefix) > 44 {
		return nil, fmt.Errorf("patient ID prefix %q is longer than 44 characters (Patient ID is at most 64)", patientPrefix)
	}
	return &Keyer{key: append([]byte(nil), key...), prefix: patientPrefix}, nil
}

// ReadKeyFile reads a site key. Trailing newlines are kept out of it, so
// a key written with echo and one written with printf are the same key.
// The key's content never appears in an error.
func ReadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the de-identification key: %w", err)
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(b) < MinKeyLen {
		return nil, fmt.Errorf("%s: %w: %d bytes, want at least %d (e.g. head -c 32 /dev/urandom | base64 > key)", path, ErrKeyTooShort, len(b), MinKeyLen)
	}
	return b, nil
}

// fingerprintMessage is what Fingerprint's HMAC is of.
const fingerprintMessage = "stowline key fingerprint"

// Fingerprint names the key without revealing it, so that operators can
// tell whether two processes use the same key: the first 8 bytes, in
// hex, of HMAC-SHA256(key, "stowline key fingerprint"). `forwarder
// pseudonym --fingerprint` prints a key file's.
func (k *Keyer) Fingerprint() string {
	h := hmac.New(sha256.New, k.key)
	h.Write([]byte(fingerprintMessage))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func (k *Keyer) mac(purpose, value string) []byte {
	h := hmac.New(sha256.New, k.key)
	h.Write([]byte(purpose))
	h.Write([]byte{0})
	h.Write([]byte(value))
	return h.Sum(nil)
}

// UID maps a UID to "2.25." followed by the decimal of the first 128
// bits of its HMAC (PS3.5 B.2: a UUID-derived UID, at most 44 characters).
// Padding (NUL or space) is not part of the UID, nor is a leading
// space: Orthanc drops it, and the forwarder maps the UIDs Orthanc
// reports, so the copy must carry the same pseudonym.
func (k *Keyer) UID(uid string) string {
	uid = strings.Trim(uid, "\x00 ")
	if uid == "" {
		return ""
	}
	sum := k.mac("uid", uid)
	// Variant and version bits as a UUID v8 so the number is a valid UUID.
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x80
	b[8] = b[8]&0x3f | 0x80
	return "2.25." + new(big.Int).SetBytes(b).String()
}

var patientEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// PatientID maps a Patient ID to the prefix followed by 20 base32
// characters (100 bits of its HMAC). An empty Patient ID stays empty.
func (k *Keyer) PatientID(id string) string {
	id = trimPatientID(id)
	if id == "" {
		return ""
	}
	return k.prefix + patientEncoding.EncodeToString(k.mac("patient", id)[:13])[:20]
}

// DateShift is the number of days a patient's dates move back: 1 to
// MaxDateShiftDays, the same for every instance of the patient, so
// intervals between studies are kept.
func (k *Keyer) DateShift(patientID string) int {
	return k.dateShift("date", trimPatientID(patientID))
}

// instanceDateShift is DateShift for an instance of patientID in study:
// an instance without a Patient ID names no patient, so its dates move
// by its study's offset. One offset for every such instance would let
// one known date reveal the dates of all of them, whoever the patients.
func (k *Keyer) instanceDateShift(patientID, study string) int {
	if trimPatientID(patientID) == "" && study != "" {
		return k.dateShift("date-study", study)
	}
	return k.DateShift(patientID)
}

func (k *Keyer) dateShift(purpose, v string) int {
	n := binary.BigEndian.Uint64(k.mac(purpose, v)[:8])
	return int(n%MaxDateShiftDays) + 1
}

// trimPatientID drops the padding and the leading and trailing spaces of
// a Patient ID (LO), which are not significant (PS3.5 6.2): " PAT-42"
// from one modality and "PAT-42" from another are one patient, with one
// pseudonym and one date offset.
func trimPatientID(id string) string { return strings.Trim(id, "\x00 ") }
