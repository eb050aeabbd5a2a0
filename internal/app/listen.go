package app

import (
	"crypto/tls"
	"fmt"
	"log/slog"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/web"
)

// listenTLS returns the listeners' HTTPS configuration, or nil for plain
// HTTP. The certificate is re-read when its files change.
func listenTLS(lt config.ListenTLS, log *slog.Logger) (*tls.Config, error) {
	if !lt.Enabled() {
		return nil, nil
	}
	cr, err := web.NewCertReloader(lt.CertFile, lt.KeyFile, 0, log.With("component", "listen-tls"))
	if err != nil {
		return nil, fmt.Errorf("TLS_LISTEN_CERT_FILE, TLS_LISTEN_KEY_FILE: %w", err)
	}
	return cr.TLSConfig(), nil
}
