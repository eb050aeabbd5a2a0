package deploy

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

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

// alertNames returns the names of deploy/alerts.yml's alerts.
func alertNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, r := range alertRules(t) {
		names = append(names, r.Alert)
	}
	if len(names) == 0 {
		t.Fatal("deploy/alerts.yml has no alerts")
	}
	return names
}

// alertRule is a rule of deploy/alerts.yml.
type alertRule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

// alertRules reads the rules of every group of deploy/alerts.yml.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	var file struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy/alerts.yml"), &file); err != nil {
		t.Fatalf("deploy/alerts.yml: %v", err)
	}
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// TestEveryAlertIsTested: each alert of deploy/alerts.yml has a case in
// deploy/alerts_test.yml where it fires, so that an expression which
// can never fire (a misspelt metric or label) fails promtool's tests.
func TestEveryAlertIsTested(t *testing.T) {
	var cases struct {
		Tests []struct {
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy/alerts_test.yml"), &cases); err != nil {
		t.Fatalf("deploy/alerts_test.yml: %v", err)
	}
	fires := map[string]bool{}
	for _, c := range cases.Tests {
		for _, a := range c.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			}
		}
	}
	for _, name := range alertNames(t) {
		if !fires[name] {
			t.Errorf("alert %s has no case in deploy/alerts_test.yml where it fires", name)
		}
	}
}

// TestEveryAlertHasARunbook: each alert of deploy/alerts.yml is named in
// docs/operations.md's "What to watch and alert on", which says what to
// do about it: the on-call who receives StowlineEventLeftQueue at night
// finds it by its name.
func TestEveryAlertHasARunbook(t *testing.T) {
	ops := string(readFile(t, "docs/operations.md"))
	start := strings.Index(ops, "\n## What to watch and alert on\n")
	if start < 0 {
		t.Fatal(`docs/operations.md has no "What to watch and alert on" section`)
	}
	section := ops[start+1:]
	if end := strings.Index(section[2:], "\n## "); end >= 0 {
		section = section[:end+2]
	}
	for _, name := range alertNames(t) {
		if !strings.Contains(section, "`"+name+"`") {
			t.Errorf("alert %s is not named in docs/operations.md's \"What to watch and alert on\"", name)
		}
	}
}

// TestSingleHostScrapeJobsAlert: the scrape jobs docs/operations.md gives
// a single host are ones StowlineDown watches; under other names (one
// job "stowline") a stopped stowline raised no alert.
func TestSingleHostScrapeJobsAlert(t *testing.T) {
	var down *regexp.Regexp
	for _, r := range alertRules(t) {
		if r.Alert != "StowlineDown" {
			continue
		}
		_, re, ok := strings.Cut(r.Expr, `job=~"`)
		re, _, ok2 := strings.Cut(re, `"`)
		if !ok || !ok2 {
			t.Fatalf("StowlineDown selects no job by a regular expression: %s", r.Expr)
		}
		down = regexp.MustCompile("^(?:" + re + ")$")
	}
	if down == nil {
		t.Fatal("deploy/alerts.yml has no StowlineDown")
	}
	ops := string(readFile(t, "docs/operations.md"))
	_, section, ok := strings.Cut(ops, "\n## Single host with systemd\n")
	if !ok {
		t.Fatal(`docs/operations.md has no "Single host with systemd" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	jobs := regexp.MustCompile(`job_name: *(\S+)`).FindAllStringSubmatch(section, -1)
	if len(jobs) < 2 {
		t.Fatalf("the single-host section names %d scrape jobs, want the ingest's and the forwarder's", len(jobs))
	}
	for _, j := range jobs {
		if !down.MatchString(j[1]) {
			t.Errorf("scrape job %q of the single-host section is not one StowlineDown watches (%s)", j[1], down)
		}
	}
}
