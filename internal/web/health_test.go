package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthAndReadiness(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "stowline_test_total", Help: "test"})
	reg.MustRegister(c)
	ready := true
	r := chi.NewRouter()
	MountHealth(r, reg, map[string]Check{
		"jetstream": func(context.Context) error {
			if !ready {
				return errors.New("no responders")
			}
			return nil
		},
		"orthanc":        func(context.Context) error { return nil },
		"reconcile_main": Advisory(func(context.Context) error { return errors.New("orthanc unreachable") }),
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)

	get := func(path string) (int, map[string]any, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		var raw strings.Builder
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			_ = json.NewDecoder(resp.Body).Decode(&body)
		} else {
			buf := make([]byte, 1<<16)
			n, _ := resp.Body.Read(buf)
			raw.Write(buf[:n])
		}
		return resp.StatusCode, body, raw.String()
	}
	if code, body, _ := get("/healthz"); code != 200 || body["status"] != "ok" {
		t.Errorf("/healthz = %d %v", code, body)
	}
	code, body, _ := get("/readyz")
	degraded, _ := body["degraded"].(map[string]any)
	if code != 200 || body["status"] != "ready" || degraded["reconcile_main"] != "orthanc unreachable" {
		t.Errorf("/readyz with an advisory check failing = %d %v, want 200 ready, degraded", code, body)
	}
	ready = false
	// The last answer stands for readyReuse: wait for the next run.
	deadline := time.Now().Add(readyReuse + 5*time.Second)
	for code == 200 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		code, body, _ = get("/readyz")
	}
	failed, _ := body["failed"].(map[string]any)
	if code != 503 || failed["jetstream"] != "no responders" || failed["orthanc"] != nil {
		t.Errorf("/readyz with JetStream down = %d %v", code, body)
	}
	if _, _, raw := get("/metrics"); !strings.Contains(raw, "stowline_test_total") {
		t.Errorf("/metrics does not expose the registry: %q", raw)
	}
	// A balancer's monitor may send HEAD: it gets the status GET would.
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503} {
		resp, err := http.Head(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("HEAD %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// /readyz answers anyone who can reach the port, and each request ran
// every check (JetStream, each Orthanc source): requests at once made as
// many runs at once, and a client asking in a loop a run each. Those that
// come while a run is under way, or within readyReuse after it, take its
// answer.
func TestReadinessRequestsAtOnceShareARun(t *testing.T) {
	var runs atomic.Int32
	r := chi.NewRouter()
	MountHealth(r, prometheus.NewRegistry(), map[string]Check{
		"orthanc": func(context.Context) error {
			runs.Add(1)
			time.Sleep(100 * time.Millisecond)
			return nil
		},
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	get := func() {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz = %d", resp.StatusCode)
		}
	}
	get()
	get()
	if n := runs.Swap(0); n != 1 {
		t.Errorf("two requests one after another ran the checks %d times, want 1", n)
	}
	// Requests at once share the run under way even with no reuse (the
	// reuse above would answer them all from the last run).
	runs.Store(0)
	shared := &sharedChecks{checks: map[string]Check{"orthanc": func(context.Context) error {
		runs.Add(1)
		time.Sleep(100 * time.Millisecond)
		return nil
	}}}
	const requests = 10
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			if failed, _ := shared.run(t.Context()); len(failed) > 0 {
				t.Errorf("checks failed: %v", failed)
			}
		})
	}
	wg.Wait()
	// A request that starts late on a loaded host may run them again:
	// up to half of them, not every one.
	if n := runs.Load(); n > requests/2 {
		t.Errorf("%d requests at once ran the checks %d times, want at most %d", requests, n, requests/2)
	}
}

// TestServeCutsOffAfterGrace: a request still running after the
// shutdown grace is cut off, and Serve says so with its own error (a
// stop, which the caller does not take for a failed server).
func TestServeCutsOffAfterGrace(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, 100*time.Millisecond) }()
	go func() {
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrShutdownGraceExceeded) {
			t.Errorf("Serve = %v, want ErrShutdownGraceExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the grace")
	}
}

// TestFailedHandshakesDoNotFloodTheLog: on an HTTPS listener, peers that
// connect and close (a load balancer's or orchestrator's TCP health
// check, a port scan) are logged at debug, and other failed handshakes
// (plain HTTP, a client refusing the certificate) once, then once a
// minute with their count: anyone who can connect wrote a warning per
// connection, every few seconds for ever from a TCP health check, or as
// fast as they liked. Other server errors stay warnings.
func TestFailedHandshakesDoNotFloodTheLog(t *testing.T) {
	var logs syncBuffer
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = NewServer(http.NotFoundHandler(), slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ts.StartTLS()
	addr := ts.Listener.Addr().String()
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	}
	// Wait for their lines: Close below closes a connection the server
	// has not read from yet (a loaded host) with no handshake error.
	closedLines := func() int {
		n := 0
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, `"level":"DEBUG"`) && strings.Contains(line, "EOF") {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); closedLines() < 20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	for range 5 {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}
	ts.Config.ErrorLog.Print("http: superfluous response.WriteHeader call")
	ts.Close() // waits for every connection, so for their log lines
	debug, warn := closedLines(), 0
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `"level":"WARN"`) {
			warn++
		}
	}
	if debug != 20 || warn != 2 || !strings.Contains(logs.String(), "superfluous") || !strings.Contains(logs.String(), "HTTP request to an HTTPS server") {
		t.Errorf("%d debug lines of closed connections (want 20), %d warnings (want 2: the first failed handshake, the other error):\n%s", debug, warn, logs.String())
	}
}

// syncBuffer is a bytes.Buffer the server's connections write to at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReadinessRunsAgainAfterReuse: an answer stands for reuse after its
// run ended, not longer: a request after that runs the checks again.
func TestReadinessRunsAgainAfterReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs int
		s := &sharedChecks{reuse: time.Second, checks: map[string]Check{
			"orthanc": func(context.Context) error {
				runs++
				time.Sleep(100 * time.Millisecond)
				return nil
			},
		}}
		for _, step := range []struct {
			wait time.Duration
			want int
		}{{0, 1}, {999 * time.Millisecond, 1}, {2 * time.Millisecond, 2}, {0, 2}} {
			time.Sleep(step.wait)
			s.run(t.Context())
			if runs != step.want {
				t.Fatalf("after waiting %v: %d runs, want %d", step.wait, runs, step.want)
			}
		}
	})
}
