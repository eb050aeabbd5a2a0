package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// TestShutdownAnswersWebhookWaitingForJetStream: a webhook request still
// waiting for JetStream's acknowledgement when the ingest is told to stop
// is answered (503 once INGEST_PUBLISH_TIMEOUT passes), not cut off: with
// a publish timeout past the 15 s HTTP grace, the ingest used to close
// the connection while the publish went on, and Orthanc logged a study
// JetStream might still store as not announced.
func TestShutdownAnswersWebhookWaitingForJetStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 17 s publish timeout")
	}
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "test", Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	// The ingest reaches NATS through a relay that can hold back the
	// server's answers: the connection stays up, JetStream never answers.
	relay := startRelay(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))
	addr := testharness.FreeAddr(t)
	logs := &testharness.LogBuffer{}
	env := map[string]string{
		"NATS_URL":               "nats://" + relay.addr,
		"INGEST_ADDR":            addr,
		"INGEST_TOKEN":           token,
		"INGEST_PUBLISH_TIMEOUT": "17s",
		"RECONCILE_ENABLED":      "false",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, nil, logs, logs) }()
	t.Cleanup(func() {
		relay.thaw()
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("ingest did not stop within 30 s")
		}
		if t.Failed() {
			t.Logf("ingest log:\n%s", logs.String())
		}
	})
	testharness.WaitFor(t, "ingest healthy", 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	relay.freeze()
	type answer struct {
		status int
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		body := `{"type":"orthanc.study.stable","version":1,"source":"src","orthancStudyId":"0f2b6a1e-5c7d9e2f-8a3b4c5d-6e7f8091-a2b3c4d5","studyInstanceUid":"1.2.826.0.1.3680043.8.498.1","lastUpdate":"20260101T000000","priority":"routine"}`
		status, err := postEvent(addr, body)
		answered <- answer{status: status, err: err}
	}()
	// The publish is on its way to JetStream (the relay held the server's
	// acknowledgement back): stop the ingest.
	testharness.WaitFor(t, "the event's publish sent", 10*time.Second, relay.eventSent.Load)
	cancel()
	select {
	case a := <-answered:
		if a.err != nil {
			t.Fatalf("the webhook request in flight at shutdown was cut off: %v", a.err)
		}
		if a.status != http.StatusServiceUnavailable {
			t.Errorf("the webhook request in flight at shutdown: %d, want 503 (JetStream did not acknowledge)", a.status)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the webhook request in flight at shutdown was not answered within 40 s")
	}
	if !strings.Contains(logs.String(), "event not stored") {
		t.Errorf("no log line says the event was not stored")
	}
}

// relay passes TCP connections to a server; freeze holds back what the
// server sends (the connections stay open) until thaw.
type relay struct {
	addr   string
	mu     sync.Mutex
	frozen bool
	thawed chan struct{}
	// eventSent: the ingest published on the event stream while frozen.
	eventSent atomic.Bool
}

func startRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String(), thawed: make(chan struct{})}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		r.thaw()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			conns.Add(2)
			go func() {
				defer conns.Done()
				r.pipe(up, c, false)
			}()
			go func() {
				defer conns.Done()
				r.pipe(c, up, true)
			}()
		}
	}()
	return r
}

// pipe copies from src to dst; fromServer's bytes wait while frozen.
func (r *relay) pipe(dst, src net.Conn, fromServer bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			frozen, thawed := r.frozen, r.thawed
			r.mu.Unlock()
			if frozen {
				if fromServer {
					<-thawed
				} else if bytes.Contains(buf[:n], []byte(natsjs.EventSubjectPrefix)) {
					r.eventSent.Store(true)
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *relay) freeze() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frozen = true
}

func (r *relay) thaw() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen {
		r.frozen = false
		close(r.thawed)
		r.thawed = make(chan struct{})
	}
}
