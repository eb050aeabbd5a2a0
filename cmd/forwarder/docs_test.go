package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/app"
)

// documentedCommand finds `forwarder SUBCOMMAND ...` in the operators'
// documents, up to the end of the code span or line.
var documentedCommand = regexp.MustCompile("forwarder (replay|audit|check|backfill|destinations|pseudonym)\\b([^`\\n|#]*)")

// spanBreak is a code span broken over two lines, as prose wraps it.
var spanBreak = regexp.MustCompile("(`[^`\\n]*)\\n\\s*([^`\\n]*`)")

// subcommands are the words a subcommand takes before its flags.
var subcommands = map[string][]string{
	"replay":       {"list", "show", "run", "purge", "reforward"},
	"destinations": {"list", "remove"},
}

// TestDocumentedCommandsExist: every `forwarder` subcommand and flag
// README.md, docs/ and the alerts show is one the command takes, so an
// operator who copies one from the docs is not told it does not exist.
// (docs/priority-lanes.md named `forwarder replay dead-letters`, a
// command that never existed.)
func TestDocumentedCommandsExist(t *testing.T) {
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md", "../../deploy/alerts.yml")
	help := map[string]string{}
	usage := func(t *testing.T, args ...string) string {
		t.Helper()
		key := strings.Join(args, " ")
		if h, ok := help[key]; ok {
			return h
		}
		var out, errOut bytes.Buffer
		if err := run(t.Context(), append(args, "-h"), func(string) string { return "" }, nil, &out, &errOut); err != nil {
			t.Fatalf("forwarder %s -h: %v", key, err)
		}
		help[key] = out.String() + errOut.String()
		return help[key]
	}
	found := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		text := spanBreak.ReplaceAllString(string(b), "$1 $2")
		for _, m := range documentedCommand.FindAllStringSubmatch(text, -1) {
			found++
			sub, words := m[1], strings.Fields(m[2])
			args := []string{sub}
			if subs, ok := subcommands[sub]; ok && len(words) > 0 && !strings.HasPrefix(words[0], "-") && !strings.HasPrefix(words[0], "[") {
				// "replay run|reforward" names two.
				for _, w := range strings.Split(words[0], "|") {
					if !slices.Contains(subs, w) {
						t.Errorf("%s: `%s`: forwarder %s has no command %q (%s)", filepath.Base(file), strings.TrimSpace(m[0]), sub, w, strings.Join(subs, ", "))
					}
				}
			}
			help := usage(t, args...)
			for _, w := range words {
				flag := strings.TrimLeft(strings.Trim(w, "[]()"), "-")
				flag, _, _ = strings.Cut(flag, "=")
				if !strings.HasPrefix(strings.Trim(w, "[]()"), "-") || flag == "" {
					continue
				}
				if !strings.Contains(help, "-"+flag+" ") && !strings.Contains(help, "-"+flag+"\n") && !strings.Contains(help, "-"+flag+"]") {
					t.Errorf("%s: `%s`: forwarder %s takes no --%s", filepath.Base(file), strings.TrimSpace(m[0]), sub, flag)
				}
			}
		}
	}
	if found < 20 {
		t.Fatalf("found %d documented commands, want the docs' many", found)
	}
}

// TestHelpListsCommands: `forwarder -h`, where a newcomer looks first,
// names every subcommand the documents send operators to, and a
// misspelt one is told the commands there are, not that all
// configuration comes from the environment.
func TestHelpListsCommands(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, func(string) string { return "" }, nil, &out, &errOut); err != nil {
		t.Fatalf("forwarder -h: %v", err)
	}
	for _, c := range []string{"replay", "audit", "check", "backfill", "destinations", "pseudonym"} {
		if !regexp.MustCompile(`(?m)^\s+` + c + `\s`).MatchString(errOut.String()) {
			t.Errorf("forwarder -h does not list the command %s:\n%s", c, errOut.String())
		}
	}
	err := run(t.Context(), []string{"chek"}, func(string) string { return "" }, nil, &out, &errOut)
	if !errors.Is(err, app.ErrUsage) || !strings.Contains(err.Error(), `"chek"`) || !strings.Contains(err.Error(), "check") {
		t.Errorf("forwarder chek = %v; want a usage error naming it and the commands", err)
	}
}
