package app

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http/httpproxy"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testpki"
	"github.com/stowline/stowline/orthancapi"
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
		s := sourcesFromEnv(t, map[string]string{"ORTHANC_URL": srv.URL, "ORTHANC_CA_FILE": caFile})
		_, err := s.List()[0].Client.System(context.Background())
		return err
	}
	if err := system(""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without ORTHANC_CA_FILE: err = %v, want a certificate error", err)
	}
	if err := system(ca.CAFile); err != nil {
		t.Errorf("with ORTHANC_CA_FILE: %v", err)
	}
}

// A proxy set for the cloud destinations would also carry Orthanc's
// traffic (its files, and over http:// its password in the clear) unless
// NO_PROXY names Orthanc: each source that would go through it is named in
// a warning, with hosts only (a proxy URL may hold credentials).
func TestProxiedSourceWarned(t *testing.T) {
	s := sourcesFromEnv(t, map[string]string{
		"ORTHANC_SOURCES":    "main,local,cardio",
		"ORTHANC_MAIN_URL":   "http://orthanc:8042",
		"ORTHANC_LOCAL_URL":  "http://127.0.0.1:8042",
		"ORTHANC_CARDIO_URL": "https://cardio.hospital.example:8043",
	})
	proxy := httpproxy.Config{
		HTTPProxy:  "http://user:proxy-secret@proxy.corp:3128",
		HTTPSProxy: "http://user:proxy-secret@proxy.corp:3128",
		NoProxy:    ".hospital.example",
	}
	var logs testharness.LogBuffer
	s.warnProxied(slog.New(slog.NewJSONHandler(&logs, nil)), proxy.ProxyFunc())
	out := logs.String()
	if n := strings.Count(out, "through the proxy"); n != 1 || !strings.Contains(out, `"variable":"ORTHANC_MAIN_URL","orthanc_host":"orthanc:8042","proxy_host":"proxy.corp:3128"`) {
		t.Errorf("want one warning, for ORTHANC_MAIN_URL (localhost is never proxied, cardio is in NO_PROXY):\n%s", out)
	}
	if strings.Contains(out, "proxy-secret") {
		t.Errorf("the proxy's credentials were logged:\n%s", out)
	}
}

// ORTHANC_MAX_CONNECTIONS, and a source's own
// ORTHANC_<NAME>_MAX_CONNECTIONS, reach its client: with 1, a second file
// stream waits while the first is open, until its deadline, and starts
// once the first is closed.
func TestOrthancMaxConnections(t *testing.T) {
	const (
		held  = "00000001-00000000-00000000-00000000-00000000"
		other = "00000002-00000000-00000000-00000000-00000000"
	)
	// The Orthanc holds the file body of held open until the client
	// closes it; any other file it answers at once.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom")
		_, _ = io.WriteString(w, "DICM")
		if r.URL.Path == "/instances/"+held+"/file" {
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		name string
		env  map[string]string
	}{
		{"ORTHANC_MAX_CONNECTIONS", map[string]string{"ORTHANC_URL": srv.URL, "ORTHANC_MAX_CONNECTIONS": "1"}},
		{"ORTHANC_<NAME>_MAX_CONNECTIONS", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": srv.URL, "ORTHANC_MAIN_MAX_CONNECTIONS": "1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := sourcesFromEnv(t, tt.env).List()[0].Client
			first, _, err := client.OpenInstanceFile(t.Context(), held)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { first.Close() }) // a failure's: srv.Close waits for its handler
			short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			// The wait is for the slot, not the answer, which comes at once.
			if rc, _, err := client.OpenInstanceFile(short, other); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "request slot") {
				if err == nil {
					rc.Close()
				}
				t.Fatalf("second stream while the first is open: %v, want it to wait for a request slot until its deadline", err)
			}
			if err := first.Close(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			rc, _, err := client.OpenInstanceFile(ctx, other)
			if err != nil {
				t.Fatalf("once the first stream is closed: %v", err)
			}
			rc.Close()
		})
	}
}

// sourcesFromEnv builds the Orthanc sources the variables in env configure.
func sourcesFromEnv(t *testing.T, env map[string]string) *Sources {
	t.Helper()
	var c config.Orthanc
	if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	s, err := newSources(&c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Studies of an unavailable source hold their workers where one source
// feeds the forwarder; with several they are parked, a quarter of the
// consumer's MaxAckPending at most.
func TestMaxParkedOnlyWithSeveralSources(t *testing.T) {
	for n, want := range map[int]int{1: 0, 2: 250, 3: 250} {
		r := &forwarderRole{sources: &Sources{list: make([]Source, n)}}
		if got := r.maxParked(1000); got != want {
			t.Errorf("%d sources: MaxParked %d, want %d", n, got, want)
		}
	}
}

// A source that hangs does not get the others named as failing in
// /readyz: the sources were asked in turn, so one that accepted the
// connection and never answered used up the check's deadline, and the
// next, answering, was reported "context deadline exceeded" as well,
// sending the operator after an Orthanc that was fine. cardio is a real
// Orthanc; main a listener that accepts and never answers (a hung
// Orthanc, which a real one cannot be made into on demand), until cardio
// has answered: then it drops its connections, so the checks last as
// long as cardio takes rather than their whole deadline. Asking in turn
// still fails: main holds cardio back until the deadline.
//
// A forwarder fed by several sources stays ready while one answers
// (AnyReady): the studies of the others are parked, and it was taken out
// of service for one Orthanc's outage. It is unready once none answers.
func TestReadinessOfSeveralSources(t *testing.T) {
	cardio := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "ready-cardio"})
	cardioURL, err := url.Parse(cardio.URL)
	if err != nil {
		t.Fatal(err)
	}
	cardioAnswered := make(chan struct{})
	var answeredOnce sync.Once
	cardioProxy := httputil.NewSingleHostReverseProxy(cardioURL)
	cardioProxy.ErrorLog = log.New(io.Discard, "", 0) // cardio stopped: a 502, as expected
	cardioFront := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cardioProxy.ServeHTTP(w, r)
		answeredOnce.Do(func() { close(cardioAnswered) })
	}))
	t.Cleanup(cardioFront.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
			go func() {
				select {
				case <-cardioAnswered:
				case <-t.Context().Done():
				}
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	})
	var list []Source
	// main first: asked in turn, it used up the deadline.
	for _, src := range []struct{ name, url string }{{"main", "http://" + ln.Addr().String()}, {"cardio", cardioFront.URL}} {
		c, err := orthancapi.New(src.url)
		if err != nil {
			t.Fatal(err)
		}
		list = append(list, Source{Name: src.name, Client: c})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = (&Sources{list: list}).Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), "orthanc main") {
		t.Fatalf("Ready = %v, want main named", err)
	}
	if strings.Contains(err.Error(), "orthanc cardio") {
		t.Errorf("Ready = %v: cardio answers, it must not be named", err)
	}
	sources := &Sources{list: list}
	anyReady := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		return sources.AnyReady(ctx)
	}
	if err := anyReady(); err != nil {
		t.Errorf("AnyReady with cardio answering = %v, want ready", err)
	}
	cardio.Stop(t)
	if err := anyReady(); err == nil || !strings.Contains(err.Error(), "no Orthanc source answers") || !strings.Contains(err.Error(), "orthanc cardio") {
		t.Errorf("AnyReady with none answering = %v, want an error naming them", err)
	}
}

// ORTHANC_SOURCE_ALIASES: an event of a source's former name reads that
// source's Orthanc, while the list the reconciler and the audit read
// keeps the configured names only (both names configured, the reconciler
// queued every study twice).
func TestSourceAliasReadsItsSourcesOrthanc(t *testing.T) {
	s := sourcesFromEnv(t, map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://main:8042", "ORTHANC_MR_URL": "http://mr:8042",
		"ORTHANC_SOURCE_ALIASES": "MyOrthanc=main"})
	main, err := s.Lookup("main")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup("MyOrthanc"); err != nil || got != main {
		t.Errorf("Lookup(MyOrthanc) = %p, %v; want main's client %p", got, err, main)
	}
	// The rules (a destination's, PRIORITY_RULE) see the source's name.
	if got := s.Name("MyOrthanc"); got != "main" {
		t.Errorf("Name(MyOrthanc) = %q, want main", got)
	}
	if got := s.Name("mr"); got != "mr" {
		t.Errorf("Name(mr) = %q, want mr", got)
	}
	if _, err := s.Lookup("other"); !errors.Is(err, forward.ErrUnknownSource) {
		t.Errorf("Lookup(other) = %v, want ErrUnknownSource", err)
	}
	var names []string
	for _, src := range s.List() {
		names = append(names, src.Name)
	}
	if !slices.Equal(names, []string{"main", "mr"}) {
		t.Errorf("List() names %v, want the configured sources alone", names)
	}
}
