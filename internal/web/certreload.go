package web

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultReloadInterval is how often, at most, a CertReloader looks at the
// files' modification times.
const DefaultReloadInterval = 2 * time.Second

// CertReloader serves a certificate and key pair from PEM files and
// re-reads them when either file's modification time changes (checked at
// most every Interval, on a handshake), so a renewed certificate is used
// without a restart. A new pair that does not load keeps the old one and
// logs an error.
type CertReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger
	now               func() time.Time

	mu          sync.Mutex
	cert        *tls.Certificate
	certMod     time.Time
	keyMod      time.Time
	lastChecked time.Time
}

// NewCertReloader loads the pair now; an error names both files. A nil
// log discards; interval 0 is DefaultReloadInterval.
func NewCertReloader(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*CertReloader, error) {
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CertReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log, now: time.Now}
	certMod, keyMod, err := c.modTimes()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	c.cert, c.certMod, c.keyMod, c.lastChecked = &cert, certMod, keyMod, c.now()
	return c, nil
}

func (c *CertReloader) modTimes() (certMod, keyMod time.Time, err error) {
	ci, err := os.Stat(c.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS certificate: %w", err)
	}
	ki, err := os.Stat(c.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS key: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.lastChecked) >= c.interval {
		c.lastChecked = now
		c.reloadLocked()
	}
	return c.cert, nil
}

func (c *CertReloader) reloadLocked() {
	certMod, keyMod, err := c.modTimes()
	if err != nil {
		c.log.Error("TLS certificate not reloaded; serving the previous one", "err", err)
		return
	}
	if certMod.Equal(c.certMod) && keyMod.Equal(c.keyMod) {
		return
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Possibly half-written (the certificate replaced, the key not
		// yet): keep the old pair and try again once a file changes.
		c.log.Error("TLS certificate not reloaded; serving the previous one",
			"cert_file", c.certFile, "key_file", c.keyFile, "err", err)
		c.certMod, c.keyMod = certMod, keyMod
		return
	}
	c.cert, c.certMod, c.keyMod = &cert, certMod, keyMod
	c.log.Info("TLS certificate reloaded", "cert_file", c.certFile, "not_after", leafNotAfter(&cert))
}

func leafNotAfter(cert *tls.Certificate) time.Time {
	if cert.Leaf != nil {
		return cert.Leaf.NotAfter
	}
	return time.Time{}
}

// TLSConfig returns a server configuration that takes its certificate
// from c.
func (c *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.GetCertificate}
}
