package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The README's commands write secrets into the repository's directory:
// ingest.token (the single-host command) and .env (Docker Compose). Git
// must not offer them for a commit, and docker compose build must not
// send them to the builder, whose `COPY . .` would keep them in a cached
// layer.
func TestREADMESecretFilesAreIgnored(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, m := range regexp.MustCompile(`(?m)> (\S+\.token)\b|cp deploy/env\.example (\S+)`).FindAllStringSubmatch(string(readme), -1) {
		secrets = append(secrets, m[1]+m[2])
	}
	if !slices.Contains(secrets, "ingest.token") || !slices.Contains(secrets, ".env") {
		t.Fatalf("README's commands write %q; want ingest.token and .env among them (update this test)", secrets)
	}
	for _, f := range []string{".gitignore", ".dockerignore"} {
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for _, s := range secrets {
			if !slices.Contains(lines, s) && !slices.Contains(lines, "/"+s) {
				t.Errorf("%s does not ignore %s, a secret the README has the reader write in the repository", f, s)
			}
		}
	}
}
