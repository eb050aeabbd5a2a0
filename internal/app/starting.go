package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/stowline/stowline/internal/web"
)

// startingServer answers the probes on the process's HTTP address while
// it waits for its NATS server and creates its streams, before its role
// listens there: /healthz is ok (a liveness or startup probe must not
// have the process killed for an outage of NATS, which it waits out) and
// /readyz is 503, naming what it waits for. /metrics is 503 too: the
// scrape fails, up reads 0 and StowlineDown fires after 5 min of a wait,
// as it did when the process exited instead; answered 200 without the
// stowline series, it kept every shipped alert silent however long NATS
// stayed away. The role's listener takes the address over
// (process.serveHTTP).
type startingServer struct {
	addr string
	srv  *http.Server
	done chan struct{}

	mu     sync.Mutex
	reason error
}

// startStarting listens on addr and serves the probes until close; nil
// when addr is empty.
func startStarting(addr string, serverTLS *tls.Config, log *slog.Logger) (*startingServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := web.Listen(addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	if serverTLS != nil {
		ln = tls.NewListener(ln, serverTLS)
	}
	s := &startingServer{addr: addr, done: make(chan struct{}), reason: errors.New("starting: connecting to NATS")}
	router := newRouter()
	router.Use(noMetrics)
	web.MountHealth(router, newRegistry(), map[string]web.Check{"jetstream": s.ready})
	// The webhook, the admin API and the status page are not served yet:
	// 503 with the reason, as the ingest answers while NATS reconnects. A
	// bare 404 sent Orthanc's script to "check the path of IngestUrl".
	router.NotFound(s.notYet)
	router.MethodNotAllowed(s.notYet)
	s.srv = web.NewServer(router, log)
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // ends at close
	}()
	return s, nil
}

// noMetrics answers /metrics 503 (startingServer says why).
func noMetrics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			http.Error(w, "starting: no metrics until connected to NATS", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// notYet answers a request for what the process serves once started.
func (s *startingServer) notYet(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Retry-After", "5")
	web.WriteError(w, http.StatusServiceUnavailable, "not serving yet, retry later: "+s.ready(context.Background()).Error())
}

func (s *startingServer) ready(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// waiting sets the reason /readyz gives.
func (s *startingServer) waiting(reason error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reason = reason
}

// release closes s when a role is to listen on its address.
func (s *startingServer) release(addr string) {
	if s != nil && s.addr == addr {
		s.close()
	}
}

// close stops serving and frees the address; it may be called again.
func (s *startingServer) close() {
	if s == nil {
		return
	}
	_ = s.srv.Close()
	<-s.done
}
