package app

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/deident"
)

// TestPseudonymCommand: the command gives the pseudonyms the rewrite
// writes, for the default destination and a named one, and finds the
// original of a pseudonym among candidates.
func TestPseudonymCommand(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef!")
	file := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(file, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := deident.NewKeyer(key, "R-")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DESTINATION_RESEARCH_DEIDENTIFY_KEY_FILE": file, "DESTINATION_RESEARCH_STOW_DEIDENTIFY_PATIENT_PREFIX": "R-"}
	run := func(stdin string, args ...string) (string, error) {
		t.Helper()
		var out, errOut bytes.Buffer
		err := RunPseudonym(t.Context(), args, func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errOut)
		return out.String(), err
	}
	for _, tt := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"--destination", "research", "--uid", "1.2.3"}, "", k.UID("1.2.3")},
		{[]string{"--destination", "research", "--patient-id", "PAT-42"}, "", k.PatientID("PAT-42")},
		// From standard input: not in the process list or the history.
		{[]string{"--destination", "research", "--patient-id", "-"}, "\n PAT-42 \n", k.PatientID("PAT-42")},
		{[]string{"--destination", "research", "--uid", "-"}, "1.2.3\n", k.UID("1.2.3")},
		{[]string{"--destination", "research", "--find", k.PatientID("PAT-42")}, "1.2.3\nPAT-41\nPAT-42\n", "PatientID\tPAT-42"},
		{[]string{"--destination", "research", "--find", k.UID("1.2.3")}, "PAT-42\n1.2.3\n", "UID\t1.2.3"},
	} {
		out, err := run(tt.stdin, tt.args...)
		if err != nil || !strings.Contains(out, tt.want) {
			t.Errorf("%q: %q, %v; want %q", tt.args, out, err, tt.want)
		}
	}
	if _, err := run("x\n", "--destination", "research", "--find", "2.25.1"); err == nil || !strings.Contains(err.Error(), "none of the 1 candidates") {
		t.Errorf("unknown pseudonym: %v", err)
	}
	if _, err := run("", "--uid", "1.2.3"); err == nil || !strings.Contains(err.Error(), "DEIDENTIFY_KEY_FILE is not set") {
		t.Errorf("default destination without a key: %v", err)
	}
	if _, err := run("\n", "--destination", "research", "--patient-id", "-"); err == nil || !strings.Contains(err.Error(), "standard input holds no value") {
		t.Errorf("--patient-id - with nothing on standard input: %v", err)
	}
	if _, err := run("", "--destination", "research"); err == nil {
		t.Error("no value: no error")
	}
}

// TestPseudonymFingerprint: --fingerprint prints the fingerprint of the
// key file as the forwarder reads it (trailing CR and LF dropped, a NUL
// kept), the one its start logs, never the key. deidentification.md
// had operators put the key on openssl's command line with "$(cat
// KEYFILE)", which drops a NUL and keeps a trailing CR.
func TestPseudonymFingerprint(t *testing.T) {
	key := []byte("fingerprint-key-0123456789abcdef0123")
	for _, tt := range []struct {
		name    string
		file    []byte
		destVar string // "" for the single destination's variables
	}{
		{name: "newline", file: append(slices.Clone(key), '\n')},
		{name: "CRLF", file: append(slices.Clone(key), '\r', '\n')},
		{name: "a NUL inside", file: append(append(slices.Clone(key[:4]), 0), key[4:]...)},
		{name: "named destination", file: key, destVar: "DESTINATION_RESEARCH_"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(file, tt.file, 0o600); err != nil {
				t.Fatal(err)
			}
			// What the forwarder logs: HMAC-SHA256 of the key as read.
			read := []byte(strings.TrimRight(string(tt.file), "\r\n"))
			mac := hmac.New(sha256.New, read)
			mac.Write([]byte("stowline key fingerprint"))
			want := hex.EncodeToString(mac.Sum(nil)[:8]) + "\n"
			args := []string{"--fingerprint"}
			if tt.destVar != "" {
				args = append(args, "--destination", "research")
			}
			env := map[string]string{tt.destVar + "DEIDENTIFY_KEY_FILE": file}
			var out, errOut bytes.Buffer
			if err := RunPseudonym(t.Context(), args, func(k string) string { return env[k] }, strings.NewReader(""), &out, &errOut); err != nil {
				t.Fatal(err)
			}
			if out.String() != want {
				t.Errorf("printed %q, want %q", out.String(), want)
			}
			if strings.Contains(out.String()+errOut.String(), string(key[:16])) {
				t.Error("the key was printed")
			}
		})
	}
	var out, errOut bytes.Buffer
	err := RunPseudonym(t.Context(), []string{"--fingerprint", "--uid", "1.2.3"}, func(string) string { return "" }, strings.NewReader(""), &out, &errOut)
	if !errors.Is(err, ErrUsage) {
		t.Errorf("--fingerprint with --uid: %v, want a usage error", err)
	}
}
