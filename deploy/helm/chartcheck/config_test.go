package chartcheck

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// commandVarSet is what one command reads: exact names, and patterns for
// the per-source ORTHANC_<NAME>_* variables.
type commandVarSet struct {
	names    map[string]bool
	patterns []*regexp.Regexp
}

func (s commandVarSet) reads(name string) bool {
	if s.names[name] {
		return true
	}
	for _, p := range s.patterns {
		if p.MatchString(name) {
			return true
		}
	}
	return false
}

var (
	varsOnce sync.Once
	vars     map[string]commandVarSet
	varsErr  error
)

// commandVars returns, per command (ingest, forwarder), the variables its
// `-h` lists: the code's own list (internal/config), read by building and
// running the commands of the main module. A secret's VARIABLE_FILE
// counts too.
func commandVars(t *testing.T) map[string]commandVarSet {
	t.Helper()
	varsOnce.Do(func() { vars, varsErr = buildCommandVars(t.TempDir()) })
	if varsErr != nil {
		t.Fatal(varsErr)
	}
	return vars
}

func buildCommandVars(dir string) (map[string]commandVarSet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/ingest", "./cmd/forwarder")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the commands: %w\n%s", err, out)
	}
	out := map[string]commandVarSet{}
	for _, cmd := range []string{"ingest", "forwarder"} {
		var stderr bytes.Buffer
		h := exec.CommandContext(ctx, filepath.Join(dir, cmd), "-h")
		h.Env = []string{} // -h reads nothing, and must not see this machine's variables
		h.Stderr = &stderr
		if err := h.Run(); err != nil {
			return nil, fmt.Errorf("%s -h: %w\n%s", cmd, err, stderr.String())
		}
		set, err := parseUsage(stderr.String())
		if err != nil {
			return nil, fmt.Errorf("%s -h: %w", cmd, err)
		}
		out[cmd] = set
	}
	return out, nil
}

// fileVariant finds "(or NAME_FILE: a file holding it)" in a description.
var fileVariant = regexp.MustCompile(`\(or ([A-Z0-9_<>]+_FILE): a file holding it\)`)

// parseUsage reads config.Usage's table: a header line starting with
// VARIABLE, then one variable a line.
func parseUsage(s string) (commandVarSet, error) {
	set := commandVarSet{names: map[string]bool{}}
	add := func(name string) {
		if strings.Contains(name, "<NAME>") {
			set.patterns = append(set.patterns, regexp.MustCompile("^"+strings.ReplaceAll(regexp.QuoteMeta(name), "<NAME>", "[A-Z0-9_]+")+"$"))
			return
		}
		set.names[name] = true
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	inTable := false
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "VARIABLE":
			inTable = true
		case inTable && len(f) > 0:
			add(f[0])
			for _, m := range fileVariant.FindAllStringSubmatch(line, -1) {
				add(m[1])
			}
		}
	}
	if len(set.names) < 10 {
		return set, fmt.Errorf("only %d variables found: the usage format changed?\n%s", len(set.names), s)
	}
	return set, nil
}
