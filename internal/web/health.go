// What operators and orchestrators read from every stowline process:
// /healthz, /readyz and /metrics; and HTTP servers with timeouts and
// graceful shutdown.

package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stowline/stowline/internal/repeatlog"
)

// Check reports whether one dependency is usable; nil means ready.
type Check func(ctx context.Context) error

// ReadyTimeout bounds /readyz: its checks run for at most this long. An
// orchestrator's readiness probe must wait longer (the chart's check), or
// a slow check it only reports (Advisory) would still take the process
// out of service.
const ReadyTimeout = 5 * time.Second

// MountHealth adds /healthz, /readyz and /metrics to r. /readyz runs every check
// (in parallel, ReadyTimeout at most) and answers 503 with a JSON body naming each
// failed check; failed Advisory checks are listed under "degraded" and do
// not make the process unready.
// Both answer HEAD too (RFC 9110 asks it of every server; chi does not
// route it to GET): a balancer whose monitor sends HEAD got 405 and took
// every replica out.
func MountHealth(r chi.Router, gatherer prometheus.Gatherer, checks map[string]Check) {
	healthz := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
	r.Get("/healthz", healthz)
	r.Head("/healthz", healthz)
	ready := &sharedChecks{checks: checks, reuse: readyReuse}
	readyz := func(w http.ResponseWriter, req *http.Request) {
		failed, degraded := ready.run(req.Context())
		body := map[string]any{"status": "ready", "checks": sortedNames(checks)}
		if len(degraded) > 0 {
			body["degraded"] = degraded
		}
		status := http.StatusOK
		if len(failed) > 0 {
			body["status"], body["failed"] = "not ready", failed
			delete(body, "checks")
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, body)
	}
	r.Get("/readyz", readyz)
	r.Head("/readyz", readyz)
	r.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
}

// Advisory marks a check whose failure /readyz reports without taking the
// process out of service: a reconciler that cannot reach one Orthanc
// source must not stop the webhook that every source posts to.
func Advisory(c Check) Check {
	return func(ctx context.Context) error {
		if err := c(ctx); err != nil {
			return &advisoryError{err}
		}
		return nil
	}
}

type advisoryError struct{ err error }

func (e *advisoryError) Error() string { return e.err.Error() }
func (e *advisoryError) Unwrap() error { return e.err }

// readyReuse is how long a /readyz answer stands for the requests after
// it: a client asking again and again (no authentication is needed) made
// a run each, each a GET /system to every Orthanc source, which takes no
// ORTHANC_MAX_CONNECTIONS slot, and JetStream requests; now at most one
// run a second. Probes come every few seconds and do not notice.
const readyReuse = time.Second

// sharedChecks runs the checks for /readyz: requests that come while a
// run is under way, or within reuse after one ended, take its answer.
// Each run asks JetStream and every Orthanc source, and /readyz answers
// anyone who can reach the port: requests at once (a scan, several
// probes) made as many runs at once.
type sharedChecks struct {
	checks map[string]Check
	reuse  time.Duration

	mu               sync.Mutex
	failed, degraded map[string]string // the last run's
	doneAt           time.Time         // when the last run ended
}

func (s *sharedChecks) run(ctx context.Context) (failed, degraded map[string]string) {
	came := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.doneAt.After(came.Add(-s.reuse)) {
		return s.failed, s.degraded
	}
	// Not cut short by the request that started it: others take it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReadyTimeout)
	defer cancel()
	s.failed, s.degraded = runChecks(ctx, s.checks)
	s.doneAt = time.Now()
	return s.failed, s.degraded
}

func runChecks(ctx context.Context, checks map[string]Check) (failed, degraded map[string]string) {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	failed, degraded = map[string]string{}, map[string]string{}
	for name, check := range checks {
		wg.Go(func() {
			err := check(ctx)
			if err == nil {
				return
			}
			var adv *advisoryError
			mu.Lock()
			if errors.As(err, &adv) {
				degraded[name] = err.Error()
			} else {
				failed[name] = err.Error()
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return failed, degraded
}

func sortedNames(checks map[string]Check) []string {
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// writeJSON writes v as the JSON body of a response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes {"error": msg} with the given status.
func WriteError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// writeTimeout bounds the writing of an answer (NewServer's
// WriteTimeout, answerLate's, and the webhook's after its publish).
const writeTimeout = 60 * time.Second

// NewServer returns an http.Server with timeouts, so a slow or idle client
// can't hold connections forever.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          stdlog.New(&serverErrorLog{log: log, handshakes: repeatlog.Failures{Every: time.Minute}}, "", 0),
	}
}

// serverErrorLog writes the http.Server's own lines as warnings, except
// its failed TLS handshakes, which any peer causes at will: a connection
// closed before its handshake (a load balancer's TCP health check, a
// port scan) is debug, and the other failures (plain HTTP, a client
// refusing the certificate) are logged once, then once a minute with
// their count, so that neither a health check every few seconds nor a
// flood fills the log.
type serverErrorLog struct {
	log        *slog.Logger
	handshakes repeatlog.Failures
}

func (l *serverErrorLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	detail, handshake := strings.CutPrefix(msg, "http: TLS handshake error from ")
	switch {
	case !handshake:
		l.log.Warn(msg)
	case strings.HasSuffix(detail, ": EOF"):
		l.log.Debug(msg)
	default:
		if n, ok := l.handshakes.Failed(); ok {
			l.log.Warn(msg, "failed_handshakes", n)
		}
	}
	return len(p), nil
}

// Listen binds addr now, so a busy port fails startup with a clear error
// rather than later in a goroutine; net's error names addr already.
func Listen(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// ErrShutdownGraceExceeded reports a graceful shutdown whose requests did
// not all finish within the grace: they were cut off. A stop, not a
// failure of the server: callers log it.
var ErrShutdownGraceExceeded = errors.New("requests still running after the shutdown grace were cut off")

// Serve serves on ln until ctx ends, then shuts down gracefully, giving
// in-flight requests up to grace to finish; those still running then are
// cut off (ErrShutdownGraceExceeded).
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			srv.Close()
			<-errc
			return fmt.Errorf("shut down http server on %s: %w", ln.Addr(), ErrShutdownGraceExceeded)
		}
		return fmt.Errorf("shut down http server on %s: %w", ln.Addr(), err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
