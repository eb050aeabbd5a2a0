package forward

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
)

func TestPolicyDecide(t *testing.T) {
	transient := errors.New("connection reset")
	permanent := &dicomweb.HTTPError{StatusCode: 415}
	partial := &Error{Class: Partial, Err: errors.New("2 of 10 refused")}
	missing := Errorf(SourceMissing, "study gone")
	crash := &Error{Class: Crash, Err: errors.New("panic: boom")}
	withStore := policy{maxDeliveries: 48, retryDelay: time.Second, retryMaxDelay: time.Minute, canDeadLetter: true}
	noLimit := withStore
	noLimit.maxDeliveries = 0
	noStore := withStore
	noStore.canDeadLetter = false

	tests := []struct {
		name       string
		p          policy
		attempt    uint64
		err        error
		shutdown   bool
		want       action
		wantClass  Class
		wantReason string
	}{
		{"stored", withStore, 1, nil, false, ack, "", ""},
		{"stored during shutdown", withStore, 3, nil, true, ack, "", ""},
		{"failed during shutdown", withStore, 3, transient, true, giveBack, "", ""},
		{"transient, deliveries left", withStore, 1, transient, false, retry, Transient, ""},
		{"transient, last delivery", withStore, 48, transient, false, deadLetter, Transient, "gave up after 48 deliveries: connection reset"},
		{"transient, no limit", noLimit, 1000, transient, false, retry, Transient, ""},
		{"permanent", withStore, 1, permanent, false, deadLetter, Permanent, "answered 415"},
		{"partial", withStore, 1, partial, false, deadLetter, Partial, "2 of 10 refused"},
		{"source missing", withStore, 1, missing, false, deadLetter, SourceMissing, "study gone"},
		{"crash", withStore, 1, crash, false, deadLetter, Crash, "panic: boom"},
		{"permanent without a dead-letter store", noStore, 1, permanent, false, retry, Permanent, ""},
		{"transient past the limit without a store", noStore, 100, transient, false, retry, Transient, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.p.decide(tt.attempt, tt.err, tt.shutdown)
			if d.action != tt.want || d.class != tt.wantClass || !strings.Contains(d.reason, tt.wantReason) {
				t.Fatalf("decide = %+v, want action %d, class %q, reason containing %q", d, tt.want, tt.wantClass, tt.wantReason)
			}
			if d.action == retry && d.delay <= 0 {
				t.Errorf("retry without a delay: %+v", d)
			}
		})
	}
}

// A delivery past the limit means the ones before never finished: it is
// dead-lettered as a crash before any work.
func TestPolicyExhausted(t *testing.T) {
	p := policy{maxDeliveries: 3, canDeadLetter: true}
	tests := []struct {
		p       policy
		attempt uint64
		want    bool
	}{
		{p, 1, false},
		{p, 3, false},
		{p, 4, true},
		{p, 1000, true},
		{policy{maxDeliveries: 0, canDeadLetter: true}, 1000, false},
		{policy{maxDeliveries: 3}, 4, false},
		// A stop between a DELETE and its POST: the letter says what
		// may be missing at the destination.
		{policy{maxDeliveries: 3, canDeadLetter: true, replacesByDelete: "DESTINATION_G_STOW_ON_CONFLICT"}, 4, true},
	}
	for _, tt := range tests {
		d, got := tt.p.exhausted(tt.attempt)
		if got != tt.want {
			t.Errorf("max %d, store %v, attempt %d: exhausted = %v, want %v", tt.p.maxDeliveries, tt.p.canDeadLetter, tt.attempt, got, tt.want)
		}
		if got && (d.action != deadLetter || d.class != Crash || !strings.Contains(d.reason, fmt.Sprintf("delivered %d times", tt.attempt)) ||
			!strings.Contains(d.reason, "FORWARDER_MAX_DELIVERIES was lowered")) {
			t.Errorf("attempt %d: decision %+v", tt.attempt, d)
		}
		deleted := "DESTINATION_G_STOW_ON_CONFLICT=replace, STOW_REPLACE_METHOD=delete): a delivery that stopped between the two left instances deleted there and not stored again: replay it"
		if want := tt.p.replacesByDelete != ""; got && strings.Contains(d.reason, deleted) != want {
			t.Errorf("attempt %d, replacesByDelete %q: reason %q, want %q in it: %v", tt.attempt, tt.p.replacesByDelete, d.reason, deleted, want)
		}
	}
}

// An event of a source this forwarder does not know is given back (a
// source being added) until the bound: unknownSourceDeliveries, or
// FORWARDER_MAX_DELIVERIES when lower, so that it is dead-lettered as of
// an unknown source and never runs past the limit as a "crash".
func TestPolicyUnknownSource(t *testing.T) {
	err := fmt.Errorf("%w %q: this stowline reads studies only from main", ErrUnknownSource, "cardio")
	tests := []struct {
		name    string
		p       policy
		attempt uint64
		want    action
	}{
		{"first delivery", policy{maxDeliveries: 48, canDeadLetter: true}, 1, retry},
		{"before the bound", policy{maxDeliveries: 48, canDeadLetter: true}, unknownSourceDeliveries - 1, retry},
		{"at the bound", policy{maxDeliveries: 48, canDeadLetter: true}, unknownSourceDeliveries, deadLetter},
		{"no limit: the bound", policy{canDeadLetter: true}, unknownSourceDeliveries, deadLetter},
		{"lower limit, before it", policy{maxDeliveries: 5, canDeadLetter: true}, 4, retry},
		{"lower limit: its last delivery", policy{maxDeliveries: 5, canDeadLetter: true}, 5, deadLetter},
		{"no dead-letter store", policy{maxDeliveries: 5}, 100, retry},
		{"lower FORWARDER_RETRY_MAX_DELAY", policy{maxDeliveries: 48, canDeadLetter: true, retryMaxDelay: 8 * time.Second}, 1, retry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.p.unknownSource(tt.attempt, err)
			if d.action != tt.want || d.class != Permanent {
				t.Fatalf("unknownSource(%d) = %+v, want action %d, class permanent", tt.attempt, d, tt.want)
			}
			want := unknownSourceDelay
			if tt.p.retryMaxDelay > 0 {
				want = min(want, tt.p.retryMaxDelay)
			}
			if d.action == retry && d.delay != want {
				t.Errorf("given back after %s, want %s", d.delay, want)
			}
			if d.action == deadLetter && (!strings.HasPrefix(d.reason, `unknown source "cardio"`) ||
				!strings.Contains(d.reason, fmt.Sprintf("in %d deliveries", tt.attempt))) {
				t.Errorf("reason %q", d.reason)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	p := policy{retryDelay: time.Second, retryMaxDelay: 8 * time.Second}
	tests := []struct {
		attempt  uint64
		min, max time.Duration
	}{
		{1, 500 * time.Millisecond, time.Second},
		{2, time.Second, 2 * time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{4, 4 * time.Second, 8 * time.Second},
		{10, 4 * time.Second, 8 * time.Second},
		{1000, 4 * time.Second, 8 * time.Second},
	}
	for _, tt := range tests {
		// The jitter's extremes give the bounds exactly.
		low, high := p, p
		low.jitter = func(int64) int64 { return 0 }
		high.jitter = func(n int64) int64 { return n }
		if d := low.backoff(tt.attempt, nil); d != tt.min {
			t.Errorf("attempt %d: least delay %s, want %s", tt.attempt, d, tt.min)
		}
		if d := high.backoff(tt.attempt, nil); d != tt.max {
			t.Errorf("attempt %d: greatest delay %s, want %s", tt.attempt, d, tt.max)
		}
		for range 100 {
			if d := p.backoff(tt.attempt, nil); d < tt.min || d > tt.max {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", tt.attempt, d, tt.min, tt.max)
			}
		}
	}
	// Retry-After wins when longer, up to an hour.
	if d := p.backoff(1, &dicomweb.HTTPError{StatusCode: 503, RetryAfter: 30 * time.Second}); d != 30*time.Second {
		t.Errorf("Retry-After 30s: delay %s", d)
	}
	if d := p.backoff(1, fmt.Errorf("x: %w", &dicomweb.HTTPError{StatusCode: 429, RetryAfter: 5 * time.Hour})); d != time.Hour {
		t.Errorf("Retry-After 5h: delay %s, want capped at 1h", d)
	}
	// The identity provider's too.
	if d := p.backoff(1, fmt.Errorf("token: %w", &auth.TokenError{StatusCode: 429, RetryAfter: 40 * time.Second})); d != 40*time.Second {
		t.Errorf("token endpoint's Retry-After 40s: delay %s", d)
	}
	if d := p.backoff(1, fmt.Errorf("token: %w", &auth.TokenError{StatusCode: 503, RetryAfter: 5 * time.Hour})); d != time.Hour {
		t.Errorf("token endpoint's Retry-After 5h: delay %s, want capped at 1h", d)
	}
}
