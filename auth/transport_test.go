package auth

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// upstream is a destination that records the Authorization header it sees
// and answers 401 to the tokens in reject.
type upstream struct {
	URL    string
	hits   atomic.Int64
	mu     sync.Mutex
	seen   []string
	reject map[string]bool
	// hold, if set, keeps each request unanswered until it is closed.
	hold chan struct{}
}

func newUpstream(t *testing.T, reject ...string) *upstream {
	t.Helper()
	u := &upstream{reject: map[string]bool{}}
	for _, r := range reject {
		u.reject["Bearer "+r] = true
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		h := r.Header.Get("Authorization")
		u.mu.Lock()
		u.seen = append(u.seen, h)
		hold := u.hold
		u.mu.Unlock()
		if hold != nil {
			<-hold
		}
		if h == "" || u.reject[h] {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

func (u *upstream) lastAuth() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.seen) == 0 {
		return ""
	}
	return u.seen[len(u.seen)-1]
}

// do sends a POST with a small body through rt and returns the status.
func do(t *testing.T, rt http.RoundTripper, url string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader("dicom"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Basic c3RhbGU6c3RhbGU=")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if got := req.Header.Get("Authorization"); got != "Basic c3RhbGU6c3RhbGU=" {
		t.Fatalf("RoundTrip modified the caller's request: Authorization = %q", got)
	}
	return resp.StatusCode
}

func TestTransportSetsBearer(t *testing.T) {
	tests := []struct {
		name string
		src  func(t *testing.T) oauth2.TokenSource
		want string
	}{
		{
			name: "TokenSource",
			src:  func(t *testing.T) oauth2.TokenSource { return newSource(t, newTokenServer(t, issue(3600, 0))) },
			want: "Bearer token-1",
		},
		{
			name: "plain oauth2 source",
			src: func(*testing.T) oauth2.TokenSource {
				// token_type in lower case, as many servers send it.
				return oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "static", TokenType: "bearer"})
			},
			want: "Bearer static",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t)
			rt := Transport(tt.src(t), nil)
			if got := do(t, rt, up.URL); got != http.StatusOK {
				t.Fatalf("status = %d, want 200", got)
			}
			if got := up.lastAuth(); got != tt.want {
				t.Fatalf("upstream saw Authorization %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransport401InvalidatesWithoutRetry(t *testing.T) {
	srv := newTokenServer(t, issue(3600, 0))
	ts := newSource(t, srv)
	up := newUpstream(t, "token-1")
	rt := Transport(ts, http.DefaultTransport)

	// Several workers are rejected with the same token at once: the
	// upstream answers none before all have sent theirs.
	const workers = 8
	up.hold = make(chan struct{})
	var wg sync.WaitGroup
	statuses := make([]int, workers)
	for i := range workers {
		wg.Go(func() { statuses[i] = do(t, rt, up.URL) })
	}
	for up.hits.Load() < workers {
		runtime.Gosched()
	}
	up.mu.Lock()
	close(up.hold)
	up.hold = nil
	up.mu.Unlock()
	wg.Wait()
	for i, s := range statuses {
		if s != http.StatusUnauthorized {
			t.Fatalf("worker %d: status = %d, want 401 passed through", i, s)
		}
	}
	if got := up.hits.Load(); got != workers {
		t.Fatalf("upstream hits = %d, want %d (no retries)", got, workers)
	}

	if got := do(t, rt, up.URL); got != http.StatusOK {
		t.Fatalf("after 401: status = %d, want 200 with a fresh token", got)
	}
	if got := up.lastAuth(); got != "Bearer token-2" {
		t.Fatalf("after 401: upstream saw %q, want Bearer token-2", got)
	}
	if got := srv.Requests(); got != 2 {
		t.Fatalf("token requests = %d, want 2 (one refetch for all the 401s)", got)
	}
}

// closeRecorder is a request body that records whether it was closed.
type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

func TestTransportTokenFailure(t *testing.T) {
	tests := []struct {
		name    string
		src     func(t *testing.T) oauth2.TokenSource
		ctx     func(t *testing.T) context.Context
		wantErr []error
	}{
		{
			name: "token endpoint refuses",
			src: func(t *testing.T) oauth2.TokenSource {
				return newSource(t, newTokenServer(t, func(w http.ResponseWriter, _ *http.Request) {
					http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				}))
			},
			wantErr: []error{ErrToken},
		},
		{
			name: "request context ends while waiting for a token",
			src: func(t *testing.T) oauth2.TokenSource {
				return newSource(t, newTokenServer(t, issue(3600, 2*time.Second)))
			},
			ctx: func(t *testing.T) context.Context {
				ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
				t.Cleanup(cancel)
				return ctx
			},
			wantErr: []error{ErrToken, context.DeadlineExceeded},
		},
		{
			name:    "no token source",
			src:     func(*testing.T) oauth2.TokenSource { return nil },
			wantErr: []error{errNoTokenSource},
		},
		{
			name:    "nil *TokenSource",
			src:     func(*testing.T) oauth2.TokenSource { return (*TokenSource)(nil) },
			wantErr: []error{errNoTokenSource},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t)
			ctx := t.Context()
			if tt.ctx != nil {
				ctx = tt.ctx(t)
			}
			body := &closeRecorder{Reader: strings.NewReader("dicom")}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, up.URL, body)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			resp, err := Transport(tt.src(t), nil).RoundTrip(req)
			if err == nil {
				_ = resp.Body.Close()
				t.Fatal("RoundTrip: want an error")
			}
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want it to match %v", err, want)
				}
			}
			if !body.closed.Load() {
				t.Error("request body was not closed")
			}
			if up.hits.Load() != 0 {
				t.Error("request reached the destination without a token")
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("RoundTrip took %v, want a prompt failure", d)
			}
		})
	}
}

// The token goes only to the origin a request began with: a redirect to
// another host (or scheme, or port) is refused before anything is sent
// there; a redirect within the origin carries the token as before.
func TestTransportRefusesCrossOriginRedirect(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		if r.Header.Get("Authorization") != "" {
			t.Errorf("the token reached another origin: %q", r.Header.Get("Authorization"))
		}
	}))
	t.Cleanup(other.Close)
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, other.URL+"/x", http.StatusFound)
		case "/here":
			http.Redirect(w, r, "/final", http.StatusFound)
		case "/final":
			if r.Header.Get("Authorization") != "Bearer tok-1" {
				t.Errorf("same-origin redirect: Authorization %q", r.Header.Get("Authorization"))
			}
		}
	}))
	t.Cleanup(dest.Close)
	c := &http.Client{Transport: Transport(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "tok-1", TokenType: "Bearer"}), nil)}

	_, err := c.Get(dest.URL + "/away")
	if !errors.Is(err, ErrCrossOriginRedirect) {
		t.Errorf("redirect to another host: err = %v, want ErrCrossOriginRedirect", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the other origin got %d requests", n)
	}
	resp, err := c.Get(dest.URL + "/here")
	if err != nil {
		t.Fatalf("redirect within the origin: %v", err)
	}
	resp.Body.Close()
}

// TestTokenRequestNotRedirectedElsewhere: the token request carries the
// client's credential in its body (client_secret_post, as Entra is always
// asked; a client assertion), which Go's client sends again on a 307 or
// 308, to any host, plain HTTP included, dropping only the Authorization
// header. A token endpoint's redirect to another origin is refused before
// anything is sent there, and not retried; one within its origin is
// followed.
func TestTokenRequestNotRedirectedElsewhere(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_ = r.ParseForm()
		if r.PostForm.Get("client_secret") != "" {
			t.Errorf("the client secret reached another origin")
		}
		http.Error(w, "not here", http.StatusNotFound)
	}))
	t.Cleanup(other.Close)
	ok := issue(3600, 0)
	idp := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token-307":
			http.Redirect(w, r, other.URL+"/token", http.StatusTemporaryRedirect)
		case "/token-308":
			http.Redirect(w, r, other.URL+"/token", http.StatusPermanentRedirect)
		case "/token-moved":
			http.Redirect(w, r, "/token", http.StatusTemporaryRedirect)
		default:
			ok(w, r)
		}
	})
	base := strings.TrimSuffix(idp.URL, "/token")
	tests := []struct {
		name, path string
		refused    bool
	}{
		{"307 to another origin", "/token-307", true},
		{"308 to another origin", "/token-308", true},
		{"307 within the origin", "/token-moved", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := idp.Requests()
			ts, err := NewTokenSource(t.Context(), Config{TokenURL: base + tt.path, ClientID: testClientID, ClientSecret: testSecret},
				WithAuthStyle(oauth2.AuthStyleInParams), fastRetries)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ts.Token()
			if !tt.refused {
				if err != nil {
					t.Fatalf("redirect within the origin: %v", err)
				}
				return
			}
			te, isTE := errors.AsType[*TokenError](err)
			if !isTE || !errors.Is(err, ErrCrossOriginRedirect) || te.Temporary() {
				t.Fatalf("err = %v, want a TokenError for ErrCrossOriginRedirect, not temporary", err)
			}
			if n := idp.Requests() - before; n != 1 {
				t.Errorf("%d token requests, want 1 (a refused redirect is not retried)", n)
			}
		})
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the other origin got %d token requests", n)
	}
}

// TestCheckRedirectOrigin: a redirect keeps the credential only within
// the origin it was configured for, scheme and port included: a
// redirect from https to http on the same host would send the bearer
// token in the clear.
func TestCheckRedirectOrigin(t *testing.T) {
	const from = "https://pacs.example/dicom-web/studies"
	tests := []struct {
		to      string
		refused bool
	}{
		{"https://pacs.example/v2/studies", false},
		{"http://pacs.example/dicom-web/studies", true},
		{"https://pacs.example:8443/dicom-web/studies", true},
		{"https://elsewhere.example/dicom-web/studies", true},
	}
	for _, tt := range tests {
		first, err := http.NewRequest(http.MethodGet, from, nil)
		if err != nil {
			t.Fatal(err)
		}
		next, err := http.NewRequest(http.MethodGet, tt.to, nil)
		if err != nil {
			t.Fatal(err)
		}
		next.Response = &http.Response{Request: first} // as net/http links a redirect
		if err := CheckRedirect(next); errors.Is(err, ErrCrossOriginRedirect) != tt.refused {
			t.Errorf("redirect to %s: err = %v, want refused %v", tt.to, err, tt.refused)
		}
	}
}

// TestSameOriginRedirectStopsAtTen: as net/http's default policy, the
// tenth redirect is not followed (a loop ends).
func TestSameOriginRedirectStopsAtTen(t *testing.T) {
	req, err := http.NewRequest(http.MethodGet, "https://pacs.example/studies", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		via     int
		stopped bool
	}{{9, false}, {10, true}} {
		if err := SameOriginRedirect(req, make([]*http.Request, tt.via)); (err != nil) != tt.stopped {
			t.Errorf("after %d requests: err = %v, want stopped %v", tt.via, err, tt.stopped)
		}
	}
}

// TestTransportRefusesAnEmptyToken: a token source that gives an empty
// access token (a custom source, an endpoint's odd answer) fails the
// request as a token error before anything is sent: "Bearer " alone
// reached the destination, and its 401 read as the credentials refused.
func TestTransportRefusesAnEmptyToken(t *testing.T) {
	var sent atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { sent.Add(1) }))
	t.Cleanup(srv.Close)
	c := &http.Client{Transport: Transport(oauth2.StaticTokenSource(&oauth2.Token{TokenType: "Bearer"}), nil)}
	if _, err := c.Get(srv.URL); !errors.Is(err, ErrToken) {
		t.Errorf("err = %v, want ErrToken", err)
	}
	if n := sent.Load(); n != 0 {
		t.Errorf("%d requests reached the destination, want none", n)
	}
}
