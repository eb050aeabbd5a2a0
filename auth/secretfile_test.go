package auth

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
