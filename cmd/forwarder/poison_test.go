package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
)

// childEnv, when set in the environment of this test binary, makes it the
// real forwarder program instead of the tests: a separate process that a
// test can kill like the kernel's OOM killer would.
const childEnv = "STOWLINE_TEST_AS_FORWARDER"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, nil, os.Getenv, nil, os.Stdout, os.Stderr)
		stop()
		os.Exit(app.ExitCode("forwarder", err, os.Stderr))
	}
	os.Exit(m.Run())
}

// forwarderProcess is the real forwarder in a process of its own,
// restarted whenever it dies, as a container orchestrator would.
type forwarderProcess struct {
	name string
	env  []string
	logs *testharness.LogBuffer

	mu       sync.Mutex
	cmd      *exec.Cmd
	stopping bool
	exited   chan struct{}
	starts   int
}

func startForwarderProcess(t *testing.T, name string, env map[string]string) *forwarderProcess {
	t.Helper()
	p := &forwarderProcess{name: name, env: []string{childEnv + "=1"}, logs: &testharness.LogBuffer{}}
	for k, v := range env {
		p.env = append(p.env, k+"="+v)
	}
	p.start(t)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.logs.String())
		}
	})
	return p
}

// start runs the process and restarts it whenever it exits, until stop.
func (p *forwarderProcess) start(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	cmd.SysProcAttr = testharness.SysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Errorf("start %s: %v", p.name, err) // restarts run outside the test goroutine: no Fatal
		return
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	p.starts++
	go func() {
		_ = cmd.Wait()
		close(exited)
		p.start(t)
	}()
}

// kill ends the process at once, as an out-of-memory kill does; it is
// then restarted.
func (p *forwarderProcess) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
	}
}

func (p *forwarderProcess) stop() {
	p.mu.Lock()
	p.stopping = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// A study whose forwarding kills the forwarder process (an out-of-memory
// kill, here a SIGKILL when the process asks Orthanc for that study) is
// dead-lettered as a crash once its deliveries pass
// FORWARDER_MAX_DELIVERIES, without being tried again; the other studies
// keep flowing through the forwarders meanwhile.
func TestPoisonStudyIsDeadLettered(t *testing.T) {
	r := newRig(t)
	poison := r.addStudy(t, 2, 64)

	// Each forwarder reads the source through a proxy of its own, which
	// kills that forwarder when it asks for the poison study (its first
	// request of a transfer lists the study's series) and passes the rest
	// on to Orthanc.
	target, err := url.Parse(r.src.URL)
	if err != nil {
		t.Fatal(err)
	}
	var poisonReads atomic.Int32
	killingProxy := func(victim *atomic.Pointer[forwarderProcess]) string {
		rp := httputil.NewSingleHostReverseProxy(target)
		proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if strings.HasPrefix(req.URL.Path, "/studies/"+poison+"/") {
				poisonReads.Add(1)
				if p := victim.Load(); p != nil {
					p.kill()
				}
				http.Error(w, "killed", http.StatusServiceUnavailable)
				return
			}
			rp.ServeHTTP(w, req)
		}))
		t.Cleanup(proxy.Close)
		return proxy.URL
	}

	const maxDeliveries = 3
	var victims [2]atomic.Pointer[forwarderProcess]
	all := make([]*forwarderProcess, len(victims))
	for i := range all {
		env := r.env(map[string]string{
			"ORTHANC_URL":              killingProxy(&victims[i]),
			"FORWARDER_ADDR":           testharness.FreeAddr(t),
			"FORWARDER_MAX_DELIVERIES": strconv.Itoa(maxDeliveries),
			// One study at a time per process: a kill takes no other
			// study's delivery with it.
			"FORWARDER_CONCURRENCY": "1",
			"LOG_LEVEL":             "info",
		})
		all[i] = startForwarderProcess(t, fmt.Sprintf("forwarder-%d", i+1), env)
		victims[i].Store(all[i])
	}

	r.publish(t, poison)
	var normal []string
	for range 4 {
		id := r.addStudy(t, 3, 64)
		r.publish(t, id)
		normal = append(normal, id)
	}
	r.waitDest(t, 4*3, 2*time.Minute)

	store := r.deadLetters(t)
	var letters []deadletter.Entry
	deadline := time.Now().Add(2 * time.Minute)
	for len(letters) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter for the poison study after 2 minutes; it was read %d times", poisonReads.Load())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		letters, err = store.List(ctx, deadletter.Filter{All: true})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(letters) == 0 {
			time.Sleep(250 * time.Millisecond)
		}
	}
	r.waitQueueEmpty(t, time.Minute)

	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want only the poison study's: %+v", len(letters), letters)
	}
	l := letters[0]
	if l.Event.OrthancStudyID != poison || l.Class != forward.Crash || l.Attempts != maxDeliveries+1 {
		t.Errorf("dead letter: study %s, class %q, attempts %d; want %s, crash, %d", l.Event.OrthancStudyID, l.Class, l.Attempts, poison, maxDeliveries+1)
	}
	if n := poisonReads.Load(); n != maxDeliveries {
		t.Errorf("the poison study was read %d times, want %d (once per delivery up to the limit, not after)", n, maxDeliveries)
	}
	// Every other study arrived intact.
	var got struct{ CountStudies int }
	r.dest.GetJSON(t, "/statistics", &got)
	if got.CountStudies != len(normal) {
		t.Errorf("destination holds %d studies, want the %d others", got.CountStudies, len(normal))
	}
	kills := 0
	for _, p := range all {
		p.mu.Lock()
		kills += p.starts - 1
		p.mu.Unlock()
	}
	if kills != maxDeliveries {
		t.Errorf("forwarders restarted %d times, want %d (one kill per delivery)", kills, maxDeliveries)
	}
}
