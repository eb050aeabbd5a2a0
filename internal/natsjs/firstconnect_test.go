package natsjs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/testpki"
)

// freePort is a TCP port nothing listens on (for now).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// warnings is a log that signals each warning on its channel and keeps
// all it was given.
type warnings struct {
	mu   sync.Mutex
	text bytes.Buffer
	c    chan string
}

func newWarnings() *warnings { return &warnings{c: make(chan string, 100)} }

func (w *warnings) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (w *warnings) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.text.Write(p)
	select {
	case w.c <- string(p):
	default:
	}
	return len(p), nil
}

func (w *warnings) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.text.String()
}

// await waits for a warning.
func (w *warnings) await(t *testing.T) string {
	t.Helper()
	select {
	case line := <-w.c:
		return line
	case <-time.After(10 * time.Second):
		t.Fatal("no warning logged")
		return ""
	}
}

// A NATS server that comes up after stowline is waited for: Connect
// exited with "no servers available", and the process with it.
func TestConnectWaitsForNATSStartedLate(t *testing.T) {
	port := freePort(t)
	url := "nats://stowline:s3cret-pass@127.0.0.1:" + strconv.Itoa(port)
	w := newWarnings()
	type result struct {
		c   *natsjs.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: url, Unreachable: func(error) {}}.WithFirstRetry(10*time.Millisecond), w.logger())
		done <- result{c, err}
	}()
	// Two failed attempts, so it retries rather than waits once.
	for range 2 {
		if line := w.await(t); !strings.Contains(line, "cannot reach NATS") {
			t.Fatalf("warning %s, want the failed attempt", line)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("Connect returned before NATS started: %v", r.err)
	default:
	}
	testnats.StartWith(t, func(o *server.Options) {
		o.Host, o.Port, o.DontListen = "127.0.0.1", port, false
	})
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Connect did not return once NATS was up")
	}
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	t.Cleanup(r.c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.c.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}
	logs := w.String()
	if strings.Contains(logs, "s3cret-pass") || strings.Contains(logs, "stowline:") {
		t.Errorf("the log names the URL's credentials: %s", logs)
	}
	if want := `"url":"nats://127.0.0.1:` + strconv.Itoa(port) + `"`; !strings.Contains(logs, want) {
		t.Errorf("the warnings do not name the URL (%s): %s", want, logs)
	}
}

// The wait ends with ctx: a SIGTERM stops a process waiting for NATS.
func TestConnectWaitEndsWithContext(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	w := newWarnings()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := natsjs.Connect(ctx, natsjs.ConnectOptions{URL: url, Unreachable: func(error) {}}, w.logger())
		done <- err
	}()
	w.await(t)
	cancel()
	select {
	case err := <-done:
		// context.Canceled is how app tells a stop (exit 0) from a
		// failure (exit 1).
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "no NATS server reached before the stop") {
			t.Errorf("Connect = %v, want the wait given up, wrapping context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Connect still waiting 2 s after ctx ended")
	}
}

func TestURLsWithoutUser(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nats://a:4222", "nats://a:4222"},
		{"nats://user:pass@a:4222, tls://token@b:4222", "nats://a:4222,tls://b:4222"},
		{"a:4222", "nats://a:4222"},
	} {
		if got := natsjs.URLsWithoutUser(tc.in); got != tc.want {
			t.Errorf("urlsWithoutUser(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Without Unreachable (the operator's commands) an unreachable server
// fails at once.
func TestConnectWithoutWaitFailsAtOnce(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	if _, err := natsjs.Connect(t.Context(), natsjs.ConnectOptions{URL: url}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Connect to nothing succeeded")
	}
}

// silentListener accepts connections and never answers: a server whose
// host takes the connection and whose NATS does not speak (still
// starting), or, to the client, a dial through a firewall that drops.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// Every outage is waited for, not only "connection refused" (which
// nats.go alone turns into ErrNoServers): a NATS host still booting (a
// time-out, no route to it) or a name not in the DNS yet (a container
// or pod not up) exited at once, the process with it.
func TestConnectWaitsThroughEveryOutage(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"refused", "nats://127.0.0.1:" + strconv.Itoa(freePort(t))},
		{"time-out", "nats://" + silentListener(t)},
		{"name not resolved", "nats://nats-not-up-yet.invalid:4222"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			attempts := make(chan error, 100)
			w := newWarnings()
			done := make(chan error, 1)
			go func() {
				o := natsjs.ConnectOptions{
					URL:         tc.url,
					Auth:        []nats.Option{nats.Timeout(100 * time.Millisecond)},
					Unreachable: func(err error) { attempts <- err },
				}.WithFirstRetry(10 * time.Millisecond)
				_, err := natsjs.Connect(ctx, o, w.logger())
				done <- err
			}()
			for i := range 2 {
				select {
				case err := <-attempts:
					if !strings.Contains(err.Error(), "waiting for NATS at "+tc.url) {
						t.Errorf("attempt %d: /readyz would say %q, want the URL waited for", i+1, err)
					}
				case err := <-done:
					t.Fatalf("Connect returned after %d attempts, want a wait: %v", i+1, err)
				case <-time.After(10 * time.Second):
					t.Fatalf("no attempt %d within 10 s", i+1)
				}
				if line := w.await(t); !strings.Contains(line, "cannot reach NATS") {
					t.Errorf("warning %s, want the failed attempt", line)
				}
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Connect = %v at the stop, want context.Canceled wrapped", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Connect still waiting 5 s after ctx ended")
			}
		})
	}
}

// What a wait does not cure ends the start at once, with the error,
// even with Unreachable set: credentials the server refuses, TLS wanted
// by the client of a server without it.
func TestConnectRefusedForGoodFailsAtOnce(t *testing.T) {
	const token = "s3cr3tToken"
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: testharness.FreePort(t), Configure: func(o *server.Options) { o.Authorization = token }})
	for _, tc := range []struct {
		name string
		url  string
		auth []nats.Option
		want error
	}{
		{"wrong token", strings.Replace(srv.ClientURL(), "://", "://wrong-token@", 1), nil, nats.ErrAuthorization},
		{"TLS not offered", strings.Replace(srv.ClientURL(), "://", "://"+token+"@", 1), []nats.Option{nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12})}, nats.ErrSecureConnWanted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var attempts atomic.Int32
			o := natsjs.ConnectOptions{URL: tc.url, Auth: tc.auth, Unreachable: func(error) { attempts.Add(1) }}
			c, err := natsjs.Connect(t.Context(), o, slog.New(slog.DiscardHandler))
			if err == nil {
				c.Close()
				t.Fatal("Connect succeeded")
			}
			if !errors.Is(err, tc.want) || attempts.Load() != 0 {
				t.Errorf("Connect = %v after %d waits, want %v at once", err, attempts.Load(), tc.want)
			}
		})
	}
}

// A first connection waits only for a server not reached; a refusal, or
// the client's own configuration that nats.go reads only at the
// connection, fails the start at once with its cause.
func TestWaitCures(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused", nats.ErrNoServers, true},
		{"dial time-out", &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, true},
		{"no route", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.EHOSTUNREACH}, true},
		{"name not found", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nats.invalid", IsNotFound: true}}, true},
		{"INFO not received", nats.ErrNoInfoReceived, true},
		{"closed in the handshake", fmt.Errorf("read: %w", io.EOF), true},
		{"TLS handshake timed out", fmt.Errorf("%w: %w", nats.ErrTLS, os.ErrDeadlineExceeded), true},
		{"TLS handshake dropped", fmt.Errorf("%w: %w", nats.ErrTLS, io.EOF), true},
		{"TLS handshake reset", fmt.Errorf("%w: %w", nats.ErrTLS, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}), true},
		// nats.go's text for an upgrade answered other than 101.
		{"a WebSocket proxy's 502", errors.New("invalid websocket connection"), true},
		{"unknown", errors.New("something else"), false},
		{"a .creds file without its seed", errors.New("nats: error signing nonce: nkeys: no nkey seed found"), false},
		{"authorization", nats.ErrAuthorization, false},
		{"authentication expired", nats.ErrAuthExpired, false},
		{"TLS required", nats.ErrSecureConnRequired, false},
		{"certificate not trusted", fmt.Errorf("%w: %w", nats.ErrTLS, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), false},
		{"hostname", x509.HostnameError{Host: "nats"}, false},
		{"server's TLS alert", &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, false},
		{"not TLS", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, false},
	} {
		if got := natsjs.WaitCures(tc.err); got != tc.want {
			t.Errorf("%s: waitCures(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// The client's own files, readable and PEM (what the configuration
// checks), but wrong: nats.go reads them only at the connection. They
// waited for ever, "cannot reach NATS" every 5 s, as an outage would.
func TestConnectConfigurationErrorsFailAtOnce(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	_, certFile, keyFile := ca.Issue(t, "client", false)
	_, _, otherKey := testpki.NewCA(t, "other").Issue(t, "client2", false)
	jwtOnly := filepath.Join(t.TempDir(), "user.jwt")
	if err := os.WriteFile(jwtOnly, []byte("-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5LW5rZXkiLCJ0eXAiOiJKV1QifQ.e30.sig\n------END NATS USER JWT------\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: testharness.FreePort(t)})
	for _, tc := range []struct {
		name string
		auth []nats.Option
	}{
		{"cert and key do not match", []nats.Option{nats.ClientCert(certFile, otherKey)}},
		{"cert and key swapped", []nats.Option{nats.ClientCert(keyFile, certFile)}},
		{"CA file holds a key", []nats.Option{nats.RootCAs(keyFile)}},
		{"creds file without its seed", []nats.Option{nats.UserCredentials(jwtOnly)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			var waited atomic.Int32
			o := natsjs.ConnectOptions{URL: srv.ClientURL(), Auth: tc.auth, Unreachable: func(error) { waited.Add(1) }}.WithFirstRetry(10 * time.Millisecond)
			c, err := natsjs.Connect(ctx, o, slog.New(slog.DiscardHandler))
			if c != nil {
				c.Close()
			}
			if err == nil || ctx.Err() != nil || waited.Load() != 0 {
				t.Errorf("Connect: %v after %d waits (context: %v); want its error at once", err, waited.Load(), ctx.Err())
			}
		})
	}
}
