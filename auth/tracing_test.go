package auth

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/internal/testharness"
)

func spansNamed(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attrValue(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// TestTokenSpans: a caller inside a trace gets a "destination token" span,
// whose first fetch is a "token fetch" child; a cached token fetches
// nothing; a caller outside any trace gets no span of its own, and its
// fetch is a root.
func TestTokenSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	srv := newTokenServer(t, issue(3600, 0))
	ts := newSource(t, srv, WithTracerProvider(tp, attribute.String("stowline.destination", "archive")))

	ctx, request := tp.Tracer("test").Start(context.Background(), "stow request")
	tok1, err := ts.TokenContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.TokenContext(ctx); err != nil {
		t.Fatal(err)
	}
	request.End()

	waits := spansNamed(rec, "destination token")
	fetches := spansNamed(rec, "token fetch")
	if len(waits) != 2 || len(fetches) != 1 {
		t.Fatalf("%d destination token and %d token fetch spans, want 2 and 1", len(waits), len(fetches))
	}
	for i, w := range waits {
		if w.Parent().SpanID() != request.SpanContext().SpanID() {
			t.Errorf("destination token %d is not the request's child", i)
		}
		if got, want := attrValue(w, "auth.token.cached").AsBool(), i == 1; got != want {
			t.Errorf("destination token %d: cached = %v, want %v", i, got, want)
		}
	}
	f := fetches[0]
	if f.Parent().SpanID() != waits[0].SpanContext().SpanID() {
		t.Error("the token fetch is not the first caller's child")
	}
	if attrValue(f, "auth.background").AsBool() || attrValue(f, "stowline.destination").AsString() != "archive" ||
		attrValue(f, "auth.token.lifetime_s").AsInt64() < 3500 || !strings.HasPrefix(attrValue(f, "server.address").AsString(), "127.0.0.1:") {
		t.Errorf("token fetch attributes %v", f.Attributes())
	}

	// Outside a trace (a readiness check): no span of the caller's; a
	// fetch would be a root.
	ts.Invalidate(tok1)
	if _, err := ts.TokenContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(spansNamed(rec, "destination token")); n != 2 {
		t.Errorf("a caller outside any trace added a destination token span (%d)", n)
	}
	fetches = spansNamed(rec, "token fetch")
	if len(fetches) != 2 || fetches[1].Parent().IsValid() {
		t.Errorf("%d fetches; the second's parent %v, want a root", len(fetches), fetches[1].Parent())
	}
}

// TestTokenSpanOfARefusal: a refused fetch says why (status, RFC 6749
// code), never the secret or the server's description.
func TestTokenSpanOfARefusal(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	srv := newTokenServer(t, issue(3600, 0))
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, ClientSecret: "wrong-" + testSecret},
		WithTracerProvider(tp), fastRetries)
	if err != nil {
		t.Fatal(err)
	}
	ctx, request := tp.Tracer("test").Start(context.Background(), "stow request")
	if _, err := ts.TokenContext(ctx); err == nil {
		t.Fatal("a wrong secret got a token")
	}
	request.End()
	deadline := time.Now().Add(5 * time.Second)
	for len(spansNamed(rec, "token fetch")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	fetches := spansNamed(rec, "token fetch")
	if len(fetches) != 1 {
		t.Fatalf("%d token fetch spans, want 1", len(fetches))
	}
	f := fetches[0]
	if f.Status().Code != codes.Error || attrValue(f, "http.response.status_code").AsInt64() != 401 ||
		attrValue(f, "oauth2.error").AsString() != "invalid_client" || attrValue(f, "error.type").AsString() != "http_401" {
		t.Errorf("refused fetch: status %v, attributes %v", f.Status(), f.Attributes())
	}
	for _, s := range rec.Ended() {
		texts := []string{s.Status().Description}
		for _, kv := range s.Attributes() {
			texts = append(texts, kv.Value.String())
		}
		for _, e := range s.Events() {
			for _, kv := range e.Attributes {
				texts = append(texts, kv.Value.String())
			}
		}
		for _, text := range texts {
			if strings.Contains(text, testSecret) {
				t.Errorf("span %q holds the secret: %q", s.Name(), text)
			}
		}
	}
}

// TestTokenSpanBoundsTheErrorCode: oauth2.error is the token server's own
// text; a server that puts a page, lines or the request's secret there
// does not get it into the span whole.
func TestTokenSpanBoundsTheErrorCode(t *testing.T) {
	code := "invalid_client\r\nclient_secret " + testSecret + " refused\x00" + strings.Repeat("x", 500)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	srv := newTokenServer(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
	})
	ts, err := NewTokenSource(t.Context(), Config{TokenURL: srv.URL, ClientID: testClientID, ClientSecret: testSecret},
		WithTracerProvider(tp), fastRetries)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.TokenContext(t.Context()); err == nil {
		t.Fatal("a refusal got a token")
	}
	testharness.WaitFor(t, "the token fetch span", 5*time.Second, func() bool { return len(spansNamed(rec, "token fetch")) > 0 })
	got := attrValue(spansNamed(rec, "token fetch")[0], "oauth2.error").AsString()
	// Control characters dropped, the secret scrubbed, 64 characters.
	want := "invalid_clientclient_secret [REDACTED] refused"
	want += strings.Repeat("x", 64-len(want))
	if got != want {
		t.Errorf("oauth2.error = %q, want %q", got, want)
	}
}
