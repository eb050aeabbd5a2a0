package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testpki"
)

// TestListenerTLSReload runs the real ingest with TLS_LISTEN_CERT_FILE and
// TLS_LISTEN_KEY_FILE, checks /healthz over HTTPS, replaces the files with
// a new pair and sees the new certificate served without a restart; a
// broken pair keeps the previous one.
func TestListenerTLSReload(t *testing.T) {
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "test", Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	ca := testpki.NewCA(t, "listen")
	first, certFile, keyFile := ca.Issue(t, "ingest-1", true)
	addr := testharness.FreeAddr(t)
	env := map[string]string{
		"NATS_URL":             srv.ClientURL(),
		"INGEST_ADDR":          addr,
		"INGEST_TOKEN":         token,
		"RECONCILE_ENABLED":    "false",
		"TLS_LISTEN_CERT_FILE": certFile,
		"TLS_LISTEN_KEY_FILE":  keyFile,
	}
	logs := testharness.StartProgram(t, "ingest", run, env).Logs

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.Pool()},
		DisableKeepAlives: true, // every request is a new handshake
	}}
	served := func() (serial string, ok bool) {
		resp, err := client.Get("https://" + addr + "/healthz")
		if err != nil {
			return "", false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			return "", false
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.String(), true
	}
	testharness.WaitFor(t, "ingest healthy over HTTPS", 30*time.Second, func() bool { _, ok := served(); return ok })
	if s, _ := served(); s != first.Leaf.SerialNumber.String() {
		t.Fatalf("serial %s served, want the first certificate's %s", s, first.Leaf.SerialNumber)
	}
	// Plain HTTP is not served.
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200")
		}
	}

	// A broken pair (a key that is not the certificate's) keeps the first.
	_, _, otherKey := ca.Issue(t, "other", true)
	replace(t, keyFile, otherKey)
	testharness.WaitFor(t, "reload error logged", 15*time.Second, func() bool {
		served()
		return strings.Contains(logs.String(), "TLS certificate not reloaded")
	})
	if s, ok := served(); !ok || s != first.Leaf.SerialNumber.String() {
		t.Fatalf("after a broken pair: serial %s (ok %v), want the first certificate's", s, ok)
	}

	// A renewed pair is picked up without a restart.
	second, newCert, newKey := ca.Issue(t, "ingest-2", true)
	replace(t, certFile, newCert)
	replace(t, keyFile, newKey)
	want := second.Leaf.SerialNumber.String()
	testharness.WaitFor(t, "the renewed certificate served", 15*time.Second, func() bool { s, _ := served(); return s == want })
}

// replace overwrites dst with src's content (as a renewal would) and
// moves the modification time forward, so a coarse file system clock
// can't hide the change.
func replace(t *testing.T, dst, src string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	mt := fi.ModTime().Add(time.Second)
	if err := os.Chtimes(dst, mt, mt); err != nil {
		t.Fatal(err)
	}
}
