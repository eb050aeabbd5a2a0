// Package routing decides which studies, and which of their instances, go
// to a destination: rules written in CEL (the expression language of
// Kubernetes' validation rules) over what Orthanc already holds about a
// study. A rule sees Orthanc IDs, UIDs, modalities, AE titles,
// descriptions and SOP classes, never patient identity.
package routing

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/overloads"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
)

// Study is what a study rule sees as `study`.
type Study struct {
	// Modalities: the distinct Modality of the study's series, and its
	// ModalitiesInStudy.
	Modalities  []string `cel:"modalities"`
	Description string   `cel:"description"`
	// CallingAETs are the distinct AE titles that sent its instances
	// (Orthanc's RemoteAET metadata).
	CallingAETs []string `cel:"callingAets"`
	Institution string   `cel:"institution"`
	SOPClasses  []string `cel:"sopClasses"`
	Instances   int      `cel:"instances"`
}

// Instance is what an instance rule sees as `instance`.
type Instance struct {
	Modality          string `cel:"modality"`
	SOPClassUID       string `cel:"sopClassUid"`
	TransferSyntaxUID string `cel:"transferSyntaxUid"`
	CallingAET        string `cel:"callingAet"`
	SeriesDescription string `cel:"seriesDescription"`
}

// CostLimit bounds one evaluation of a rule, in CEL's cost units (about
// one a comparison or list element visited): a rule over a study's
// facts costs tens to hundreds; one that nests comprehensions could run
// for minutes, holding a forwarder's worker or the ingest's publish.
// Past it, the evaluation stops with ErrRule.
const CostLimit = 100_000

// ErrRule matches (errors.Is) a rule that fails to evaluate for a study:
// a permanent failure for that study at that destination.
var ErrRule = errors.New("routing rule failed")

// StudyRule selects studies. The zero rule (an empty expression) selects
// every study.
type StudyRule struct {
	prg         cel.Program
	perInstance bool // reads (or may read) callingAets or sopClasses: instance metadata
	counts      bool // reads (or may read) instances
	// partial evaluates the rule with perInstanceFacts unknown, for a
	// rule that reads them (matchWithoutMetadata).
	partial cel.Program
	// sources are the names the rule compares source with.
	sources []string
}

// perInstanceFacts are the study's facts that take one request per
// instance: a partial evaluation sees them unknown.
var perInstanceFacts = []*cel.AttributePatternType{
	cel.AttributePattern("study").QualString("callingAets"),
	cel.AttributePattern("study").QualString("sopClasses"),
}

// InstanceRule selects instances of a selected study. The zero rule
// selects every instance.
type InstanceRule struct {
	prg      cel.Program
	metadata bool // reads (or may read) sopClassUid, transferSyntaxUid or callingAet
}

// CompileStudyRule compiles a study rule: a boolean CEL expression over
// `source` (the event's source name) and `study`. An empty expression
// selects every study. Errors give the position of the problem.
func CompileStudyRule(expr string) (*StudyRule, error) {
	if strings.TrimSpace(expr) == "" {
		return &StudyRule{}, nil
	}
	env, err := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Study](), ext.ParseStructTags(true)),
		cel.Variable("source", cel.StringType),
		cel.Variable("study", cel.ObjectType("routing.Study")),
		cel.ASTValidators(regexLiterals{}, cel.ValidateDurationLiterals(), cel.ValidateTimestampLiterals()),
	)
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	checked, err := compile(env, expr)
	if err != nil {
		return nil, err
	}
	prg, err := env.Program(checked, cel.CostLimit(CostLimit))
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	fields, whole := reads(checked, "study")
	r := &StudyRule{prg: prg, perInstance: whole || anyOf(fields, "callingAets", "sopClasses"), counts: whole || fields["instances"],
		sources: comparedSources(checked)}
	if r.perInstance {
		if r.partial, err = env.Program(checked, cel.CostLimit(CostLimit), cel.EvalOptions(cel.OptPartialEval)); err != nil {
			return nil, fmt.Errorf("routing: %w", err)
		}
	}
	return r, nil
}

// CompileInstanceRule compiles an instance rule: a boolean CEL expression
// over `instance`. An empty expression selects every instance.
func CompileInstanceRule(expr string) (*InstanceRule, error) {
	if strings.TrimSpace(expr) == "" {
		return &InstanceRule{}, nil
	}
	env, err := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Instance](), ext.ParseStructTags(true)),
		cel.Variable("instance", cel.ObjectType("routing.Instance")),
		cel.ASTValidators(regexLiterals{}, cel.ValidateDurationLiterals(), cel.ValidateTimestampLiterals()),
	)
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	checked, err := compile(env, expr)
	if err != nil {
		return nil, err
	}
	prg, err := env.Program(checked, cel.CostLimit(CostLimit))
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	fields, whole := reads(checked, "instance")
	return &InstanceRule{prg: prg, metadata: whole || anyOf(fields, "sopClassUid", "transferSyntaxUid", "callingAet")}, nil
}

// regexLiterals checks, at compile time, a regular expression written as
// a literal in either form of matches: text.matches('re') and
// matches(text, 're'). cel.ValidateRegexLiterals checks the call's first
// argument, the text in the global form, so a bad pattern there compiled
// and then failed every study the rule reached.
type regexLiterals struct{}

func (regexLiterals) Name() string { return "stowline.routing.regex_literals" }

func (regexLiterals) Validate(_ *cel.Env, _ cel.ValidatorConfig, a *ast.AST, iss *cel.Issues) {
	for _, e := range ast.MatchDescendants(ast.NavigateAST(a), ast.FunctionMatcher(overloads.Matches)) {
		c := e.AsCall()
		pattern := 0 // text.matches(pattern)
		if !c.IsMemberFunction() {
			pattern = 1 // matches(text, pattern)
		}
		if len(c.Args()) != pattern+1 {
			continue
		}
		arg := c.Args()[pattern]
		if re, ok := constantString(arg); ok {
			if _, err := regexp.Compile(re); err != nil {
				iss.ReportErrorAtID(arg.ID(), "invalid matches argument: %v", err)
			}
		}
	}
}

// compile parses and type-checks expr, which must be boolean; the error
// names the line and column of each problem.
func compile(env *cel.Env, expr string) (*cel.Ast, error) {
	checked, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("%s", strings.TrimSpace(iss.Err().Error()))
	}
	if checked.OutputType() != cel.BoolType {
		return nil, fmt.Errorf("the rule must be true or false, not %s", checked.OutputType())
	}
	return checked, nil
}

// reads reports which fields of the variable v (study, instance) the
// checked expression reads, by name, and whether it hands v on whole.
// What is read from Orthanc follows from it. A field is read by a
// selection anywhere (study.callingAets, dyn(study).callingAets, or a
// selection of that name on anything else: reading more is only slower)
// or by a constant name in brackets (dyn(study)['callingAets']). Any
// other use (dyn(study)[source], [study], dyn(study) == routing.Study{...})
// may read any field: whole.
func reads(checked *cel.Ast, v string) (fields map[string]bool, whole bool) {
	fields = map[string]bool{}
	root := ast.NavigateAST(checked.NativeRep())
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.SelectKind)) {
		fields[e.AsSelect().FieldName()] = true
	}
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.IdentKind)) {
		if e.AsIdent() != v {
			continue
		}
		use := e
		if p, ok := use.Parent(); ok && p.Kind() == ast.CallKind && p.AsCall().FunctionName() == "dyn" {
			use = p
		}
		p, ok := use.Parent()
		switch {
		case ok && p.Kind() == ast.SelectKind: // counted above
		case ok && p.Kind() == ast.CallKind && indexes(p.AsCall(), use.ID()):
			if name, ok := constantString(p.AsCall().Args()[1]); ok {
				fields[name] = true
			} else {
				whole = true
			}
		default:
			whole = true
		}
	}
	return fields, whole
}

// comparedSources are the names the checked expression compares the
// variable source with, as literals: source == 'x' (either way round),
// source != 'x', source in ['x', 'y'] (or a sum of such lists, or a
// map's keys), ['x', 'y'].exists(s, s == source) (any comprehension over
// such a list whose variable is compared with source). Not inside a
// comprehension that names its own variable source, which hides the
// event's there.
func comparedSources(checked *cel.Ast) []string {
	root := ast.NavigateAST(checked.NativeRep())
	hidden := map[int64]bool{}
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.ComprehensionKind)) {
		if c := e.AsComprehension(); c.IterVar() == "source" || c.IterVar2() == "source" {
			for _, d := range ast.MatchDescendants(e, ast.AllMatcher()) {
				hidden[d.ID()] = true
			}
		}
	}
	isSource := func(e ast.Expr) bool { return e.Kind() == ast.IdentKind && e.AsIdent() == "source" }
	var names []string
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.CallKind)) {
		if hidden[e.ID()] {
			continue
		}
		c := e.AsCall()
		args := c.Args()
		if len(args) != 2 {
			continue
		}
		switch c.FunctionName() {
		case operators.Equals, operators.NotEquals:
			for i := range args {
				if s, ok := constantString(args[1-i]); ok && isSource(args[i]) {
					names = append(names, s)
				}
			}
		case operators.In:
			if isSource(args[0]) {
				names = append(names, literalElements(args[1])...)
			}
		}
	}
	// ['x', 'y'].exists(s, s == source) and the like: the list's names,
	// when its variable is compared with source in the loop.
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.ComprehensionKind)) {
		c := e.AsComprehension()
		if hidden[e.ID()] || c.IterVar2() != "" {
			continue
		}
		isVar := func(e ast.Expr) bool { return e.Kind() == ast.IdentKind && e.AsIdent() == c.IterVar() }
		compared := false
		for _, call := range ast.MatchDescendants(ast.NavigateExpr(checked.NativeRep(), c.LoopStep()), ast.KindMatcher(ast.CallKind)) {
			if f := call.AsCall().FunctionName(); f != operators.Equals && f != operators.NotEquals {
				continue
			}
			if a := call.AsCall().Args(); len(a) == 2 && (isVar(a[0]) && isSource(a[1]) || isSource(a[0]) && isVar(a[1])) {
				compared = true
			}
		}
		if compared {
			names = append(names, literalElements(c.IterRange())...)
		}
	}
	return names
}

// literalElements are the string literals of a list literal, of a sum
// of them (['x'] + ['y']), or the keys of a map literal.
func literalElements(e ast.Expr) []string {
	var out []string
	switch e.Kind() {
	case ast.ListKind:
		for _, el := range e.AsList().Elements() {
			if s, ok := constantString(el); ok {
				out = append(out, s)
			}
		}
	case ast.MapKind:
		for _, en := range e.AsMap().Entries() {
			if s, ok := constantString(en.AsMapEntry().Key()); ok {
				out = append(out, s)
			}
		}
	case ast.CallKind:
		if c := e.AsCall(); c.FunctionName() == operators.Add && len(c.Args()) == 2 {
			out = append(literalElements(c.Args()[0]), literalElements(c.Args()[1])...)
		}
	}
	return out
}

// indexes reports whether c indexes the expression operand (operand[key]).
func indexes(c ast.CallExpr, operand int64) bool {
	return (c.FunctionName() == operators.Index || c.FunctionName() == operators.OptIndex) &&
		len(c.Args()) == 2 && c.Args()[0].ID() == operand
}

// constantString is e's value if it is a string literal.
func constantString(e ast.Expr) (string, bool) {
	if e.Kind() != ast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// anyOf reports whether any of names is in fields.
func anyOf(fields map[string]bool, names ...string) bool {
	return slices.ContainsFunc(names, func(n string) bool { return fields[n] })
}

// ComparedSources returns the source names the rule compares source
// with as literals (source == 'main', source in ['main', 'cardio']), for
// the configuration to check against the configured sources.
func (r *StudyRule) ComparedSources() []string {
	if r == nil {
		return nil
	}
	return r.sources
}

// All reports whether the rule selects every study without looking.
func (r *StudyRule) All() bool { return r == nil || r.prg == nil }

// NeedsInstances reports whether the rule reads facts that take one
// request per instance (calling AE titles, SOP classes).
func (r *StudyRule) NeedsInstances() bool { return r != nil && r.perInstance }

// NeedsInstanceList reports whether the rule reads anything of the
// study's instances (their number, or NeedsInstances' facts): a rule that
// does not can be given no instances.
func (r *StudyRule) NeedsInstanceList() bool { return r != nil && (r.perInstance || r.counts) }

// Match evaluates the rule for a study of source.
func (r *StudyRule) Match(source string, s *Study) (bool, error) {
	if r.All() {
		return true, nil
	}
	return eval(r.prg, map[string]any{"source": source, "study": s})
}

// matchWithoutMetadata evaluates the rule with the facts read from every
// instance's metadata unknown. decided says the result does not depend on
// them (CEL's partial evaluation: 'ER' in study.callingAets || x is true
// whatever the AE titles when x is). Undecided, or failed, the full
// evaluation tells.
func (r *StudyRule) matchWithoutMetadata(source string, s *Study) (ok, decided bool) {
	if r == nil || r.partial == nil {
		return false, false
	}
	vars, err := cel.PartialVars(map[string]any{"source": source, "study": s}, perInstanceFacts...)
	if err != nil {
		return false, false
	}
	out, _, err := r.partial.Eval(vars)
	if err != nil {
		return false, false
	}
	b, decided := out.(types.Bool)
	return bool(b), decided
}

// All reports whether the rule selects every instance without looking.
func (r *InstanceRule) All() bool { return r == nil || r.prg == nil }

// NeedsMetadata reports whether the rule reads an instance's metadata
// (one request per instance).
func (r *InstanceRule) NeedsMetadata() bool { return r != nil && r.metadata }

// Match evaluates the rule for an instance.
func (r *InstanceRule) Match(i *Instance) (bool, error) {
	if r.All() {
		return true, nil
	}
	return eval(r.prg, map[string]any{"instance": i})
}

func eval(prg cel.Program, vars map[string]any) (bool, error) {
	out, _, err := prg.Eval(vars)
	if err != nil {
		// The error may quote the study's own values (a description used
		// as a regular expression is quoted back when it does not
		// parse, a string that is no timestamp, an unknown time zone),
		// whole or built into another: they are cut out of the whole
		// text first (a value may hold a colon), then what kind of
		// failure it was is kept, before the first colon.
		kind, _, _ := strings.Cut(redact(err.Error(), vars), ":")
		if strings.Contains(err.Error(), "cost limit exceeded") {
			kind = fmt.Sprintf("stopped at its cost limit (%d steps): simplify the rule", CostLimit)
		}
		return false, fmt.Errorf("%w: %s", ErrRule, kind)
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("%w: the rule gave %v, not true or false", ErrRule, out)
	}
	return bool(b), nil
}

// redact replaces in msg every string value the rule was given, as it is
// and as %q writes it, longest first (a value may hold a shorter one).
func redact(msg string, vars map[string]any) string {
	var values []string
	for _, v := range vars {
		switch v := v.(type) {
		case string:
			values = append(values, v)
		case *Study:
			values = append(values, v.Description, v.Institution)
			values = append(values, v.Modalities...)
			values = append(values, v.CallingAETs...)
			values = append(values, v.SOPClasses...)
		case *Instance:
			values = append(values, v.Modality, v.SOPClassUID, v.TransferSyntaxUID, v.CallingAET, v.SeriesDescription)
		}
	}
	for _, v := range slices.Clone(values) {
		if q := strconv.Quote(v); q[1:len(q)-1] != v {
			values = append(values, q[1:len(q)-1])
		}
	}
	slices.SortFunc(values, func(a, b string) int { return len(b) - len(a) })
	for _, v := range values {
		// Shorter values (a modality, "RF") would cut CEL's own words
		// ("RFC 3339"); they say nothing of a patient.
		if len(v) >= minRedacted {
			msg = strings.ReplaceAll(msg, v, "…")
		}
	}
	msg = quotedText.ReplaceAllString(msg, `"…"`)
	return timeZoneText.ReplaceAllString(msg, "$1 …")
}

// minRedacted is the shortest value redact looks for.
const minRedacted = 3

var (
	// quotedText is a value CEL quotes (Go's %q): whatever it holds,
	// it came from the rule's input.
	quotedText = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	// timeZoneText is the unquoted name after Go's "unknown time zone".
	timeZoneText = regexp.MustCompile(`(time zone)\s+[^:\n]*`)
)
