package faultproxy_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/faultproxy"
)

// Hang holds STOW requests without an answer until Release, which
// answers them 504; other requests pass, a client that gives up frees its
// request, and requests after Release pass.
func TestHangAndRelease(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(upstream.Close)
	p := faultproxy.Start(t, upstream.URL)
	post := func(ctx context.Context) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/dicom-web/studies", strings.NewReader("x"))
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	waitHeld := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for p.Held() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests held, want %d", p.Held(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	p.Hang()
	// A client that gives up is not held any more. It gives up once its
	// request is held: a time-out could end it before it reached the
	// proxy on a loaded host, and it would not be counted.
	ctx, cancel := context.WithCancel(t.Context())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := post(ctx)
		gaveUp <- err
	}()
	waitHeld(1)
	cancel()
	if err := <-gaveUp; err == nil {
		t.Error("a STOW request was answered during Hang")
	}
	waitHeld(0)

	// Other requests pass.
	resp, err := http.Get(p.URL + "/dicom-web/studies")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET during Hang: %v %v", resp, err)
	}
	resp.Body.Close()

	done := make(chan int, 1)
	go func() {
		code, err := post(t.Context())
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	waitHeld(1)
	select {
	case code := <-done:
		t.Fatalf("held request answered %d before Release", code)
	case <-time.After(100 * time.Millisecond):
	}
	p.Release()
	if code := <-done; code != http.StatusGatewayTimeout {
		t.Errorf("released request answered %d, want 504", code)
	}
	if code, err := post(t.Context()); err != nil || code != http.StatusOK {
		t.Errorf("STOW request after Release: %d %v", code, err)
	}
	if n := p.STOWRequests(); n != 3 {
		t.Errorf("%d STOW requests counted, want 3", n)
	}
}
