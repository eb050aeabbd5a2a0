package deploy

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
)

const root = ".."

type composeFile struct {
	Name     string             `yaml:"name"`
	Services map[string]service `yaml:"services"`
	Secrets  map[string]secret  `yaml:"secrets"`
	Volumes  map[string]any     `yaml:"volumes"`
}

// secret is a top-level secret: compose writes it, from the variable
// Environment names (.env's), into the containers whose service lists it.
type secret struct {
	Environment string `yaml:"environment"`
}

// serviceSecret is a secret a service lists, in the long syntax: the file
// Target (default /run/secrets/Source), its owner and its mode.
type serviceSecret struct {
	Source string `yaml:"source"`
	Target string `yaml:"target"`
	UID    string `yaml:"uid"`
	GID    string `yaml:"gid"`
	Mode   int    `yaml:"mode"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       *build            `yaml:"build"`
	Restart     string            `yaml:"restart"`
	Command     []string          `yaml:"command"`
	DependsOn   []string          `yaml:"depends_on"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	Secrets     []serviceSecret   `yaml:"secrets"`
	// Profiles: the service starts only when one is asked for.
	Profiles []string `yaml:"profiles"`
	// StopGracePeriod is how long Docker waits after SIGTERM before
	// SIGKILL (default 10s).
	StopGracePeriod string `yaml:"stop_grace_period"`
	Deploy          struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
}

type build struct {
	Context string            `yaml:"context"`
	Target  string            `yaml:"target"`
	Args    map[string]string `yaml:"args"`
}

// configFor is the configuration each stowline command reads, by its
// Dockerfile target.
var configFor = map[string]func() any{
	"ingest":    func() any { return &config.IngestService{} },
	"forwarder": func() any { return &config.ForwarderService{} },
	"stowline":  func() any { return &config.SingleHost{} },
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The commented examples of docker-compose.yml and deploy/env.example
// sit between a "#=== <variant>, <action> these lines ===" line and
// "#=== end ===". A user turns a variant on by deleting the lines of its
// "delete" blocks and uncommenting those of its "uncomment" blocks.
const (
	severalDestinations = "for several destinations"
	splitForwarders     = "to split the forwarders"
)

// variants are the sets of commented examples a user can turn on, each
// checked as if they had: none, several destinations, and several
// destinations with the forwarders split.
var variants = [][]string{nil, {severalDestinations}, {severalDestinations, splitForwarders}}

var (
	blockStart = regexp.MustCompile(`^\s*#=== (.+), (delete|uncomment) these lines ===$`)
	blockEnd   = regexp.MustCompile(`^\s*#=== end ===$`)
	commented  = regexp.MustCompile(`^(\s*)# ?(.*)$`)
)

// withVariant returns the file text with the blocks of the variants on
// applied: "delete" blocks dropped, "uncomment" blocks uncommented (one
// "# " removed after the indentation). The blocks of other variants stay
// as they are.
func withVariant(t *testing.T, name string, text []byte, on []string) []byte {
	t.Helper()
	var out []string
	variant, action := "", ""
	for i, line := range strings.Split(string(text), "\n") {
		if m := blockStart.FindStringSubmatch(line); m != nil {
			if variant != "" {
				t.Fatalf("%s:%d: block inside the block %q", name, i+1, variant)
			}
			if m[1] != severalDestinations && m[1] != splitForwarders {
				t.Fatalf("%s:%d: unknown variant %q", name, i+1, m[1])
			}
			variant, action = m[1], m[2]
			out = append(out, line)
			continue
		}
		if blockEnd.MatchString(line) {
			if variant == "" {
				t.Fatalf("%s:%d: end of no block", name, i+1)
			}
			variant = ""
			out = append(out, line)
			continue
		}
		switch {
		case variant == "" || !slices.Contains(on, variant):
			out = append(out, line)
		case action == "delete":
		default:
			m := commented.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("%s:%d: line %q of a block to uncomment is not a comment", name, i+1, line)
			}
			out = append(out, m[1]+m[2])
		}
	}
	if variant != "" {
		t.Fatalf("%s: block %q not ended", name, variant)
	}
	return []byte(strings.Join(out, "\n"))
}

func loadCompose(t *testing.T, on ...string) composeFile {
	t.Helper()
	text := withVariant(t, "docker-compose.yml", readFile(t, "docker-compose.yml"), on)
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true) // a misspelt key is an error, not ignored
	var c composeFile
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("docker-compose.yml (%v uncommented): %v", on, err)
	}
	return c
}

// dotEnv is deploy/env.example with every empty value filled, as a user
// would fill .env, with the blocks of the variants on uncommented.
func dotEnv(t *testing.T, on ...string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(withVariant(t, "deploy/env.example", readFile(t, "deploy/env.example"), on)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("deploy/env.example: %q is not NAME=value", line)
		}
		if v == "" {
			v = "filled-" + strings.ToLower(k) + "-0123456789abcdef"
		}
		// The token URL's placeholder, which the configuration refuses.
		vars[k] = strings.ReplaceAll(v, "YOUR-TENANT-ID", "72f988bf-86f1-41af-91ab-2d7cd011db47")
	}
	return vars
}

var reference = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}`)

// interpolate expands compose's ${VAR}, ${VAR:-default}, ${VAR:?error}
// and ${VAR:+replacement} (and their forms without the colon, which test
// set rather than non-empty) from vars, and reports each variable used.
func interpolate(s string, vars map[string]string) (string, []string, error) {
	var used []string
	var err error
	out := reference.ReplaceAllStringFunc(s, func(m string) string {
		p := reference.FindStringSubmatch(m)
		name, op, arg := p[1], p[2], p[3]
		used = append(used, name)
		v, set := vars[name]
		switch {
		case strings.HasSuffix(op, "?") && v == "":
			err = fmt.Errorf("${%s} is required: %s", name, arg)
		case strings.HasSuffix(op, "-") && (!set || (op == ":-" && v == "")):
			return arg
		case strings.HasSuffix(op, "+"):
			if set && (op == "+" || v != "") {
				return arg
			}
			return ""
		}
		return v
	})
	return out, used, err
}

// TestComposeServicesMatchTheConfig checks every stowline service's
// environment against the variables its command reads: no unknown name (a
// typo would be silently ignored), no required variable missing, and the
// whole environment, as a user fills .env from deploy/env.example, loads.
//
// It checks the file as it is and with each set of its commented examples
// turned on (variants).
func TestComposeServicesMatchTheConfig(t *testing.T) {
	for _, on := range variants {
		t.Run(strings.Join(append([]string{"as is"}, on...), "+"), func(t *testing.T) {
			checkComposeServices(t, loadCompose(t, on...), dotEnv(t, on...))
		})
	}
	// The destination without authentication: .env leaves the client
	// secret empty, so its secret file is missing or empty, which
	// stowline refuses: OAUTH_CLIENT_SECRET_FILE must then be unset.
	t.Run("as is, no authentication", func(t *testing.T) {
		env := dotEnv(t)
		for _, k := range []string{"OAUTH_TOKEN_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES"} {
			env[k] = ""
		}
		checkComposeServices(t, loadCompose(t), env)
	})
}

func checkComposeServices(t *testing.T, c composeFile, env map[string]string) {
	stages := dockerfileStages(t)
	found := 0
	for name, svc := range c.Services {
		if svc.Build == nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			found++
			newCfg, ok := configFor[svc.Build.Target]
			if !ok {
				t.Fatalf("build target %q is not one of the commands %v", svc.Build.Target, slices.Sorted(func(yield func(string) bool) {
					for k := range configFor {
						if !yield(k) {
							return
						}
					}
				}))
			}
			if svc.Build.Context != "." {
				t.Errorf("build context %q, want . (the repository root)", svc.Build.Context)
			}
			// The version arguments pass through from the shell, so
			// that the images can say which commit they are.
			for _, arg := range []string{"STOWLINE_VERSION", "STOWLINE_REVISION", "STOWLINE_COMMIT_TIME"} {
				if got, want := svc.Build.Args[arg], "${"+arg+":-}"; got != want {
					t.Errorf("build argument %s = %q, want %q (the Dockerfile's version argument, from the shell)", arg, got, want)
				}
			}
			if entry, ok := stages[svc.Build.Target]; !ok {
				t.Errorf("Dockerfile has no stage %q", svc.Build.Target)
			} else if entry != "/usr/local/bin/"+svc.Build.Target {
				t.Errorf("Dockerfile stage %q runs %q, want /usr/local/bin/%s", svc.Build.Target, entry, svc.Build.Target)
			}

			vars := config.Vars(newCfg())
			values := map[string]string{}
			checkVarsRead(t, svc.Build.Target, vars, svc.Environment)
			for k, raw := range svc.Environment {
				v, used, err := interpolate(raw, env)
				if err != nil {
					t.Errorf("%s: %v", k, err)
				}
				for _, u := range used {
					if _, ok := env[u]; !ok {
						t.Errorf("%s uses ${%s}, which deploy/env.example does not list", k, u)
					}
				}
				values[k] = v
			}
			checkSecretFiles(t, c, svc, vars, values, env)
			for _, v := range vars {
				if v.Required && svc.Environment[v.Name] == "" && svc.Environment[v.Name+"_FILE"] == "" {
					t.Errorf("required variable %s is not set", v.Name)
				}
			}
			if err := config.Load(func(k string) string { return values[k] }, newCfg()); err != nil {
				t.Errorf("the service's configuration does not load:\n%v", err)
			}
		})
	}
	if found < 2 {
		t.Errorf("compose file builds %d stowline services, want the ingest and the forwarder", found)
	}
	fw := c.Services["forwarder"]
	if fw.Deploy.Replicas != 3 {
		t.Errorf("forwarder replicas = %d, want 3", fw.Deploy.Replicas)
	}
	if len(fw.Ports) > 0 {
		t.Errorf("forwarder publishes ports %v: replicas would collide", fw.Ports)
	}
}

// dotEnvVar returns the .env variable that the value of an environment
// variable in the compose file takes (${NAME...}), or "".
func dotEnvVar(value string) string {
	if m := reference.FindStringSubmatch(value); m != nil {
		return m[1]
	}
	return ""
}

// secretSource returns the .env variable that a stowline service's secret
// key comes from: through a compose secret's file when the service sets
// key_FILE, else its environment value.
func secretSource(c composeFile, svc service, key string) string {
	path := svc.Environment[key+"_FILE"]
	if path == "" {
		return dotEnvVar(svc.Environment[key])
	}
	for _, s := range svc.Secrets {
		if secretTarget(s) == path {
			return c.Secrets[s.Source].Environment
		}
	}
	return ""
}

// secretTarget is the file that compose writes a service's secret to in
// its containers.
func secretTarget(s serviceSecret) string {
	target := cmp.Or(s.Target, s.Source)
	if !strings.HasPrefix(target, "/") {
		target = "/run/secrets/" + target
	}
	return target
}

// imageUser is the user the images run as: distroless's nonroot.
const imageUser = "65532"

// checkSecretFiles checks that the service takes each of its command's
// secrets as VARIABLE_FILE, naming a file of a compose secret it lists:
// an environment value shows in docker inspect. The secret's file,
// written from env as compose writes it from .env, then replaces the
// path in values, so that the configuration loads as in the container.
func checkSecretFiles(t *testing.T, c composeFile, svc service, vars []config.Var, values, env map[string]string) {
	t.Helper()
	files := map[string]string{} // file in the container -> .env variable
	for _, s := range svc.Secrets {
		top, ok := c.Secrets[s.Source]
		if !ok {
			t.Errorf("secret %s is not declared in the top-level secrets", s.Source)
			continue
		}
		if _, ok := env[top.Environment]; !ok {
			t.Errorf("secret %s comes from ${%s}, which deploy/env.example does not list", s.Source, top.Environment)
		}
		// Owned by the image's user, readable by it alone: compose's
		// default owner is root, with a mode that changed across releases.
		if s.UID != imageUser || s.GID != imageUser || s.Mode != 0o400 {
			t.Errorf("secret %s: uid %q, gid %q, mode %#o; want %s, %s, 0400 (the image's nonroot user alone)", s.Source, s.UID, s.GID, s.Mode, imageUser, imageUser)
		}
		files[secretTarget(s)] = top.Environment
	}
	dir := t.TempDir()
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if secretVar(k, vars) {
			t.Errorf("%s is an environment value, which docker inspect shows: give it as %s_FILE, a compose secret's file", k, k)
		}
		base, ok := strings.CutSuffix(k, "_FILE")
		if !ok || !secretVar(base, vars) || values[k] == "" {
			continue
		}
		from, ok := files[values[k]]
		if !ok {
			t.Errorf("%s=%s: the service lists no secret written there", k, values[k])
			continue
		}
		// Compose writes no file for an empty value; secretfile refuses
		// an empty one all the same.
		path := filepath.Join(dir, k)
		if err := os.WriteFile(path, []byte(env[from]), 0o600); err != nil {
			t.Fatal(err)
		}
		values[k] = path
	}
}

// secretVar reports whether the variable name is one of vars that holds
// a secret, or a destination's (DESTINATION_<NAME>_OAUTH_CLIENT_SECRET).
func secretVar(name string, vars []config.Var) bool {
	for _, v := range vars {
		if !v.Secret {
			continue
		}
		if v.Name == name {
			return true
		}
		if before, after, ok := strings.Cut(v.Name, "<NAME>"); ok && strings.HasPrefix(name, before) && strings.HasSuffix(name, after) && len(name) > len(before)+len(after) {
			return true
		}
	}
	if strings.HasPrefix(name, "DESTINATION_") {
		for _, v := range config.Vars(&config.Destination{}) {
			if v.Secret && strings.HasSuffix(name, "_"+v.Name) {
				return true
			}
		}
	}
	return false
}

// checkVarsRead fails the test for each variable of environment that the
// command (whose configuration has vars) does not read: the code ignores
// an unknown variable, so a typo would go unnoticed.
func checkVarsRead(t *testing.T, command string, vars []config.Var, environment map[string]string) {
	t.Helper()
	known := map[string]bool{}
	var patterns []*regexp.Regexp
	for _, v := range vars {
		if strings.Contains(v.Name, "<NAME>") {
			patterns = append(patterns, regexp.MustCompile("^"+strings.ReplaceAll(regexp.QuoteMeta(v.Name), "<NAME>", "[A-Z0-9_]+")+"$"))
		}
		known[v.Name] = true
		if v.Secret {
			known[v.Name+"_FILE"] = true
		}
	}
	// The OpenTelemetry SDK reads the OTEL_* variables itself; the ones
	// stowline documents are accepted, no other.
	for _, v := range app.TracingVars {
		known[v] = true
	}
	destinations := strings.Split(environment["DESTINATIONS"], ",")
	for _, k := range slices.Sorted(maps.Keys(environment)) {
		switch {
		case strings.HasPrefix(k, "DESTINATION_"):
			if !destinationVarKnown(k, destinations) {
				t.Errorf("environment sets %s, which is no variable of a destination DESTINATIONS names (typo?)", k)
			}
		case !known[k] && !slices.ContainsFunc(patterns, func(p *regexp.Regexp) bool { return p.MatchString(k) }):
			t.Errorf("environment sets %s, which %s does not read (typo?)", k, command)
		}
	}
}

// TestComposeForwarderServicesShareDestinations checks the forwarder
// services of each variant against what the code needs of several
// destinations: every service has every destination's variables (each
// forwarder reads and checks all of them, served or not), the same
// FORWARDER_ACK_WAIT, FORWARDER_MAX_DELIVERIES and DEADLETTER_RETENTION
// (each forwarder sets every destination's consumer, and the dead-letter
// stream, to its own at start), and each destination
// is served by exactly one service.
func TestComposeForwarderServicesShareDestinations(t *testing.T) {
	shared := func(env map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range env {
			if k == "DESTINATIONS" || strings.HasPrefix(k, "DESTINATION_") || k == "FORWARDER_ACK_WAIT" || k == "FORWARDER_MAX_DELIVERIES" || k == "DEADLETTER_RETENTION" {
				out[k] = v
			}
		}
		return out
	}
	for _, on := range variants {
		c := loadCompose(t, on...)
		var first string
		served := map[string][]string{}
		for _, name := range slices.Sorted(maps.Keys(c.Services)) {
			svc := c.Services[name]
			if svc.Build == nil || svc.Build.Target != "forwarder" {
				continue
			}
			if first == "" {
				first = name
			} else if a, b := shared(c.Services[first].Environment), shared(svc.Environment); !maps.Equal(a, b) {
				t.Errorf("%v: forwarder services %s and %s differ in their destinations' variables:\n%v\n%v", on, first, name, a, b)
			}
			if len(svc.Ports) > 0 {
				t.Errorf("%v: %s publishes ports %v: replicas would collide", on, name, svc.Ports)
			}
			names := []string{"default"}
			if d := svc.Environment["DESTINATIONS"]; d != "" {
				names = strings.Split(d, ",")
			}
			serves := names
			if fd := svc.Environment["FORWARDER_DESTINATIONS"]; fd != "" {
				serves = strings.Split(fd, ",")
			}
			for _, d := range serves {
				served[d] = append(served[d], name)
			}
			for _, d := range names {
				if _, ok := served[d]; !ok {
					served[d] = nil
				}
			}
		}
		for d, by := range served {
			if len(by) != 1 {
				t.Errorf("%v: destination %s is served by %v, want exactly one forwarder service", on, d, by)
			}
		}
		if slices.Contains(on, splitForwarders) && len(served) < 2 {
			t.Errorf("%v: the split forwarders serve %v", on, served)
		}
	}
}

// TestComposeOneDestinationKeepsItsName: the several-destinations
// example turns the one destination's .env variables (DICOMWEB_URL and
// its OAuth2 client) into DESTINATION_DEFAULT_ ones. Under another name
// it would be a new destination with a new, empty consumer and ledger,
// while the events and dead letters of default wait for a consumer no
// forwarder serves (docs/routing.md, From one destination to several).
func TestComposeOneDestinationKeepsItsName(t *testing.T) {
	oneDestination := []string{"DICOMWEB_URL", "OAUTH_TOKEN_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES"}
	for _, on := range variants {
		t.Run(strings.Join(append([]string{"as is"}, on...), "+"), func(t *testing.T) {
			c := loadCompose(t, on...)
			for _, name := range slices.Sorted(maps.Keys(c.Services)) {
				svc := c.Services[name]
				if svc.Build == nil || svc.Build.Target != "forwarder" {
					continue
				}
				several := svc.Environment["DESTINATIONS"] != ""
				if several && !slices.Contains(strings.Split(svc.Environment["DESTINATIONS"], ","), "default") {
					t.Errorf("%s: DESTINATIONS=%s does not keep the one destination's name, default", name, svc.Environment["DESTINATIONS"])
				}
				takesURL := false
				for _, k := range slices.Sorted(maps.Keys(svc.Environment)) {
					for _, ref := range reference.FindAllStringSubmatch(svc.Environment[k], -1) {
						if !slices.Contains(oneDestination, ref[1]) {
							continue
						}
						want := ref[1]
						if several {
							want = config.DestinationVarPrefix("default") + strings.TrimPrefix(ref[1], "DICOMWEB_")
						}
						// A secret as a file: the variable's _FILE form.
						if k != want && !(ref[1] == "OAUTH_CLIENT_SECRET" && k == want+"_FILE") {
							t.Errorf("%s: %s takes ${%s}, the one destination's, want it in %s", name, k, ref[1], want)
						}
						takesURL = takesURL || ref[1] == "DICOMWEB_URL"
					}
				}
				if !takesURL {
					t.Errorf("%s: no variable takes ${DICOMWEB_URL}", name)
				}
			}
		})
	}
}

// TestComposeOperatorCommandsInDocs: docs/operations.md tells compose
// operators to run the forwarder's commands with `docker compose exec`
// and to reach the admin API from a container on the compose network,
// since neither NATS nor the forwarders publish a host port. The service
// must exist (in some variant) and run that binary, and the network must
// be the one compose names after the file's name.
func TestComposeOperatorCommandsInDocs(t *testing.T) {
	ops := string(readFile(t, "docs/operations.md"))
	services := map[string]service{}
	for _, on := range variants {
		maps.Copy(services, loadCompose(t, on...).Services)
	}
	stages := dockerfileStages(t)
	execs := regexp.MustCompile(`docker compose exec (?:-T )?(\S+) (\S+)`).FindAllStringSubmatch(ops, -1)
	if len(execs) == 0 {
		t.Fatal("docs/operations.md has no `docker compose exec`")
	}
	for _, m := range execs {
		svc, ok := services[m[1]]
		switch {
		case !ok:
			t.Errorf("%q: docker-compose.yml has no service %s", m[0], m[1])
		case svc.Build == nil:
			t.Errorf("%q: service %s is no stowline service", m[0], m[1])
		case stages[svc.Build.Target] != "/usr/local/bin/"+m[2]:
			t.Errorf("%q: service %s runs %s, not /usr/local/bin/%s", m[0], m[1], stages[svc.Build.Target], m[2])
		}
	}
	name := loadCompose(t).Name
	nets := regexp.MustCompile(`--network (\S+)`).FindAllStringSubmatch(ops, -1)
	if len(nets) == 0 {
		t.Fatal("docs/operations.md names no compose network for the admin API")
	}
	for _, m := range nets {
		if m[1] != name+"_default" {
			t.Errorf("%q: the compose network is %s_default", m[0], name)
		}
	}
}

// TestComposeStreamSettingsAgree: the ingest and every forwarder set the
// event stream to their own EVENTS_RETENTION, EVENTS_DEDUPE_WINDOW and
// NATS_REPLICAS when they start, so each stowline service must have the
// same values: a retention raised on the forwarders only would go back
// at every ingest restart, and JetStream would then drop at once every
// event older than that, queued studies included (the Helm chart refuses
// them outside its shared env for the same reason).
func TestComposeStreamSettingsAgree(t *testing.T) {
	stream := func(env map[string]string) map[string]string {
		out := map[string]string{}
		for _, k := range []string{"EVENTS_RETENTION", "EVENTS_DEDUPE_WINDOW", "NATS_REPLICAS"} {
			if v, ok := env[k]; ok {
				out[k] = v
			}
		}
		return out
	}
	for _, on := range variants {
		c := loadCompose(t, on...)
		var first string
		for _, name := range slices.Sorted(maps.Keys(c.Services)) {
			svc := c.Services[name]
			if svc.Build == nil || svc.Build.Target != "forwarder" && svc.Build.Target != "ingest" {
				continue
			}
			if first == "" {
				first = name
			} else if a, b := stream(c.Services[first].Environment), stream(svc.Environment); !maps.Equal(a, b) {
				t.Errorf("%v: services %s and %s set the event stream differently: %v, %v", on, first, name, a, b)
			}
		}
		if first == "" {
			t.Errorf("%v: no ingest or forwarder service", on)
		}
	}
}

// TestComposeTracing checks the optional tracing backend: Jaeger starts
// only with `--profile tracing`, nothing depends on it, every stowline
// service passes OTEL_EXPORTER_OTLP_ENDPOINT from .env with an empty
// default (tracing off: nothing is sent to a collector that is not
// there), and deploy/env.example leaves it empty and names the value that
// reaches Jaeger's OTLP/HTTP port on the compose network.
func TestComposeTracing(t *testing.T) {
	c := loadCompose(t)
	jaeger := ""
	for name, svc := range c.Services {
		if strings.HasPrefix(svc.Image, "jaegertracing/") {
			jaeger = name
			if !slices.Equal(svc.Profiles, []string{"tracing"}) {
				t.Errorf("%s: profiles %v, want [tracing]: it must not start by default", name, svc.Profiles)
			}
		} else if len(svc.Profiles) > 0 {
			t.Errorf("%s: profiles %v: only the tracing backend is optional", name, svc.Profiles)
		}
	}
	if jaeger == "" {
		t.Fatal("no Jaeger service (image jaegertracing/...)")
	}
	stowline := 0
	for name, svc := range c.Services {
		if slices.Contains(svc.DependsOn, jaeger) {
			t.Errorf("%s depends on %s, which starts only with --profile tracing", name, jaeger)
		}
		if svc.Build == nil {
			continue
		}
		stowline++
		for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
			if svc.Environment[k] == "" {
				t.Errorf("%s: %s is not passed through", name, k)
			}
		}
		got, _, err := interpolate(svc.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"], map[string]string{})
		if err != nil || got != "" {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT is %q without .env (err %v), want empty: tracing off", name, got, err)
		}
	}
	if stowline == 0 {
		t.Fatal("no stowline service")
	}
	example := string(readFile(t, "deploy/env.example"))
	if !regexp.MustCompile(`(?m)^OTEL_EXPORTER_OTLP_ENDPOINT=$`).MatchString(example) {
		t.Error("deploy/env.example does not leave OTEL_EXPORTER_OTLP_ENDPOINT empty (tracing off without the profile)")
	}
	if want := "OTEL_EXPORTER_OTLP_ENDPOINT=http://" + jaeger + ":4318"; !strings.Contains(example, want) {
		t.Errorf("deploy/env.example does not say %s (Jaeger's OTLP/HTTP port)", want)
	}
}

// stopMargin is the time a stopping process needs beyond its graces:
// returning studies to the queue, draining the NATS connection (bounded
// at 5 s), stopping an embedded server, flushing traces (5 s).
const stopMargin = 15 * time.Second

// forwarderStopSlack is what a forwarder's stop_grace_period keeps beyond
// its worst case, as the Helm chart's 50 s does beyond the default 45 s:
// each bound of that worst case ends on a timer, so a grace equal to it
// kills a process still in its last steps whenever a signal or a timer is
// late (a busy host).
const forwarderStopSlack = 5 * time.Second

// TestComposeStopGracePeriods checks that Docker waits long enough after
// SIGTERM for each stowline service to stop cleanly: a forwarder killed
// before its shutdown grace ends leaves its studies to JetStream's ack
// wait instead of handing them to another replica at once.
func TestComposeStopGracePeriods(t *testing.T) {
	for _, on := range variants {
		checkStopGracePeriods(t, loadCompose(t, on...))
	}
}

func checkStopGracePeriods(t *testing.T, c composeFile) {
	// What each command waits for at most when it stops, by build target.
	graces := map[string]time.Duration{
		// The ingest's grows with INGEST_PUBLISH_TIMEOUT, which .env may set.
		"ingest":    app.IngestMaxShutdownGrace,
		"forwarder": max(forward.DefaultShutdownGrace, app.HTTPShutdownGrace),
		"stowline":  max(forward.DefaultShutdownGrace, app.IngestMaxShutdownGrace),
	}
	for name, svc := range c.Services {
		if svc.Build == nil {
			continue
		}
		grace, ok := graces[svc.Build.Target]
		if !ok {
			t.Errorf("%s: build target %q has no known shutdown grace", name, svc.Build.Target)
			continue
		}
		if svc.StopGracePeriod == "" {
			t.Errorf("%s: no stop_grace_period: Docker's 10 s default is shorter than the command's %s shutdown grace", name, grace)
			continue
		}
		d, err := time.ParseDuration(svc.StopGracePeriod)
		if err != nil {
			t.Errorf("%s: stop_grace_period %q: %v", name, svc.StopGracePeriod, err)
			continue
		}
		slack := time.Duration(0)
		if svc.Build.Target == "forwarder" {
			slack = forwarderStopSlack
		}
		if d < grace+stopMargin+slack {
			t.Errorf("%s: stop_grace_period %s, want at least %s (the command's %s shutdown grace, %s to settle and %s to spare)", name, d, grace+stopMargin+slack, grace, stopMargin, slack)
		}
	}
}

// dockerfileStages maps each stage of the Dockerfile to its ENTRYPOINT
// binary, and checks the build stage builds the three commands.
func dockerfileStages(t *testing.T) map[string]string {
	t.Helper()
	stages := map[string]string{}
	stage := ""
	builds := ""
	nonrootData := false
	// An instruction continued on the next line (a backslash at its end) is one.
	text := strings.ReplaceAll(string(readFile(t, "Dockerfile")), "\\\n", " ")
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 4 && f[0] == "FROM" && strings.EqualFold(f[2], "AS"):
			stage = f[3]
			stages[stage] = ""
		case len(f) >= 2 && f[0] == "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT")), &argv); err != nil || len(argv) == 0 {
				t.Errorf("Dockerfile: stage %s: ENTRYPOINT %q is not an exec-form list", stage, line)
				continue
			}
			stages[stage] = argv[0]
		case len(f) >= 2 && f[0] == "RUN" && strings.Contains(line, "go build"):
			builds += line
		case stage == "stowline" && len(f) >= 4 && f[0] == "COPY" && slices.Contains(f, "--chown=65532:65532") && f[len(f)-1] == "/":
			nonrootData = true
		}
	}
	for cmd := range configFor {
		if !strings.Contains(builds, "./cmd/"+cmd) {
			t.Errorf("Dockerfile does not build ./cmd/%s", cmd)
		}
	}
	if !nonrootData {
		t.Error("Dockerfile: the stowline stage does not give its data directory to the nonroot user (COPY --chown=65532:65532 ... /)")
	}
	return stages
}

func hostPort(t *testing.T, what, raw string) (string, string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Fatalf("%s = %q is not a URL", what, raw)
	}
	return u.Hostname(), u.Port()
}

func addrPort(t *testing.T, what, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s = %q: %v", what, addr, err)
	}
	return port
}

// mountOf returns the container path where host path src is mounted.
func mountOf(svc service, src string) (string, bool) {
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[0] == src {
			return parts[1], true
		}
	}
	return "", false
}

// TestComposeWiring checks that the services point at each other: the
// Orthanc configuration's Stowline section at the ingest, with the same
// token; stowline at Orthanc with a user Orthanc knows, and at NATS;
// Prometheus at both services' listeners; every mounted file exists.
func TestComposeWiring(t *testing.T) {
	c := loadCompose(t)
	orthanc, nats, ingest, fw := c.Services["orthanc"], c.Services["nats"], c.Services["ingest"], c.Services["forwarder"]
	if !strings.HasPrefix(orthanc.Image, "orthancteam/orthanc:") {
		t.Errorf("orthanc image %q, want orthancteam/orthanc", orthanc.Image)
	}
	for name, svc := range c.Services {
		for _, v := range svc.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s mounts volume %q, which is not declared", name, src)
			}
		}
	}

	// Orthanc runs the project's Lua script with the Stowline section.
	luaPath, ok := mountOf(orthanc, "./lua/stowline.lua")
	if !ok {
		t.Fatal("orthanc does not mount ./lua/stowline.lua")
	}
	cfgPath, ok := mountOf(orthanc, "./deploy/orthanc/stowline.json")
	if !ok || !strings.HasPrefix(cfgPath, "/etc/orthanc/") || !strings.HasSuffix(cfgPath, ".json") {
		t.Fatalf("orthanc mounts ./deploy/orthanc/stowline.json at %q, want a .json file in /etc/orthanc/", cfgPath)
	}
	var oc struct {
		Name            string
		LuaScripts      []string
		RegisteredUsers map[string]string
		Stowline        struct{ IngestUrl, IngestToken, Source string }
	}
	if err := json.Unmarshal(readFile(t, "deploy/orthanc/stowline.json"), &oc); err != nil {
		t.Fatalf("deploy/orthanc/stowline.json: %v", err)
	}
	if !slices.Contains(oc.LuaScripts, luaPath) {
		t.Errorf("LuaScripts %v does not load the mounted script %s", oc.LuaScripts, luaPath)
	}
	host, port := hostPort(t, "Stowline.IngestUrl", oc.Stowline.IngestUrl)
	if _, ok := c.Services[host]; host != "ingest" || !ok {
		t.Errorf("Stowline.IngestUrl host %q, want the ingest service", host)
	}
	if want := addrPort(t, "INGEST_ADDR", ingest.Environment["INGEST_ADDR"]); port != want {
		t.Errorf("Stowline.IngestUrl port %s, but the ingest listens on %s", port, want)
	}
	if u, _ := url.Parse(oc.Stowline.IngestUrl); u.Path != "/webhooks/orthanc" {
		t.Errorf("Stowline.IngestUrl path %q, want /webhooks/orthanc", u.Path)
	}
	// ${X} in the Orthanc configuration is Orthanc's environment variable
	// X; orthancVar returns the .env variable it takes.
	orthancVar := func(what, ref string) string {
		m := regexp.MustCompile(`^\$\{([A-Za-z0-9_]+)\}$`).FindStringSubmatch(ref)
		if m == nil {
			t.Errorf("%s = %q: want ${VARIABLE} (no secret in the file)", what, ref)
			return ""
		}
		v, ok := orthanc.Environment[m[1]]
		if !ok {
			t.Errorf("%s = %s, but the orthanc service does not set %s", what, ref, m[1])
		}
		return dotEnvVar(v)
	}
	if got, want := orthancVar("Stowline.IngestToken", oc.Stowline.IngestToken), secretSource(c, ingest, "INGEST_TOKEN"); got == "" || got != want {
		t.Errorf("Orthanc's IngestToken comes from .env's %q, the ingest's INGEST_TOKEN from %q", got, want)
	}
	if !events.ValidSource(oc.Stowline.Source) {
		t.Errorf("Stowline.Source %q is not a valid source name", oc.Stowline.Source)
	}
	for name, svc := range map[string]service{"ingest": ingest, "forwarder": fw} {
		if got := svc.Environment["ORTHANC_SOURCE_NAME"]; got != "" && got != oc.Stowline.Source {
			t.Errorf("%s: ORTHANC_SOURCE_NAME %q, but the Lua script sends source %q", name, got, oc.Stowline.Source)
		}
		if h, p := hostPort(t, name+" ORTHANC_URL", svc.Environment["ORTHANC_URL"]); h != "orthanc" || p != "8042" {
			t.Errorf("%s: ORTHANC_URL %s, want the orthanc service on 8042", name, svc.Environment["ORTHANC_URL"])
		}
		user := svc.Environment["ORTHANC_USERNAME"]
		if ref, ok := oc.RegisteredUsers[user]; !ok {
			t.Errorf("%s: ORTHANC_USERNAME %q is not in Orthanc's RegisteredUsers", name, user)
		} else if got, want := orthancVar("RegisteredUsers."+user, ref), secretSource(c, svc, "ORTHANC_PASSWORD"); got == "" || got != want {
			t.Errorf("%s: Orthanc's password of %s comes from .env's %q, ORTHANC_PASSWORD from %q", name, user, got, want)
		}
		if h, p := hostPort(t, name+" NATS_URL", svc.Environment["NATS_URL"]); h != "nats" || p != "4222" {
			t.Errorf("%s: NATS_URL %s, want the nats service on 4222", name, svc.Environment["NATS_URL"])
		}
	}

	// NATS runs JetStream on a volume.
	if !strings.HasPrefix(nats.Image, "nats:") || !slices.Contains(nats.Command, "-js") {
		t.Errorf("nats: image %q command %v, want the official image with -js", nats.Image, nats.Command)
	}
	if i := slices.Index(nats.Command, "-sd"); i < 0 || i+1 >= len(nats.Command) || !slices.ContainsFunc(nats.Volumes, func(v string) bool {
		return strings.Split(v, ":")[1] == nats.Command[i+1]
	}) {
		t.Errorf("nats: the JetStream store (-sd) is not on a volume: %v %v", nats.Command, nats.Volumes)
	}

	// Prometheus scrapes both services where they listen.
	prom := c.Services["prometheus"]
	if _, ok := mountOf(prom, "./deploy/prometheus.yml"); !ok {
		t.Fatal("prometheus does not mount ./deploy/prometheus.yml")
	}
	var pc struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy/prometheus.yml"), &pc); err != nil {
		t.Fatalf("deploy/prometheus.yml: %v", err)
	}
	want := map[string]bool{
		"ingest:" + addrPort(t, "INGEST_ADDR", ingest.Environment["INGEST_ADDR"]):      false,
		"forwarder:" + addrPort(t, "FORWARDER_ADDR", fw.Environment["FORWARDER_ADDR"]): false,
	}
	for _, sc := range pc.ScrapeConfigs {
		for _, s := range sc.StaticConfigs {
			for _, target := range s.Targets {
				want[target] = true
			}
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				want[fmt.Sprintf("%s:%d", n, d.Port)] = true
			}
		}
	}
	for target, scraped := range want {
		if !scraped {
			t.Errorf("prometheus does not scrape %s", target)
		}
	}
	for _, rf := range pc.RuleFiles {
		if !slices.ContainsFunc(prom.Volumes, func(v string) bool { return strings.Split(v, ":")[1] == rf }) {
			t.Errorf("prometheus rule file %s is not mounted", rf)
		}
	}
}

var metricName = regexp.MustCompile(`stowline_[a-z_]+`)

// TestDashboardsAndAlertsUseDocumentedMetrics checks every stowline metric
// the Grafana dashboards and the alerts use is one docs/metrics.md
// documents (the browser test checks the docs against /metrics).
func TestDashboardsAndAlertsUseDocumentedMetrics(t *testing.T) {
	docs := string(readFile(t, "docs/metrics.md"))
	check := func(file, text string) {
		for _, m := range metricName.FindAllString(text, -1) {
			base := m
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if !strings.Contains(docs, "`"+base+"`") {
				t.Errorf("%s uses %s, which docs/metrics.md does not document", file, m)
			}
		}
	}
	dashboards, err := filepath.Glob(filepath.Join(root, "deploy/grafana/dashboards/*.json"))
	if err != nil || len(dashboards) == 0 {
		t.Fatalf("no dashboards (err %v)", err)
	}
	for _, path := range dashboards {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d.UID == "" || len(d.Panels) == 0 {
			t.Errorf("%s: no uid or no panels", path)
		}
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				check(filepath.Base(path)+" panel "+p.Title, tg.Expr)
			}
		}
	}
	rules := alertRules(t)
	for _, r := range rules {
		if r.Alert == "" || r.Expr == "" {
			t.Errorf("alert rule without name or expression: %+v", r)
		}
		check("alert "+r.Alert, r.Expr)
	}
	if len(rules) == 0 {
		t.Error("deploy/alerts.yml has no rules")
	}
}

// TestComposeNATSSyncsBeforeAcknowledging: the compose NATS server is one
// server, so an event is on one disk only, and nats-server writes it there
// on its own schedule (every 2 minutes by default): a power cut lost
// events the ingest had answered 202 for, and dead letters, as
// docs/guarantees.md warns ("a single external server should run with
// sync_interval: always"). The server's options are read as nats-server
// reads them, its command line and the configuration file it names.
func TestComposeNATSSyncsBeforeAcknowledging(t *testing.T) {
	nats := loadCompose(t).Services["nats"]
	args := slices.Clone(nats.Command)
	if i := slices.Index(args, "-c"); i >= 0 && i+1 < len(args) {
		// The file the container reads is the repository's, mounted.
		for _, v := range nats.Volumes {
			if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == args[i+1] {
				args[i+1] = filepath.Join(root, parts[0])
			}
		}
	}
	opts, err := server.ConfigureOptions(flag.NewFlagSet("nats-server", flag.ContinueOnError), args, func() {}, func() {}, func() {})
	if err != nil {
		t.Fatalf("nats: command %v: %v", nats.Command, err)
	}
	if !opts.JetStream || !opts.SyncAlways {
		t.Errorf("nats: command %v: JetStream %v, sync always %v: want JetStream writing every event to disk before it acknowledges it (sync_interval: always)",
			nats.Command, opts.JetStream, opts.SyncAlways)
	}
}

// orthancDefaultDICOMPort is Orthanc's DicomPort when its configuration
// does not set one.
const orthancDefaultDICOMPort = 4242

// TestComposePublishesOnlyDICOMOnEveryInterface: every port the compose
// file publishes speaks plain HTTP (the ingest's status page takes
// ADMIN_TOKEN, Orthanc's REST API its users' passwords, Grafana its
// admin's) or has no authentication at all (Prometheus, Jaeger), so it
// binds the loopback interface only; Orthanc's DICOM port alone binds
// every interface, since the modalities send to it from other machines.
func TestComposePublishesOnlyDICOMOnEveryInterface(t *testing.T) {
	var oc struct{ DicomPort int }
	if err := json.Unmarshal(readFile(t, "deploy/orthanc/stowline.json"), &oc); err != nil {
		t.Fatalf("deploy/orthanc/stowline.json: %v", err)
	}
	dicom := strconv.Itoa(cmp.Or(oc.DicomPort, orthancDefaultDICOMPort))
	for _, on := range variants {
		dicomPublished := false
		c := loadCompose(t, on...)
		for _, name := range slices.Sorted(maps.Keys(c.Services)) {
			for _, spec := range c.Services[name].Ports {
				ip, port, err := publishedPort(spec)
				switch {
				case err != nil:
					t.Errorf("%v: %s: %v", on, name, err)
				case name == "orthanc" && port == dicom:
					dicomPublished = true
					if ip != "" && !net.ParseIP(ip).IsUnspecified() {
						t.Errorf("%v: orthanc publishes its DICOM port as %q: want every interface, for the modalities", on, spec)
					}
				case ip == "" || !net.ParseIP(ip).IsLoopback():
					t.Errorf("%v: %s publishes %q: want it on 127.0.0.1 only; Orthanc's DICOM port %s alone binds every interface", on, name, spec, dicom)
				}
			}
		}
		if !dicomPublished {
			t.Errorf("%v: orthanc does not publish its DICOM port %s: the modalities could not send to it", on, dicom)
		}
	}
}

// publishedPort splits a port of compose's short syntax,
// [[IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL], into the host IP it binds
// (empty: every interface) and the container port.
func publishedPort(spec string) (ip, containerPort string, err error) {
	rest, _, _ := strings.Cut(spec, "/")
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return "", "", fmt.Errorf("port %q: unclosed IPv6 address", spec)
		}
		ip, rest = rest[1:end], rest[end+2:]
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 3 && ip == "":
		ip = parts[0]
	case len(parts) == 2 || len(parts) == 1 && ip == "":
	default:
		return "", "", fmt.Errorf("port %q: want [[IP:]HOST_PORT:]CONTAINER_PORT", spec)
	}
	if ip != "" && net.ParseIP(ip) == nil {
		return "", "", fmt.Errorf("port %q: %q is no IP address", spec, ip)
	}
	return ip, parts[len(parts)-1], nil
}

func TestPublishedPort(t *testing.T) {
	tests := []struct {
		spec, ip, port string
		wantErr        bool
	}{
		{spec: "4242", port: "4242"},
		{spec: "4242:4242", port: "4242"},
		{spec: "4242:4242/tcp", port: "4242"},
		{spec: "127.0.0.1:8080:8080", ip: "127.0.0.1", port: "8080"},
		{spec: "0.0.0.0:9090:9090", ip: "0.0.0.0", port: "9090"},
		{spec: "[::1]:3000:3000", ip: "::1", port: "3000"},
		{spec: "localhost:3000:3000", wantErr: true},
		{spec: "[::1:3000:3000", wantErr: true},
		{spec: "1.2.3.4:1:2:3", wantErr: true},
	}
	for _, tt := range tests {
		ip, port, err := publishedPort(tt.spec)
		if (err != nil) != tt.wantErr || ip != tt.ip || port != tt.port {
			t.Errorf("publishedPort(%q) = %q, %q, %v; want %q, %q, error %v", tt.spec, ip, port, err, tt.ip, tt.port, tt.wantErr)
		}
	}
}

// reconcilerOrthancRequests is what the ingest's reconciler has in flight
// to its Orthanc at most: 4 study lookups at once
// (reconcile.lookupConcurrency) and the readiness check's GET /system.
// An ingest without PRIORITY_RULE reads Orthanc for nothing else.
const reconcilerOrthancRequests = 5

// viewerOrthancThreads is what the stowline services must leave of
// Orthanc's HTTP threads to its viewers (OHIF, Stone, the Explorer), which
// otherwise wait behind stowline's requests.
const viewerOrthancThreads = 10

// TestComposeLeavesOrthancThreadsForViewers: Orthanc answers HTTP with
// HttpThreadsCount threads, one per request, viewers included. Uncapped,
// a compose forwarder replica with the azure profile of env.example may
// hold some 51 requests (docs/operations.md, Scaling forwarders), and
// three of them more than Orthanc's 100 threads. So every forwarder
// service caps each replica with ORTHANC_MAX_CONNECTIONS, and the
// replicas of every variant (their GET /system, which takes no slot,
// counted) and the reconciler leave viewerOrthancThreads.
func TestComposeLeavesOrthancThreadsForViewers(t *testing.T) {
	var oc struct{ HttpThreadsCount int }
	if err := json.Unmarshal(readFile(t, "deploy/orthanc/stowline.json"), &oc); err != nil {
		t.Fatalf("deploy/orthanc/stowline.json: %v", err)
	}
	threads := cmp.Or(oc.HttpThreadsCount, 50) // Orthanc's default
	for _, on := range variants {
		c, env := loadCompose(t, on...), dotEnv(t, on...)
		used, forwarders := 0, 0
		for _, name := range slices.Sorted(maps.Keys(c.Services)) {
			svc := c.Services[name]
			switch {
			case svc.Build == nil:
			case svc.Build.Target == "ingest":
				if svc.Environment["PRIORITY_RULE"] != "" {
					t.Errorf("%v: %s: PRIORITY_RULE reads Orthanc too: count its requests here", on, name)
				}
				if svc.Environment["RECONCILE_ENABLED"] == "true" {
					used += reconcilerOrthancRequests
				}
			case svc.Build.Target == "forwarder":
				replicas := max(svc.Deploy.Replicas, 1)
				forwarders += replicas
				v, _, err := interpolate(svc.Environment["ORTHANC_MAX_CONNECTIONS"], env)
				limit, convErr := strconv.Atoi(v)
				if err != nil || convErr != nil || limit <= 0 {
					t.Errorf("%v: %s: ORTHANC_MAX_CONNECTIONS %q: want a cap above 0, each replica may otherwise take every Orthanc thread", on, name, v)
					continue
				}
				used += replicas * (limit + 1)
			}
		}
		if forwarders == 0 {
			t.Errorf("%v: no forwarder service", on)
		}
		if left := threads - used; left < viewerOrthancThreads {
			t.Errorf("%v: %d forwarder replicas and the reconciler may hold %d of Orthanc's %d HTTP threads, leaving %d to the viewers: want at least %d",
				on, forwarders, used, threads, left, viewerOrthancThreads)
		}
	}
}

// TestDashboardPicksDataSourceAndNamespace: the dashboard named the
// provisioned data source's uid ("prometheus"), so imported into a site's
// own Grafana every panel showed "data source not found", and with two
// Helm releases scraped it summed them. Each panel now reads the
// dashboard's data source variable and each series selector keeps the
// namespace variable (All matches scrapes without the label: compose,
// systemd).
func TestDashboardPicksDataSourceAndNamespace(t *testing.T) {
	var d struct {
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string          `json:"title"`
			Datasource json.RawMessage `json:"datasource"`
			Targets    []struct {
				Datasource json.RawMessage `json:"datasource"`
				Expr       string          `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, "deploy/grafana/dashboards/stowline.json"), &d); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["namespace"] != "query" {
		t.Errorf("template variables %v, want datasource (datasource) and namespace (query)", vars)
	}
	selector := regexp.MustCompile(`\b(stowline_[a-z_]+|up)\b(\{[^}]*\})?`)
	usesVariable := func(raw json.RawMessage) bool {
		return len(raw) == 0 || strings.Contains(string(raw), `"${datasource}"`)
	}
	for _, p := range d.Panels {
		if !usesVariable(p.Datasource) {
			t.Errorf("panel %q: data source %s, want uid ${datasource}", p.Title, p.Datasource)
		}
		for _, tg := range p.Targets {
			if !usesVariable(tg.Datasource) {
				t.Errorf("panel %q: target data source %s, want uid ${datasource}", p.Title, tg.Datasource)
			}
			for _, m := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				if !strings.Contains(m[2], `namespace=~"$namespace"`) {
					t.Errorf("panel %q: %s does not select namespace=~\"$namespace\" in %s", p.Title, m[1], tg.Expr)
				}
			}
		}
	}
}
