package routing

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestStudyRules(t *testing.T) {
	mr := &Study{Modalities: []string{"MR"}, Description: "Brain MRI", CallingAETs: []string{"MR1"}, Institution: "Hospital",
		SOPClasses: []string{"1.2.840.10008.5.1.4.1.1.4"}, Instances: 120}
	ct := &Study{Modalities: []string{"CT", "SR"}, Description: "Chest", Instances: 300}
	tests := []struct {
		rule         string
		source       string
		study        *Study
		want         bool
		needsPerInst bool
	}{
		{"", "main", mr, true, false},
		{"'MR' in study.modalities && source == 'main'", "main", mr, true, false},
		{"'MR' in study.modalities && source == 'main'", "cardio", mr, false, false},
		{"'MR' in study.modalities", "main", ct, false, false},
		{"study.description.contains('Brain')", "main", mr, true, false},
		{"study.instances > 200", "main", ct, true, false},
		{"'MR1' in study.callingAets", "main", mr, true, true},
		{"study.sopClasses.exists(c, c.startsWith('1.2.840.10008.5.1.4.1.1.4'))", "main", mr, true, true},
		{"study.institution == 'Hospital'", "main", ct, false, false},
	}
	for _, tt := range tests {
		r, err := CompileStudyRule(tt.rule)
		if err != nil {
			t.Fatalf("%q: %v", tt.rule, err)
		}
		got, err := r.Match(tt.source, tt.study)
		if err != nil || got != tt.want {
			t.Errorf("%q on %+v from %s = %v, %v; want %v", tt.rule, tt.study, tt.source, got, err, tt.want)
		}
		if r.NeedsInstances() != tt.needsPerInst {
			t.Errorf("%q: NeedsInstances = %v, want %v", tt.rule, r.NeedsInstances(), tt.needsPerInst)
		}
	}
}

// Bad rules fail when compiled, naming where.
func TestBadRulesFailAtCompile(t *testing.T) {
	for _, tt := range []struct{ rule, want string }{
		{"'MR' in study.modality", "undefined field 'modality'"},
		{"study.instances", "must be true or false"},
		{"source ==", "1:10"},
		{"sauce == 'x'", "undeclared reference to 'sauce'"},
		{"study.description.matches('[')", "invalid matches argument"},
		// The global form: cel.ValidateRegexLiterals checked its text,
		// not its pattern, and every study the rule reached failed.
		{"matches(study.description, '[')", "1:28: invalid matches argument: error parsing regexp: missing closing ]"},
		{"'MG' in study.modalities && matches(study.description, '(?i)screening(')", "invalid matches argument"},
		// A bad time literal failed every study the rule reached.
		{"study.description != '' || timestamp('2026-13-01T00:00:00Z') > timestamp('2026-01-01T00:00:00Z')", "invalid timestamp argument"},
		{"duration('2 days') > duration('1h')", "invalid duration argument"},
	} {
		_, err := CompileStudyRule(tt.rule)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tt.rule, err, tt.want)
		}
	}
	for _, tt := range []struct{ rule, want string }{
		{"instance.sopClass == 'x'", "undefined field 'sopClass'"},
		{"instance.seriesDescription.matches('[')", "invalid matches argument"},
		{"matches(instance.seriesDescription, '[')", "invalid matches argument"},
		{"timestamp('yesterday') < timestamp('2026-01-01T00:00:00Z')", "invalid timestamp argument"},
	} {
		if _, err := CompileInstanceRule(tt.rule); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tt.rule, err, tt.want)
		}
	}
}

// A literal pattern that parses compiles in either form of matches, and a
// literal text with a pattern read from the study is not taken for a
// pattern.
func TestRegexLiteralsThatParse(t *testing.T) {
	for _, rule := range []string{
		"study.description.matches('(?i)screening')",
		"matches(study.description, '(?i)screening')",
		"matches('a(b', study.description)",
		"'a(b'.matches(study.description)",
		"matches(study.description, study.institution)",
		"timestamp('2026-01-01T00:00:00Z') - duration('24h') < timestamp('2026-01-01T00:00:00Z')",
	} {
		if _, err := CompileStudyRule(rule); err != nil {
			t.Errorf("%q: %v", rule, err)
		}
	}
}

// A fact read by a name in brackets, or from the study or instance handed
// on whole, is read from Orthanc like one read by its field: the rule
// compiles and sees it (1bd17e2 refused these, failing the start of every
// forwarder with such a rule). Brackets that read no fact of the study or
// instance cost nothing more.
func TestRulesReadingFactsInBrackets(t *testing.T) {
	s := &Study{Modalities: []string{"CT"}, Description: "Chest", CallingAETs: []string{"ER"}, SOPClasses: []string{"1.2.840.10008.5.1.4.1.1.2"}, Instances: 3}
	for _, tt := range []struct {
		rule        string
		perInstance bool // reads callingAets or sopClasses
		list        bool // reads the instance list
	}{
		{"study.modalities[0] == 'CT'", false, false},
		{"{'a': {'x': 'CT'}, 'b': 2}['a']['x'] in study.modalities", false, false},
		{"dyn({'k': 'v'})['k'] == 'v'", false, false},
		{"dyn(study.modalities)[dyn(0)] == 'CT'", false, false},
		{"dyn(study)['description'] == 'Chest'", false, false},
		{"'ER' in dyn(study)['callingAets']", true, true},
		{"dyn(study).callingAets.size() > 0", true, true},
		{"dyn(study)['instances'] == 3", false, true},
		// A name computed, or the study handed on: any fact may be read.
		{"dyn(study)['calling' + 'Aets'] == ['ER']", true, true},
		{"dyn(study)[source].size() == 1", true, true},
		{"[dyn(study)][0]['callingAets'] == ['ER']", true, true},
		{"dyn(study) == routing.Study{modalities: ['CT'], description: 'Chest', callingAets: ['ER'], sopClasses: ['1.2.840.10008.5.1.4.1.1.2'], instances: 3}", true, true},
	} {
		r, err := CompileStudyRule(tt.rule)
		if err != nil {
			t.Errorf("%q: %v", tt.rule, err)
			continue
		}
		if r.NeedsInstances() != tt.perInstance || r.NeedsInstanceList() != tt.list {
			t.Errorf("%q: NeedsInstances %v, NeedsInstanceList %v; want %v, %v", tt.rule, r.NeedsInstances(), r.NeedsInstanceList(), tt.perInstance, tt.list)
		}
		source := "main"
		if strings.Contains(tt.rule, "[source]") {
			source = "callingAets"
		}
		if ok, err := r.Match(source, s); err != nil || !ok {
			t.Errorf("%q = %v, %v; want true", tt.rule, ok, err)
		}
	}
	for _, tt := range []struct {
		rule     string
		metadata bool
	}{
		{"dyn(instance)['modality'] == 'CT'", false},
		{"dyn(instance)['callingAet'] == 'ER'", true},
		{"dyn(instance)['calling' + 'Aet'] == 'ER'", true},
		{"[instance].exists(i, i.modality == 'CT')", true},
	} {
		r, err := CompileInstanceRule(tt.rule)
		if err != nil {
			t.Errorf("%q: %v", tt.rule, err)
			continue
		}
		if r.NeedsMetadata() != tt.metadata {
			t.Errorf("%q: NeedsMetadata %v, want %v", tt.rule, r.NeedsMetadata(), tt.metadata)
		}
		if ok, err := r.Match(&Instance{Modality: "CT", CallingAET: "ER"}); err != nil || !ok {
			t.Errorf("%q = %v, %v; want true", tt.rule, ok, err)
		}
	}
}

// A rule that fails while it runs is a failure of that study, not a crash.
func TestRuleFailingAtRunTime(t *testing.T) {
	r, err := CompileStudyRule("study.modalities[3] == 'CT'")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Match("main", &Study{Modalities: []string{"CT"}})
	if !errors.Is(err, ErrRule) {
		t.Fatalf("err = %v, want ErrRule", err)
	}
}

// A rule that would run for minutes stops at the cost limit, as a
// failure of that study.
func TestRuleStopsAtItsCostLimit(t *testing.T) {
	nested := "true"
	for _, v := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		nested = "[0,1,2,3,4,5,6,7,8,9].all(" + v + ", " + nested + ")"
	}
	r, err := CompileStudyRule(nested)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Match("main", &Study{})
	if !errors.Is(err, ErrRule) || !strings.Contains(err.Error(), "cost limit") {
		t.Fatalf("err = %v, want ErrRule for the cost limit", err)
	}
}

func TestInstanceRules(t *testing.T) {
	drop := "!(instance.modality in ['SR', 'KO', 'PR'])"
	r, err := CompileInstanceRule(drop)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		inst Instance
		want bool
	}{
		{Instance{Modality: "MR"}, true},
		{Instance{Modality: "SR"}, false},
		{Instance{Modality: "PR"}, false},
	} {
		if got, err := r.Match(&tt.inst); err != nil || got != tt.want {
			t.Errorf("%s on %+v = %v, %v; want %v", drop, tt.inst, got, err, tt.want)
		}
	}
	all, _ := CompileInstanceRule("  ")
	if !all.All() {
		t.Error("an empty instance rule must select everything")
	}
}

// A rule's failure never quotes the study's values back: they may be
// patient data. CEL quotes a value after a colon (a regular expression
// that does not parse), or with none before it (a string that is no
// timestamp, a time zone it does not know).
func TestRuleFailureQuotesNoValue(t *testing.T) {
	for _, tt := range []struct {
		name, rule, description string
		institution             string // shorter than the values redact looks for
	}{
		{"regular expression", "source.matches(study.description)", "Doe^Jane (brain", ""},
		{"timestamp", "timestamp(study.description) > timestamp('2026-01-01T00:00:00Z')", "Doe^Jane brain", ""},
		{"timestamp of a value with quotes", "timestamp(study.description) > timestamp('2026-01-01T00:00:00Z')", `Doe^Jane "brain"`, ""},
		{"time zone", "timestamp('2026-01-01T00:00:00Z').getHours(study.description) == 1", "Doe^Jane brain", ""},
		{"a value built from the study's", "timestamp(study.description + 'Z') > timestamp('2026-01-01T00:00:00Z')", "Doe^Jane brain", ""},
		{"a value with a colon", "timestamp(study.description) > timestamp('2026-01-01T00:00:00Z')", "Doe^Jane: brain", ""},
		{"a time zone built from the study's", "timestamp('2026-01-01T00:00:00Z').getHours('Europe/' + study.description) == 1", "Doe^Jane: brain", ""},
		// Each value is cut out, but a short one left beside it is
		// still the study's: the whole quoted text goes, and what
		// follows "time zone".
		{"a timestamp built from a short value", "timestamp(study.institution + study.description) > timestamp('2026-01-01T00:00:00Z')", "Doe^Jane brain", "Qx"},
		{"a time zone built from a short value", "timestamp('2026-01-01T00:00:00Z').getHours(study.description + study.institution) == 1", "Doe^Jane brain", "Qx"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := CompileStudyRule(tt.rule)
			if err != nil {
				t.Fatal(err)
			}
			// A short modality ("RF") is no reason to cut CEL's own words.
			_, err = r.Match("main", &Study{Description: tt.description, Institution: tt.institution, Modalities: []string{"RF"}})
			if !errors.Is(err, ErrRule) {
				t.Fatalf("err = %v, want ErrRule", err)
			}
			if msg := strings.ToLower(err.Error()); strings.Contains(msg, "doe") || strings.Contains(msg, "jane") || strings.Contains(msg, "brain") ||
				(tt.institution != "" && strings.Contains(msg, strings.ToLower(tt.institution))) {
				t.Fatalf("err = %v, want it without the description and institution", err)
			}
			t.Logf("kept: %v", err)
			if strings.Contains(err.Error(), "…C") {
				t.Errorf("err = %v: the modality was cut out of CEL's words", err)
			}
		})
	}
}

// The names a rule compares source with, for the configuration to check
// against the sources it has.
func TestComparedSources(t *testing.T) {
	for _, tt := range []struct {
		rule string
		want []string
	}{
		{"", nil},
		{"'MR' in study.modalities", nil},
		{"source == 'main'", []string{"main"}},
		{"'main' == source || source != 'cardio'", []string{"main", "cardio"}},
		{"source in ['main', 'cardio'] && study.description == 'x'", []string{"main", "cardio"}},
		// Not a comparison with a literal name: nothing to check.
		{"source.startsWith('ma')", nil},
		{"study.description == 'main'", nil},
		{"source == study.description", nil},
		// A comprehension's own source hides the event's, there only.
		{"['a'].exists(source, source == 'a') || source == 'main'", []string{"main"}},
		{"source != 'reserch' && !study.modalities.exists(source, source == 'SR')", []string{"reserch"}},
		{"study.modalities.all(source, source != 'SR')", nil},
		// Other literal forms of the same comparisons.
		{"source in ['main'] + ['cardio']", []string{"main", "cardio"}},
		{"source in {'main': 1, 'mian': 2}", []string{"main", "mian"}},
		{"['main', 'cardio'].exists(s, s == source)", []string{"main", "cardio"}},
		{"['main'].all(s, source != s) && ['x'].exists_one(n, n == 'x')", []string{"main"}},
		{"['reserch'].exists(s, s == source) || study.modalities.exists(m, m == 'MR')", []string{"reserch"}},
		// A list not compared with source, or of no literals.
		{"['MR', 'CT'].exists(m, m in study.modalities)", nil},
		{"study.modalities.exists(m, m == source)", nil},
	} {
		r, err := CompileStudyRule(tt.rule)
		if err != nil {
			t.Fatalf("%q: %v", tt.rule, err)
		}
		got := r.ComparedSources()
		slices.Sort(got)
		want := slices.Clone(tt.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%q: ComparedSources = %q, want %q", tt.rule, got, want)
		}
	}
}
