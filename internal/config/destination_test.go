package config

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testpki"
)

// assertionFiles writes an RSA private key alone, the key with its
// self-signed certificate (as Entra ID's certificate credential wants
// it), and the certificate alone, as PEM files.
func assertionFiles(t *testing.T) (keyOnly, keyAndCert, certOnly string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stowline"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	dir := t.TempDir()
	write := func(name string, data ...[]byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, bytes.Join(data, nil), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("key.pem", keyPEM), write("key-and-cert.pem", keyPEM, certPEM), write("cert.pem", certPEM)
}

func TestDestinationAuthValidation(t *testing.T) {
	key, keyAndCert, certOnly := assertionFiles(t)
	ca := testpki.NewCA(t, "private-root")
	_, clientCert, clientKey := ca.Issue(t, "client", false)
	_, otherCert, _ := ca.Issue(t, "other", false)
	der, pemFile := filepath.Join(t.TempDir(), "ca.cer"), filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(der, []byte{0x30, 0x82, 0x03, 0x5a, 0x30, 0x82}, 0o600); err != nil {
		t.Fatal(err)
	}
	// A PEM block; what it holds is checked where it is used.
	if err := os.WriteFile(pemFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A service account key as Google issues it (the key is parsed at
	// the first token), and the credentials of a user, which stowline
	// cannot use (gcloud auth application-default login writes them).
	saKey, userCreds := filepath.Join(t.TempDir(), "sa.json"), filepath.Join(t.TempDir(), "adc.json")
	if err := os.WriteFile(saKey, []byte(`{"type":"service_account","client_email":"stowline@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"https://oauth2.googleapis.com/token"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(userCreds, []byte(`{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	const hi = "https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2a515ab294163a2d2f4069eed584c"
	tests := []struct {
		name string
		set  map[string]string
		want string // substring of the error; "" means valid
	}{
		{name: "no auth", set: nil},
		{name: "generic basic", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"}},
		{name: "generic post with audience and resource", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s",
			"OAUTH_AUTH_STYLE": "client_secret_post", "OAUTH_AUDIENCE": "https://api", "OAUTH_RESOURCE": "urn:x"}},
		{name: "generic discovery and private_key_jwt", set: map[string]string{"OAUTH_ISSUER_URL": "https://idp/realms/x", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": key}},
		{name: "token URL and issuer", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_ISSUER_URL": "https://idp", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"}, want: "both set"},
		{name: "issuer without client", set: map[string]string{"OAUTH_ISSUER_URL": "https://idp"}, want: "OAUTH_CLIENT_ID"},
		{name: "private_key_jwt without key", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_AUTH_STYLE": "private_key_jwt"}, want: "OAUTH_CLIENT_ASSERTION_KEY_FILE is required"},
		{name: "key and secret", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s", "OAUTH_CLIENT_ASSERTION_KEY_FILE": key}, want: "private_key_jwt sends no secret"},
		{name: "missing key file", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": key + ".gone"}, want: "OAUTH_CLIENT_ASSERTION_KEY_FILE"},
		// A DER key (or a .pfx) failed only once NATS was set up, naming
		// the path but not the variable.
		{name: "key file not PEM", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": der}, want: "OAUTH_CLIENT_ASSERTION_KEY_FILE: " + der + " holds no PEM block"},
		{name: "azure certificate not PEM", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": der}, want: "OAUTH_CLIENT_ASSERTION_KEY_FILE: " + der + " holds no PEM block"},
		{name: "bad auth style", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s", "OAUTH_AUTH_STYLE": "basic"}, want: "OAUTH_AUTH_STYLE"},
		{name: "unknown provider", set: map[string]string{"OAUTH_PROVIDER": "okta"}, want: "OAUTH_PROVIDER"},
		{name: "azure secret", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"}},
		{name: "azure certificate", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": keyAndCert}},
		// The key without the certificate, whose thumbprint Entra ID
		// needs, and a certificate without its key: both failed only once
		// NATS was set up, with exit 1.
		{name: "azure key without certificate", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": key},
			want: "OAUTH_CLIENT_ASSERTION_KEY_FILE: auth: invalid config: client assertion key " + key + ": no CERTIFICATE block"},
		{name: "private_key_jwt with a certificate alone", set: map[string]string{"OAUTH_TOKEN_URL": "https://idp/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_ASSERTION_KEY_FILE": certOnly},
			want: "OAUTH_CLIENT_ASSERTION_KEY_FILE: auth: invalid config: client assertion key " + certOnly},
		{name: "azure managed identity", set: map[string]string{"OAUTH_PROVIDER": "azure"}},
		{name: "azure tenant without credential", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c"}, want: "neither OAUTH_CLIENT_SECRET"},
		// What AKS workload identity's webhook sets, and OAUTH_CLIENT_ID:
		// it was refused as a tenant without a credential.
		{name: "azure workload identity", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": pemFile, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"}},
		{name: "azure workload identity without client", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": pemFile}, want: "OAUTH_CLIENT_ID is required with AZURE_FEDERATED_TOKEN_FILE"},
		{name: "azure workload identity without tenant", set: map[string]string{"OAUTH_PROVIDER": "azure", "OAUTH_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": pemFile}, want: "AZURE_TENANT_ID is required with AZURE_FEDERATED_TOKEN_FILE"},
		{name: "azure workload identity file missing", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": pemFile + ".gone"}, want: "AZURE_FEDERATED_TOKEN_FILE: open " + pemFile + ".gone"},
		{name: "azure workload identity and secret", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": pemFile, "OAUTH_CLIENT_SECRET": "s"},
			want: "AZURE_FEDERATED_TOKEN_FILE (AKS workload identity) and OAUTH_CLIENT_SECRET are both set"},
		{name: "azure workload identity and certificate", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": pemFile, "OAUTH_CLIENT_ASSERTION_KEY_FILE": key},
			want: "AZURE_FEDERATED_TOKEN_FILE (AKS workload identity) and OAUTH_CLIENT_ASSERTION_KEY_FILE are both set"},
		// deploy/env.example's token URL, left as it is.
		{name: "token URL of the example", set: map[string]string{"OAUTH_TOKEN_URL": "https://login.microsoftonline.com/YOUR-TENANT-ID/oauth2/v2.0/token", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"},
			want: `OAUTH_TOKEN_URL="https://login.microsoftonline.com/YOUR-TENANT-ID/oauth2/v2.0/token": the example's placeholder YOUR-TENANT-ID`},
		// deploy/systemd/stowline.env's example IDs, left as they are.
		{name: "azure example tenant", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000000", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"}, want: "AZURE_TENANT_ID=\"00000000-0000-0000-0000-000000000000\": the example's"},
		{name: "azure example client", set: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "t", "OAUTH_CLIENT_ID": "00000000-0000-0000-0000-000000000000", "OAUTH_CLIENT_SECRET": "s"}, want: "OAUTH_CLIENT_ID=\"00000000-0000-0000-0000-000000000000\": the example's"},
		{name: "azure secret without tenant", set: map[string]string{"OAUTH_PROVIDER": "azure", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s"}, want: "AZURE_TENANT_ID"},
		{name: "azure with a token URL", set: map[string]string{"OAUTH_PROVIDER": "azure", "OAUTH_TOKEN_URL": "https://idp/token"}, want: "OAUTH_TOKEN_URL: not used with OAUTH_PROVIDER=azure"},
		{name: "google key", set: map[string]string{"OAUTH_PROVIDER": "google", "GOOGLE_APPLICATION_CREDENTIALS": saKey}},
		// Both failed only once NATS was set up, naming the path but not
		// the variable.
		{name: "google user credentials", set: map[string]string{"OAUTH_PROVIDER": "google", "GOOGLE_APPLICATION_CREDENTIALS": userCreds}, want: "GOOGLE_APPLICATION_CREDENTIALS: auth: invalid config: google: service account key " + userCreds},
		{name: "google key not JSON", set: map[string]string{"OAUTH_PROVIDER": "google", "GOOGLE_APPLICATION_CREDENTIALS": key}, want: "GOOGLE_APPLICATION_CREDENTIALS: auth: invalid config: google: service account key " + key},
		{name: "google metadata server", set: map[string]string{"OAUTH_PROVIDER": "google", "GCE_METADATA_HOST": "127.0.0.1:8080"}},
		{name: "google with a client secret", set: map[string]string{"OAUTH_PROVIDER": "google", "OAUTH_CLIENT_SECRET": "s"}, want: "OAUTH_CLIENT_SECRET: not used"},
		{name: "google missing key", set: map[string]string{"OAUTH_PROVIDER": "google", "GOOGLE_APPLICATION_CREDENTIALS": key + ".gone"}, want: "GOOGLE_APPLICATION_CREDENTIALS"},
		{name: "aws region from the URL", set: map[string]string{"OAUTH_PROVIDER": "aws", "DICOMWEB_URL": hi, "STOW_MAX_BYTES": "1GB"}},
		{name: "aws over 1GB per request", set: map[string]string{"OAUTH_PROVIDER": "aws", "DICOMWEB_URL": hi, "STOW_MAX_BYTES": "1GiB"}, want: "STOW_MAX_BYTES=1GiB"},
		{name: "aws without region", set: map[string]string{"OAUTH_PROVIDER": "aws"}, want: "AWS_REGION is required"},
		{name: "aws with a client ID", set: map[string]string{"OAUTH_PROVIDER": "aws", "AWS_REGION": "us-east-1", "OAUTH_CLIENT_ID": "c"}, want: "OAUTH_CLIENT_ID: not used"},
		{name: "TLS certificate without key", set: map[string]string{"TLS_CERT_FILE": key}, want: "TLS_CERT_FILE and TLS_KEY_FILE"},
		{name: "TLS CA missing", set: map[string]string{"TLS_CA_FILE": key + ".gone"}, want: "TLS_CA_FILE"},
		// A Windows CA's DER export (.cer) failed only once NATS was set up,
		// naming neither the variable nor the destination.
		{name: "TLS CA not PEM", set: map[string]string{"TLS_CA_FILE": der}, want: "TLS_CA_FILE: " + der + " holds no PEM block"},
		{name: "TLS client pair not PEM", set: map[string]string{"TLS_CERT_FILE": der, "TLS_KEY_FILE": der}, want: "TLS_KEY_FILE: " + der + " holds no PEM block"},
		{name: "TLS files in PEM", set: map[string]string{"TLS_CA_FILE": ca.CAFile, "TLS_CERT_FILE": clientCert, "TLS_KEY_FILE": clientKey}},
		// Loaded as the client loads them: these failed only once NATS was
		// set up, with exit 1.
		{name: "TLS certificate of another key", set: map[string]string{"TLS_CERT_FILE": otherCert, "TLS_KEY_FILE": clientKey},
			want: "TLS_CERT_FILE and TLS_KEY_FILE: invalid TLS configuration: client certificate: load TLS certificate " + otherCert},
		{name: "TLS CA file holding a key", set: map[string]string{"TLS_CA_FILE": clientKey}, want: "TLS_CA_FILE: invalid TLS configuration: CA file " + clientKey + " holds no PEM certificate"},
		{name: "negative margin", set: map[string]string{"OAUTH_REFRESH_MARGIN": "-1s"}, want: "OAUTH_REFRESH_MARGIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["NATS_URL"] = "nats://127.0.0.1:4222"
			for k, v := range tt.set {
				e[k] = v
			}
			checkLoadError(t, Load(mapEnv(e), &ForwarderService{}), tt.want)
		})
	}
}

func TestDestinationAuthDefaults(t *testing.T) {
	var c SingleHost
	if err := Load(mapEnv(baseEnv()), &c); err != nil {
		t.Fatal(err)
	}
	d := c.Forwarder.DestinationAuth
	if d.Provider != ProviderGeneric || d.RefreshMargin != 5*time.Minute || c.Forwarder.AuthStyle() != AuthStyleBasic ||
		d.AzureAuthorityHost != "https://login.microsoftonline.com" || d.GCEMetadataHost != "metadata.google.internal" || d.TLSInsecureSkipVerify {
		t.Errorf("defaults: %+v", d)
	}
	c.Forwarder.DICOMwebURL = "https://dicom-medical-imaging.ap-southeast-2.amazonaws.com/datastore/x"
	if r := c.Forwarder.AWSRegionOrDefault(); r != "ap-southeast-2" {
		t.Errorf("region = %q", r)
	}
}

// TestAWSRegionOfTheDataStore: a HealthImaging endpoint takes only
// signatures for its own region, so that of DICOMWEB_URL is the one used;
// AWS_REGION, which EKS and ECS set to the cluster's region, fills in only
// for a URL that names none (a VPC endpoint, a proxy).
func TestAWSRegionOfTheDataStore(t *testing.T) {
	// A service account key as Google issues it (the key is parsed at
	// the first token), and the credentials of a user, which stowline
	// cannot use (gcloud auth application-default login writes them).
	saKey, userCreds := filepath.Join(t.TempDir(), "sa.json"), filepath.Join(t.TempDir(), "adc.json")
	if err := os.WriteFile(saKey, []byte(`{"type":"service_account","client_email":"stowline@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"https://oauth2.googleapis.com/token"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(userCreds, []byte(`{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	const hi = "https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2a515ab294163a2d2f4069eed584c"
	tests := []struct {
		name, url, awsRegion, want string
	}{
		{name: "from the URL", url: hi, want: "eu-west-1"},
		{name: "the URL's over the cluster's AWS_REGION", url: hi, awsRegion: "eu-central-1", want: "eu-west-1"},
		{name: "the same in both", url: hi, awsRegion: "eu-west-1", want: "eu-west-1"},
		{name: "FIPS endpoint", url: "https://dicom-medical-imaging-fips.us-east-1.amazonaws.com/datastore/x", awsRegion: "us-west-2", want: "us-east-1"},
		{name: "a URL that names no region", url: "https://vpce-0123.dicom-medical-imaging.example.internal/datastore/x", awsRegion: "ap-southeast-2", want: "ap-southeast-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["OAUTH_PROVIDER"], e["DICOMWEB_URL"], e["AWS_REGION"] = "aws", tt.url, tt.awsRegion
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			if got := c.Forwarder.AWSRegionOrDefault(); got != tt.want {
				t.Errorf("region = %q, want %q", got, tt.want)
			}
		})
	}
}
