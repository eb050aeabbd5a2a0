package forward

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testnats"
)

// TestDestinationRefusalHeld: a destination refusing every request for a
// while, whatever the study (Azure's DICOM Data Owner role removed or not
// yet propagated, an ingress's default backend during an upgrade, a
// maintenance page's redirect, a method refused at a wrong URL, a token
// it does not accept), to its QIDO-RS probe too. Before, each STOW-RS
// answer was permanent and the four queued studies were dead-lettered
// one after another at once; now they count as the destination down, the
// breaker opens after STOW_BREAKER_FAILURES and holds them, and once the
// destination stores again every study is stored, none dead-lettered.
func TestDestinationRefusalHeld(t *testing.T) {
	tests := []struct {
		name   string
		refuse http.HandlerFunc
	}{
		{name: "403 to every request (Google's IAM binding dropped)", refuse: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}`)
		}},
		{name: "403 without a body (Azure: no DICOM Data Owner role)", refuse: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusForbidden)
		}},
		{name: "an ingress's HTML 404 to every request", refuse: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, "<html><body>default backend - 404</body></html>")
		}},
		{name: "a maintenance page's 302", refuse: func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/maintenance" {
				w.Header().Set("Content-Type", "text/html")
				io.WriteString(w, "<html><body>down for maintenance</body></html>")
				return
			}
			http.Redirect(w, r, "/maintenance", http.StatusFound)
		}},
		{name: "405", refuse: func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}},
		{name: "401 to every token", refuse: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="wrong audience"`)
			w.WriteHeader(http.StatusUnauthorized)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			var k sink
			stores := k.handler(nil)
			var refusing atomic.Bool
			refusing.Store(true)
			var refused, probes atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case refusing.Load():
					refused.Add(1)
					tt.refuse(w, r)
				case r.Method == http.MethodGet:
					answerProbe(w, &probes)
				default:
					stores.ServeHTTP(w, r)
				}
			}))
			t.Cleanup(srv.Close)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			obs := &deliveryObserver{delivered: map[uint64]uint64{}}
			f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
				o.DeadLetters, o.MaxDeliveries = dls, 3
				o.Observer = obs
				o.ShutdownGrace = time.Minute
				o.Breaker = BreakerOptions{Failures: 2, ProbeInterval: 50 * time.Millisecond, MaxProbeInterval: 100 * time.Millisecond, Prober: newProber(t, srv.URL)}
			})
			runForwarder(t, f)
			const studies = 4
			publishStudies(t, ns, 0, studies)
			// Refused long enough for the breaker to open and its
			// probes (and trials) to be refused a while, or, as before,
			// for the studies to be dead-lettered.
			deadline := time.Now().Add(30 * time.Second)
			for b := f.Status(); len(dls.all()) == 0 && (b.State != "open" || refused.Load() < 20); b = f.Status() {
				if time.Now().After(deadline) {
					t.Fatalf("breaker %+v after %d refusals in 30 s, want open", b, refused.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if dl := dls.all(); len(dl) != 0 {
				t.Fatalf("%d dead letters while the destination refused every request, first: %s", len(dl), dl[0].Reason)
			}

			refusing.Store(false)
			waitConsumerWithin(t, cons, 30*time.Second, func(i *jetstream.ConsumerInfo) bool {
				return i.AckFloor.Stream == studies && i.NumAckPending == 0
			})
			if n := len(dls.all()); n != 0 {
				t.Errorf("%d dead letters", n)
			}
			obs.waitFinished(t, ResultForwarded, studies)
		})
	}
}

// TestRefusalClassified: only a STOW-RS request's refusal of the whole
// request (markRefusal) is the destination down; the same status with
// instances listed, or from another request (a DELETE the destination
// does not allow: destinations.md), stays permanent.
func TestRefusalClassified(t *testing.T) {
	listed := &dicomweb.Result{Failed: []dicomweb.FailedInstance{{SOPInstanceUID: "1.2.3.1", FailureReason: 0x0124}}}
	tests := []struct {
		name      string
		err       error
		wantClass Class
		wantDown  bool
	}{
		{"STOW 403", markRefusal(&dicomweb.HTTPError{StatusCode: 403}), Transient, true},
		{"STOW 401 after a fresh token", markRefusal(&dicomweb.HTTPError{StatusCode: 401}), Transient, true},
		{"STOW 404 page", markRefusal(&dicomweb.HTTPError{StatusCode: 404, ContentType: "text/html"}), Transient, true},
		{"STOW 405", markRefusal(&dicomweb.HTTPError{StatusCode: 405}), Transient, true},
		{"STOW 307 not followed", markRefusal(&dicomweb.HTTPError{StatusCode: 307}), Transient, true},
		{"STOW redirected to a GET", markRefusal(fmt.Errorf("%w: stow: POST x ended as GET y", dicomweb.ErrRedirected)), Transient, true},
		{"STOW 403 listing instances", markRefusal(&dicomweb.HTTPError{StatusCode: 403, Result: listed}), Permanent, false},
		{"STOW IIS 404.13, too large", markRefusal(&dicomweb.HTTPError{StatusCode: 404, ContentType: "text/html", Body: "<title>IIS 10.0 Detailed Error - 404.13 - Not Found</title>"}), Permanent, false},
		{"STOW 404 naming maxAllowedContentLength", markRefusal(&dicomweb.HTTPError{StatusCode: 404, Body: "requestLimits@maxAllowedContentLength"}), Permanent, false},
		{"STOW IIS 404.7, another filtering rule", markRefusal(&dicomweb.HTTPError{StatusCode: 404, Body: "HTTP Error 404.7 - Not Found. The request filtering module is configured to deny the file extension."}), Transient, true},
		{"STOW 400", markRefusal(&dicomweb.HTTPError{StatusCode: 400}), Permanent, false},
		{"STOW 409 without a body", markRefusal(&dicomweb.HTTPError{StatusCode: 409}), Permanent, false},
		{"DELETE 405", fmt.Errorf("replace instance 1.2.3.1: delete it at the destination: %w", &dicomweb.HTTPError{StatusCode: 405}), Permanent, false},
		{"DELETE redirected", fmt.Errorf("%w: DELETE x ended as GET y", dicomweb.ErrRedirected), Permanent, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.wantClass {
				t.Errorf("Classify(%v) = %s, want %s", tt.err, got, tt.wantClass)
			}
			if got := DestinationDown(tt.err); got != tt.wantDown {
				t.Errorf("DestinationDown(%v) = %v, want %v", tt.err, got, tt.wantDown)
			}
			if studyMayFail(tt.err) {
				t.Errorf("studyMayFail(%v): a refusal says the destination whatever the study", tt.err)
			}
		})
	}
	// The dead letter's reason, the log, say the answer as before.
	he := &dicomweb.HTTPError{StatusCode: 403, Body: "forbidden"}
	if got := markRefusal(he).Error(); got != he.Error() {
		t.Errorf("marked refusal reads %q, want %q", got, he.Error())
	}
}

// TestProbeDown: any error status or redirect to a probe keeps the
// breaker open (a real empty result is no error: Probe), besides what
// DestinationDown says.
func TestProbeDown(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"answered", nil, false},
		{"403", &dicomweb.HTTPError{StatusCode: 403}, true},
		{"404 page", &dicomweb.HTTPError{StatusCode: 404, ContentType: "text/html"}, true},
		{"400", &dicomweb.HTTPError{StatusCode: 400}, true},
		{"503", &dicomweb.HTTPError{StatusCode: 503}, true},
		{"redirected", fmt.Errorf("%w: qido: GET x", dicomweb.ErrRedirected), true},
		{"malformed answer", errors.New("qido: malformed"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := probeDown(tt.err); got != tt.want {
				t.Errorf("probeDown(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestBreakerProbeQueryRefused: a probe's refused query (an identity
// allowed to store but not to search, a STOW-only gateway) lets the
// trial through at the first probe after an outage of no answers or
// 5xx, as before 2a5fc38; but not when the refusals opened the breaker
// (a URL refusing everything), nor once a probe was answered (queries
// work: the refusal is the destination's), nor for 401, 407 or 429.
// Counted as down, the trial waited for the 4th probe (about 7.5 min
// with the default intervals).
func TestBreakerProbeQueryRefused(t *testing.T) {
	outage := &dicomweb.HTTPError{StatusCode: 503}
	refusal := markRefusal(&dicomweb.HTTPError{StatusCode: 403})
	tests := []struct {
		name           string
		opening        error
		answeredBefore bool // a probe passed in an earlier half-open
		probe          error
		wantProbes     int // probes before the trial
	}{
		{"outage, 403 (StoreDICOM only)", outage, false, &dicomweb.HTTPError{StatusCode: 403}, 1},
		{"outage, 400", outage, false, &dicomweb.HTTPError{StatusCode: 400}, 1},
		{"outage, 405", outage, false, &dicomweb.HTTPError{StatusCode: 405}, 1},
		{"outage, 501", outage, false, &dicomweb.HTTPError{StatusCode: 501}, 1},
		{"outage, HTML 404", outage, false, &dicomweb.HTTPError{StatusCode: 404, ContentType: "text/html"}, 1},
		{"outage, 401", outage, false, &dicomweb.HTTPError{StatusCode: 401}, probesBeforeTrial},
		{"outage, 407 (a proxy refusing its credentials)", outage, false, &dicomweb.HTTPError{StatusCode: 407}, probesBeforeTrial},
		{"outage, 429", outage, false, &dicomweb.HTTPError{StatusCode: 429}, probesBeforeTrial},
		{"outage, 503", outage, false, outage, probesBeforeTrial},
		{"outage, redirected", outage, false, fmt.Errorf("%w: qido: GET x", dicomweb.ErrRedirected), probesBeforeTrial},
		{"refusals, 403", refusal, false, &dicomweb.HTTPError{StatusCode: 403}, probesBeforeTrial},
		{"refusals, HTML 404", markRefusal(&dicomweb.HTTPError{StatusCode: 404}), false, &dicomweb.HTTPError{StatusCode: 404, ContentType: "text/html"}, probesBeforeTrial},
		{"outage, queries answered before, 403", outage, true, &dicomweb.HTTPError{StatusCode: 403}, probesBeforeTrial},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				prober := &fakeProber{}
				b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, prober, nil)
				t.Cleanup(b.stop)
				if !b.record(tt.opening, 0, "1.2.3", 1) {
					t.Fatal("the failure that opened the breaker was not held")
				}
				if tt.answeredBefore {
					trial, err := b.hold(t.Context(), 1)
					if err != nil || trial == 0 {
						t.Fatalf("hold = %v, %v; want the trial", trial, err)
					}
					if !b.record(tt.opening, trial, "1.2.3", 1) {
						t.Fatal("the failed trial was not held")
					}
					prober.mu.Lock()
					prober.calls = 0
					prober.mu.Unlock()
				}
				prober.set(tt.probe)
				trial, err := b.hold(t.Context(), 1)
				if err != nil || trial == 0 {
					t.Fatalf("hold = %v, %v; want the trial", trial, err)
				}
				if prober.calls != tt.wantProbes {
					t.Errorf("the trial after %d probes, want %d", prober.calls, tt.wantProbes)
				}
			})
		})
	}
}

// TestBreakerQueryRefusedNotVouched: a probe whose query was refused
// after an outage (a STOW-only identity while the store still fails) lets
// a trial through but vouches for nothing. The trial's 500 is held,
// spending no delivery (on a last delivery it was dead-lettered); its
// STOW-RS refusal is not marked as a vouched trial's; and with no study
// held or to pull the breaker stays open instead of closing untried.
func TestBreakerQueryRefusedNotVouched(t *testing.T) {
	outage := &dicomweb.HTTPError{StatusCode: 503}
	queryRefusal := &dicomweb.HTTPError{StatusCode: 403}
	tests := []struct {
		name  string
		trial error // nil: no study is held, so there is no trial
	}{
		{"trial answered 500", &dicomweb.HTTPError{StatusCode: 500}},
		{"trial answered 502", &dicomweb.HTTPError{StatusCode: 502}},
		{"trial refused", markRefusal(&dicomweb.HTTPError{StatusCode: 403})},
		{"nothing held", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				prober := &fakeProber{err: queryRefusal}
				b := newBreaker(breakerConfig{failures: 1, interval: time.Second, maxInterval: time.Second}, prober, nil)
				t.Cleanup(b.stop)
				if !b.record(outage, 0, "1.2.3", 1) {
					t.Fatal("the failure that opened the breaker was not held")
				}
				if tt.trial == nil {
					time.Sleep(3 * time.Second)
					synctest.Wait()
					state := b.status().state
					prober.mu.Lock()
					calls := prober.calls
					prober.mu.Unlock()
					if calls == 0 || state != BreakerOpen {
						t.Errorf("after %d refused probes with nothing held the breaker is %v, want open", calls, state)
					}
					return
				}
				trial, err := b.hold(t.Context(), 1)
				if err != nil || trial == 0 {
					t.Fatalf("hold = %v, %v; want the trial", trial, err)
				}
				if !b.record(tt.trial, trial, "1.2.3", 1) {
					t.Error("the trial's failure spent its delivery, no probe having vouched")
				}
				b.mu.Lock()
				_, marked := b.vouchedFailed[1]
				b.mu.Unlock()
				if marked {
					t.Error("the trial's failure was marked as a vouched trial's")
				}
			})
		})
	}
}
