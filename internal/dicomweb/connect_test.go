package dicomweb

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// A request that got no connection (a refused dial, an egress proxy
// answering its CONNECT with an error status) is ErrNotConnected: the
// breaker never takes it for the study's own failure. One whose
// connection was made and then cut is not.
func TestStoreNotConnected(t *testing.T) {
	closedAddr := func(t *testing.T) string {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	for _, tt := range []struct {
		name          string
		client        func(t *testing.T) (base string, hc *http.Client)
		wantConnected bool
	}{
		{"proxy answers CONNECT 502", func(t *testing.T) (string, *http.Client) {
			proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadGateway) // its upstream refused
			}))
			t.Cleanup(proxy.Close)
			pu, _ := url.Parse(proxy.URL)
			return "https://archive.example/dicomweb", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
		}, false},
		{"dial refused", func(t *testing.T) (string, *http.Client) {
			return "http://" + closedAddr(t) + "/dicomweb", &http.Client{}
		}, false},
		{"connection cut after the request", func(t *testing.T) (string, *http.Client) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			}))
			t.Cleanup(srv.Close)
			return srv.URL + "/dicomweb", &http.Client{}
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base, hc := tt.client(t)
			c, err := New(base, hc)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Store(t.Context(), []Part{uidPart("1.2.3", nil)})
			if !errors.Is(err, ErrNoAnswer) {
				t.Fatalf("err = %v, want ErrNoAnswer", err)
			}
			if got := errors.Is(err, ErrNotConnected); got == tt.wantConnected {
				t.Errorf("ErrNotConnected %v, want %v: %v", got, !tt.wantConnected, err)
			}
		})
	}
}
