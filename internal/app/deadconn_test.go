package app

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The destination transport pings a quiet HTTP/2 connection and closes
// it when no answer comes: a connection a load balancer or NAT dropped
// silently fails its requests at once, not after the STOW client's
// 5-minute watch. Without the pings the request below waited for good.
func TestDestinationTransportClosesADeadHTTP2Connection(t *testing.T) {
	started := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hang" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		started <- struct{}{}
		<-r.Context().Done() // never answers
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	relay := startRelay(t, srv.Listener.Addr().String())

	tr := newDestinationTransport()
	if tr.HTTP2 == nil || tr.HTTP2.SendPingTimeout <= 0 {
		t.Fatal("the destination transport sends no HTTP/2 pings (HTTP2.SendPingTimeout unset)")
	}
	// The same health check, quicker.
	tr.HTTP2.SendPingTimeout, tr.HTTP2.PingTimeout = 200*time.Millisecond, 200*time.Millisecond
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}

	resp, err := hc.Get("https://" + relay.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := hc.Get("https://" + relay.addr + "/hang")
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-started
	relay.blackhole()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the request on the dead connection got an answer")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the request on a silently dropped connection still waits after 30 s")
	}
}

// relay passes TCP connections to an address until blackhole, after
// which it drops every byte both ways and keeps the connections open, as
// a load balancer or NAT that forgot them.
type relay struct {
	addr    string
	dropped atomic.Bool
}

func (r *relay) blackhole() { r.dropped.Store(true) }

func startRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pass := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !r.dropped.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
					t.Logf("relay: %v", err)
				}
				return
			}
		}
	}
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", upstream)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Go(func() { pass(out, in) })
			wg.Go(func() { pass(in, out) })
		}
	})
	return r
}
