// The TLS client configuration of outbound connections to a destination
// and its token endpoint: an extra CA bundle for private PKI, a client
// certificate for mutual TLS, and, only when explicitly asked for, no
// verification at all.

package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/stowline/stowline/internal/keypair"
)

// errInvalidTLS reports unusable TLS files or settings.
var errInvalidTLS = errors.New("invalid TLS configuration")

// TLSFiles names the PEM files of a TLS client configuration.
type TLSFiles struct {
	// CAFile holds CA certificates trusted in addition to the system's.
	CAFile string
	// CertFile and KeyFile hold the client certificate (with its chain)
	// and its private key, for servers that require mutual TLS. Both or
	// neither. They are read again when they change on disk, so a renewed
	// certificate (cert-manager, a rotated secret) is used for the next
	// connection without a restart.
	CertFile, KeyFile string
	// InsecureSkipVerify accepts any server certificate. Only for tests
	// and emergencies: the caller must log a warning.
	InsecureSkipVerify bool
}

// IsZero reports whether f asks for nothing beyond Go's defaults.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// NewTLSConfig returns the TLS configuration f describes, or nil when f is zero
// (Go's defaults: system roots, no client certificate). Files are read now,
// so a bad one fails at startup; errors name the file, never its content.
// log (nil: none) hears of a client certificate reloaded after a renewal,
// or of a renewal that cannot be loaded (the previous pair stays in use).
func NewTLSConfig(f TLSFiles, log *slog.Logger) (*tls.Config, error) {
	if f.IsZero() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.InsecureSkipVerify} //nolint:gosec // explicit opt-in, warned about by the caller
	if f.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: CA file: %w", errInvalidTLS, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", errInvalidTLS, f.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case f.CertFile != "" && f.KeyFile != "":
		kp, err := keypair.New(f.CertFile, f.KeyFile, recheck, log)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate: %w", errInvalidTLS, err)
		}
		cfg.GetClientCertificate = kp.GetClientCertificate
	case f.CertFile != "" || f.KeyFile != "":
		return nil, fmt.Errorf("%w: a client certificate needs both the certificate and the key file", errInvalidTLS)
	}
	return cfg, nil
}

// recheck bounds how often the client certificate's files are stat'ed
// (once per handshake at most).
const recheck = 10 * time.Second
