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
	"os"
	"sync"
	"time"
)

// ErrInvalidTLS reports unusable TLS files or settings.
var ErrInvalidTLS = errors.New("invalid TLS configuration")

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
func NewTLSConfig(f TLSFiles) (*tls.Config, error) {
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
			return nil, fmt.Errorf("%w: CA file: %w", ErrInvalidTLS, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrInvalidTLS, f.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case f.CertFile != "" && f.KeyFile != "":
		kp := &keyPair{certFile: f.CertFile, keyFile: f.KeyFile, recheck: recheck}
		if _, err := kp.get(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get() }
	case f.CertFile != "" || f.KeyFile != "":
		return nil, fmt.Errorf("%w: a client certificate needs both the certificate and the key file", ErrInvalidTLS)
	}
	return cfg, nil
}

// keyPair is a client certificate reloaded when its files change.
type keyPair struct {
	certFile, keyFile string
	recheck           time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	certMod time.Time
	keyMod  time.Time
	checked time.Time
}

// recheck bounds how often the files are stat'ed (once per handshake at most).
const recheck = 10 * time.Second

func (k *keyPair) get() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if k.cert != nil && now.Sub(k.checked) < k.recheck {
		return k.cert, nil
	}
	k.checked = now
	cs, cerr := os.Stat(k.certFile)
	ks, kerr := os.Stat(k.keyFile)
	if cerr == nil && kerr == nil && k.cert != nil && cs.ModTime().Equal(k.certMod) && ks.ModTime().Equal(k.keyMod) {
		return k.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		err = fmt.Errorf("%w: client certificate %s / key %s: %w", ErrInvalidTLS, k.certFile, k.keyFile, err)
		if k.cert != nil {
			// A renewal half-written: keep using the previous pair.
			return k.cert, nil
		}
		return nil, err
	}
	k.cert = &cert
	if cerr == nil && kerr == nil {
		k.certMod, k.keyMod = cs.ModTime(), ks.ModTime()
	}
	return k.cert, nil
}
