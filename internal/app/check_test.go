package app

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// TestCheckRefusesATimeoutNotAboveZero: `forwarder check --timeout 0`
// (meant as "no limit") or a negative one was taken, every step's
// context expired at once, and each source was reported as "Orthanc
// does not answer" (exit 1). It is a usage error (exit 2) naming the
// flag and what it takes, before anything is checked.
func TestCheckRefusesATimeoutNotAboveZero(t *testing.T) {
	env := map[string]string{
		"ORTHANC_URL":  "http://" + testharness.FreeAddr(t),
		"DICOMWEB_URL": "http://archive.invalid/dicom-web",
	}
	for _, timeout := range []string{"0", "0s", "-1s"} {
		t.Run(timeout, func(t *testing.T) {
			var stdout bytes.Buffer
			err := RunCheck(t.Context(), []string{"--timeout", timeout}, func(k string) string { return env[k] }, nil, &stdout, io.Discard)
			if code := ExitCode("forwarder check", err, io.Discard); code != 2 || !strings.Contains(err.Error(), "--timeout") || !strings.Contains(err.Error(), "above 0") {
				t.Errorf("exit %d, err %v; want 2, naming --timeout and the range", code, err)
			}
			if stdout.Len() > 0 {
				t.Errorf("checked before refusing:\n%s", stdout.String())
			}
		})
	}
}
