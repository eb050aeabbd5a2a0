package keypair

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testpki"
)

// TestRenewal: a renewed pair is used at the next handshake after the
// interval, a broken one keeps the previous pair and is logged once, a
// file moved away too, and the logs never quote a key.
func TestRenewal(t *testing.T) {
	ca := testpki.NewCA(t, "clients")
	_, certFile, keyFile := ca.Issue(t, "first", false)
	var logs bytes.Buffer
	r, err := New(certFile, keyFile, time.Second, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	r.now = func() time.Time { return clock }
	// Each write gets its own modification time: writes in one clock
	// tick can share one.
	mod := time.Now()
	write := func(dst string, data []byte) {
		t.Helper()
		mod = mod.Add(time.Hour)
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dst, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	renew := func(name string) {
		t.Helper()
		_, newCert, newKey := ca.Issue(t, name, false)
		for src, dst := range map[string]string{newCert: certFile, newKey: keyFile} {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			write(dst, data)
		}
	}
	handshake := func() string {
		t.Helper()
		c, err := r.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := r.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || s != c {
			t.Fatalf("server and client certificates differ: %v", err)
		}
		return c.Leaf.Subject.CommonName
	}
	if got := handshake(); got != "first" {
		t.Fatalf("serves %s, want first", got)
	}

	renew("second")
	if got := handshake(); got != "first" {
		t.Fatalf("within the interval: %s, want first", got)
	}
	clock = clock.Add(time.Second)
	if got := handshake(); got != "second" {
		t.Fatalf("after renewal: %s, want second", got)
	}

	write(keyFile, []byte("-----BEGIN PRIVATE KEY-----\nhalf written"))
	for range 3 {
		clock = clock.Add(time.Second)
		if got := handshake(); got != "second" {
			t.Fatalf("broken renewal: %s, want second kept", got)
		}
	}
	if err := os.Rename(keyFile, keyFile+".moved"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		clock = clock.Add(time.Second)
		if got := handshake(); got != "second" {
			t.Fatalf("key moved away: %s, want second kept", got)
		}
	}
	if err := os.Rename(keyFile+".moved", keyFile); err != nil {
		t.Fatal(err)
	}
	renew("third")
	clock = clock.Add(time.Second)
	if got := handshake(); got != "third" {
		t.Fatalf("after the fix: %s, want third", got)
	}

	out := logs.String()
	for msg, want := range map[string]int{"TLS certificate not reloaded": 2, "TLS certificate reloaded": 2} {
		if n := strings.Count(out, msg); n != want {
			t.Errorf("%q logged %d times, want %d:\n%s", msg, n, want, out)
		}
	}
	if strings.Contains(out, "half written") {
		t.Error("the log quotes the key file")
	}
}

func TestNewErrors(t *testing.T) {
	ca := testpki.NewCA(t, "x")
	_, certFile, keyFile := ca.Issue(t, "c", false)
	for name, files := range map[string][2]string{
		"missing key":        {certFile, keyFile + ".none"},
		"key is certificate": {certFile, certFile},
	} {
		if _, err := New(files[0], files[1], 0, nil); err == nil || !strings.Contains(err.Error(), "TLS") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// TestRetryWithinOneTick: a renewal rewritten in place (truncated, then
// written) can keep one modification time across both writes; a
// handshake between them must not make the good pair wait for the next
// change of the files.
func TestRetryWithinOneTick(t *testing.T) {
	ca := testpki.NewCA(t, "clients")
	_, certFile, keyFile := ca.Issue(t, "first", false)
	r, err := New(certFile, keyFile, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	r.now = func() time.Time { return clock }
	_, newCert, newKey := ca.Issue(t, "second", false)
	tick := time.Now().Add(time.Hour)
	write := func(dst string, data []byte) {
		t.Helper()
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dst, tick, tick); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, _ := os.ReadFile(newCert)
	keyPEM, _ := os.ReadFile(newKey)
	write(certFile, certPEM)
	write(keyFile, nil) // truncated, not written yet
	clock = clock.Add(time.Second)
	if c, _ := r.GetClientCertificate(nil); c.Leaf.Subject.CommonName != "first" {
		t.Fatalf("half-written: %s, want first kept", c.Leaf.Subject.CommonName)
	}
	write(keyFile, keyPEM) // the same modification time
	clock = clock.Add(time.Second)
	if c, _ := r.GetClientCertificate(nil); c.Leaf.Subject.CommonName != "second" {
		t.Fatalf("after the write: %s, want second", c.Leaf.Subject.CommonName)
	}
}
