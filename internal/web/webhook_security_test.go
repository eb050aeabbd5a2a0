package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/web"
)

// fakePublisher acknowledges every event (the JetStream path is tested in
// TestWebhook).
type fakePublisher struct {
	mu sync.Mutex
	n  int
}

func (p *fakePublisher) Publish(_ context.Context, _ *events.StudyStable) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return &jetstream.PubAck{Stream: natsjs.EventStream, Sequence: uint64(p.n)}, nil
}

// published is how many events p acknowledged.
func (p *fakePublisher) published() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func serve(t *testing.T, opts web.WebhookOptions) *httptest.Server {
	t.Helper()
	h, err := web.NewWebhook(opts)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

func postHeaders(t *testing.T, url string, hdr map[string]string, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+web.WebhookPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestWebhookHMAC(t *testing.T) {
	const secret = "hmac-secret-0123456789-0123456789"
	now := time.Unix(1_790_000_000, 0)
	clk := &clock{t: now}
	srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, HMACSecret: secret,
		HMACMaxSkew: 5 * time.Minute, Now: clk.Now})

	sign := func(secret string, at time.Time, body string) map[string]string {
		ts, sig := web.Sign([]byte(secret), at, []byte(body))
		return map[string]string{web.TimestampHeader: ts, web.SignatureHeader: sig}
	}
	tampered := sign(secret, now, validBody)
	tampered[web.SignatureHeader] = tampered[web.SignatureHeader][:len(tampered[web.SignatureHeader])-1] + "0"
	if tampered[web.SignatureHeader] == sign(secret, now, validBody)[web.SignatureHeader] {
		tampered[web.SignatureHeader] = tampered[web.SignatureHeader][:len(tampered[web.SignatureHeader])-1] + "1"
	}
	// A valid signature of one timestamp presented with another.
	moved := sign(secret, now, validBody)
	moved[web.TimestampHeader] = strconv.FormatInt(now.Unix()+1, 10)

	tests := []struct {
		name   string
		hdr    map[string]string
		body   string
		status int
	}{
		{"signed", sign(secret, now, validBody), validBody, 202},
		{"signed, clock 4m behind", sign(secret, now.Add(-4*time.Minute), validBody), validBody, 202},
		{"signed, clock 4m ahead", sign(secret, now.Add(4*time.Minute), validBody), validBody, 202},
		{"no headers", nil, validBody, 401},
		{"no signature", map[string]string{web.TimestampHeader: strconv.FormatInt(now.Unix(), 10)}, validBody, 401},
		{"wrong secret", sign("another-secret-0123456789-0123456789", now, validBody), validBody, 401},
		{"other body", sign(secret, now, validBody), strings.Replace(validBody, "orthanc-a", "orthanc-b", 1), 401},
		{"tampered signature", tampered, validBody, 401},
		{"timestamp changed", moved, validBody, 401},
		{"signed, clock exactly 5m behind", sign(secret, now.Add(-5*time.Minute), validBody), validBody, 202},
		{"signed, clock exactly 5m ahead", sign(secret, now.Add(5*time.Minute), validBody), validBody, 202},
		{"replayed 5m1s later", sign(secret, now.Add(-5*time.Minute-time.Second), validBody), validBody, 401},
		{"from 5m1s in the future", sign(secret, now.Add(5*time.Minute+time.Second), validBody), validBody, 401},
		{"replayed 6m later", sign(secret, now.Add(-6*time.Minute), validBody), validBody, 401},
		{"from the future", sign(secret, now.Add(6*time.Minute), validBody), validBody, 401},
		{"not hex", map[string]string{web.TimestampHeader: strconv.FormatInt(now.Unix(), 10), web.SignatureHeader: "sha256=zz"}, validBody, 401},
		{"no prefix", map[string]string{web.TimestampHeader: strconv.FormatInt(now.Unix(), 10), web.SignatureHeader: strings.TrimPrefix(sign(secret, now, validBody)[web.SignatureHeader], "sha256=")}, validBody, 401},
		{"timestamp not a number", map[string]string{web.TimestampHeader: "yesterday", web.SignatureHeader: sign(secret, now, validBody)[web.SignatureHeader]}, validBody, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if resp := postHeaders(t, srv.URL, tt.hdr, tt.body); resp.StatusCode != tt.status {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

// Every 401 of the webhook carries the challenge RFC 9110 (11.6.1)
// requires of it, whether the token or the signature was refused: a
// client or proxy that follows HTTP learns the scheme to use.
func TestWebhookUnauthorizedChallenges(t *testing.T) {
	const secret = "hmac-secret-0123456789-0123456789"
	plain := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}})
	signed := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, HMACSecret: secret})
	for _, tt := range []struct {
		name string
		url  string
		hdr  map[string]string
	}{
		{"wrong token", plain.URL, map[string]string{"Authorization": "Bearer nope"}},
		{"other scheme", plain.URL, map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}},
		{"no signature", signed.URL, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := postHeaders(t, tt.url, tt.hdr, validBody)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d, want 401", resp.StatusCode)
			}
			if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="stowline"`; got != want {
				t.Errorf("WWW-Authenticate = %q, want %q", got, want)
			}
		})
	}
}

// TestSignatureFormat pins the documented computation
// (docs/webhook-security.md): hex(HMAC-SHA256(secret, "<ts>.<body>")).
func TestSignatureFormat(t *testing.T) {
	ts, sig := web.Sign([]byte("key"), time.Unix(1700000000, 0), []byte(`{"a":1}`))
	// printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
	const want = "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
	if ts != "1700000000" {
		t.Errorf("timestamp = %q", ts)
	}
	if sig != want {
		t.Errorf("signature = %s, want %s", sig, want)
	}
}

func TestWebhookRateLimit(t *testing.T) {
	tests := []struct {
		name  string
		rate  float64
		burst int
		// steps: advance the clock by wait, then send n requests and expect
		// the statuses.
		steps []step
	}{
		{"off", 0, 0, []step{{0, 20, 20, 0}}},
		{"burst then limited", 1, 3, []step{{0, 5, 3, 2}}},
		{"refills at the rate", 2, 2, []step{{0, 3, 2, 1}, {500 * time.Millisecond, 2, 1, 1}, {time.Second, 3, 2, 1}}},
		{"idle client starts full", 1, 2, []step{{0, 3, 2, 1}, {time.Hour, 3, 2, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1_790_000_000, 0)}
			srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, RateLimit: tt.rate, RateBurst: tt.burst, Now: clk.Now})
			for i, s := range tt.steps {
				clk.Advance(s.wait)
				var ok, limited int
				for range s.n {
					resp := postHeaders(t, srv.URL, nil, validBody)
					switch resp.StatusCode {
					case http.StatusAccepted:
						ok++
					case http.StatusTooManyRequests:
						limited++
						if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
							t.Errorf("step %d: Retry-After = %q, want whole seconds >= 1", i, resp.Header.Get("Retry-After"))
						}
					default:
						t.Fatalf("step %d: status %d", i, resp.StatusCode)
					}
				}
				if ok != s.ok || limited != s.limited {
					t.Errorf("step %d: %d accepted, %d limited; want %d, %d", i, ok, limited, s.ok, s.limited)
				}
			}
		})
	}
}

type step struct {
	wait           time.Duration
	n, ok, limited int
}

// Behind a trusted load balancer every client has its own bucket; the
// balancer's address does not share one among all of them. An IPv6
// client's is its /64.
func TestWebhookRateLimitBehindProxy(t *testing.T) {
	clk := &clock{t: time.Unix(1_790_000_000, 0)}
	srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, RateLimit: 1, RateBurst: 2, Now: clk.Now,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	send := func(client string) int {
		t.Helper()
		return postHeaders(t, srv.URL, map[string]string{"X-Forwarded-For": client}, validBody).StatusCode
	}
	for _, client := range []string{"198.51.100.1", "198.51.100.2"} {
		for i := range 2 {
			if code := send(client); code != http.StatusAccepted {
				t.Fatalf("%s request %d: %d, want 202", client, i+1, code)
			}
		}
		if code := send(client); code != http.StatusTooManyRequests {
			t.Errorf("%s over its burst: %d, want 429", client, code)
		}
	}
	// An IPv6 client's /64 is one client: a new address for each request
	// does not get a new bucket.
	for i, client := range []string{"2001:db8:0:5::1", "2001:db8:0:5::2", "2001:db8:0:5:abcd::3"} {
		want := http.StatusAccepted
		if i == 2 {
			want = http.StatusTooManyRequests
		}
		if code := send(client); code != want {
			t.Errorf("%s, request %d of its /64: %d, want %d", client, i+1, code, want)
		}
	}
}

// A flood the rate limit refuses is counted, not logged request by
// request; the refusals it lets through are.
func TestWebhookRateLimitedNotLogged(t *testing.T) {
	var logs bytes.Buffer
	clk := &clock{t: time.Unix(1_790_000_000, 0)}
	srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, RateLimit: 1, RateBurst: 1, Now: clk.Now,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	codes := map[int]int{}
	for range 20 {
		codes[postHeaders(t, srv.URL, map[string]string{"Authorization": "Bearer wrong-token-0123456789"}, validBody).StatusCode]++
	}
	if codes[http.StatusUnauthorized] != 1 || codes[http.StatusTooManyRequests] != 19 {
		t.Fatalf("statuses %v, want one 401 then 429s", codes)
	}
	if n := strings.Count(logs.String(), `"event rejected"`); n != 1 || strings.Contains(logs.String(), "rate_limited") {
		t.Errorf("%d rejection lines logged, want only the 401's:\n%s", n, logs.String())
	}
}

// Refusals the rate limit lets through (all of them with
// INGEST_RATE_LIMIT=0) are each counted, and logged a line a minute per
// reason, which counts the refusals since the last: a client without a
// token wrote a line per request, 50 a second per address at the rate
// limit's default.
func TestWebhookRefusalsLoggedOnceAMinute(t *testing.T) {
	const secret = "hmac-secret-0123456789-0123456789"
	tests := []struct {
		reason string
		hmac   bool
		hdr    map[string]string
		body   string
	}{
		{"unauthorized", false, map[string]string{"Authorization": "Bearer wrong-token-0123456789"}, validBody},
		{"unsupported_media_type", false, map[string]string{"Content-Type": "text/plain"}, validBody},
		{"malformed", false, nil, "{"},
		{"invalid", false, nil, strings.TrimSuffix(validBody, "}") + `,"receivedAt":"2026-11-26T10:15:00Z"}`},
		{"too_large", false, nil, strings.Repeat(" ", web.MaxBodyBytes+1)},
		{"bad_signature", true, nil, validBody},
	}
	for _, tt := range tests {
		t.Run(tt.reason, func(t *testing.T) {
			var logs testharness.LogBuffer
			clk := &clock{t: time.Unix(1_790_000_000, 0)}
			reg := prometheus.NewRegistry()
			opts := web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, Now: clk.Now, Registerer: reg,
				Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
			if tt.hmac {
				opts.HMACSecret = secret
			}
			srv := serve(t, opts)
			refuse := func(n int) {
				t.Helper()
				for range n {
					if resp := postHeaders(t, srv.URL, tt.hdr, tt.body); resp.StatusCode < 400 {
						t.Fatalf("status %d, want a refusal", resp.StatusCode)
					}
				}
			}
			// The "refusals_since_last_line" of each line of the reason.
			lines := func() []int {
				var counts []int
				for line := range strings.Lines(logs.String()) {
					var l struct {
						Msg    string `json:"msg"`
						Reason string `json:"reason"`
						Since  int    `json:"refusals_since_last_line"`
					}
					if err := json.Unmarshal([]byte(line), &l); err != nil {
						t.Fatalf("log line %q: %v", line, err)
					}
					if l.Msg == "event rejected" && l.Reason == tt.reason {
						counts = append(counts, l.Since)
					}
				}
				return counts
			}
			refuse(10)
			clk.Advance(59 * time.Second)
			refuse(5)
			if got := lines(); !slices.Equal(got, []int{1}) {
				t.Errorf("lines within the first minute counting %v refusals, want [1]; log:\n%s", got, logs.String())
			}
			clk.Advance(time.Second)
			refuse(1)
			if got := lines(); !slices.Equal(got, []int{1, 15}) {
				t.Errorf("lines counting %v refusals, want [1 15] (the first, then those of the minute since); log:\n%s", got, logs.String())
			}
			if got := rejectedTotal(t, reg, tt.reason); got != 16 {
				t.Errorf("stowline_ingest_events_rejected_total{reason=%q} = %v, want all 16", tt.reason, got)
			}
			// Another reason has lines of its own.
			other := map[string]string{"Authorization": "Bearer wrong-token-0123456789"}
			if tt.reason == "unauthorized" {
				other = map[string]string{"Content-Type": "text/plain"}
			}
			postHeaders(t, srv.URL, other, validBody)
			if n := strings.Count(logs.String(), `"event rejected"`); n != 3 {
				t.Errorf("%d lines, want 3: another reason's first refusal is logged at once; log:\n%s", n, logs.String())
			}
		})
	}
}

// Behind a trusted load balancer, the refusal lines are spaced per
// client the balancer names in X-Forwarded-For, not per balancer: one
// client's refusals must not hide those of another (an Orthanc whose
// token is wrong).
func TestWebhookRefusalsLoggedPerForwardedClient(t *testing.T) {
	var logs testharness.LogBuffer
	clk := &clock{t: time.Unix(1_790_000_000, 0)}
	srv := serve(t, web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, Now: clk.Now,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		Logger:         slog.New(slog.NewJSONHandler(&logs, nil))})
	// The second refusal of 198.51.100.1, within the minute, is not logged.
	for _, client := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.1"} {
		hdr := map[string]string{"Authorization": "Bearer wrong-token-0123456789", "X-Forwarded-For": client}
		if code := postHeaders(t, srv.URL, hdr, validBody).StatusCode; code != http.StatusUnauthorized {
			t.Fatalf("%s: %d, want 401", client, code)
		}
	}
	var clients []string
	for line := range strings.Lines(logs.String()) {
		var l struct {
			Msg    string `json:"msg"`
			Client string `json:"client"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if l.Msg == "event rejected" {
			clients = append(clients, l.Client)
		}
	}
	if want := []string{"198.51.100.1", "198.51.100.2"}; !slices.Equal(clients, want) {
		t.Errorf("refusal lines for clients %q, want %q; log:\n%s", clients, want, logs.String())
	}
}

// rejectedTotal is stowline_ingest_events_rejected_total{reason} in reg.
func rejectedTotal(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "stowline_ingest_events_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
