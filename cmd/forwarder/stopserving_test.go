package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// A stopping forwarder serves its HTTP API until its studies in hand are
// handed back, not ready meanwhile: it closed its listener at the first
// SIGTERM, while the Service (publishNotReadyAddresses) still routed admin
// requests and Prometheus its scrapes to it for up to the grace + 15 s.
func TestStoppingForwarderServesUntilDrained(t *testing.T) {
	r := newRig(t)
	r.proxy.Hang()
	t.Cleanup(r.proxy.Release)
	p := testharness.StartProgram(t, "forwarder", run, r.env(map[string]string{"FORWARDER_SHUTDOWN_GRACE": "3s"}))
	r.fwdLogs = p.Logs
	testharness.WaitHTTP(t, "http://"+r.forwarderAddr+"/healthz", 30*time.Second)
	r.publish(t, r.addStudy(t, 1, 16))
	deadline := time.Now().Add(30 * time.Second)
	for r.proxy.Held() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no STOW request in flight after 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop() }()
	get := func(path string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, "http://"+r.forwarderAddr+path, nil)
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	// The study's request is held until the grace ends (3 s) and the
	// study goes back: until then every request must be answered.
	sawNotReady := false
	for r.proxy.Held() > 0 {
		status, body, err := get("/readyz")
		if err != nil {
			if r.proxy.Held() == 0 {
				break // handed back since: the listener may close
			}
			t.Fatalf("/readyz while the forwarder still has its study in hand: %v", err)
		}
		if status == http.StatusServiceUnavailable && strings.Contains(body, "stopping") {
			sawNotReady = true
			for _, path := range []string{"/metrics", "/admin/deadletters"} {
				if st, _, err := get(path); (err != nil || st != http.StatusOK) && r.proxy.Held() > 0 {
					t.Fatalf("GET %s of a stopping forwarder with its study in hand: %d %v, want 200", path, st, err)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawNotReady {
		t.Error("/readyz never said the forwarder was stopping while it had its study in hand")
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("forwarder stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the forwarder did not stop 30 s after its study was handed back")
	}
}
