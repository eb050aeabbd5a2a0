package forward

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

func TestDestinationDown(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "http://dest/studies", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	noAnswer := fmt.Errorf("STOW-RS request 1: %w", dicomwebNoAnswer(refused))
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"stored", nil, false},
		{"connection refused", noAnswer, true},
		{"503", &dicomweb.HTTPError{StatusCode: 503}, true},
		{"500", fmt.Errorf("batch 2: %w", &dicomweb.HTTPError{StatusCode: 500}), true},
		{"502", &dicomweb.HTTPError{StatusCode: 502}, true},
		{"504", &dicomweb.HTTPError{StatusCode: 504}, true},
		{"424 (Azure: its storage or key vault unreachable)", &dicomweb.HTTPError{StatusCode: 424}, true},
		{"507 (its storage full)", &dicomweb.HTTPError{StatusCode: 507}, true},
		{"501 answers", &dicomweb.HTTPError{StatusCode: 501}, false},
		{"429 answers", &dicomweb.HTTPError{StatusCode: 429}, false},
		{"429, back within the limiter's pause", &dicomweb.HTTPError{StatusCode: 429, RetryAfter: 5 * time.Minute}, false},
		{"429, back past the limiter's pause (a quota spent)", &dicomweb.HTTPError{StatusCode: 429, RetryAfter: time.Hour}, true},
		{"400", &dicomweb.HTTPError{StatusCode: 400}, false},
		{"401 after refresh", &dicomweb.HTTPError{StatusCode: 401}, false},
		{"token endpoint 503", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: &auth.TokenError{StatusCode: 503, Err: errors.New("unavailable")}}), true},
		{"token endpoint unreachable", &auth.TokenError{Err: refused}, true},
		{"token refused (401: a secret expired)", dicomwebNoAnswer(&auth.TokenError{StatusCode: 401, Err: errors.New("invalid_client")}), true},
		{"200 that is not DICOMweb (a proxy's page)", fmt.Errorf("STOW-RS request 1: %w", notDICOMwebAnswer(t)), true},
		{"partial", &Error{Class: Partial, Err: errors.New("2 refused")}, false},
		{"conflict", &Error{Class: Conflict, Err: errors.New("other content")}, false},
		{"source down", fmt.Errorf("list instances: %w", refused), false},
		{"source 500", &orthancapi.Error{StatusCode: 500}, false},
		{"shutdown", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: context.Canceled}), false},
		// Answered: AWS refused this host's clock, twice (dicomweb sends it again once).
		{"AWS refused the clock", &url.Error{Op: "Post", URL: "x", Err: fmt.Errorf("awssig: %w", auth.ErrClockSkew)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DestinationDown(tt.err); got != tt.want {
				t.Errorf("DestinationDown(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// studyMayFail tells the down failures a study may cause (a proxy
// timing out on a large study, a server failing on one) from those that
// say the destination whatever is sent.
func TestStudyMayFail(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "http://dest/studies", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	reset := &url.Error{Op: "Post", URL: "http://dest/studies", Err: &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"500", fmt.Errorf("batch 2: %w", &dicomweb.HTTPError{StatusCode: 500}), true},
		{"502", &dicomweb.HTTPError{StatusCode: 502}, true},
		{"504", &dicomweb.HTTPError{StatusCode: 504}, true},
		{"507 (too large for what its storage has left)", &dicomweb.HTTPError{StatusCode: 507}, true},
		{"connection reset", dicomwebNoAnswer(reset), true},
		{"stalled", dicomwebNoAnswer(fmt.Errorf("stow: request given up: %w", context.DeadlineExceeded)), true},
		{"0xA7xx", fmt.Errorf("STOW-RS request 1: %w", errOutOfResources), true},
		{"not DICOMweb", fmt.Errorf("STOW-RS request 1: %w", notDICOMwebAnswer(t)), true},
		{"503", &dicomweb.HTTPError{StatusCode: 503}, false},
		{"424", &dicomweb.HTTPError{StatusCode: 424}, false},
		{"connection refused", dicomwebNoAnswer(refused), false},
		{"proxy CONNECT failed", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: &net.OpError{Op: "proxyconnect", Err: errors.New("connection refused")}}), false},
		{"egress proxy answered CONNECT 502", proxyRefusedAnswer(t), false},
		{"TLS alert from the server (client certificate refused)", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}}), false},
		{"TLS handshake timeout", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: tlsHandshakeTimeoutErr(t)}), false},
		{"certificate unknown authority", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}), false},
		{"certificate for another host", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: x509.HostnameError{Host: "dest"}}), false},
		{"not TLS", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}}), false},
		// A 502 whose body quotes the time-out is still a 502.
		{"502 quoting a TLS handshake timeout", fmt.Errorf("%w: upstream: net/http: TLS handshake timeout", &dicomweb.HTTPError{StatusCode: 502}), true},
		{"no token", dicomwebNoAnswer(&url.Error{Op: "Post", URL: "x", Err: &auth.TokenError{StatusCode: 503, Err: errors.New("unavailable")}}), false},
		{"token endpoint unreachable", dicomwebNoAnswer(&auth.TokenError{Err: refused}), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := studyMayFail(tt.err); got != tt.want {
				t.Errorf("studyMayFail(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// tlsHandshakeTimeoutErr is net/http's own error for a TLS handshake
// that timed out: a server that accepts the connection and never answers
// the handshake.
func tlsHandshakeTimeoutErr(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			conns <- c // held open, silent, until the test ends
		}
	}()
	t.Cleanup(func() {
		select {
		case c := <-conns:
			c.Close()
		default:
		}
	})
	c := &http.Client{Transport: &http.Transport{TLSHandshakeTimeout: 50 * time.Millisecond}}
	_, err = c.Get("https://" + ln.Addr().String())
	if err == nil {
		t.Fatal("a silent server answered")
	}
	var ue *url.Error
	if !errors.As(err, &ue) || ue.Err.Error() != tlsHandshakeTimeout {
		t.Fatalf("got %v, want %q", err, tlsHandshakeTimeout)
	}
	return ue.Err
}

// notDICOMwebAnswer is the dicomweb client's error for a login page
// answered 200 to a STOW-RS request.
func notDICOMwebAnswer(t *testing.T) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html><title>Login</title></html>")
	}))
	defer srv.Close()
	c, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Store(t.Context(), []dicomweb.Part{{SOPInstanceUID: "1.2.3", Size: 1, Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("x")), nil }}})
	if err == nil {
		t.Fatal("a login page stored the instance")
	}
	return err
}

// proxyRefusedAnswer is the dicomweb client's error for a STOW-RS
// request whose egress proxy answered its CONNECT 502 (the proxy's
// upstream refused): net/http gives only the status text.
func proxyRefusedAnswer(t *testing.T) error {
	t.Helper()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer proxy.Close()
	pu, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dicomweb.New("https://archive.example/dicomweb", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Store(t.Context(), []dicomweb.Part{{SOPInstanceUID: "1.2.3", Size: 1, Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("x")), nil }}})
	if err == nil {
		t.Fatal("stored through a proxy that refused")
	}
	return err
}

// dicomwebNoAnswer is err as the dicomweb client returns a request that
// got no answer.
func dicomwebNoAnswer(err error) error { return errors.Join(err, dicomweb.ErrNoAnswer) }

type fakeProber struct {
	mu    sync.Mutex
	err   error
	calls int
}

func (p *fakeProber) Probe(context.Context, string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	return p.err
}

func (p *fakeProber) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

// The breaker opens after the consecutive failures, holds, probes after
// the interval (backing off while the probe fails), lets one trial
// through when the probe passes and closes when it is stored.
func TestBreakerOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := &dicomweb.HTTPError{StatusCode: 503}
		prober := &fakeProber{err: down}
		var changes []string
		b := newBreaker(breakerConfig{failures: 3, interval: 10 * time.Second, maxInterval: 30 * time.Second}, prober,
			func(from, to BreakerState) { changes = append(changes, to.String()) })
		defer b.stop()

		for i := range 2 {
			if b.record(down, 0, "1.2.3", 0) {
				t.Fatalf("failure %d held, before the threshold", i+1)
			}
		}
		if b.record(nil, 0, "", 0) {
			t.Fatal("a success held")
		}
		// A success reset the count: three more are needed.
		b.record(down, 0, "1.2.3", 0)
		b.record(&dicomweb.HTTPError{StatusCode: 400}, 0, "1.2.4", 0) // an answer: counts nothing
		b.record(down, 0, "1.2.3", 0)
		if !b.record(down, 0, "1.2.5", 0) {
			t.Fatal("the failure that opened the breaker was not held")
		}
		// It says why: the failure that opened it (the page shows it).
		if st := b.status(); st.state != BreakerOpen || st.lastDown != down.Error() || st.lastDownAt.IsZero() {
			t.Fatalf("state %v, last down %q at %v; want open, %q", st.state, st.lastDown, st.lastDownAt, down.Error())
		}

		// Workers stop pulling; three studies wait.
		pulled := make(chan struct{})
		go func() {
			_ = b.waitClosed(t.Context())
			close(pulled)
		}()
		type outcome struct{ trial trialToken }
		results := make(chan outcome, 3)
		for range 3 {
			go func() {
				trial, err := b.hold(t.Context(), 0)
				if err != nil {
					t.Error(err)
				}
				results <- outcome{trial}
			}()
		}
		// Probes at 10 s, then 20 s and 30 s later (capped), all failing.
		time.Sleep(10*time.Second + 20*time.Second + 30*time.Second - time.Millisecond)
		synctest.Wait()
		if prober.calls != 2 {
			t.Fatalf("%d probes before 60s, want 2", prober.calls)
		}
		if st := b.status(); st.lastDown != "probe: "+down.Error() {
			t.Errorf("last down %q after failed probes, want the probe's", st.lastDown)
		}
		select {
		case <-pulled:
			t.Fatal("pulled while open")
		case <-results:
			t.Fatal("a held study went on while open")
		default:
		}
		prober.set(nil) // the destination is back
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if prober.calls != 3 {
			t.Fatalf("%d probes at 60s, want 3", prober.calls)
		}
		r := <-results
		if r.trial == 0 {
			t.Fatal("the first study released was not the trial")
		}
		synctest.Wait()
		if len(results) != 0 {
			t.Fatal("more than one study went on while half-open")
		}
		// A worker's study that is no trial stays out while the trial is
		// out, not only while open.
		if s := b.status().state; s != BreakerHalfOpen || !b.shut() {
			t.Errorf("state %v, shut() = %v; want half-open and shut", s, b.shut())
		}
		if b.record(nil, r.trial, "1.2.3", 0) {
			t.Fatal("a stored trial held")
		}
		if b.shut() {
			t.Error("shut() after the trial closed the breaker")
		}
		for range 2 {
			if r := <-results; r.trial != 0 {
				t.Fatal("a second trial after the breaker closed")
			}
		}
		<-pulled
		want := []string{"open", "half-open", "closed"}
		if fmt.Sprint(changes) != fmt.Sprint(want) {
			t.Errorf("changes %v, want %v", changes, want)
		}
	})
}

// A refused probe (403: an identity that may store but not search) does
// not replace the failure that opened the breaker as the one the page
// shows: it pointed the operator at permissions during an outage.
func TestBreakerRefusedProbeKeepsTheOutagesReason(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := &dicomweb.HTTPError{StatusCode: 503}
		prober := &fakeProber{err: &dicomweb.HTTPError{StatusCode: 403}}
		b := newBreaker(breakerConfig{failures: 1, interval: 10 * time.Second, maxInterval: 30 * time.Second}, prober, nil)
		defer b.stop()
		b.record(down, 0, "1.2.3", 0)
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if prober.calls == 0 {
			t.Fatal("no probe")
		}
		if st := b.status(); st.lastDown != down.Error() {
			t.Errorf("last down %q after a refused probe, want the outage's %q", st.lastDown, down.Error())
		}
	})
}

// A trial that fails for a down destination re-opens the breaker. The
// study is held again, except after a probe that passed when it met a
// 500, a 502 or 504, or a connection reset: the study itself may be what
// fails (a proxy timing out on a large study), so it is settled (a
// delivery spent). A 503, a connection refused or no token after a
// passed probe says the destination is down while queries work: held.
func TestBreakerTrialFails(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "http://dest/studies", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	for _, tt := range []struct {
		name     string
		prober   Prober
		err      error
		wantHold bool
	}{
		{"no prober", nil, &dicomweb.HTTPError{StatusCode: 500}, true},
		{"prober vouched, 500", &fakeProber{}, &dicomweb.HTTPError{StatusCode: 500}, false},
		{"prober vouched, 504", &fakeProber{}, &dicomweb.HTTPError{StatusCode: 504}, false},
		{"prober vouched, connection reset", &fakeProber{}, dicomwebNoAnswer(errors.New("connection reset")), false},
		{"prober vouched, 503", &fakeProber{}, &dicomweb.HTTPError{StatusCode: 503}, true},
		{"prober vouched, connection refused", &fakeProber{}, dicomwebNoAnswer(refused), true},
		{"prober vouched, no token", &fakeProber{}, dicomwebNoAnswer(&auth.TokenError{StatusCode: 503, Err: errors.New("unavailable")}), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, tt.prober, nil)
				defer b.stop()
				if !b.record(tt.err, 0, "1.2.3", 0) {
					t.Fatal("not held")
				}
				trial, err := b.hold(t.Context(), 0)
				if err != nil || trial == 0 {
					t.Fatalf("hold = %v, %v; want the trial", trial, err)
				}
				if got := b.record(tt.err, trial, "1.2.3", 0); got != tt.wantHold {
					t.Errorf("failed trial held = %v, want %v", got, tt.wantHold)
				}
				if s := b.status().state; s != BreakerOpen {
					t.Errorf("state %v after a failed trial, want open", s)
				}
			})
		})
	}
}

// A destination whose queries keep failing (no QIDO-RS, a proxy that
// refuses GETs) while it stores: after probesBeforeTrial failed probes a
// held study goes as a trial anyway, and closes the breaker when stored.
// A 500 on such a trial, no probe having vouched, is held.
func TestBreakerTrialWithoutQueries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prober := &fakeProber{err: &dicomweb.HTTPError{StatusCode: 502}}
		b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, prober, nil)
		defer b.stop()
		serverError := &dicomweb.HTTPError{StatusCode: 500}
		b.record(serverError, 0, "1.2.3", 0)
		var trial trialToken
		for round := range 2 {
			var err error
			trial, err = b.hold(t.Context(), 0)
			if err != nil || trial == 0 {
				t.Fatalf("round %d: hold = %v, %v; want the trial", round, trial, err)
			}
			if prober.calls != probesBeforeTrial*(round+1) {
				t.Errorf("round %d: a trial after %d probes, want %d", round, prober.calls, probesBeforeTrial*(round+1))
			}
			if round == 0 && !b.record(serverError, trial, "1.2.3", 0) {
				t.Fatal("a 500 on a trial no probe vouched for was settled")
			}
		}
		b.record(nil, trial, "1.2.3", 0)
		if s := b.status().state; s != BreakerClosed {
			t.Errorf("state %v after a stored trial, want closed", s)
		}
	})
}

// queriesDownBreaker is a breaker opened by a 500, whose probes fail
// (502), counting the trials it pulls from the queue. In a synctest
// bubble.
func queriesDownBreaker(t *testing.T) (*breaker, *int) {
	b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second},
		&fakeProber{err: &dicomweb.HTTPError{StatusCode: 502}}, nil)
	t.Cleanup(b.stop)
	pulls := new(int)
	b.mu.Lock()
	b.pullTrial = func() { *pulls++ }
	b.mu.Unlock()
	b.record(&dicomweb.HTTPError{StatusCode: 500}, 0, "1.2.3", 0)
	return b, pulls
}

// Queries that keep failing while nothing is held: the trial is pulled
// from the queue, so that a destination whose queries fail while it
// stores does not stay shut until a restart. Before, the breaker probed
// on for good without a trial (the workers do not pull while it is open).
// The queue empty, it stays open; a pulled trial that fails is held, not
// spent; one stored closes it.
func TestBreakerTrialWithoutQueriesNothingHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, pulls := queriesDownBreaker(t) // the study is retried, nothing held
		serverError := &dicomweb.HTTPError{StatusCode: 500}

		pulled := func(want int) {
			t.Helper()
			time.Sleep(probesBeforeTrial*time.Second + time.Second/2)
			synctest.Wait()
			b.mu.Lock()
			defer b.mu.Unlock()
			if *pulls != want || b.state != BreakerHalfOpen {
				t.Fatalf("%d trials pulled, breaker %v; want %d, half-open", *pulls, b.state, want)
			}
		}
		pulled(1)
		b.pulledTrialEnded(false, false) // the queue is empty
		if s := b.status().state; s != BreakerOpen {
			t.Fatalf("nothing to try while queries fail: breaker %v, want open", s)
		}
		pulled(2)
		trial, hold := b.pulledTrialArrived()
		if trial == 0 || hold {
			t.Fatalf("pulled trial arrived: trial %v, hold %v; want the trial", trial, hold)
		}
		if !b.record(serverError, trial, "1.2.4", 7) {
			t.Fatal("a 500 on a pulled trial no probe vouched for was settled (spent)")
		}
		b.pulledTrialEnded(true, true)
		b.record(nil, 0, "1.2.4", 7)
		if s := b.status().state; s != BreakerClosed {
			t.Errorf("state %v after a stored trial, want closed", s)
		}
	})
}

// A trial no probe vouched for (queries fail) that meets a 500 is held
// without spending, and marked: the next trial is another study (pulled,
// none else held). Before, held and unmarked, it was the trial again
// every 4 probes, for good: a study that makes the server fail kept a
// destination that stores shut, its queue unmoved.
func TestBreakerUnvouchedTrialFailureMarked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, pulls := queriesDownBreaker(t)
		serverError := &dicomweb.HTTPError{StatusCode: 500}
		time.Sleep(probesBeforeTrial*time.Second + time.Second/2)
		synctest.Wait()
		trial, hold := b.pulledTrialArrived()
		if trial == 0 || hold {
			t.Fatalf("pulled trial arrived: trial %v, hold %v; want the trial", trial, hold)
		}
		if !b.record(serverError, trial, "1.2.7", 7) {
			t.Fatal("a 500 on a trial no probe vouched for was settled (spent)")
		}
		held := make(chan trialToken, 1)
		go func() {
			trial, _ := b.hold(t.Context(), 7)
			held <- trial
		}()
		synctest.Wait()
		b.pulledTrialEnded(true, true)
		time.Sleep(probesBeforeTrial*time.Second + time.Second/2)
		synctest.Wait()
		select {
		case <-held:
			t.Fatal("the study whose trial failed is the trial again")
		default:
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if *pulls != 2 {
			t.Errorf("%d trials pulled, want 2: the next trial is another study", *pulls)
		}
	})
}

// A trial a probe vouched for that fails whatever the class (here a
// 503) is marked: the next trial is another study, pulled from the
// queue, none other held. Before, only a failure that may be the study's
// own was marked: held again, the same study was the trial after every
// probe, and a study answered so whatever is sent kept the queue waiting.
func TestBreakerVouchedTrialFailureMarked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, &fakeProber{}, nil)
		defer b.stop()
		pulls := 0
		b.mu.Lock()
		b.pullTrial = func() { pulls++ }
		b.mu.Unlock()
		unavailable := &dicomweb.HTTPError{StatusCode: 503}
		trials := make(chan trialToken, 2)
		hold := func() {
			go func() {
				trial, _ := b.hold(t.Context(), 7)
				trials <- trial
			}()
		}
		b.record(unavailable, 0, "1.2.7", 7)
		hold()
		time.Sleep(time.Second + time.Second/2) // the probe passes: it is the trial
		synctest.Wait()
		trial := <-trials
		if trial == 0 {
			t.Fatal("the held study was not the trial")
		}
		if !b.record(unavailable, trial, "1.2.7", 7) {
			t.Fatal("a trial failing with 503 was settled (spent)")
		}
		hold()
		time.Sleep(time.Second + time.Second/2) // the next probe passes
		synctest.Wait()
		select {
		case <-trials:
			t.Fatal("the study whose trial failed is the trial again")
		default:
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if pulls != 1 {
			t.Errorf("%d trials pulled, want 1: the next trial is another study", pulls)
		}
	})
}

// A trial that failed before any request reached the destination (its
// source) says nothing of it: the next held study is the trial at once,
// the breaker still half-open and its probe interval not doubled. Before,
// the breaker opened again, doubled its wait and logged a failed trial.
func TestBreakerTrialThatSaidNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Minute}, &fakeProber{}, nil)
		defer b.stop()
		b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.1", 1)
		type heldTrial struct {
			seq   uint64
			trial trialToken
		}
		trials := make(chan heldTrial, 2)
		for _, seq := range []uint64{1, 2} {
			go func() {
				if trial, err := b.hold(t.Context(), seq); err == nil && trial != 0 {
					trials <- heldTrial{seq, trial}
				}
			}()
			synctest.Wait()
		}
		time.Sleep(time.Second) // the probe passes: the oldest is the trial
		synctest.Wait()
		first := <-trials
		if first.seq != 1 {
			t.Fatalf("trial %d, want 1", first.seq)
		}
		b.trialSaidNothing(first.trial, false) // its source failed
		synctest.Wait()
		select {
		case next := <-trials:
			if next.seq != 2 {
				t.Fatalf("next trial %d, want 2", next.seq)
			}
		default:
			t.Fatal("no next trial after one that said nothing")
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.state != BreakerHalfOpen || b.wait != time.Second {
			t.Errorf("breaker %v, probe interval %v; want half-open, 1s", b.state, b.wait)
		}
	})
}

// A pulled trial that says nothing (its rules select none of it, its
// source fails) frees its place among the pulled trials before the next
// is chosen: at FORWARDER_CONCURRENCY 1 (one place), with queries failing
// and nothing held, the next is pulled at once. Before, the place was
// still taken: the breaker opened again, its wait doubled, and the next
// trial waited 4 failed probes.
func TestBreakerPulledTrialThatSaidNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, pulls := queriesDownBreaker(t)
		b.mu.Lock()
		b.maxPulled = 1
		b.mu.Unlock()
		time.Sleep(probesBeforeTrial*time.Second + time.Second/2)
		synctest.Wait()
		trial, hold := b.pulledTrialArrived()
		if trial == 0 || hold {
			t.Fatalf("pulled trial arrived: trial %v, hold %v; want the trial", trial, hold)
		}
		b.trialSaidNothing(trial, true)
		b.mu.Lock()
		defer b.mu.Unlock()
		if *pulls != 2 || b.state != BreakerHalfOpen {
			t.Errorf("%d trials pulled, breaker %v; want the next pulled at once, half-open", *pulls, b.state)
		}
	})
}

// A pulled trial that fails at its source hands the trial over, but
// while it is held for its source it is still in hand and keeps its
// place among the pulled trials: at FORWARDER_CONCURRENCY 1 no second
// trial is pulled beside it, and its place is freed once it leaves.
// Before, the hand-over freed its place, the next trial was pulled into
// it, and with the first held two pulled trials were in hand, one past
// the bound.
func TestBreakerPulledTrialHeldForItsSource(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusBadGateway) // its queries too
	}))
	t.Cleanup(srv.Close)
	src := &failingSource{memSource: newMemSource(2)}
	src.fail.Store(true)
	obs := &recordingObserver{}
	f := newForwarder(t, src.memSource, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.SourceProbe = func(context.Context, string) error {
			return &orthancapi.Error{Method: http.MethodGet, Path: "/system", StatusCode: http.StatusServiceUnavailable}
		}
		o.Observer = obs
		o.Concurrency = 1
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Hour, Prober: newProber(t, srv.URL)}
	})
	b := f.breaker
	pulls := 0
	b.mu.Lock()
	b.pullTrial = func() { pulls++ }
	b.maxPulled = 1 // FORWARDER_CONCURRENCY 1 (startTrialPulls)
	b.mu.Unlock()
	inHand := func() (pulled, counted int, trialOut bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		return pulls, b.pulledTrials, b.trial != 0 || b.pulling
	}
	// Open, nothing held, its queries failing: after probesBeforeTrial
	// probes the trial is pulled from the queue.
	b.record(&dicomweb.HTTPError{StatusCode: 502}, 0, "1.2.8", 8)
	for range probesBeforeTrial {
		b.probe()
	}
	if pulled, counted, _ := inHand(); pulled != 1 || counted != 1 {
		t.Fatalf("%d trials pulled, %d counted in hand; want 1, 1", pulled, counted)
	}
	pt := &pulledTrial{}
	ctx, cancel := context.WithCancel(context.WithValue(t.Context(), pulledTrialKey{}, pt))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := f.transferGuarded(ctx, &Attempt{Event: testEvent(), Seq: 10}, slog.New(slog.DiscardHandler))
		done <- err
	}()
	waitHold(t, obs, done, "held: source Orthanc unreachable")
	if pulled, counted, trialOut := inHand(); pulled != 1 || counted != 1 || trialOut {
		t.Errorf("held for its source: %d trials pulled, %d counted in hand, a trial out %v; want 1, 1 (at most FORWARDER_CONCURRENCY), handed over",
			pulled, counted, trialOut)
	}
	cancel()
	<-done
	if !pt.released { // as runPulledTrial, once the event is settled
		b.pulledTrialEnded(true, pt.used)
	}
	if _, counted, _ := inHand(); counted != 0 {
		t.Errorf("%d pulled trials counted in hand once it left, want 0", counted)
	}
}

// A study held for its source Orthanc while the destination's breaker
// opened is held for the destination when its source answers again: no
// request reaches the destination until the breaker closes, then it is
// stored. Before, it went to the destination at once, past the open
// breaker, and was held only after that request failed.
func TestBreakerStudyBackFromItsSourceWaitsForTheDestination(t *testing.T) {
	var storeDown, sourceDown atomic.Bool
	storeDown.Store(true)
	sourceDown.Store(true)
	var posts atomic.Int32
	var k sink
	stores := k.handler(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet:
			http.Error(w, "down", http.StatusBadGateway) // its queries
		case storeDown.Load():
			posts.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
		default:
			posts.Add(1)
			stores.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	src := &failingSource{memSource: newMemSource(2)}
	src.fail.Store(true)
	obs := &recordingObserver{}
	f := newForwarder(t, src.memSource, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.SourceProbe = func(context.Context, string) error {
			if sourceDown.Load() {
				return &orthancapi.Error{Method: http.MethodGet, Path: "/system", StatusCode: http.StatusServiceUnavailable}
			}
			return nil
		}
		o.Observer = obs
		o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Hour, Prober: newProber(t, srv.URL)}
	})
	b := f.breaker
	done := make(chan error, 1)
	go func() {
		_, err := f.transferGuarded(t.Context(), &Attempt{Event: testEvent(), Seq: 10}, slog.New(slog.DiscardHandler))
		done <- err
	}()
	waitHold(t, obs, done, "held: source Orthanc unreachable")
	// Another study's failure opens the breaker; then the source answers.
	b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.8", 8)
	src.fail.Store(false)
	sourceDown.Store(false)
	waitHold(t, obs, done, "held: destination down (circuit breaker open)")
	if n := posts.Load(); n != 0 {
		t.Errorf("%d STOW-RS requests while the breaker was open, want none", n)
	}
	// The destination is back: a study in flight is stored, and the held
	// one goes.
	storeDown.Store(false)
	b.record(nil, 0, "1.2.9", 9)
	waitStored(t, done, &posts)
}

// waitHold waits until obs was told the hold why, failing the test if
// the transfer ends (done) first or heldWait passes.
func waitHold(t *testing.T, obs *recordingObserver, done <-chan error, why string) {
	t.Helper()
	deadline := time.Now().Add(heldWait)
	for {
		obs.mu.Lock()
		held := slices.Contains(obs.holds, why)
		obs.mu.Unlock()
		if held {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the study ended (%v) before %q", err, why)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %q after %v", why, heldWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitStored waits for the transfer (done) to end stored, after STOW-RS
// requests (posts).
func waitStored(t *testing.T, done <-chan error, posts *atomic.Int32) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil || posts.Load() == 0 {
			t.Errorf("%v after %d requests, want stored", err, posts.Load())
		}
	case <-time.After(heldWait):
		t.Fatal("the study did not go once the breaker was closed")
	}
}

// A study whose worker passed waitClosed before the breaker opened (it
// then waited in Next for an event) is held before any request while the
// breaker is open, and goes once it closes; closed, it goes at once.
// Before, it went straight to the destination, beside the trial in
// half-open.
func TestBreakerStudyPulledWhileShutIsHeldFirst(t *testing.T) {
	for _, tt := range []struct {
		name     string
		open     bool // another study's failure opened the breaker first
		wantHeld bool
	}{
		{"breaker open", true, true},
		{"breaker closed", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, posts := postCountingSink(t)
			obs := &recordingObserver{}
			f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
				o.Observer = obs
				o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Hour, Prober: newProber(t, srv.URL)}
			})
			b := f.breaker
			if tt.open {
				b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.8", 8)
			}
			done := make(chan error, 1)
			go func() {
				_, err := f.transferGuarded(t.Context(), &Attempt{Event: testEvent(), Seq: 10}, slog.New(slog.DiscardHandler))
				done <- err
			}()
			if tt.wantHeld {
				waitHold(t, obs, done, "held: destination down (circuit breaker open)")
				if n := posts.Load(); n != 0 {
					t.Errorf("%d STOW-RS requests while the breaker was open, want none", n)
				}
				b.record(nil, 0, "1.2.9", 9) // a study in flight stored: closed
			}
			waitStored(t, done, posts)
		})
	}
}

// A pulled trial that comes once the breaker opened again is held, not
// sent, also while the forwarder stops: its hold ends at once, with no
// request to a destination that is down.
func TestBreakerLatePulledTrialWhileStopping(t *testing.T) {
	b := newBreaker(breakerConfig{failures: 1, interval: time.Minute, maxInterval: time.Minute}, &fakeProber{}, nil)
	b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.3", 0)
	b.stop()
	if trial, hold := b.pulledTrialArrived(); trial != 0 || !hold {
		t.Errorf("pulled trial arrived while stopping: trial %v, hold %v; want held", trial, hold)
	}
	if _, err := b.hold(t.Context(), 9); !errors.Is(err, errShutdown) {
		t.Errorf("hold while stopping: %v, want errShutdown", err)
	}
}

// A trial that ends with an answer that is no outage (a 4xx, a source
// error) closes the breaker: the others need not wait for it.
func TestBreakerTrialAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, nil, nil)
		defer b.stop()
		b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.3", 0)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		trial, err := b.hold(ctx, 0)
		if trial == 0 || err != nil {
			t.Fatalf("hold = %v, %v", trial, err)
		}
		if b.record(&dicomweb.HTTPError{StatusCode: 400}, trial, "1.2.3", 0) {
			t.Fatal("a 400 held")
		}
		if err := b.waitClosed(ctx); err != nil {
			t.Fatalf("still not closed: %v", err)
		}
	})
}

// Off, the breaker never holds nor stops a pull.
func TestBreakerOff(t *testing.T) {
	var b *breaker
	if b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "x", 0) {
		t.Fatal("a nil breaker held")
	}
	if err := b.waitClosed(t.Context()); err != nil {
		t.Fatal(err)
	}
	off := newBreaker(breakerConfig{}, nil, nil)
	for range 10 {
		if off.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "x", 0) {
			t.Fatal("a breaker with failures 0 held")
		}
	}
}

// Shutdown ends the holds at once: the studies go back to the queue.
func TestBreakerStopEndsHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBreaker(breakerConfig{failures: 1, interval: time.Minute, maxInterval: time.Minute}, nil, nil)
		b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.3", 0)
		done := make(chan error, 1)
		go func() {
			_, err := b.hold(t.Context(), 0)
			done <- err
		}()
		synctest.Wait()
		b.stop()
		if err := <-done; !errors.Is(err, errShutdown) {
			t.Fatalf("hold after stop = %v, want errShutdown", err)
		}
		if _, err := b.hold(t.Context(), 0); !errors.Is(err, errShutdown) {
			t.Fatalf("hold of a stopped breaker = %v, want errShutdown", err)
		}
	})
}

// selectNothing is a Router for which no study is for the destination.
type selectNothing struct{}

func (selectNothing) Select(context.Context, string, string, []orthancapi.Instance) ([]orthancapi.Instance, error) {
	return nil, nil
}

// A study the destination's rules skip never reaches it: during an
// outage it neither resets the count of failures nor closes the open
// breaker (most events are skipped for a destination that takes one
// modality); one that comes while the breaker is open is held first, as
// any study.
func TestBreakerIgnoresSkippedStudies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	src := newDICOMSource(t, 2)
	var router Router // nil: every study selected
	obs := &cancelOnHold{}
	f := newForwarder(t, nil, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.Breaker = BreakerOptions{Failures: 2, ProbeInterval: time.Hour}
		o.Router = routerFunc(func() Router { return router })
		o.Observer = obs
	})
	log := slog.New(slog.DiscardHandler)
	attempt := func(selected bool) error {
		t.Helper()
		router = nil
		if !selected {
			router = selectNothing{}
		}
		// A held study waits until its context ends: once held (a
		// time-out instead could end a slow attempt before its answer).
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		obs.mu.Lock()
		obs.cancel = cancel
		obs.mu.Unlock()
		_, err := f.transferGuarded(ctx, &Attempt{Event: testEvent()}, log)
		return err
	}
	if err := attempt(true); err == nil {
		t.Fatal("a study into a destination answering 503 was stored")
	}
	if err := attempt(false); err != nil {
		t.Fatalf("skipped study: %v", err)
	}
	if st := f.Status(); st.Failures != 1 || st.State != BreakerClosed.String() {
		t.Fatalf("after a failure and a skipped study: %+v, want 1 failure, closed", st)
	}
	// The second failure opens the breaker: the study is held (until the
	// context ends: the probe is an hour away).
	if err := attempt(true); err == nil {
		t.Fatal("a study into a destination answering 503 was stored")
	}
	if st := f.Status(); st.State != BreakerOpen.String() {
		t.Fatalf("after two failures: %+v, want open", st)
	}
	// One that comes while it is open is held before any request (its
	// worker passed waitClosed before the breaker opened), skipped or
	// not: what its rules select is known only once it is read.
	if err := attempt(false); !errors.Is(err, context.Canceled) {
		t.Fatalf("skipped study while open: %v, want held until its context ended", err)
	}
	if st := f.Status(); st.State != BreakerOpen.String() {
		t.Errorf("a skipped study changed the open breaker: %+v", st)
	}
}

// cancelOnHold ends the context of the attempt it is given once the
// study is held.
type cancelOnHold struct {
	noObserver
	mu     sync.Mutex
	cancel context.CancelFunc
}

func (o *cancelOnHold) Held(_ *Attempt, why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if why != "" && o.cancel != nil {
		o.cancel()
	}
}

// routerFunc selects through the Router that get returns now (nil: all).
type routerFunc func() Router

func (r routerFunc) Select(ctx context.Context, source, studyID string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
	if rt := r(); rt != nil {
		return rt.Select(ctx, source, studyID, in)
	}
	return in, nil
}

// blockingProber answers each probe when release is sent its answer, and
// counts the probes out at once.
type blockingProber struct {
	release       chan error
	out, mostOut  atomic.Int32
	started, ends atomic.Int32
}

func (p *blockingProber) Probe(ctx context.Context, _ string) error {
	n := p.out.Add(1)
	defer p.out.Add(-1)
	for {
		m := p.mostOut.Load()
		if n <= m || p.mostOut.CompareAndSwap(m, n) {
			break
		}
	}
	p.started.Add(1)
	defer p.ends.Add(1)
	select {
	case err := <-p.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestBreakerProbeOfAnEarlierOutage: a probe still out when the breaker
// closed and opened again neither runs beside the next one nor decides the
// new outage with its late answer.
func TestBreakerProbeOfAnEarlierOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := &dicomweb.HTTPError{StatusCode: 503}
		prober := &blockingProber{release: make(chan error)}
		b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, prober, nil)
		defer b.stop()

		b.record(down, 0, "1.2.3", 0)
		time.Sleep(time.Second)
		synctest.Wait()
		if prober.started.Load() != 1 {
			t.Fatalf("%d probes after the interval, want 1", prober.started.Load())
		}
		// A study in flight is stored: closed; then a new outage opens it.
		b.record(nil, 0, "", 0)
		b.record(down, 0, "1.2.4", 0)
		go func() { _, _ = b.hold(t.Context(), 0) }()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := prober.mostOut.Load(); n != 1 {
			t.Fatalf("%d probes out at once, want 1", n)
		}
		// The first probe's answer comes now: it was about the first outage.
		prober.release <- nil
		synctest.Wait()
		if s := b.status().state; s != BreakerOpen {
			t.Fatalf("state %v after a stale probe's success, want still open", s)
		}
		// The next probe asks about this outage.
		time.Sleep(time.Second)
		synctest.Wait()
		if prober.started.Load() != 2 {
			t.Fatalf("%d probes, want a second one for the new outage", prober.started.Load())
		}
		prober.release <- nil
		synctest.Wait()
		if s := b.status().state; s != BreakerHalfOpen {
			t.Fatalf("state %v after the new probe's success, want half-open", s)
		}
	})
}

// A trial still out when its half-open ended (a study in flight was
// stored: closed; then open and half-open again) counts, when it ends,
// as an ordinary study: it neither decides the state nor frees the trial
// of the later half-open, which went out on its own. Before, the later
// half-open's trial waited for it, and its end counted as that trial's:
// its failure opened a closed breaker below STOW_BREAKER_FAILURES or the
// later half-open, its 4xx closed that, and its saying nothing let a
// second trial out.
func TestBreakerTrialOfAnEarlierHalfOpen(t *testing.T) {
	down := &dicomweb.HTTPError{StatusCode: 503}
	for _, tt := range []struct {
		name string
		// then is the state when the earlier trial ends: closed, or
		// half-open again.
		then BreakerState
		// err is its outcome; saysNothing: it reached no destination.
		err         error
		saysNothing bool
		wantHold    bool
	}{
		{"fails once closed", BreakerClosed, down, false, false},
		{"fails in the next half-open", BreakerHalfOpen, down, false, true},
		{"answered in the next half-open", BreakerHalfOpen, &dicomweb.HTTPError{StatusCode: 400}, false, false},
		{"says nothing in the next half-open", BreakerHalfOpen, nil, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBreaker(breakerConfig{failures: 2, interval: time.Second, maxInterval: time.Minute}, &fakeProber{}, nil)
				defer b.stop()
				type heldTrial struct {
					seq   uint64
					trial trialToken
				}
				trials := make(chan heldTrial, 3)
				holdStudy := func(seq uint64) {
					go func() {
						if trial, err := b.hold(t.Context(), seq); err == nil && trial != 0 {
							trials <- heldTrial{seq, trial}
						}
					}()
					synctest.Wait()
				}
				openHolding := func(seqs ...uint64) {
					t.Helper()
					b.record(down, 0, fmt.Sprintf("1.2.%d", seqs[0]), seqs[0])
					if !b.record(down, 0, fmt.Sprintf("1.2.%d", seqs[0]), seqs[0]) {
						t.Fatal("not held after 2 failures")
					}
					for _, seq := range seqs {
						holdStudy(seq)
					}
					time.Sleep(time.Second) // the probe passes
					synctest.Wait()
				}
				openHolding(1)
				var earlier heldTrial
				select {
				case earlier = <-trials:
				default:
					t.Fatal("no trial after the probe passed")
				}
				// Studies in flight are stored while the trial is out:
				// closed, and settled (else the first failure opens it).
				b.record(nil, 0, "1.2.9", 9)
				b.record(nil, 0, "1.2.10", 10)
				var current heldTrial
				if tt.then == BreakerHalfOpen {
					openHolding(2, 3)
					select {
					case current = <-trials:
					default:
						t.Error("the next half-open's trial waits for the earlier one's end")
					}
				}

				hold := false
				if tt.saysNothing {
					b.trialSaidNothing(earlier.trial, false)
				} else {
					hold = b.record(tt.err, earlier.trial, "1.2.1", 1)
				}
				synctest.Wait()
				if hold != tt.wantHold {
					t.Errorf("the earlier trial held %v, want %v", hold, tt.wantHold)
				}
				b.mu.Lock()
				defer b.mu.Unlock()
				if b.state != tt.then || b.trial != current.trial || len(trials) != 0 {
					t.Errorf("after the earlier trial ended: breaker %v, trial out %v, %d more let out; want %v, %v (study %d's), none",
						b.state, b.trial, len(trials), tt.then, current.trial, current.seq)
				}
				if tt.then == BreakerClosed && b.failures != 1 {
					t.Errorf("%d failures counted, want 1 (of 2)", b.failures)
				}
			})
		})
	}
}

// trialBench runs studies against a breaker as the workers and
// transferGuarded do: a worker pulls a study when the breaker is closed;
// an attempt is recorded; held, it is sent again when closed or as the
// trial; a failure settled goes back to the queue, spending a delivery,
// or is dead-lettered at its last. The destination's answer to study seq
// is what answer says now.
type trialBench struct {
	t *testing.T
	// ctx ends the workers and holds (end).
	ctx           context.Context
	cancel        context.CancelFunc
	b             *breaker
	answer        func(seq uint64) error
	maxDeliveries int
	mu            sync.Mutex
	delivered     map[uint64]int
	stored        map[uint64]bool
	deadLetters   map[uint64]bool
	// queue is what a pull takes, oldest first.
	queue []uint64
	pulls int // trial pulls that found a study
	// retries counts the failures settled for a retry: each spent a
	// delivery, whether or not the study was delivered again since.
	retries int
	// spentBy counts them by study.
	spentBy map[uint64]int
}

func newTrialBench(t *testing.T, b *breaker, maxDeliveries int, answer func(uint64) error) *trialBench {
	ctx, cancel := context.WithCancel(t.Context())
	tb := &trialBench{t: t, ctx: ctx, cancel: cancel, b: b, answer: answer, maxDeliveries: maxDeliveries,
		delivered: map[uint64]int{}, stored: map[uint64]bool{}, deadLetters: map[uint64]bool{}, spentBy: map[uint64]int{}}
	b.mu.Lock()
	b.pullTrial = func() { go tb.pulledTrial() }
	b.mu.Unlock()
	return tb
}

// end stops the workers and the holds.
func (tb *trialBench) end() {
	tb.b.stop()
	tb.cancel()
}

func (tb *trialBench) add(seqs ...uint64) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.queue = append(tb.queue, seqs...)
}

func (tb *trialBench) pull() (uint64, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.queue) == 0 {
		return 0, false
	}
	seq := tb.queue[0]
	tb.queue = tb.queue[1:]
	tb.delivered[seq]++
	return seq, true
}

// worker pulls while the breaker is closed, until the test ends.
func (tb *trialBench) worker() {
	ctx := tb.ctx
	for ctx.Err() == nil && tb.b.waitClosed(ctx) == nil {
		if seq, ok := tb.pull(); ok {
			tb.run(seq, 0)
			continue
		}
		sleep(ctx, time.Second)
	}
}

// run is one delivery of study seq; it returns once it is settled.
func (tb *trialBench) run(seq uint64, trial trialToken) {
	for {
		err := tb.answer(seq)
		if !tb.b.record(err, trial, fmt.Sprintf("1.2.%d", seq), seq) {
			tb.mu.Lock()
			defer tb.mu.Unlock()
			switch {
			case err == nil:
				tb.stored[seq] = true
			case tb.delivered[seq] >= tb.maxDeliveries:
				tb.deadLetters[seq] = true
			default:
				tb.retries++
				tb.spentBy[seq]++
				tb.queue = append(tb.queue, seq)
			}
			return
		}
		var herr error
		if trial, herr = tb.b.hold(tb.ctx, seq); herr != nil {
			return
		}
	}
}

// pulledTrial is runPulledTrial against the bench's queue.
func (tb *trialBench) pulledTrial() {
	seq, ok := tb.pull()
	if !ok {
		tb.b.pulledTrialEnded(false, false)
		return
	}
	tb.mu.Lock()
	tb.pulls++
	tb.mu.Unlock()
	trial, holdFirst := tb.b.pulledTrialArrived()
	if holdFirst {
		var err error
		if trial, err = tb.b.hold(tb.ctx, seq); err != nil {
			tb.b.pulledTrialEnded(true, true)
			return
		}
	}
	tb.run(seq, trial)
	tb.b.pulledTrialEnded(true, true)
}

// spent is the deliveries spent by failures: those past each study's
// first.
func (tb *trialBench) spent() (total, most int) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for seq, n := range tb.delivered {
		if !tb.stored[seq] && !tb.deadLetters[seq] {
			n-- // its current delivery
		}
		if tb.stored[seq] {
			n--
		}
		total += max(n, 0)
		most = max(most, n)
	}
	return total, most
}

// A destination whose queries answer while its store refuses every study
// (storage full: 0xA7xx, a 500, a firewall's page to POSTs) for 12 hours:
// every probe passes and a trial follows, a few hundred. Before, each
// failed trial spent its study's delivery, and studies were dead-lettered
// in waves. Now only the first does; the later trials go to studies that
// have not failed one (held first, then pulled from the queue, up to
// maxPulledTrials), and are held. When the store is back, the next trial
// closes the breaker and the held studies and the queue are stored.
func TestBreakerStoreDownWhileQueriesAnswer(t *testing.T) {
	for _, tt := range []struct {
		name string
		down error
		// most deliveries spent in all: the failure before the one
		// that opens (STOW_BREAKER_FAILURES-1), the first failed trial
		// when the failure may be the study's own, and a worker's
		// failure racing the opening.
		most int
	}{
		{"500", &dicomweb.HTTPError{StatusCode: 500}, 3},
		{"0xA7xx", fmt.Errorf("STOW-RS request 1: %w", errOutOfResources), 3},
		{"507", &dicomweb.HTTPError{StatusCode: 507}, 3},
		{"not DICOMweb", fmt.Errorf("STOW-RS request 1: %w", dicomweb.ErrNotDICOMweb), 3},
		{"504 (a proxy timing out)", &dicomweb.HTTPError{StatusCode: 504}, 3},
		{"connection reset", dicomwebNoAnswer(errors.New("read: connection reset by peer")), 3},
		// Never the study's own: only the failure before the opening.
		{"503", &dicomweb.HTTPError{StatusCode: 503}, 1},
		{"424", &dicomweb.HTTPError{StatusCode: 424}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var storeDown atomic.Bool
				storeDown.Store(true)
				prober := &fakeProber{} // QIDO-RS answers throughout
				b := newBreaker(breakerConfig{failures: 2, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, prober, nil)
				defer b.stop()
				tb := newTrialBench(t, b, 10, func(uint64) error {
					if storeDown.Load() {
						return tt.down
					}
					return nil
				})
				for seq := uint64(1); seq <= 100; seq++ {
					tb.add(seq)
				}
				defer tb.end()
				for range 4 {
					go tb.worker()
				}
				time.Sleep(12 * time.Hour)
				synctest.Wait()
				total, most := tb.spent()
				// The failures before the breaker opens spend, as every
				// failure before; then the first failed trial.
				if total > tt.most || most > 1 || len(tb.deadLetters) != 0 {
					t.Errorf("%d deliveries spent over 12 h (%d probes), at most %d by a study, %d dead letters; want at most %d, 1 by a study, none",
						total, prober.calls, most, len(tb.deadLetters), tt.most)
				}
				if s := b.status().state; s == BreakerClosed {
					t.Errorf("breaker %v while the store is down", s)
				}

				storeDown.Store(false)
				time.Sleep(30 * time.Minute)
				synctest.Wait()
				tb.mu.Lock()
				stored := len(tb.stored)
				tb.mu.Unlock()
				if st := b.status(); st.state != BreakerClosed || st.held != 0 || stored != 100 {
					t.Errorf("breaker %v holding %d, %d studies stored once the store was back; want closed, none, 100", st.state, st.held, stored)
				}
			})
		})
	}
}

// After a close, until a study is stored, the first down failure opens
// the breaker again: its study is held, unless its failure may be its
// own (a 500), which spends its delivery as before, so that a study that
// makes the server fail, first to go at every close, cannot hold itself
// and the destination shut. A study stored after the close ends it, and
// so does settleWindow without a failure (a quiet destination) after a
// close on a stored study; a close without one settles until a store. So for
// every close, stored or not (a probe that passes with nothing held,
// a trial answered 4xx): before, those left the outage's failures
// counted, so a 500 after them was held, and the log's after_failures
// said the outage's count, not 1.
func TestBreakerReopensOnTheFirstFailureAfterAClose(t *testing.T) {
	closes := []struct {
		name   string
		stored bool // the close was on a stored study: settleWindow bounds its settling
		close  func(t *testing.T, b *breaker)
	}{
		{"stored study", true, func(t *testing.T, b *breaker) {
			b.record(nil, 0, "1.2.2", 2) // a study in flight
		}},
		{"probe with nothing held", false, func(t *testing.T, b *breaker) {
			time.Sleep(time.Minute)
			synctest.Wait()
		}},
		{"trial answered 4xx", false, func(t *testing.T, b *breaker) {
			trials := make(chan trialToken, 1)
			go func() {
				trial, _ := b.hold(t.Context(), 1)
				trials <- trial
			}()
			time.Sleep(time.Minute)
			synctest.Wait()
			b.record(&dicomweb.HTTPError{StatusCode: 400}, <-trials, "1.2.1", 1)
		}},
	}
	for _, c := range closes {
		for _, tt := range []struct {
			name        string
			threshold   int           // STOW_BREAKER_FAILURES
			storedAfter bool          // a study was stored after the close
			later       time.Duration // from the close to the failure
			err         error
			wantHold    bool
			wantState   BreakerState
		}{
			{"503", 3, false, 0, &dicomweb.HTTPError{StatusCode: 503}, true, BreakerOpen},
			{"500", 3, false, 0, &dicomweb.HTTPError{StatusCode: 500}, false, BreakerOpen},
			// The 500 would open the breaker without the settling too:
			// it is spent all the same, or held it would go first at
			// every close.
			{"500 with a threshold of 1", 1, false, 0, &dicomweb.HTTPError{StatusCode: 500}, false, BreakerOpen},
			{"503 after a study stored", 3, true, 0, &dicomweb.HTTPError{StatusCode: 503}, false, BreakerClosed},
			// A quiet destination: a blip long after the close, nothing
			// stored meanwhile, no longer reopens it for every study.
			{"503 within the settling window", 3, false, settleWindow - time.Minute, &dicomweb.HTTPError{StatusCode: 503}, true, BreakerOpen},
			// A close without a store is no sign the destination
			// stores: it settles until a store, or a store outage
			// would cost failures-1 deliveries again after a quiet
			// spell.
			{"503 past the settling window", 3, false, settleWindow, &dicomweb.HTTPError{StatusCode: 503}, !c.stored, map[bool]BreakerState{true: BreakerClosed, false: BreakerOpen}[c.stored]},
		} {
			t.Run(c.name+"/"+tt.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					var b *breaker
					var openedAfter []int // after_failures of each opening from closed
					b = newBreaker(breakerConfig{failures: tt.threshold, interval: time.Second, maxInterval: time.Second}, &fakeProber{},
						func(from, to BreakerState) {
							if from == BreakerClosed && to == BreakerOpen {
								openedAfter = append(openedAfter, b.failures) // under b.mu
							}
						})
					defer b.stop()
					for range tt.threshold {
						b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.1", 1)
					}
					c.close(t, b)
					if s := b.status().state; s != BreakerClosed {
						t.Fatalf("breaker %v, want closed", s)
					}
					if tt.storedAfter {
						b.record(nil, 0, "1.2.3", 3)
					}
					time.Sleep(tt.later)
					if hold := b.record(tt.err, 0, "1.2.4", 4); hold != tt.wantHold {
						t.Errorf("held %v, want %v", hold, tt.wantHold)
					}
					if st := b.status(); st.state != tt.wantState || st.failures != 1 {
						t.Errorf("breaker %v, %d failures; want %v, 1", st.state, st.failures, tt.wantState)
					}
					b.mu.Lock()
					defer b.mu.Unlock()
					want := []int{tt.threshold}
					if tt.wantState == BreakerOpen {
						want = append(want, 1)
					}
					if !slices.Equal(openedAfter, want) {
						t.Errorf("opened after %v failures, want %v", openedAfter, want)
					}
				})
			})
		}
	}
}

// While settling, a failure that may be its study's own spends its
// delivery once per stored study, as a vouched trial's: a close without
// a store does not give another. A study alone in the queue of a
// destination whose store is down (a 500) while its probes pass would
// else spend one delivery at each such close (a probe finding nothing
// held), and reach its dead letter within hours.
func TestBreakerSettlingSpendsOncePerStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := openedBy503s(t, time.Second)
		serverError := &dicomweb.HTTPError{StatusCode: 500}
		for i, want := range []struct {
			closedByStore bool // a study in flight stored closes it, else a probe with nothing held
			hold          bool
		}{
			{false, false}, // the first since the last store: spent
			{false, true},  // another close, no store: held
			{true, false},  // a close by a store: spent again
		} {
			if want.closedByStore {
				b.record(nil, 0, "1.2.5", 5)
			} else {
				time.Sleep(time.Minute)
				synctest.Wait()
			}
			if s := b.status().state; s != BreakerClosed {
				t.Fatalf("close %d: breaker %v, want closed", i+1, s)
			}
			if hold := b.record(serverError, 0, "1.2.4", 4); hold != want.hold {
				t.Errorf("close %d: the 500 held %v, want %v", i+1, hold, want.hold)
			}
			if s := b.status().state; s != BreakerOpen {
				t.Errorf("close %d: breaker %v after the 500, want open", i+1, s)
			}
		}
	})
}

// A poison study answered 503 or 424 (a proxy's "upstream connect
// error" when the server crashes on it) fails its vouched trial, held;
// another study stored closes the breaker (clearing failedTrials); while
// settling, its next failure spends its delivery, whatever its class,
// once per store. Before, a 503 while settling was held and spent
// nothing: it went from trial to close to trial for ever. Another
// study's 503 is held, as before.
func TestBreakerPoisonTrialSpendsWhileSettling(t *testing.T) {
	const poison = 10
	for _, tt := range []struct {
		name     string
		err      error
		seq      uint64
		wantHold bool
	}{
		{"503 of the study whose vouched trial failed", &dicomweb.HTTPError{StatusCode: 503}, poison, false},
		{"424 of the study whose vouched trial failed", &dicomweb.HTTPError{StatusCode: 424}, poison, false},
		{"503 of another study", &dicomweb.HTTPError{StatusCode: 503}, 11, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := openedBy503s(t, time.Minute)
				if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, vouchedTrial(t, b, poison), "1.2.10", poison); !hold {
					t.Fatal("the vouched trial's 503 was not held")
				}
				b.record(nil, 0, "1.2.5", 5) // another study stored: closed, settling
				if s := b.status().state; s != BreakerClosed {
					t.Fatalf("breaker %v after a store, want closed", s)
				}
				if hold := b.record(tt.err, 0, "1.2.x", tt.seq); hold != tt.wantHold {
					t.Errorf("held %v, want %v", hold, tt.wantHold)
				}
				if s := b.status().state; s != BreakerOpen {
					t.Errorf("breaker %v after the failure, want open", s)
				}
				// Once per store: a second close without one spends nothing.
				time.Sleep(time.Minute)
				synctest.Wait()
				if hold := b.record(tt.err, 0, "1.2.x", tt.seq); !hold {
					t.Error("a second failure, no store since, was not held")
				}
			})
		})
	}
}

// The poison study's 503 can lose the race after a close: another
// study's failure reopens the breaker first, and the poison study is
// held, fresh again (a store cleared the marks). Its next vouched trial
// then spends: it failed one before (vouchedFailed). It spent nothing,
// cycle after cycle, while it lost the race.
func TestBreakerPoisonTrialSpendsAfterLosingTheRace(t *testing.T) {
	const poison = 10
	synctest.Test(t, func(t *testing.T) {
		b := openedBy503s(t, time.Minute)
		if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, vouchedTrial(t, b, poison), "1.2.10", poison); !hold {
			t.Fatal("the first vouched trial's 503 was not held")
		}
		b.record(nil, 0, "1.2.5", 5) // another study stored: closed, settling
		if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.11", 11); !hold {
			t.Fatal("another study's 503 after the close was not held")
		}
		if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, vouchedTrial(t, b, poison), "1.2.10", poison); hold {
			t.Error("the poison study's second vouched trial was held: it spends nothing while it loses the race")
		}
	})
}

// In a plain store outage answered 503 while queries answer, every trial
// fails and none is the study's own: a study whose vouched trial failed
// is held again at its next one, nothing stored since. (Marked for
// good, it spent a delivery each time trials came back to it.)
func TestBreakerTrialAgainWithoutAStoreHeld(t *testing.T) {
	const study = 10
	synctest.Test(t, func(t *testing.T) {
		b := openedBy503s(t, time.Minute)
		for i := range 2 {
			if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, vouchedTrial(t, b, study), "1.2.10", study); !hold {
				t.Errorf("trial %d's 503, nothing stored since the first: spent, want held", i+1)
			}
		}
	})
}

// A close without a store (another study's trial answered 400: the
// destination up, that study's own failure) settles, and a study whose
// vouched trial failed since the last store is held at its next 503:
// nothing says the failure is its own. (Marked, it spent a delivery at
// each such close: a lone study in the queue of a store that is down.)
func TestBreakerSettlingWithoutAStoreHoldsAMarkedStudy(t *testing.T) {
	const marked = 10
	synctest.Test(t, func(t *testing.T) {
		b := openedBy503s(t, time.Minute)
		if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, vouchedTrial(t, b, marked), "1.2.10", marked); !hold {
			t.Fatal("the vouched trial's 503 was not held")
		}
		b.record(&dicomweb.HTTPError{StatusCode: 400}, vouchedTrial(t, b, 11), "1.2.11", 11)
		if s := b.status().state; s != BreakerClosed {
			t.Fatalf("breaker %v after a trial answered 400, want closed", s)
		}
		if hold := b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.10", marked); !hold {
			t.Error("the marked study's 503 while settling, nothing stored since its mark: spent, want held")
		}
	})
}

// A destination that flaps, storing one study in ten and failing the
// others (a 503; a 500, which may be the study's own failure), for six
// hours: after each close, until a study is stored, the first failure
// opens the breaker again. Before, each close needed
// STOW_BREAKER_FAILURES failures again, those before the last spending
// their study's delivery: up to 4 a close. Now a 500 or 502 (may be the
// study's own) spends one, and, as before, so does the first failed trial
// after a store; a 503 spends one only for a study whose vouched trial
// failed (vouchedFailed: a poison study answered 503), once per store.
// The most any one study spent is reported: the spends after the opening
// are once per store (spent is reset only there), so a study spends at
// most the opening's share and the stores'.
func TestBreakerFlappingDestination(t *testing.T) {
	for _, tt := range []struct {
		name string
		down error
		// perClose is what a close may cost in deliveries.
		perClose int
	}{
		{"503", &dicomweb.HTTPError{StatusCode: 503}, 1},
		{"500", &dicomweb.HTTPError{StatusCode: 500}, 2},
		{"502", &dicomweb.HTTPError{StatusCode: 502}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const failures = 5
				closes := 0 // under b.mu (onChange)
				b := newBreaker(breakerConfig{failures: failures, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, &fakeProber{},
					func(_, to BreakerState) {
						if to == BreakerClosed {
							closes++
						}
					})
				defer b.stop()
				var attempts atomic.Int64
				tb := newTrialBench(t, b, 1000, func(uint64) error {
					if attempts.Add(1)%10 == 0 {
						return nil
					}
					return tt.down
				})
				for seq := uint64(1); seq <= 200; seq++ {
					tb.add(seq)
				}
				defer tb.end()
				for range 4 {
					go tb.worker()
				}
				time.Sleep(6 * time.Hour)
				synctest.Wait()
				tb.mu.Lock()
				spent, stores, most := tb.retries, len(tb.stored), 0
				for _, n := range tb.spentBy {
					most = max(most, n)
				}
				tb.mu.Unlock()
				b.mu.Lock()
				n := closes
				b.mu.Unlock()
				t.Logf("%d deliveries spent over %d closes and %d stores; the most one study spent: %d", spent, n, stores, most)
				if most > failures-1+stores {
					t.Errorf("a study spent %d deliveries, more than the opening's %d and one a store (%d stores)", most, failures-1, stores)
				}
				// The failures that first open the breaker spend, as
				// every failure before.
				if n < 10 || spent > failures-1+tt.perClose*n {
					t.Errorf("%d deliveries spent over %d closes (%d attempts); want at most %d + %d a close, 10 closes or more",
						spent, n, attempts.Load(), failures-1, tt.perClose)
				}
			})
		})
	}
}

// Poison studies (the destination answers them 500 and stores the
// others; or a proxy answers them 502 or 504, or resets their
// connection: large studies) open the breaker on a quiet night. The
// first one's failed trial spends its delivery; the other's trial fails
// too and is held; then, every held study having failed a trial, one
// pulled from the queue is the trial: stored, it closes the breaker. So
// each poison study reaches its dead letter within its deliveries while
// the studies arriving every 10 minutes are stored. Before, a 502, 504
// or reset trial was not marked as failed: the oldest poison study was
// the trial after every probe, none was pulled from the queue, and the
// queue waited for good.
func TestBreakerPoisonStudiesAmongHealthy(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"500", &dicomweb.HTTPError{StatusCode: 500}},
		{"502", &dicomweb.HTTPError{StatusCode: 502}},
		{"504", &dicomweb.HTTPError{StatusCode: 504}},
		{"connection reset", dicomwebNoAnswer(errors.New("read: connection reset by peer"))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const maxDeliveries = 5
				poison := func(seq uint64) bool { return seq <= 2 }
				b := newBreaker(breakerConfig{failures: 2, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, &fakeProber{}, nil)
				defer b.stop()
				tb := newTrialBench(t, b, maxDeliveries, func(seq uint64) error {
					if poison(seq) {
						return tt.err
					}
					return nil
				})
				defer tb.end()
				tb.add(1, 2)
				for range 2 {
					go tb.worker()
				}
				for seq := uint64(10); seq < 10+12*6; seq++ {
					time.Sleep(10 * time.Minute)
					tb.add(seq)
				}
				time.Sleep(10 * time.Minute)
				synctest.Wait()
				tb.mu.Lock()
				defer tb.mu.Unlock()
				if !tb.deadLetters[1] || !tb.deadLetters[2] || tb.delivered[1] != maxDeliveries || tb.delivered[2] != maxDeliveries {
					t.Errorf("poison studies delivered %d and %d times, dead-lettered %v; want both dead-lettered after %d", tb.delivered[1], tb.delivered[2], tb.deadLetters, maxDeliveries)
				}
				if len(tb.stored) != 12*6 || tb.pulls == 0 {
					t.Errorf("%d of %d healthy studies stored, %d pulled as trials; want all, some", len(tb.stored), 12*6, tb.pulls)
				}
				if st := b.status(); st.state != BreakerClosed || st.held != 0 {
					t.Errorf("breaker %v holding %d, want closed, none held", st.state, st.held)
				}
			})
		})
	}
}

// A study alone in the queue while the destination's store refuses
// every study and its queries answer cannot be told from a poison study:
// its first failed trial spends a delivery, the later ones are held, so
// a 12-hour outage does not dead-letter it, and it is stored once the
// store is back.
func TestBreakerLoneStudyKeptThroughAStoreOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxDeliveries = 5
		var storeDown atomic.Bool
		storeDown.Store(true)
		b := newBreaker(breakerConfig{failures: 2, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, &fakeProber{}, nil)
		defer b.stop()
		tb := newTrialBench(t, b, maxDeliveries, func(uint64) error {
			if storeDown.Load() {
				return &dicomweb.HTTPError{StatusCode: 500}
			}
			return nil
		})
		defer tb.end()
		tb.add(1)
		for range 2 {
			go tb.worker()
		}
		time.Sleep(12 * time.Hour)
		synctest.Wait()
		storeDown.Store(false)
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		tb.mu.Lock()
		defer tb.mu.Unlock()
		if tb.deadLetters[1] || !tb.stored[1] || tb.delivered[1] > 3 {
			t.Errorf("the lone study delivered %d times, dead-lettered %v, stored %v; want at most 3 deliveries, stored once the store is back", tb.delivered[1], tb.deadLetters[1], tb.stored[1])
		}
	})
}

// When every held study has failed a trial and none waits in the queue,
// the held study tried least recently is the trial: a poison study among
// them does not take every trial, so the store's return is seen. So too
// when the failures are 502s or resets, whose trials were not marked as
// failed before: the oldest study was the trial every time.
func TestBreakerStaleTrialsTakeTurns(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"500", &dicomweb.HTTPError{StatusCode: 500}},
		{"502", &dicomweb.HTTPError{StatusCode: 502}},
		{"connection reset", dicomwebNoAnswer(errors.New("read: connection reset by peer"))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var storeDown atomic.Bool
				storeDown.Store(true)
				b := newBreaker(breakerConfig{failures: 1, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, &fakeProber{}, nil)
				defer b.stop()
				tb := newTrialBench(t, b, 10, func(seq uint64) error {
					if seq == 1 || storeDown.Load() { // study 1 is poison
						return tt.err
					}
					return nil
				})
				defer tb.end()
				tb.add(1, 2)
				for range 2 {
					go tb.worker()
				}
				time.Sleep(time.Hour)
				synctest.Wait()
				if st := b.status(); st.state == BreakerClosed || st.held != 2 {
					t.Fatalf("breaker %v holding %d while the store is down, want both held", st.state, st.held)
				}
				storeDown.Store(false)
				time.Sleep(10 * time.Minute)
				synctest.Wait()
				tb.mu.Lock()
				defer tb.mu.Unlock()
				if !tb.stored[2] {
					t.Errorf("study 2 not stored 10 min after the store came back: the poison study took every trial")
				}
			})
		})
	}
}

// A half-open breaker's pulled trial settled without a request to the
// destination (its rules select none of the study, its source deleted
// it) does not cost a probe interval: the next event is pulled at once,
// up to maxQuietPulls in a row; then the breaker opens and asks later.
func TestBreakerQuietPulledTrialPullsAgain(t *testing.T) {
	b := newBreaker(breakerConfig{failures: 1, interval: 30 * time.Second, maxInterval: 5 * time.Minute}, &fakeProber{}, nil)
	defer b.stop()
	pulls := 0
	b.mu.Lock()
	b.pullTrial = func() { pulls++ }
	// One study held, whose trial failed: the next trial is pulled.
	b.heldSeqs[5], b.failedTrials[5] = 1, true
	b.setState(BreakerHalfOpen)
	b.chooseTrial()
	b.mu.Unlock()
	for i := range maxQuietPulls {
		b.pulledTrialEnded(true, false)
		if s := b.status().state; s != BreakerHalfOpen || pulls != i+2 {
			t.Fatalf("after %d quiet trials: breaker %v, %d pulls; want half-open, %d", i+1, s, pulls, i+2)
		}
	}
	b.pulledTrialEnded(true, false)
	if s := b.status().state; s != BreakerOpen || pulls != maxQuietPulls+1 {
		t.Errorf("after %d quiet trials: breaker %v, %d pulls; want open, %d", maxQuietPulls+1, s, pulls, maxQuietPulls+1)
	}
}

// TestBreakerReleasesHeldStudiesOldestFirst: when the breaker closes,
// the studies it holds go again oldest first, by their event's stream
// sequence, and a free worker pulls a newer event from the queue only
// once they all went. Twenty studies are held in the reverse of their
// order; before, the close woke them all at once, in whatever order the
// scheduler ran them, and the free workers' pulls raced them.
func TestBreakerReleasesHeldStudiesOldestFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const studies = 20
		down := &dicomweb.HTTPError{StatusCode: 503}
		prober := &fakeProber{err: down}
		b := newBreaker(breakerConfig{failures: 1, interval: 10 * time.Second, maxInterval: 10 * time.Second}, prober, nil)
		defer b.stop()
		b.record(down, 0, "1.2.1", 1)

		var mu sync.Mutex
		var order []uint64
		overtaken := 0 // releases while an older study was still held
		var wg sync.WaitGroup
		for seq := uint64(studies); seq >= 1; seq-- {
			wg.Go(func() {
				trial, err := b.hold(t.Context(), seq)
				if err != nil {
					t.Error(err)
					return
				}
				b.mu.Lock()
				for s := range b.heldSeqs {
					if s < seq {
						overtaken++
					}
				}
				b.mu.Unlock()
				mu.Lock()
				order = append(order, seq)
				mu.Unlock()
				if trial != 0 {
					b.record(nil, trial, fmt.Sprintf("1.2.%d", seq), seq)
				}
			})
			synctest.Wait() // each waits before the next, younger first
		}
		// Two free workers wait to pull; each checks, as it would pull,
		// whether a held study has not gone yet.
		pulledEarly := 0
		for range 2 {
			wg.Go(func() {
				if err := b.waitClosed(t.Context()); err != nil {
					t.Error(err)
					return
				}
				b.mu.Lock()
				pulledEarly += len(b.heldSeqs)
				b.mu.Unlock()
			})
		}
		prober.set(nil) // the destination is back
		time.Sleep(10 * time.Second)
		wg.Wait()
		if overtaken != 0 || pulledEarly != 0 {
			t.Errorf("held studies went in the order %v: %d went while an older one was held, the free workers pulled while %d were held; want oldest first, then the pulls",
				order, overtaken, pulledEarly)
		}
	})
}

// TestBreakerLatePulledTrial: the event a half-open breaker pulls as its
// trial may come after the breaker closed (a study in flight was
// stored), or closed and opened again. It is the trial only if the
// breaker is half-open then. Before, it was sent as the trial whatever
// the state: while open, to a destination no probe had vouched for, its
// 500 spent its delivery as the first vouched trial's would (and put the
// next probe off); while closed, its one failure opened the breaker,
// below STOW_BREAKER_FAILURES.
func TestBreakerLatePulledTrial(t *testing.T) {
	for _, tt := range []struct {
		name   string
		reopen bool
	}{
		{"closed", false},
		{"closed and open again", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet { // QIDO-RS: the probe passes
					w.Header().Set("Content-Type", "application/dicom+json")
					io.WriteString(w, "[]")
					return
				}
				posts.Add(1)
				http.Error(w, "store failing", http.StatusInternalServerError)
			}))
			t.Cleanup(srv.Close)
			prober := newProber(t, srv.URL)
			f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
				o.Breaker = BreakerOptions{Failures: 2, ProbeInterval: time.Hour, Prober: prober}
			})
			b := f.breaker
			serverError := &dicomweb.HTTPError{StatusCode: 500}
			pulls := 0
			b.mu.Lock()
			b.pullTrial = func() { pulls++ }
			b.mu.Unlock()
			// Open, its one held study's trial failed: the half-open
			// breaker pulls its trial from the queue.
			b.record(serverError, 0, "1.2.8", 8)
			b.record(serverError, 0, "1.2.8", 8)
			b.mu.Lock()
			b.heldSeqs[8], b.failedTrials[8] = 1, true
			b.mu.Unlock()
			b.probe()
			if s := b.status().state; s != BreakerHalfOpen || pulls != 1 {
				t.Fatalf("breaker %v, %d trials pulled; want half-open, 1", s, pulls)
			}
			// A study in flight is stored while the pull is out; the held
			// one goes again, and is stored too: the close has settled
			// (else the first failure opens the breaker again).
			b.record(nil, 0, "1.2.7", 7)
			b.record(nil, 0, "1.2.8", 8)
			b.mu.Lock()
			delete(b.heldSeqs, 8)
			b.mu.Unlock()
			if tt.reopen {
				b.record(serverError, 0, "1.2.9", 9)
				b.record(serverError, 0, "1.2.9", 9)
			}
			// The pulled event comes now.
			ctx, cancel := context.WithCancel(context.WithValue(t.Context(), pulledTrialKey{}, &pulledTrial{}))
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := f.transferGuarded(ctx, &Attempt{Event: testEvent(), Seq: 10}, slog.New(slog.DiscardHandler))
				done <- err
			}()
			if tt.reopen {
				deadline := time.Now().Add(10 * time.Second)
				for st := f.Status(); st.Held != 1; st = f.Status() {
					select {
					case err := <-done:
						t.Fatalf("the late pulled event was not held while the breaker is open: %v after %d STOW-RS requests", err, posts.Load())
					default:
					}
					if time.Now().After(deadline) {
						t.Fatalf("breaker %+v, want the late pulled event held", st)
					}
					time.Sleep(10 * time.Millisecond)
				}
				if n := posts.Load(); n != 0 {
					t.Errorf("%d STOW-RS requests while the breaker is open, want none", n)
				}
				cancel()
				<-done
				return
			}
			if err := <-done; err == nil {
				t.Fatal("stored by a store answering 500")
			}
			b.mu.Lock()
			trialOut := b.trial != 0 || b.pulling
			b.mu.Unlock()
			if st := f.Status(); st.State != BreakerClosed.String() || st.Failures != 1 || trialOut {
				t.Errorf("after the late pulled event failed in a closed breaker: %+v, a trial out %v; want closed, 1 failure of 2, none out", st, trialOut)
			}
		})
	}
}

// openedBy503s is a breaker of STOW_BREAKER_FAILURES 3 whose probes (every
// interval) pass, opened by three 503s. Inside a synctest bubble.
func openedBy503s(t *testing.T, interval time.Duration) *breaker {
	t.Helper()
	b := newBreaker(breakerConfig{failures: 3, interval: interval, maxInterval: interval}, &fakeProber{}, nil)
	t.Cleanup(b.stop)
	for range 3 {
		b.record(&dicomweb.HTTPError{StatusCode: 503}, 0, "1.2.1", 1)
	}
	return b
}

// vouchedTrial holds the study at seq until the next probe (a minute at
// most) passes and lets it out as the trial; its token. Inside a
// synctest bubble.
func vouchedTrial(t *testing.T, b *breaker, seq uint64) trialToken {
	t.Helper()
	trials := make(chan trialToken, 1)
	go func() {
		tok, _ := b.hold(t.Context(), seq)
		trials <- tok
	}()
	time.Sleep(time.Minute)
	synctest.Wait()
	return <-trials
}

// TestBreakerVouchedFailedDropsTheOldest: the studies whose vouched
// trial failed are remembered up to maxVouchedFailed, dropping the
// oldest (lowest stream sequence, the likeliest settled) to make room:
// dropping a recent one would forget a study still held, and its next
// failure would spend nothing.
func TestBreakerVouchedFailedDropsTheOldest(t *testing.T) {
	b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, &fakeProber{}, nil)
	t.Cleanup(b.stop)
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq := uint64(1); seq <= maxVouchedFailed+1; seq++ {
		b.markVouchedFailed(seq)
	}
	if n := len(b.vouchedFailed); n != maxVouchedFailed {
		t.Errorf("%d studies remembered, want %d", n, maxVouchedFailed)
	}
	if _, ok := b.vouchedFailed[1]; ok {
		t.Error("the oldest study (sequence 1) is still remembered")
	}
	for _, seq := range []uint64{2, maxVouchedFailed, maxVouchedFailed + 1} {
		if _, ok := b.vouchedFailed[seq]; !ok {
			t.Errorf("study of sequence %d forgotten, want only the oldest dropped", seq)
		}
	}
}

// TestBreakerTrialStored: the trial's first request stored closes the
// breaker, as a study stored does, once; the study then goes on as an
// ordinary one, and its outcome counts as any study's: a later failure,
// settling, opens the breaker again (a 500 spending its delivery, a 503
// held). A down failure marks it as a failed trial all the same, so that
// the next trial is another study.
func TestBreakerTrialStored(t *testing.T) {
	for _, tt := range []struct {
		name       string
		err        error // the rest of the study's outcome
		wantHold   bool
		wantState  BreakerState
		wantMarked bool
	}{
		{"then stored whole", nil, false, BreakerClosed, false},
		{"then 503", &dicomweb.HTTPError{StatusCode: 503}, true, BreakerOpen, true},
		{"then 500", &dicomweb.HTTPError{StatusCode: 500}, false, BreakerOpen, true},
		{"then refused (400)", &dicomweb.HTTPError{StatusCode: 400}, false, BreakerClosed, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := openedBy503s(t, time.Second)
				trial := vouchedTrial(t, b, 1)
				if trial == 0 {
					t.Fatal("no trial")
				}
				if b.trialStored(0) {
					t.Error("trialStored(0) ended a trial")
				}
				if !b.trialStored(trial) {
					t.Fatal("the trial's first request stored did not end the trial")
				}
				if b.trialStored(trial) {
					t.Error("the trial ended twice")
				}
				b.mu.Lock()
				st, failures, settling, until := b.state, b.failures, b.settling, b.settleUntil
				b.mu.Unlock()
				if st != BreakerClosed || failures != 0 || !settling || until.IsZero() {
					t.Fatalf("after the trial's first store: %v, %d failures, settling %v until %v; want closed, 0, settling on a store", st, failures, settling, until)
				}
				if hold := b.record(tt.err, trial, "1.2.1", 1); hold != tt.wantHold {
					t.Errorf("held %v, want %v", hold, tt.wantHold)
				}
				b.mu.Lock()
				defer b.mu.Unlock()
				if b.state != tt.wantState || b.failedTrials[1] != tt.wantMarked {
					t.Errorf("breaker %v, failed trial marked %v; want %v, %v", b.state, b.failedTrials[1], tt.wantState, tt.wantMarked)
				}
				if len(b.cutShort) != 0 {
					t.Errorf("%d trials ended early still remembered", len(b.cutShort))
				}
			})
		})
	}
}

// A large study a proxy answers 503 for past its first request (a poison
// study: the server crashes on one of its instances) is the trial alone
// held; each trial closes the breaker at its first request stored. Its
// first such failure is held; the next, a study (its own first request)
// stored since, spends its delivery, as a failed trial's: else it went
// from trial to close to hold for ever, spending nothing.
func TestBreakerTrialStoredThenPoison(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := openedBy503s(t, time.Second)
		down := &dicomweb.HTTPError{StatusCode: 503}
		for i, wantHold := range []bool{true, false} {
			trial := vouchedTrial(t, b, 1)
			if trial == 0 || !b.trialStored(trial) {
				t.Fatalf("cycle %d: trial %v not ended at its first request stored", i+1, trial)
			}
			if hold := b.record(down, trial, "1.2.1", 1); hold != wantHold {
				t.Fatalf("cycle %d: held %v, want %v", i+1, hold, wantHold)
			}
			if s := b.status().state; s != BreakerOpen {
				t.Fatalf("cycle %d: breaker %v, want open", i+1, s)
			}
		}
	})
}
