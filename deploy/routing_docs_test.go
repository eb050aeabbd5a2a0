package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
)

// recipeBlock is a ```sh block after a "<!-- recipe -->" line.
var recipeBlock = regexp.MustCompile("(?s)<!-- recipe -->\\s*```sh\\n(.*?)```")

// shellEnv reads NAME=value lines, a value optionally in single or double
// quotes (no escapes), as a shell would set them.
func shellEnv(t *testing.T, block string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for line := range strings.SplitSeq(block, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`).MatchString(k) {
			t.Fatalf("%q is not NAME=value", line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		if _, dup := env[k]; dup {
			t.Errorf("%s set twice", k)
		}
		env[k] = v
	}
	return env
}

// TestRoutingRecipes loads every recipe of docs/routing.md with the
// forwarder's configuration code, as the forwarder would at startup: the
// variables exist, the rules compile, the destinations are the ones named.
// Files the recipes name (secrets, keys) are replaced by temporary ones.
func TestRoutingRecipes(t *testing.T) {
	doc := string(readFile(t, "docs/routing.md"))
	blocks := recipeBlock.FindAllStringSubmatch(doc, -1)
	if len(blocks) < 5 {
		t.Fatalf("docs/routing.md has %d recipe blocks, want at least 5", len(blocks))
	}
	dir := t.TempDir()
	for i, b := range blocks {
		env := shellEnv(t, b[1])
		t.Run(env["DESTINATIONS"]+"/"+env["FORWARDER_DESTINATIONS"], func(t *testing.T) {
			vars := map[string]string{"NATS_URL": "nats://nats:4222", "ORTHANC_URL": "http://orthanc:8042"}
			for k, v := range env {
				if strings.HasPrefix(v, "/run/secrets/") {
					f := filepath.Join(dir, filepath.Base(v))
					content := "recipe-" + k + "-0123456789\n"
					if strings.HasSuffix(k, "GOOGLE_APPLICATION_CREDENTIALS") {
						// Read as a service account key at startup.
						content = `{"type":"service_account","client_email":"recipe@example.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"https://oauth2.googleapis.com/token"}`
					}
					if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
					v = f
				}
				vars[k] = v
			}
			for k := range env {
				if strings.HasPrefix(k, "DESTINATION_") && !destinationVarKnown(k, strings.Split(env["DESTINATIONS"], ",")) {
					t.Errorf("%s is not a variable of a destination DESTINATIONS names (typo?)", k)
				}
			}
			var cfg config.ForwarderService
			if err := config.Load(func(k string) string { return vars[k] }, &cfg); err != nil {
				t.Fatalf("recipe %d does not load:\n%v\n%s", i+1, err, b[1])
			}
			var names []string
			for _, d := range cfg.DestinationList() {
				names = append(names, d.Name)
				if d.Match != env[config.DestinationVarPrefix(d.Name)+"MATCH"] {
					t.Errorf("destination %s: rule %q", d.Name, d.Match)
				}
			}
			if want := strings.Split(env["DESTINATIONS"], ","); !slices.Equal(names, want) {
				t.Errorf("destinations %v, want %v", names, want)
			}
			if s := env["FORWARDER_DESTINATIONS"]; s != "" {
				if served := cfg.Served(); len(served) != 1 || served[0].Name != s {
					t.Errorf("FORWARDER_DESTINATIONS=%s serves %v", s, served)
				}
			}
		})
	}
}

// TestRoutingStartupErrorExample checks the startup error docs/routing.md
// shows is the one the configuration gives.
func TestRoutingStartupErrorExample(t *testing.T) {
	vars := map[string]string{
		"NATS_URL": "nats://nats:4222", "ORTHANC_URL": "http://orthanc:8042",
		"DESTINATIONS": "ai", "DESTINATION_AI_URL": "https://ai.example.com", "DESTINATION_AI_MATCH": "'MR' in study.modality",
	}
	var cfg config.ForwarderService
	err := config.Load(func(k string) string { return vars[k] }, &cfg)
	if err == nil {
		t.Fatal("a rule with an unknown field loads")
	}
	doc := string(readFile(t, "docs/routing.md"))
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.Contains(doc, strings.TrimSpace(line)) {
			t.Errorf("docs/routing.md does not show the error line %q", line)
		}
	}
}

// destinationVarKnown reports whether name is a variable of one of the
// named destinations: DESTINATION_<NAME>_ and URL, MATCH, INSTANCE_MATCH
// or one of the default destination's variables (a secret also as
// _FILE). The code ignores any other DESTINATION_ variable, so a typo
// would go unnoticed.
func destinationVarKnown(name string, destinations []string) bool {
	suffixes := map[string]bool{"URL": true, "MATCH": true, "INSTANCE_MATCH": true}
	for _, v := range config.Vars(&config.Destination{}) {
		if v.Name == "DICOMWEB_URL" {
			continue
		}
		suffixes[v.Name] = true
		if v.Secret {
			suffixes[v.Name+"_FILE"] = true
		}
	}
	for _, d := range destinations {
		if rest, ok := strings.CutPrefix(name, config.DestinationVarPrefix(d)); ok && suffixes[rest] {
			return true
		}
	}
	return false
}
