package deploy

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestInhibitRulesExample: the Alertmanager inhibit_rules example of
// docs/operations.md names alerts of deploy/alerts.yml, and each label it
// matches on (equal) is one those alerts carry whenever they fire in
// deploy/alerts_test.yml's cases, which promtool evaluates: a rule keyed
// on a label an alert lacks, or on a renamed alert, would mute nothing.
func TestInhibitRulesExample(t *testing.T) {
	ops := string(readFile(t, "docs/operations.md"))
	_, section, ok := strings.Cut(ops, "\n## What to watch and alert on\n")
	if !ok {
		t.Fatal(`docs/operations.md has no "What to watch and alert on" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	block := regexp.MustCompile("(?s)```yaml\n(inhibit_rules:.*?)```").FindStringSubmatch(section)
	if block == nil {
		t.Fatal(`"What to watch and alert on" has no inhibit_rules example`)
	}
	var cfg struct {
		InhibitRules []struct {
			SourceMatchers []string `yaml:"source_matchers"`
			TargetMatchers []string `yaml:"target_matchers"`
			Equal          []string `yaml:"equal"`
		} `yaml:"inhibit_rules"`
	}
	if err := yaml.Unmarshal([]byte(block[1]), &cfg); err != nil {
		t.Fatalf("the inhibit_rules example: %v", err)
	}
	if len(cfg.InhibitRules) == 0 {
		t.Fatal("the inhibit_rules example has no rule")
	}
	names := alertNames(t)
	carried := firingLabels(t)
	for i, r := range cfg.InhibitRules {
		if len(r.Equal) == 0 {
			t.Errorf("rule %d has no equal labels: one destination's outage would mute every destination's alerts", i)
		}
		source, target := matchedAlerts(t, r.SourceMatchers, names), matchedAlerts(t, r.TargetMatchers, names)
		if len(source) == 0 || len(target) == 0 {
			t.Errorf("rule %d: source matches %v, target %v; want alerts of deploy/alerts.yml on both sides", i, source, target)
		}
		for _, name := range append(source, target...) {
			sets := carried[name]
			if len(sets) == 0 {
				t.Errorf("rule %d: %s fires in no case of deploy/alerts_test.yml", i, name)
			}
			for _, l := range r.Equal {
				// A case may fire without the label on purpose
				// (StowlineForwardingStalled with no forwarder at all):
				// at least one firing must carry it.
				if !slices.ContainsFunc(sets, func(labels map[string]string) bool { return labels[l] != "" }) {
					t.Errorf("rule %d: %s never carries label %q when it fires", i, name, l)
				}
			}
		}
	}
}

// matchedAlerts returns the alerts of names that matchers (alertname="X"
// or alertname=~"A|B", the forms the example uses) select.
func matchedAlerts(t *testing.T, matchers, names []string) []string {
	t.Helper()
	var out []string
	for _, m := range matchers {
		parts := regexp.MustCompile(`^alertname(=~|=)"([^"]*)"$`).FindStringSubmatch(m)
		if parts == nil {
			t.Errorf("matcher %q: want alertname=\"X\" or alertname=~\"A|B\"", m)
			continue
		}
		re := regexp.QuoteMeta(parts[2])
		if parts[1] == "=~" {
			re = parts[2]
		}
		match := regexp.MustCompile("^(?:" + re + ")$")
		found := false
		for _, n := range names {
			if match.MatchString(n) {
				out, found = append(out, n), true
			}
		}
		if !found {
			t.Errorf("matcher %q selects no alert of deploy/alerts.yml", m)
		}
		// Each name of an alternation must be an alert: a misspelt one
		// would simply never mute.
		if parts[1] == "=~" {
			for _, alt := range strings.Split(parts[2], "|") {
				if !slices.Contains(names, alt) {
					t.Errorf("matcher %q names %s, not an alert of deploy/alerts.yml", m, alt)
				}
			}
		}
	}
	return out
}

// firingLabels returns, per alert, the label sets it fires with in
// deploy/alerts_test.yml.
func firingLabels(t *testing.T) map[string][]map[string]string {
	t.Helper()
	var cases struct {
		Tests []struct {
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels map[string]string `yaml:"exp_labels"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy/alerts_test.yml"), &cases); err != nil {
		t.Fatalf("deploy/alerts_test.yml: %v", err)
	}
	out := map[string][]map[string]string{}
	for _, c := range cases.Tests {
		for _, a := range c.AlertRuleTest {
			for _, e := range a.ExpAlerts {
				out[a.AlertName] = append(out[a.AlertName], e.ExpLabels)
			}
		}
	}
	return out
}
