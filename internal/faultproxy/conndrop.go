package faultproxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

type connRequestsKey struct{}

// StartConnDropper starts a server that answers with next, except the
// requests drop chooses (given each its number on its connection, from
// 1): their connection is closed without an answer, as a server or a
// load balancer closes a kept-alive connection just as the client reuses
// it. drop may read the request (its body too) first.
func StartConnDropper(t testing.TB, next http.Handler, drop func(r *http.Request, onConn int32) bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !drop(r, r.Context().Value(connRequestsKey{}).(*atomic.Int32).Add(1)) {
			next.ServeHTTP(w, r)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("faultproxy: hijack: %v", err)
			return
		}
		conn.Close()
	}))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connRequestsKey{}, new(atomic.Int32))
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// OnceOnConn is a drop for StartConnDropper: the request numbered N on
// its connection, the first time there is one.
type OnceOnConn struct {
	N       int32
	dropped atomic.Int32
}

// Drop is the drop function.
func (o *OnceOnConn) Drop(_ *http.Request, onConn int32) bool {
	return onConn == o.N && o.dropped.CompareAndSwap(0, 1)
}

// Dropped is the number of requests dropped: 0 or 1.
func (o *OnceOnConn) Dropped() int32 { return o.dropped.Load() }
