package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

const token = "test-token-0123456789"

const validBody = `{"type":"orthanc.study.stable","version":1,"source":"orthanc-a",` +
	`"orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988",` +
	`"studyInstanceUid":"1.2.840.113619.2.1.2411.1031152382.365.1.736169244","lastUpdate":"20261126T101500"}`

// Publish timeouts: a publish JetStream must store gets a generous one
// on a loaded host; one that must fail waits all of its.
const (
	storedPublishTimeout = 10 * time.Second
	failedPublishTimeout = 2 * time.Second
)

func newServer(t *testing.T, pub events.Publisher, publishTimeout time.Duration, reg ...prometheus.Registerer) *httptest.Server {
	t.Helper()
	opts := web.WebhookOptions{Tokens: []string{token, "old-token-rotating-out"}, Publisher: pub, PublishTimeout: publishTimeout}
	if len(reg) > 0 {
		opts.Registerer = reg[0]
	}
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

func post(t *testing.T, url, contentType, auth, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+web.WebhookPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("status %d, body not JSON: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

func TestWebhook(t *testing.T) {
	ns := testnats.Start(t)
	srv := newServer(t, natsjs.Publisher{JS: ns.JS}, storedPublishTimeout)
	bearer := "Bearer " + token

	tests := []struct {
		name        string
		contentType string
		auth        string
		body        string
		status      int
		errContains string
		errLacks    string // what the sender wrote, never echoed into the answer or the log
	}{
		{"no token", "application/json", "", validBody, 401, "bearer token", ""},
		{"wrong token", "application/json", "Bearer nope", validBody, 401, "bearer token", ""},
		{"basic auth", "application/json", "Basic dXNlcjpwYXNz", validBody, 401, "bearer token", ""},
		{"text body", "text/plain", bearer, validBody, 415, "application/json", ""},
		{"no content type", "", bearer, validBody, 415, "application/json", ""},
		// Quoted back in part: a header of up to 1 MB went whole into
		// the answer and the log.
		{"long content type", "text/" + strings.Repeat("x", 2000), bearer, validBody, 415, "application/json", strings.Repeat("x", 200)},
		{"malformed", "application/json", bearer, `{"type":`, 400, "malformed JSON", ""},
		{"empty", "application/json", bearer, ``, 400, "empty body", ""},
		{"two values", "application/json", bearer, validBody + validBody, 400, "more than one", ""},
		{"wrong type of field", "application/json", bearer, strings.Replace(validBody, `"version":1`, `"version":"1"`, 1), 400, `field "version" must be a whole number`, ""},
		{"wrong type of a string field", "application/json", bearer, strings.Replace(validBody, `{`, `{"priority":1,`, 1), 400, `field "priority" must be a string`, ""},
		{"not an object", "application/json", bearer, `[` + validBody + `]`, 400, "must be one JSON object", ""},
		// A newer Lua script's event, with a field this build does not
		// know: said to be newer, not refused for the field.
		{"newer version with a new field", "application/json", bearer, strings.Replace(validBody, `"version":1`, `"version":2,"modalityHint":"CT"`, 1), 400, "version 2, newer than this build's 1: the sender is newer than this ingest, upgrade the ingest first", ""},
		{"newer version", "application/json", bearer, strings.Replace(validBody, `"version":1`, `"version":2`, 1), 400, "version 2, newer than this build's 1: the sender is newer than this ingest, upgrade the ingest first", ""},
		{"unknown field", "application/json", bearer, strings.Replace(validBody, `{`, `{"patientName":"x",`, 1), 400, "patientName", ""},
		{"missing field", "application/json", bearer, strings.Replace(validBody, `"source":"orthanc-a",`, ``, 1), 400, `"source"`, ""},
		{"traversal id", "application/json", bearer, strings.Replace(validBody, `27f7126f-4f66fb14-03f4081b-f9341db2-53925988`, `../../tools/reset`, 1), 400, `"orthancStudyId"`, ""},
		{"receivedAt from sender", "application/json", bearer, strings.Replace(validBody, `{`, `{"receivedAt":"2026-01-01T00:00:00Z",`, 1), 400, "receivedAt", ""},
		{"receivedAt not a time", "application/json", bearer, strings.Replace(validBody, `{`, `{"receivedAt":"DOE^JANE 19700101",`, 1), 400, `field "receivedAt": is set by the ingest`, "DOE"},
		{"long unknown field", "application/json", bearer, strings.Replace(validBody, `{`, `{"`+strings.Repeat("DOE^JANE", 20)+`":1,`, 1), 400, "unknown field", strings.Repeat("DOE^JANE", 10)},
		{"too large", "application/json", bearer, `{"type":"` + strings.Repeat("x", web.MaxBodyBytes) + `"}`, 413, "larger than", ""},
		// The limit's boundary: a body of MaxBodyBytes is read whole.
		{"one byte over the limit", "application/json", bearer, validBody + strings.Repeat(" ", web.MaxBodyBytes+1-len(validBody)), 413, "larger than", ""},
		{"exactly the limit", "application/json", bearer, validBody + strings.Repeat(" ", web.MaxBodyBytes-len(validBody)), 202, "", ""},
		{"accepted", "application/json; charset=utf-8", bearer, validBody, 202, "", ""},
		// A Windows tool's UTF-8 byte-order mark is read past (RFC 8259
		// 8.1); UTF-16 and gzip were "invalid character", naming no cause.
		{"UTF-8 byte-order mark", "application/json", bearer, "\xef\xbb\xbf" + validBody, 202, "", ""},
		{"UTF-16 LE with its mark", "application/json", bearer, "\xff\xfe{\x00\"\x00", 400, "UTF-16", ""},
		{"UTF-16 BE without a mark", "application/json", bearer, "\x00{\x00\"", 400, "UTF-16", ""},
		{"gzip without its header", "application/json", bearer, "\x1f\x8b\x08\x00rest", 400, "gzip-compressed", ""},
		{"scheme in lower case (RFC 9110: case-insensitive)", "application/json", "bearer " + token, validBody, 202, "", ""},
		{"two spaces after the scheme (RFC 9110: 1*SP)", "application/json", "Bearer  " + token, validBody, 202, "", ""},
		{"scheme without a space", "application/json", "Bearer" + token, validBody, 401, "bearer token", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := post(t, srv.URL, tt.contentType, tt.auth, tt.body)
			if status != tt.status {
				t.Fatalf("status = %d (%v), want %d", status, body, tt.status)
			}
			if tt.errContains != "" {
				msg, _ := body["error"].(string)
				if !strings.Contains(msg, tt.errContains) {
					t.Errorf("error %q does not contain %q", msg, tt.errContains)
				}
				if tt.errLacks != "" && strings.Contains(msg, tt.errLacks) {
					t.Errorf("error %q echoes what the sender wrote", msg)
				}
			}
		})
	}

	// The accepted event is in the stream, once, with its dedupe ID.
	status, body := post(t, srv.URL, "application/json", bearer, validBody)
	if status != 202 || body["duplicate"] != true {
		t.Errorf("repeat: status %d body %v, want 202 duplicate", status, body)
	}
	ctx := context.Background()
	stream, err := ns.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
	msg, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.ReceivedAt.IsZero() || ev.Source != "orthanc-a" {
		t.Errorf("stored event = %+v", ev)
	}
	if got := msg.Header.Get("Nats-Msg-Id"); got != ev.MsgID() {
		t.Errorf("Nats-Msg-Id = %q, want %q", got, ev.MsgID())
	}
	// The 202 names the event as README's table says: its stream,
	// sequence and de-duplication ID.
	if body["msgId"] != ev.MsgID() || body["stream"] != natsjs.EventStream || body["seq"] != float64(1) {
		t.Errorf("202 body %v, want stream %s, seq 1, msgId %s", body, natsjs.EventStream, ev.MsgID())
	}

	// A study that changed (new LastUpdate) is a new event.
	status, body = post(t, srv.URL, "application/json", bearer, strings.Replace(validBody, "20261126T101500", "20261126T111500", 1))
	if status != 202 || body["duplicate"] != false || body["seq"].(float64) != 2 {
		t.Errorf("changed study: %d %v", status, body)
	}
}

func TestWebhookJetStreamDown(t *testing.T) {
	ns := testnats.Start(t)
	srv := newServer(t, natsjs.Publisher{JS: ns.JS}, failedPublishTimeout)
	ns.Shutdown() // a real outage: the server is gone
	status, body := post(t, srv.URL, "application/json", "Bearer "+token, validBody)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503", status)
	}
	if msg, _ := body["error"].(string); !strings.Contains(msg, "JetStream did not acknowledge") {
		t.Errorf("error = %q", msg)
	}
}

// heldPublisher holds each publish (started says it began) until release
// is closed, then stores it unless its context ended first.
type heldPublisher struct {
	started, release chan struct{}
	result           chan error
}

func (p *heldPublisher) Publish(ctx context.Context, _ *events.StudyStable) (*jetstream.PubAck, error) {
	close(p.started)
	select {
	case <-ctx.Done():
		p.result <- ctx.Err()
		return nil, ctx.Err()
	case <-p.release:
	}
	p.result <- nil
	return &jetstream.PubAck{Stream: natsjs.EventStream, Sequence: 1}, nil
}

// TestWebhookPublishOutlivesTheSender: a sender that gives up waiting
// (Orthanc 1.12's Lua script after 3 s) does not cut off the publish:
// JetStream still gets the event within INGEST_PUBLISH_TIMEOUT. The
// publish was cancelled with the request, logged as "event not stored"
// and counted as jetstream_unavailable whether JetStream stored it or not,
// and an event still in nats.go's retries was dropped.
func TestWebhookPublishOutlivesTheSender(t *testing.T) {
	pub := &heldPublisher{started: make(chan struct{}), release: make(chan struct{}), result: make(chan error, 1)}
	h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: pub, PublishTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	senderGone := make(chan struct{})
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			go func() {
				<-req.Context().Done()
				close(senderGone)
			}()
			next.ServeHTTP(w, req)
		})
	})
	h.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+web.WebhookPath, strings.NewReader(validBody))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	// The sender gives up while the publish waits, and the server sees it.
	<-pub.started
	cancel()
	<-done
	<-senderGone
	close(pub.release)
	if err := <-pub.result; err != nil {
		t.Errorf("publish after the sender gave up: %v; want the event stored", err)
	}
}

// TestWebhookCountsThePreviousToken: during a rotation the token being
// replaced is still accepted, and each request carrying it is counted,
// so the operator sees when no Orthanc sends it any more.
func TestWebhookCountsThePreviousToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := newServer(t, &fakePublisher{}, storedPublishTimeout, reg)
	for _, tt := range []struct {
		bearer   string
		status   int
		previous float64
	}{
		{token, http.StatusAccepted, 0},
		{"old-token-rotating-out", http.StatusAccepted, 1},
		{"not-a-token-0123456789", http.StatusUnauthorized, 1},
		{"old-token-rotating-out", http.StatusAccepted, 2},
	} {
		if status, _ := post(t, srv.URL, "application/json", "Bearer "+tt.bearer, validBody); status != tt.status {
			t.Errorf("token %q: status %d, want %d", tt.bearer, status, tt.status)
		}
		if got := counter(t, reg, "stowline_ingest_previous_token_total", "", ""); got != tt.previous {
			t.Errorf("after token %q: stowline_ingest_previous_token_total %v, want %v", tt.bearer, got, tt.previous)
		}
	}
}

// TestWebhookWrongMethodSaysWhy: a request to the webhook other than a
// POST (an operator trying the URL with curl) gets 405 with Allow: POST
// and a message saying what to send; the router's 405 had an empty body.
// A POST is still the webhook's.
func TestWebhookWrongMethodSaysWhy(t *testing.T) {
	pub := &fakePublisher{}
	srv := newServer(t, pub, storedPublishTimeout)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		t.Run(method, func(t *testing.T) {
			req, err := http.NewRequest(method, srv.URL+web.WebhookPath, strings.NewReader(validBody))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("status %d, body not JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
				t.Errorf("status %d, Allow %q; want 405, POST", resp.StatusCode, resp.Header.Get("Allow"))
			}
			if !strings.Contains(body["error"], "method "+method+" not allowed: POST") {
				t.Errorf("error %q does not say to POST", body["error"])
			}
		})
	}
	if status, body := post(t, srv.URL, "application/json", "Bearer "+token, validBody); status != http.StatusAccepted {
		t.Errorf("POST: status %d (%v), want 202", status, body)
	}
}

// TestWebhookRefusesACompressedBody: an event sent with a content coding
// is answered 415 naming it, and nothing is published; "identity" is no
// coding. A gzip body was read as JSON and refused as malformed.
func TestWebhookRefusesACompressedBody(t *testing.T) {
	pub := &fakePublisher{}
	srv := newServer(t, pub, storedPublishTimeout)
	for _, tt := range []struct {
		encoding string
		status   int
	}{{"gzip", 415}, {"identity, br", 415}, {"identity", 202}} {
		t.Run(tt.encoding, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, srv.URL+web.WebhookPath, strings.NewReader(validBody))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Encoding", tt.encoding)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("status %d, body not JSON: %v", resp.StatusCode, err)
			}
			msg, _ := body["error"].(string)
			if resp.StatusCode != tt.status || (tt.status == 415 && !strings.Contains(msg, "Content-Encoding")) {
				t.Errorf("status %d, error %q; want %d", resp.StatusCode, msg, tt.status)
			}
		})
	}
	if n := pub.published(); n != 1 {
		t.Errorf("%d events published, want the identity one", n)
	}
}

// TestWebhookSlowBodyTimesOut: a body that trickles in past the server's
// read timeout (web.NewServer's is 30 s; shorter here) is answered 408
// and counted as a timeout, not 400 "malformed" with the socket's error,
// which sent the reader after a bad event rather than a slow network.
func TestWebhookSlowBodyTimesOut(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token}, Publisher: &fakePublisher{}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	h.Mount(r)
	srv := httptest.NewUnstartedServer(r)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Headers and half the body; the rest never comes.
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s",
		web.WebhookPath, token, len(validBody), validBody[:len(validBody)/2])
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "read timeout") {
		t.Errorf("answer %d %s; want 408 saying the body did not arrive in time", resp.StatusCode, b)
	}
	if got := rejected(t, reg, "timeout"); got != 1 {
		t.Errorf("rejected{reason=timeout} = %v, want 1", got)
	}
}

// slowPublisher answers after delay: ack (err nil) or err.
type slowPublisher struct {
	delay time.Duration
	err   error
}

func (p *slowPublisher) Publish(ctx context.Context, _ *events.StudyStable) (*jetstream.PubAck, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(p.delay):
	}
	if p.err != nil {
		return nil, p.err
	}
	return &jetstream.PubAck{Stream: natsjs.EventStream, Sequence: 1}, nil
}

// TestWebhookAnswersAfterALongPublish: the server's WriteTimeout counts
// from the request's headers (web.NewServer's is 60 s; shorter here), so
// a body that trickled in and a publish of up to INGEST_PUBLISH_TIMEOUT
// could pass it: the 202 for a stored event, or the 503, never reached
// the sender, which saw the connection closed ("EOF").
func TestWebhookAnswersAfterALongPublish(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"stored", nil, http.StatusAccepted},
		{"refused", errors.New("nats: timeout"), http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const serverWriteTimeout = 100 * time.Millisecond
			h, err := web.NewWebhook(web.WebhookOptions{Tokens: []string{token},
				Publisher: &slowPublisher{delay: 3 * serverWriteTimeout, err: tc.err}, PublishTimeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			r := chi.NewRouter()
			h.Mount(r)
			srv := httptest.NewUnstartedServer(r)
			srv.Config.WriteTimeout = serverWriteTimeout
			srv.Start()
			t.Cleanup(srv.Close)
			req, err := http.NewRequest(http.MethodPost, srv.URL+web.WebhookPath, strings.NewReader(validBody))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatalf("no answer after a publish longer than the server's write timeout: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}
