package config

import "errors"

// ListenTLS makes the ingest and forwarder listeners serve HTTPS.
type ListenTLS struct {
	CertFile string `env:"TLS_LISTEN_CERT_FILE" desc:"PEM certificate (chain) the ingest and forwarder listeners serve HTTPS with, with TLS_LISTEN_KEY_FILE; a renewed pair is used without restart (checked every 2s); empty: plain HTTP"`
	KeyFile  string `env:"TLS_LISTEN_KEY_FILE" desc:"PEM private key of TLS_LISTEN_CERT_FILE"`
}

// Enabled reports whether the listeners serve HTTPS.
func (l *ListenTLS) Enabled() bool { return l.CertFile != "" }

// Validate names the variable that is missing or unreadable.
func (l *ListenTLS) Validate() error {
	if (l.CertFile == "") != (l.KeyFile == "") {
		return errors.New("TLS_LISTEN_CERT_FILE and TLS_LISTEN_KEY_FILE: set both (HTTPS) or neither (HTTP)")
	}
	var errs []error
	for _, f := range []struct{ name, path string }{{"TLS_LISTEN_CERT_FILE", l.CertFile}, {"TLS_LISTEN_KEY_FILE", l.KeyFile}} {
		if err := pemFileReadable(f.name, f.path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
