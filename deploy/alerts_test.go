package deploy

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// TestAlertRules: deploy/alerts.yml parses as Prometheus reads it, and its
// unit tests (deploy/alerts_test.yml) pass: the queue alerts leave out a
// lane outside its FORWARD_WINDOWS hours and still fire for an open one.
func TestAlertRules(t *testing.T) {
	promtool := testharness.RequireBinary(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(root, "deploy/alerts.yml")},
		{"test", "rules", filepath.Join(root, "deploy/alerts_test.yml")},
	} {
		if out, err := exec.CommandContext(t.Context(), promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
