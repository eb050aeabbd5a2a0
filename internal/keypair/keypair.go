// Package keypair serves a TLS certificate and key pair from PEM files,
// read again when the files change, so a renewed certificate
// (cert-manager, certbot, a rotated Kubernetes secret) is used without a
// restart: by the listeners (server certificate) and by the clients of
// destinations that require mutual TLS (client certificate).
package keypair

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultInterval is how often, at most, a Reloader looks at the files'
// modification times.
const DefaultInterval = 2 * time.Second

// Reloader holds a certificate and key pair and re-reads the files when
// either one's modification time changes (checked at most every interval,
// on a handshake). A new pair that does not load keeps the old one and is
// logged once, as an error: the old pair will expire.
type Reloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger
	now               func() time.Time

	mu          sync.Mutex
	cert        *tls.Certificate
	certMod     time.Time
	keyMod      time.Time
	lastChecked time.Time
	statFailed  bool // a file could not be stat'ed, already logged
	// failedCert and failedKey are the files' times when a load last
	// failed (logged once for them; retried at every interval, since a
	// file rewritten in place within one clock tick keeps its time).
	failedCert, failedKey time.Time
}

// New loads the pair now; an error names both files, never their
// content. A nil log discards; interval 0 is DefaultInterval.
func New(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*Reloader, error) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log, now: time.Now}
	certMod, keyMod, err := r.modTimes()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	r.cert, r.certMod, r.keyMod, r.lastChecked = &cert, certMod, keyMod, r.now()
	return r, nil
}

func (r *Reloader) modTimes() (certMod, keyMod time.Time, err error) {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS certificate: %w", err)
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS key: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// current returns the pair, read again first if the files changed.
func (r *Reloader) current() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.lastChecked) >= r.interval {
		r.lastChecked = now
		r.reloadLocked()
	}
	return r.cert
}

// GetCertificate implements tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.current(), nil
}

// GetClientCertificate implements tls.Config.GetClientCertificate.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.current(), nil
}

func (r *Reloader) reloadLocked() {
	certMod, keyMod, err := r.modTimes()
	if err != nil {
		// A file moved away (a secret being swapped): said once, then
		// checked again at every interval.
		if !r.statFailed {
			r.log.Error("TLS certificate not reloaded; the previous one stays in use",
				"err", err, "previous_not_after", leafNotAfter(r.cert))
		}
		r.statFailed = true
		return
	}
	r.statFailed = false
	if certMod.Equal(r.certMod) && keyMod.Equal(r.keyMod) {
		return
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// Possibly half-written (the certificate replaced, the key not
		// yet), or broken.
		if !certMod.Equal(r.failedCert) || !keyMod.Equal(r.failedKey) {
			r.log.Error("TLS certificate not reloaded; the previous one stays in use",
				"cert_file", r.certFile, "key_file", r.keyFile, "err", err, "previous_not_after", leafNotAfter(r.cert))
		}
		r.failedCert, r.failedKey = certMod, keyMod
		return
	}
	r.cert, r.certMod, r.keyMod = &cert, certMod, keyMod
	r.log.Info("TLS certificate reloaded", "cert_file", r.certFile, "not_after", leafNotAfter(&cert))
}

func leafNotAfter(cert *tls.Certificate) time.Time {
	if cert.Leaf != nil {
		return cert.Leaf.NotAfter
	}
	return time.Time{}
}

// ServerConfig returns a server configuration that takes its certificate
// from r.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}
