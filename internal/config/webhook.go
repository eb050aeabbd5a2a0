package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
)

// WebhookSecurity hardens the ingest's webhook beyond the bearer token:
// an optional HMAC signature of the body and a per-client rate limit.
type WebhookSecurity struct {
	HMACSecret  string        `env:"INGEST_HMAC_SECRET" secret:"true" desc:"when set, webhook requests must also carry X-Stowline-Timestamp and X-Stowline-Signature (HMAC-SHA256 of timestamp.body with this secret; at least 32 characters)"`
	HMACMaxSkew time.Duration `env:"INGEST_HMAC_MAX_SKEW" envDefault:"5m" desc:"how far X-Stowline-Timestamp may be from the ingest's clock (replay protection)"`
	RateLimit   float64       `env:"INGEST_RATE_LIMIT" envDefault:"50" desc:"webhook requests per second per client IPv4 address or IPv6 /64 network, shared by the Orthanc servers in one /64 (0: no limit); over it the answer is 429 with Retry-After"`
	RateBurst   int           `env:"INGEST_RATE_BURST" envDefault:"100" desc:"webhook requests a client (IPv4 address, IPv6 /64) may send at once above INGEST_RATE_LIMIT"`
	// TrustedProxiesRaw is parsed into TrustedProxies by Validate.
	TrustedProxiesRaw []string `env:"INGEST_TRUSTED_PROXIES" envSeparator:"," desc:"load balancers or reverse proxies (IP addresses or CIDR prefixes, comma-separated) whose X-Forwarded-For names the client for the rate limit and the logs; empty: the peer address is the client"`
	TrustedProxies    []netip.Prefix
}

// Validate names the variable that is out of range.
func (w *WebhookSecurity) Validate() error {
	var errs []error
	if w.HMACSecret != "" {
		if err := checkCredential("INGEST_HMAC_SECRET", w.HMACSecret, 32); err != nil {
			errs = append(errs, err)
		}
	}
	if w.HMACMaxSkew < time.Second || w.HMACMaxSkew > time.Hour {
		errs = append(errs, fmt.Errorf("INGEST_HMAC_MAX_SKEW=%s: want 1s to 1h", w.HMACMaxSkew))
	}
	// NaN would pass a sign test and turn the limit off; a rate below one
	// request in 1000 s overflows the limiter's durations.
	if math.IsNaN(w.RateLimit) || math.IsInf(w.RateLimit, 0) || w.RateLimit < 0 || (w.RateLimit > 0 && w.RateLimit < 0.001) {
		errs = append(errs, fmt.Errorf("INGEST_RATE_LIMIT=%g: want 0 (no limit), or 0.001 to any finite number of requests per second", w.RateLimit))
	}
	if w.RateLimit > 0 && w.RateBurst < 1 {
		errs = append(errs, fmt.Errorf("INGEST_RATE_BURST=%d: want at least 1", w.RateBurst))
	}
	// A bucket that takes more than a year to fill overflows the
	// limiter's durations.
	if w.RateLimit > 0 && float64(w.RateBurst)/w.RateLimit > 365*24*3600 {
		errs = append(errs, fmt.Errorf("INGEST_RATE_BURST=%d at INGEST_RATE_LIMIT=%g: the burst would take more than a year to come back; lower it or raise the rate", w.RateBurst, w.RateLimit))
	}
	var err error
	if w.TrustedProxies, err = parseTrustedProxies("INGEST_TRUSTED_PROXIES", w.TrustedProxiesRaw); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// parseTrustedProxies reads the addresses and CIDR prefixes of variable
// name; errors name the entries that are neither.
func parseTrustedProxies(name string, raw []string) ([]netip.Prefix, error) {
	var (
		out  []netip.Prefix
		errs []error
	)
	for _, v := range raw {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		p, err := parsePrefix(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not an IP address or CIDR prefix", name, v))
			continue
		}
		if p.Bits() == 0 {
			// Every peer a proxy: a client would name its own address in
			// X-Forwarded-For (an IPv6 one past 0.0.0.0/0), and the
			// wrong-token throttle would count whatever it chose.
			errs = append(errs, fmt.Errorf("%s: %q trusts every address, so any client could choose the address the throttle counts; name the proxies' addresses or their subnet", name, v))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// parsePrefix reads a CIDR prefix, or a bare address as a one-address
// prefix.
func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
