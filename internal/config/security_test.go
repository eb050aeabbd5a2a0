package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The listener, webhook and NATS security variables: errors name them.
func TestSecurityVariables(t *testing.T) {
	dir := t.TempDir()
	// file holds a PEM block (not a certificate: what the block holds is
	// checked where it is used); notPEM does not.
	file, notPEM := filepath.Join(dir, "f.pem"), filepath.Join(dir, "not.pem")
	if err := os.WriteFile(file, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notPEM, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"NATS_URL": "nats://n:4222", "INGEST_TOKEN": "0123456789abcdef", "RECONCILE_ENABLED": "false"}
	tests := []struct {
		name string
		env  map[string]string
		want string // "" loads
	}{
		{"defaults", nil, ""},
		{"listen cert without key", map[string]string{"TLS_LISTEN_CERT_FILE": file}, "TLS_LISTEN_CERT_FILE and TLS_LISTEN_KEY_FILE"},
		{"listen key without cert", map[string]string{"TLS_LISTEN_KEY_FILE": file}, "TLS_LISTEN_CERT_FILE and TLS_LISTEN_KEY_FILE"},
		{"listen pair", map[string]string{"TLS_LISTEN_CERT_FILE": file, "TLS_LISTEN_KEY_FILE": file}, ""},
		{"listen cert missing", map[string]string{"TLS_LISTEN_CERT_FILE": file + ".no", "TLS_LISTEN_KEY_FILE": file}, "TLS_LISTEN_CERT_FILE"},
		{"listen cert not PEM", map[string]string{"TLS_LISTEN_CERT_FILE": notPEM, "TLS_LISTEN_KEY_FILE": file}, "TLS_LISTEN_CERT_FILE: " + notPEM + " holds no PEM block"},
		{"listen key not PEM", map[string]string{"TLS_LISTEN_CERT_FILE": file, "TLS_LISTEN_KEY_FILE": notPEM}, "TLS_LISTEN_KEY_FILE"},
		{"listen key a directory", map[string]string{"TLS_LISTEN_CERT_FILE": file, "TLS_LISTEN_KEY_FILE": dir}, "TLS_LISTEN_KEY_FILE"},
		{"short hmac secret", map[string]string{"INGEST_HMAC_SECRET": "short"}, "INGEST_HMAC_SECRET"},
		{"hmac secret", map[string]string{"INGEST_HMAC_SECRET": "a-shared-secret-0123456789abcdefgh"}, ""},
		{"hmac secret of one character", map[string]string{"INGEST_HMAC_SECRET": strings.Repeat("s", 32)}, "INGEST_HMAC_SECRET: want a random value"},
		{"hmac skew", map[string]string{"INGEST_HMAC_MAX_SKEW": "0s"}, "INGEST_HMAC_MAX_SKEW"},
		{"negative rate", map[string]string{"INGEST_RATE_LIMIT": "-1"}, "INGEST_RATE_LIMIT"},
		{"zero burst", map[string]string{"INGEST_RATE_BURST": "0"}, "INGEST_RATE_BURST"},
		{"rate not a number", map[string]string{"INGEST_RATE_LIMIT": "NaN"}, "INGEST_RATE_LIMIT"},
		{"rate infinite", map[string]string{"INGEST_RATE_LIMIT": "+Inf"}, "INGEST_RATE_LIMIT"},
		{"rate too small", map[string]string{"INGEST_RATE_LIMIT": "1e-9"}, "INGEST_RATE_LIMIT"},
		{"slow rate", map[string]string{"INGEST_RATE_LIMIT": "0.01"}, ""},
		{"burst that takes centuries", map[string]string{"INGEST_RATE_LIMIT": "0.001", "INGEST_RATE_BURST": "10000000"}, "INGEST_RATE_BURST"},
		{"rate off, zero burst", map[string]string{"INGEST_RATE_LIMIT": "0", "INGEST_RATE_BURST": "0"}, ""},
		{"trusted proxies", map[string]string{"INGEST_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1,fd00::/8"}, ""},
		{"trusted proxy not an address", map[string]string{"INGEST_TRUSTED_PROXIES": "10.0.0.0/8,lb.example.org"}, `INGEST_TRUSTED_PROXIES: "lb.example.org"`},
		{"trusted proxy bad prefix", map[string]string{"INGEST_TRUSTED_PROXIES": "10.0.0.0/33"}, "INGEST_TRUSTED_PROXIES"},
		{"trusted proxies every IPv4 address", map[string]string{"INGEST_TRUSTED_PROXIES": "10.0.0.0/8,0.0.0.0/0"}, `INGEST_TRUSTED_PROXIES: "0.0.0.0/0" trusts every address`},
		{"trusted proxies every IPv6 address", map[string]string{"INGEST_TRUSTED_PROXIES": "::/0"}, `INGEST_TRUSTED_PROXIES: "::/0" trusts every address`},
		{"user without password", map[string]string{"NATS_USER": "u"}, "NATS_USER and NATS_PASSWORD"},
		{"user and password", map[string]string{"NATS_USER": "u", "NATS_PASSWORD": "p"}, ""},
		{"two methods", map[string]string{"NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_NKEY_FILE": file}, "set at most one"},
		{"nkey missing", map[string]string{"NATS_NKEY_FILE": file + ".no"}, "NATS_NKEY_FILE"},
		{"client cert without key", map[string]string{"NATS_CERT_FILE": file}, "NATS_CERT_FILE and NATS_KEY_FILE"},
		{"ca", map[string]string{"NATS_CA_FILE": file}, ""},
		{"ca not PEM", map[string]string{"NATS_CA_FILE": notPEM}, "NATS_CA_FILE: " + notPEM + " holds no PEM block"},
		{"ca missing", map[string]string{"NATS_CA_FILE": file + ".no"}, "NATS_CA_FILE"},
		{"client pair", map[string]string{"NATS_CERT_FILE": file, "NATS_KEY_FILE": file}, ""},
		{"client cert not PEM", map[string]string{"NATS_CERT_FILE": notPEM, "NATS_KEY_FILE": file}, "NATS_CERT_FILE"},
		{"client key not PEM", map[string]string{"NATS_CERT_FILE": file, "NATS_KEY_FILE": notPEM}, "NATS_KEY_FILE"},
		// A .creds file is not PEM (its END line has six dashes).
		{"creds", map[string]string{"NATS_CREDS_FILE": notPEM}, ""},
		{"creds missing", map[string]string{"NATS_CREDS_FILE": file + ".no"}, "NATS_CREDS_FILE"},
		{"nkey", map[string]string{"NATS_NKEY_FILE": notPEM}, ""},
		{"orthanc CA missing", map[string]string{"RECONCILE_ENABLED": "true", "ORTHANC_CA_FILE": file + ".no"}, "ORTHANC_CA_FILE"},
		{"orthanc CA not PEM", map[string]string{"RECONCILE_ENABLED": "true", "ORTHANC_CA_FILE": file}, "ORTHANC_CA_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			var c IngestService
			err := Load(func(k string) string { return env[k] }, &c)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one naming %s", err, tt.want)
			}
		})
	}
	var c IngestService
	env := map[string]string{"INGEST_TRUSTED_PROXIES": "10.1.2.3/8,192.0.2.1"}
	for k, v := range base {
		env[k] = v
	}
	if err := Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.TrustedProxies); got != "[10.0.0.0/8 192.0.2.1/32]" {
		t.Errorf("TrustedProxies = %s, want [10.0.0.0/8 192.0.2.1/32]", got)
	}

	// Embedded NATS takes no credentials.
	var s SingleHost
	err := Load(func(k string) string {
		return map[string]string{"INGEST_TOKEN": "0123456789abcdef", "DICOMWEB_URL": "https://d/", "NATS_USER": "u", "NATS_PASSWORD": "p"}[k]
	}, &s)
	if err == nil || !strings.Contains(err.Error(), "need NATS_URL") {
		t.Errorf("embedded with NATS_USER: %v", err)
	}
}

// A URL refused at startup is shown without what may be a password or an
// API key.
func TestURLErrorsHideCredentials(t *testing.T) {
	for _, raw := range []string{"ftp://orthanc:hunter2@orthanc:8042", "https://user:s3cr%t@orthanc", "ftp://orthanc/?apikey=hunter2", "https://user:hunter2?x@orthanc%zz", "ftp://orthanc/?user=me@example.org&apikey=hunter2"} {
		env := map[string]string{"NATS_URL": "nats://n:4222", "INGEST_TOKEN": "0123456789abcdef", "ORTHANC_URL": raw}
		var c IngestService
		err := Load(func(k string) string { return env[k] }, &c)
		if err == nil || !strings.Contains(err.Error(), "ORTHANC_URL") {
			t.Fatalf("%s: error %v, want one naming ORTHANC_URL", raw, err)
		}
		for _, secret := range []string{"hunter2", "s3cr"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the secret: %v", err)
			}
		}
	}
}
