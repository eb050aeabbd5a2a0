package app

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testpki"
)

// A destination that offers HTTP/2 gets it, also with a private CA
// (TLS_CA_FILE), and the token endpoint and the STOW client, which share
// the TLS settings, can start at the same time (run with -race).
func TestDestinationUsesHTTP2(t *testing.T) {
	var mu sync.Mutex
	protos := map[string]bool{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos[r.Proto] = true
		mu.Unlock()
		if r.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"tok-0123456789","token_type":"Bearer","expires_in":3600}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": srv.URL + "/dicomweb", "TLS_CA_FILE": caFile,
		"OAUTH_TOKEN_URL": srv.URL + "/token", "OAUTH_CLIENT_ID": "stowline", "OAUTH_CLIENT_SECRET": "secret-0123456789",
	}
	dest := loadedDestination(t, env, 0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d, err := newDestination(ctx, &dest, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			resp, err := d.HTTP.Get(srv.URL + "/dicomweb/studies")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Errorf("destination answered over %s, want HTTP/2", resp.Proto)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(protos) != 1 || !protos["HTTP/2.0"] {
		t.Errorf("the server saw %v, want only HTTP/2.0 (token endpoint included)", protos)
	}
}

// TestDestinationTLSErrorNamesIt: TLS files that cannot be used (a
// client certificate and a key of different pairs, a PEM block that is
// no certificate) fail the destination's set-up naming the destination
// and its variables: with several destinations, the bare "private key
// does not match public key" named none. The configuration refuses them
// (internal/config); here they changed after it read them.
func TestDestinationTLSErrorNamesIt(t *testing.T) {
	ca := testpki.NewCA(t, "tls-error-ca")
	_, certFile, _ := ca.Issue(t, "client-a", false)
	_, _, otherKey := ca.Issue(t, "client-b", false)
	notCert := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not a certificate")}), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  func(*config.NamedDestination)
		want []string
	}{
		{name: "key of another pair", set: func(d *config.NamedDestination) { d.TLSCertFile, d.TLSKeyFile = certFile, otherKey },
			want: []string{"destination ai", "DESTINATION_AI_TLS_CERT_FILE", "DESTINATION_AI_TLS_KEY_FILE"}},
		{name: "CA block that is no certificate", set: func(d *config.NamedDestination) { d.TLSCAFile = notCert },
			want: []string{"destination ai", "DESTINATION_AI_TLS_CA_FILE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{
				"NATS_URL": "nats://127.0.0.1:4222", "DESTINATIONS": "archive,ai",
				"DESTINATION_ARCHIVE_URL": "https://archive.example.org/dicomweb", "DESTINATION_AI_URL": "https://ai.example.org/dicomweb",
			}
			ai := loadedDestination(t, env, 1)
			tt.set(&ai)
			_, err := newDestination(t.Context(), &ai, nil, nil, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("newDestination accepted the TLS files")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

// A destination or token endpoint reached over plain http:// is warned
// about at start, naming the variable: the studies (patient data) and the
// client secret or token would cross the network unencrypted. A loopback
// address (a TLS proxy on the host) and https:// are not.
func TestPlainHTTPDestinationIsWarned(t *testing.T) {
	tests := []struct {
		name string
		set  map[string]string
		want []string // variables warned about; none: no warning
	}{
		{"https", map[string]string{"DESTINATION_AI_URL": "https://ai.example.org/dicomweb", "DESTINATION_AI_OAUTH_TOKEN_URL": "https://idp.example.org/token"}, nil},
		{"plain http", map[string]string{"DESTINATION_AI_URL": "http://ai.example.org/dicomweb", "DESTINATION_AI_OAUTH_TOKEN_URL": "http://idp.example.org/token"},
			[]string{"DESTINATION_AI_URL", "DESTINATION_AI_OAUTH_TOKEN_URL"}},
		{"plain http issuer", map[string]string{"DESTINATION_AI_URL": "https://ai.example.org/dicomweb", "DESTINATION_AI_OAUTH_ISSUER_URL": "http://idp.example.org"},
			[]string{"DESTINATION_AI_OAUTH_ISSUER_URL"}},
		{"loopback", map[string]string{"DESTINATION_AI_URL": "http://127.0.0.1:8043/dicomweb", "DESTINATION_AI_OAUTH_TOKEN_URL": "http://localhost:9000/token"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{
				"NATS_URL": "nats://127.0.0.1:4222", "DESTINATIONS": "ai",
				"DESTINATION_AI_OAUTH_CLIENT_ID": "stowline", "DESTINATION_AI_OAUTH_CLIENT_SECRET": "plain-http-secret-0123456789",
			}
			maps.Copy(env, tt.set)
			var logs strings.Builder
			ai := loadedDestination(t, env, 0)
			if _, err := newDestination(t.Context(), &ai, nil, nil, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
				t.Fatal(err)
			}
			var warned []string
			for line := range strings.Lines(logs.String()) {
				if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, "unencrypted") {
					warned = append(warned, line)
				}
			}
			if len(warned) != len(tt.want) {
				t.Fatalf("%d warnings of unencrypted traffic, want %d:\n%s", len(warned), len(tt.want), logs.String())
			}
			for i, w := range tt.want {
				if !strings.Contains(warned[i], `"msg":"`+w+" ") {
					t.Errorf("warning %d does not name %s: %s", i, w, warned[i])
				}
			}
			if strings.Contains(logs.String(), "plain-http-secret") {
				t.Error("the client secret was logged")
			}
		})
	}
}

// loadedDestination is destination i of the forwarder configured by env.
func loadedDestination(t *testing.T, env map[string]string, i int) config.NamedDestination {
	t.Helper()
	var c config.ForwarderService
	if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	return c.DestinationList()[i]
}

// TestTokenReadinessKeepsTheBackoff: the readiness check of a destination
// whose identity provider refuses the client (an expired secret) reports
// the refusal without asking again at each probe: the background retry's
// backoff stands (a probe every 10 s sent a refused token request every
// 10 s). A good client gets ready on one request.
func TestTokenReadinessKeepsTheBackoff(t *testing.T) {
	tests := []struct {
		name      string
		refuse    bool
		wantReady bool
	}{
		{name: "refused client", refuse: true},
		{name: "good client", wantReady: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests atomic.Int64
			idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				w.Header().Set("Content-Type", "application/json")
				if tt.refuse {
					w.WriteHeader(http.StatusUnauthorized)
					_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"secret expired"}`)
					return
				}
				_, _ = io.WriteString(w, `{"access_token":"tok-0123456789","token_type":"Bearer","expires_in":3600}`)
			}))
			t.Cleanup(idp.Close)
			env := map[string]string{
				"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
				"DICOMWEB_URL":    "https://dicom.example.org/dicomweb",
				"OAUTH_TOKEN_URL": idp.URL + "/token", "OAUTH_CLIENT_ID": "stowline", "OAUTH_CLIENT_SECRET": "secret-0123456789",
			}
			dest := loadedDestination(t, env, 0)
			d, err := newDestination(t.Context(), &dest, nil, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			check := tokenCheck(dest.Name, d.Tokens)
			for i := range 10 {
				err := check(t.Context())
				if (err == nil) != tt.wantReady {
					t.Fatalf("probe %d: %v, want ready %v", i+1, err, tt.wantReady)
				}
				if err != nil && !strings.Contains(err.Error(), "invalid_client") {
					t.Errorf("probe %d: %v does not say the refusal", i+1, err)
				}
			}
			if got := requests.Load(); got < 1 || got > 2 {
				t.Errorf("%d token requests for 10 readiness probes, want 1 (2 if the background retry came)", got)
			}
		})
	}
}

// TestUnauthenticatedDestinationKeepsRedirectsInItsOrigin: a destination
// sent to without authentication (no OAUTH_TOKEN_URL) answers a DELETE
// and a QIDO-RS search with a 307 to another host. Neither is sent
// there: Go's client followed both, the DELETE as a DELETE, and counted
// the other host's 204 as the instance deleted. A redirect within the
// destination's origin is still followed.
func TestUnauthenticatedDestinationKeepsRedirectsInItsOrigin(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(other.Close)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/moved/"):
			w.WriteHeader(http.StatusNoContent)
		case r.URL.Query().Get("within") != "":
			http.Redirect(w, r, srv.URL+"/moved"+r.URL.Path, http.StatusTemporaryRedirect)
		default:
			http.Redirect(w, r, other.URL+"/admin/wipe", http.StatusTemporaryRedirect)
		}
	}))
	t.Cleanup(srv.Close)
	env := map[string]string{"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123", "DICOMWEB_URL": srv.URL + "/dicomweb"}
	dest := loadedDestination(t, env, 0)
	d, err := newDestination(t.Context(), &dest, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.STOW.DeleteInstance(t.Context(), "1.2.3", "1.2.3.4", "1.2.3.4.5"); !errors.Is(err, dicomweb.ErrRedirected) {
		t.Errorf("DELETE redirected to another host: %v, want ErrRedirected", err)
	}
	if err := d.STOW.Probe(t.Context(), "1.2.3"); !errors.Is(err, dicomweb.ErrRedirected) {
		t.Errorf("QIDO-RS redirected to another host: %v, want ErrRedirected", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("%d requests reached the host the redirects named, want 0", n)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodDelete, srv.URL+"/dicomweb/studies/1.2.3?within=1", nil)
	resp, err := d.HTTP.Do(req)
	if err != nil {
		t.Fatalf("a redirect within the destination's origin: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("a redirect within the destination's origin ended in %d, want 204", resp.StatusCode)
	}
}

// TestDestinationProfileChoosesTheQIDORoute: the aws profile's client
// asks only the searches HealthImaging offers (a study's series, a
// series' instances); the other profiles keep the study-level instance
// search.
func TestDestinationProfileChoosesTheQIDORoute(t *testing.T) {
	tests := []struct {
		profile, want string
	}{
		{profile: "aws", want: "/dicomweb/studies/1.2.3/series"},
		{profile: "generic", want: "/dicomweb/studies/1.2.3/instances"},
		{profile: "orthanc", want: "/dicomweb/studies/1.2.3/instances"},
	}
	for _, tt := range tests {
		t.Run(tt.profile, func(t *testing.T) {
			dest, paths := searchedDestination(t, tt.profile)
			d, err := newDestination(t.Context(), &dest, nil, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if err := d.STOW.Probe(t.Context(), "1.2.3"); err != nil {
				t.Fatal(err)
			}
			if _, err := d.STOW.StudyInstanceUIDs(t.Context(), "1.2.3", dicomweb.Expected{Count: 1}); err != nil {
				t.Fatal(err)
			}
			for _, p := range paths() {
				if p != tt.want {
					t.Errorf("asked %s, want only %s", p, tt.want)
				}
			}
			if len(paths()) == 0 {
				t.Error("nothing asked")
			}
		})
	}
}

// searchedDestination is a destination of profile whose server answers
// every search with no match, and the paths it was asked so far.
func searchedDestination(t *testing.T, profile string) (config.NamedDestination, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, "[]")
	}))
	t.Cleanup(srv.Close)
	env := map[string]string{"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": srv.URL + "/dicomweb", "STOW_PROFILE": profile}
	return loadedDestination(t, env, 0), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(paths)
	}
}

// TestCheckSendsTheProfilesSearches: `forwarder check` of an aws
// destination sends the searches its forwarder sends (a study's series,
// a series' instances) besides its own; of another, its own alone.
func TestCheckSendsTheProfilesSearches(t *testing.T) {
	tests := []struct {
		profile string
		want    []string
	}{
		{profile: "aws", want: []string{"/dicomweb/studies", "/dicomweb/studies/2.25.0/series", "/dicomweb/studies/2.25.0/series/2.25.0/instances"}},
		{profile: "generic", want: []string{"/dicomweb/studies"}},
	}
	for _, tt := range tests {
		t.Run(tt.profile, func(t *testing.T) {
			dest, paths := searchedDestination(t, tt.profile)
			var out strings.Builder
			if err := checkDestination(t.Context(), &out, dest, 5*time.Second, slog.New(slog.DiscardHandler)); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if got := paths(); !slices.Equal(got, tt.want) {
				t.Errorf("asked %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCheckRedactsTheURLOfADestinationNotSetUp: a destination whose set-up
// fails (its CA file changed to one that holds no certificate after the
// configuration read it) is named by its URL without the query, a
// signature or function key some gateways take there.
func TestCheckRedactsTheURLOfADestinationNotSetUp(t *testing.T) {
	const secret = "query-secret-0123456789"
	env := map[string]string{"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": "https://dicom.example.org/v2?code=" + secret}
	dest := loadedDestination(t, env, 0)
	dest.TLSCAFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(dest.TLSCAFile, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	logs := &strings.Builder{}
	err := checkDestination(t.Context(), &out, dest, 5*time.Second, slog.New(slog.NewTextHandler(logs, nil)))
	if err == nil {
		t.Fatalf("check passed:\n%s", out.String())
	}
	if want := "destination  https://dicom.example.org/v2\nverdict      FAIL"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
	if strings.Contains(out.String()+logs.String()+err.Error(), secret) {
		t.Errorf("the URL's query was printed, logged or returned:\n%s%s%v", out.String(), logs.String(), err)
	}
}
