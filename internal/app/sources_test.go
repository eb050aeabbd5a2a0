package app

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/testpki"
)

// An Orthanc behind a private PKI is reached over HTTPS with
// ORTHANC_CA_FILE, and refused without it. The server is an httptest
// stand-in: the Debian Orthanc 1.10.1 the tests run has HTTPS
// (SslEnabled), but it dies with a segmentation fault on the first TLS
// connection here (tried with ECDSA and RSA certificates), so a real
// Orthanc cannot serve this test.
func TestOrthancCAFile(t *testing.T) {
	ca := testpki.NewCA(t, "hospital")
	cert, _, _ := ca.Issue(t, "127.0.0.1", true)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"Name":"secure-orthanc","Version":"1.12.5"}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	system := func(caFile string) error {
		t.Helper()
		env := map[string]string{"ORTHANC_URL": srv.URL, "ORTHANC_CA_FILE": caFile}
		var c config.Orthanc
		if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
			t.Fatal(err)
		}
		s, err := NewSources(&c)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.List()[0].Client.System(context.Background())
		return err
	}
	if err := system(""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without ORTHANC_CA_FILE: err = %v, want a certificate error", err)
	}
	if err := system(ca.CAFile); err != nil {
		t.Errorf("with ORTHANC_CA_FILE: %v", err)
	}
}
