package auth

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fileAssertion is a JWT-shaped stand-in: the file's content is sent as
// it is, never parsed.
const fileAssertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln"

func writeAssertionFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNewAssertionFileRefusesAnUnusableFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writeAssertionFile(t, empty, "\n")
	for name, path := range map[string]string{"missing": filepath.Join(dir, "gone"), "empty": empty} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewAssertionFile(path); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), path) {
				t.Errorf("NewAssertionFile(%s) = %v, want ErrInvalidConfig naming the file", name, err)
			}
		})
	}
}

// TestAssertionFileReadForEveryRequest: the file's token is the
// client_assertion, as it is, and a rotated one is sent from the next
// request on (the kubelet replaces a projected token before it expires).
// A refusal dated far from this host's clock is not asked again: the
// file's token is not signed here, so another time would not change it.
func TestAssertionFileReadForEveryRequest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeAssertionFile(t, path, fileAssertion+"\n")
	var got []string
	refuse := false
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got = append(got, r.PostForm.Get("client_assertion"))
		if r.PostForm.Get("client_assertion_type") != clientAssertionType || r.PostForm.Get("client_id") != testClientID || r.PostForm.Has("client_secret") {
			t.Errorf("form = %v", r.PostForm)
		}
		w.Header().Set("Content-Type", "application/json")
		if refuse {
			w.Header().Set("Date", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range."}`))
			return
		}
		_, _ = w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600}`))
	})
	f, err := NewAssertionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := ClientCredentials(Config{TokenURL: srv.URL, ClientID: testClientID, Assertion: f})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ep.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	rotated := "eyJ2" + fileAssertion[4:]
	writeAssertionFile(t, path, rotated)
	if _, err := ep.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != fileAssertion || got[1] != rotated {
		t.Fatalf("assertions sent %q, want the file's before and after its rotation", got)
	}

	refuse = true
	if _, err := ep.Fetch(t.Context()); err == nil {
		t.Fatal("a refused assertion gave a token")
	}
	if len(got) != 3 {
		t.Errorf("%d requests after a refusal dated an hour ahead, want 1 (the same token again cannot help)", len(got)-2)
	}
}
