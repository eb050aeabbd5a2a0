package config

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/internal/testpki"
)

func TestMutualTLS(t *testing.T) {
	serverCA := testpki.NewCA(t, "private-root")
	clientCA := testpki.NewCA(t, "clients")
	var lastClient atomic.Value
	srv := testpki.MTLSServer(t, serverCA, clientCA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lastClient.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	_, certFile, keyFile := clientCA.Issue(t, "stowline-forwarder", false)
	_, otherCert, otherKey := testpki.NewCA(t, "stranger").Issue(t, "stranger", false)

	tests := []struct {
		name    string
		files   TLSFiles
		wantErr string // substring of the request error, alternatives split by |; "" means success
	}{
		{name: "custom CA and client certificate", files: TLSFiles{CAFile: serverCA.CAFile, CertFile: certFile, KeyFile: keyFile}},
		// TLS 1.3 refuses a missing client certificate after the client's
		// handshake: the client reads the server's alert, or, when the
		// server closed first, finds its connection closed.
		{name: "no client certificate", files: TLSFiles{CAFile: serverCA.CAFile}, wantErr: "certificate required|use of closed network connection|connection reset by peer|broken pipe"},
		{name: "client certificate of an unknown CA", files: TLSFiles{CAFile: serverCA.CAFile, CertFile: otherCert, KeyFile: otherKey}, wantErr: "unknown certificate authority"},
		{name: "server of a private CA without TLS_CA_FILE", files: TLSFiles{CertFile: certFile, KeyFile: keyFile}, wantErr: "unknown authority"},
		{name: "insecure skip verify", files: TLSFiles{CertFile: certFile, KeyFile: keyFile, InsecureSkipVerify: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := NewTLSConfig(tt.files, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
			t.Cleanup(c.CloseIdleConnections)
			resp, err := c.Get(srv.URL)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				_ = resp.Body.Close()
				if lastClient.Load() != "stowline-forwarder" {
					t.Errorf("server saw client %v", lastClient.Load())
				}
				return
			}
			if err == nil {
				_ = resp.Body.Close()
				t.Fatal("request succeeded")
			}
			if !slices.ContainsFunc(strings.Split(tt.wantErr, "|"), func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	_ = os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	ca := testpki.NewCA(t, "x")
	_, certFile, _ := ca.Issue(t, "c", false)
	tests := []struct {
		name  string
		files TLSFiles
		want  string
	}{
		{"missing CA file", TLSFiles{CAFile: filepath.Join(dir, "none.pem")}, "CA file"},
		{"CA file without certificates", TLSFiles{CAFile: notPEM}, "no PEM certificate"},
		{"certificate without key", TLSFiles{CertFile: certFile}, "both"},
		{"key that is not a key", TLSFiles{CertFile: certFile, KeyFile: notPEM}, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewTLSConfig(tt.files, nil); !errors.Is(err, errInvalidTLS) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if cfg, err := NewTLSConfig(TLSFiles{}, nil); cfg != nil || err != nil {
		t.Errorf("zero Files: %v, %v", cfg, err)
	}
}
