package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestImageBuildStampsTheVersion builds a command with the Dockerfile's
// own -ldflags, its build arguments given, and asks it its version: a
// mistyped -X target links silently, and the image would report no
// version (-version, the start log line, stowline_build_info).
func TestImageBuildStampsTheVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	text := string(readFile(t, "Dockerfile"))
	m := regexp.MustCompile(`-ldflags="([^"]*)"`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("Dockerfile: no go build -ldflags")
	}
	for _, arg := range []string{"ARG STOWLINE_VERSION", "ARG STOWLINE_REVISION", "ARG STOWLINE_COMMIT_TIME"} {
		if !strings.Contains(text, arg) {
			t.Errorf("Dockerfile has no %s", arg)
		}
	}
	flags := strings.NewReplacer("${STOWLINE_VERSION}", "9.8.7", "${STOWLINE_REVISION}", "fedcba98",
		"${STOWLINE_COMMIT_TIME}", "2026-12-01T08:00:00Z").Replace(m[1])
	bin := filepath.Join(t.TempDir(), "ingest")
	// Built in this checkout, as Go stamps it by default: the linked
	// commit, not the checkout's, is the one named.
	build := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-buildvcs=auto", "-ldflags="+flags, "-o", bin, "./cmd/ingest")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build with the Dockerfile's flags %q: %v\n%s", flags, err, out)
	}
	out, err := exec.CommandContext(t.Context(), bin, "-version").Output()
	if err != nil {
		t.Fatalf("ingest -version: %v", err)
	}
	if !strings.HasPrefix(string(out), "ingest 9.8.7, commit fedcba98 of 2026-12-01T08:00:00Z (go") {
		t.Errorf("ingest -version printed %q, want the build arguments' version and commit", out)
	}
}
