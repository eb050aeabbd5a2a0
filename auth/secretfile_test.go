package auth

import (
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/stowline/stowline/internal/testidp"
)

// TestClientSecretFileIsReadForEveryToken: a client secret given as a file
// is read again for every token request, so a secret rotated in the file
// (a renewed Kubernetes Secret) is used without a restart, against a real
// authorization server that then takes only the new one. While the file
// cannot be read, the secret read last is used. Both secrets are scrubbed
// from errors.
func TestClientSecretFileIsReadForEveryToken(t *testing.T) {
	const old, rotated = "old-secret-0123456789", "rotated-secret-9876543210"
	idp := testidp.Start(t, testidp.WithClient("site-1", old))
	file := filepath.Join(t.TempDir(), "secret")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(old + "\n")
	ep, err := ClientCredentials(Config{TokenURL: idp.TokenURL, ClientID: "site-1", ClientSecretFile: file})
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(step string) {
		t.Helper()
		if _, err := ep.Fetch(t.Context()); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	fetch("first token")

	if err := idp.SetClientSecrets("site-1", rotated); err != nil {
		t.Fatal(err)
	}
	write(rotated + "\n")
	fetch("after the rotation")

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	fetch("file removed: the secret read last")
	write("")
	fetch("file emptied: the secret read last")

	// Refused while the file is unreadable: the error says so.
	if err := idp.SetClientSecrets("site-1", "yet-another-secret-42"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if _, err := ep.Fetch(t.Context()); err == nil || !strings.Contains(err.Error(), "client secret file") ||
		!strings.Contains(err.Error(), "the secret read before was sent") {
		t.Errorf("refused with the file unreadable: err = %v, want it to say the file was not read", err)
	}

	scrubbed := ep.Secrets()
	for _, s := range []string{old, rotated} {
		if !slices.Contains(scrubbed, s) {
			t.Errorf("secret %q is not among those scrubbed from errors", s)
		}
	}
}

func TestClientSecretFileChecked(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := Config{TokenURL: "https://idp.example.org/token", ClientID: "site-1"}
	tests := []struct {
		name string
		set  func(*Config)
	}{
		{"missing file", func(c *Config) { c.ClientSecretFile = filepath.Join(dir, "missing") }},
		{"empty file", func(c *Config) { c.ClientSecretFile = empty }},
		{"file and secret", func(c *Config) { c.ClientSecretFile, c.ClientSecret = empty, "secret-0123456789" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.set(&cfg)
			if _, err := ClientCredentials(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("err = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestSecretHoldingAnotherScrubbedWhole: a secret file read half-written
// ("part") and then whole ("part-and-rest...") leaves both to scrub; the
// longer is replaced first, so no tail of the real secret stays in an
// error that echoes the request.
func TestSecretHoldingAnotherScrubbedWhole(t *testing.T) {
	const whole = "part-and-rest-0123456789"
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("upstream failed for " + r.PostForm.Encode()))
	})
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("part"), 0o600); err != nil {
		t.Fatal(err)
	}
	// client_secret_post: the secret is in the form the server echoes.
	ep, err := ClientCredentials(Config{TokenURL: srv.URL, ClientID: "site-1", ClientSecretFile: file, AuthStyle: oauth2.AuthStyleInParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(whole), 0o600); err != nil {
		t.Fatal(err)
	}
	ts, err := NewSource(t.Context(), ep, WithRetries(0, time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if err == nil || strings.Contains(err.Error(), "rest-0123") || strings.Contains(err.Error(), url.QueryEscape(whole)) {
		t.Errorf("err = %v: a part of the secret is in it", err)
	}
}
