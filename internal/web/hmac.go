package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Signature headers: a sender that knows INGEST_HMAC_SECRET signs
// timestamp + "." + body (see docs/webhook-security.md).
const (
	TimestampHeader = "X-Stowline-Timestamp"
	SignatureHeader = "X-Stowline-Signature"
	signaturePrefix = "sha256="
)

// Sign returns the X-Stowline-Signature value of body sent at ts.
func Sign(secret []byte, ts time.Time, body []byte) (timestamp, signature string) {
	timestamp = strconv.FormatInt(ts.Unix(), 10)
	return timestamp, signaturePrefix + hex.EncodeToString(mac(secret, timestamp, body))
}

func mac(secret []byte, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// verifySignature checks the signature headers of a request whose body
// is body; the error says what is wrong without revealing the expected
// signature.
func verifySignature(secret []byte, maxSkew time.Duration, now time.Time, h http.Header, body []byte) error {
	timestamp := h.Get(TimestampHeader)
	sig := h.Get(SignatureHeader)
	if timestamp == "" || sig == "" {
		return fmt.Errorf("missing %s or %s header (HMAC signature required)", TimestampHeader, SignatureHeader)
	}
	secs, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || len(timestamp) > 12 {
		return fmt.Errorf("%s: want unix seconds", TimestampHeader)
	}
	if skew := now.Sub(time.Unix(secs, 0)); skew > maxSkew || skew < -maxSkew {
		return fmt.Errorf("%s is more than %s away from the ingest's clock (replayed or clock skew)", TimestampHeader, maxSkew)
	}
	hexSig, ok := strings.CutPrefix(sig, signaturePrefix)
	if !ok {
		return fmt.Errorf("%s: want sha256=<hex>", SignatureHeader)
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%s: want sha256=<64 hex digits>", SignatureHeader)
	}
	if !hmac.Equal(got, mac(secret, timestamp, body)) { // constant time
		return errors.New("signature does not match the body")
	}
	return nil
}
