// Package retryafter reads the Retry-After header of an HTTP answer, which
// the STOW-RS client and the token source both honour.
package retryafter

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxSeconds bounds delay-seconds: a day is longer than any sensible
// wait, and a larger count could overflow a time.Duration.
const maxSeconds = 24 * 60 * 60

// parse reads a Retry-After value, delay-seconds or an HTTP-date (RFC 9110
// §10.2.3), as the wait from now. It is 0 when the value is empty,
// unreadable, not positive or a date already past; delay-seconds count for
// at most a day.
func parse(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	// Past int64, ParseInt gives the bound and ErrRange: still seconds,
	// capped like any long pause (not read as no pause at all).
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, maxSeconds)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// FromHeader reads the Retry-After of an answer with header h, received
// at now. An HTTP-date is a time on the server's clock: it is measured
// from the answer's Date, the server's time when it answered (RFC 9110
// 6.6.1), so that a client clock minutes off neither drops the wait (a
// clock ahead) nor stretches it (a clock behind); from now only without
// a readable Date.
func FromHeader(h http.Header, now time.Time) time.Duration {
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		now = date
	}
	return parse(h.Get("Retry-After"), now)
}
