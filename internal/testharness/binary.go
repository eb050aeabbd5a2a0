package testharness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// extraBinDirs are searched after PATH: Debian installs Orthanc in
// /usr/sbin, which is not on a normal user's PATH.
var extraBinDirs = []string{"/usr/sbin", "/usr/local/sbin", "/sbin"}

// ErrMissing is returned (wrapped) when a binary or file a server needs is
// not installed.
var ErrMissing = errors.New("not installed")

// FindBinary returns the path of an executable, looking in PATH and then
// in the sbin directories.
func FindBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range extraBinDirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (not in PATH nor in %v)", name, ErrMissing, extraBinDirs)
}

// RequireBinary returns the path of an executable. If it is missing the
// test is skipped, except in CI (env CI non-empty), where it fails: CI must
// never pass by skipping its integration tests.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := FindBinary(name)
	if err != nil {
		missing(t, err)
	}
	return p
}

// requireFile is RequireBinary for a plain file, such as a plugin.
func requireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		missing(t, fmt.Errorf("%s: %w", path, ErrMissing))
	}
}

func missing(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%v; CI is set, so this fails instead of skipping", err)
	} else {
		t.Skipf("%v; skipping (set CI=1 to make this a failure)", err)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
