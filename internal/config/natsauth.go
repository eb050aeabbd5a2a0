package config

import "errors"

// NATSAuth is how stowline authenticates to an external NATS server and
// secures the connection. At most one of the credentials file, the NKey
// seed and user/password is used.
type NATSAuth struct {
	NKeyFile string `env:"NATS_NKEY_FILE" desc:"NATS NKey seed file (a user seed, SU...) for an external server"`
	User     string `env:"NATS_USER" desc:"NATS user name for an external server, with NATS_PASSWORD"`
	Password string `env:"NATS_PASSWORD" secret:"true" desc:"NATS password of NATS_USER"`
	CAFile   string `env:"NATS_CA_FILE" desc:"PEM CA certificates trusted for the NATS server's TLS certificate (private PKI); setting it requires TLS"`
	CertFile string `env:"NATS_CERT_FILE" desc:"PEM client certificate for TLS to NATS (mutual TLS), with NATS_KEY_FILE"`
	KeyFile  string `env:"NATS_KEY_FILE" desc:"PEM private key of NATS_CERT_FILE"`
}

// authValidate names the variable that conflicts, is missing or unreadable.
func (n *NATS) authValidate() error {
	a := n.NATSAuth
	var errs []error
	methods := 0
	for _, set := range []bool{n.CredsFile != "", a.NKeyFile != "", a.User != "" || a.Password != ""} {
		if set {
			methods++
		}
	}
	if methods > 1 {
		errs = append(errs, errors.New("NATS_CREDS_FILE, NATS_NKEY_FILE and NATS_USER/NATS_PASSWORD: set at most one"))
	}
	if (a.User == "") != (a.Password == "") {
		errs = append(errs, errors.New("NATS_USER and NATS_PASSWORD: set both or neither"))
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		errs = append(errs, errors.New("NATS_CERT_FILE and NATS_KEY_FILE: set both or neither"))
	}
	set := methods > 0 || a.CAFile != "" || a.CertFile != ""
	if set && n.Embedded() {
		errs = append(errs, errors.New("NATS_CREDS_FILE, NATS_NKEY_FILE, NATS_USER, NATS_PASSWORD, NATS_CA_FILE, NATS_CERT_FILE and NATS_KEY_FILE need NATS_URL (the embedded server needs none)"))
	}
	// The .creds and seed files are not PEM (a .creds file's END line
	// has six dashes): they are only read.
	for _, f := range []struct {
		name, path string
		pem        bool
	}{
		{"NATS_CREDS_FILE", n.CredsFile, false}, {"NATS_NKEY_FILE", a.NKeyFile, false}, {"NATS_CA_FILE", a.CAFile, true},
		{"NATS_CERT_FILE", a.CertFile, true}, {"NATS_KEY_FILE", a.KeyFile, true},
	} {
		check := fileReadable
		if f.pem {
			check = pemFileReadable
		}
		if err := check(f.name, f.path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
