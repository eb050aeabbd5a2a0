package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// registeredMetrics reads the repository's Go sources (tests left out)
// for the stowline metrics they define, by name, with their type:
// counter, gauge or histogram from the options of their constructor,
// "" for a collector's prometheus.NewDesc.
func registeredMetrics(t *testing.T) map[string]string {
	t.Helper()
	types := map[string]string{"CounterOpts": "counter", "GaugeOpts": "gauge", "HistogramOpts": "histogram"}
	found := map[string]string{}
	for _, f := range goSources(t) {
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.CompositeLit:
				sel, ok := x.Type.(*ast.SelectorExpr)
				if !ok || types[sel.Sel.Name] == "" {
					return true
				}
				for _, e := range x.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Name" {
							if name := stringLit(kv.Value); strings.HasPrefix(name, "stowline_") {
								found[name] = types[sel.Sel.Name]
							}
						}
					}
				}
			case *ast.CallExpr:
				if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" && len(x.Args) > 0 {
					if name := stringLit(x.Args[0]); strings.HasPrefix(name, "stowline_") {
						found[name] = ""
					}
				}
			}
			return true
		})
	}
	if len(found) == 0 {
		t.Fatal("no stowline metric found in the sources")
	}
	return found
}

// stringLit is the value of a string literal, "" for anything else.
func stringLit(e ast.Expr) string {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return ""
	}
	s, err := strconv.Unquote(bl.Value)
	if err != nil {
		return ""
	}
	return s
}

// TestMetricsDocumentedExactly: docs/metrics.md's tables list exactly the
// metrics the code defines, each with its type. The browser test checks
// that what a running stowline exports is documented, but not the other
// way: a metric renamed or removed in the code stayed in the docs, and
// the alerts and dashboards, which only have to use documented metrics
// (TestDashboardsAndAlertsUseDocumentedMetrics), kept querying a series
// that no longer exists, and an alert on it never fired.
func TestMetricsDocumentedExactly(t *testing.T) {
	code := registeredMetrics(t)
	row := regexp.MustCompile("(?m)^\\| `(stowline_[a-z_]+)` \\| ([a-z]+) \\|")
	docs := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(readFile(t, "docs/metrics.md")), -1) {
		docs[m[1]] = m[2]
	}
	for _, name := range slices.Sorted(maps.Keys(code)) {
		typ, ok := docs[name]
		switch {
		case !ok:
			t.Errorf("the code defines %s, which no row of docs/metrics.md lists", name)
		case code[name] != "" && typ != code[name]:
			t.Errorf("docs/metrics.md lists %s as a %s; the code defines a %s", name, typ, code[name])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(docs)) {
		if _, ok := code[name]; !ok {
			t.Errorf("docs/metrics.md lists %s, which the code does not define", name)
		}
	}
}

// TestDocsNameOnlyNamesThatExist: every stowline_ name the docs give (a
// metric, a bucket, a prefix such as `stowline_queue_*`) is one the code
// defines. docs/operations.md's scaling recipe named
// stowline_orthanc_slot_waits_total for stowline_orthanc_request_slot_waits_total:
// an operator copying it into Grafana or an alert sees no data, and reads
// that no request waits.
func TestDocsNameOnlyNamesThatExist(t *testing.T) {
	names := stowlineLiterals(t)
	// Compose's network, named by Compose from the project's name.
	names["stowline_default"] = true
	known := func(name string) bool {
		if names[name] {
			return true
		}
		// A prefix: `stowline_queue_*`, `stowline_forwarded_<name>`.
		prefix, ok := strings.CutSuffix(name, "_")
		if !ok {
			return false
		}
		for n := range names {
			if n == prefix || strings.HasPrefix(n, name) {
				return true
			}
		}
		return false
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs/*.md"))
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs (err %v)", err)
	}
	token := regexp.MustCompile(`stowline_[a-z_]+`)
	for _, path := range append(docs, filepath.Join(root, "README.md"), filepath.Join(root, "BENCHMARKS.md")) {
		rel, _ := filepath.Rel(root, path)
		for _, name := range token.FindAllString(string(readFile(t, rel)), -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if !known(base) {
				t.Errorf("%s names %s, which the code does not define", rel, name)
			}
		}
	}
}

// stowlineLiterals is the set of string literals beginning "stowline_"
// in the repository's Go sources (tests left out): metric, bucket and
// stream names.
func stowlineLiterals(t *testing.T) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	for _, f := range goSources(t) {
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok {
				if s := stringLit(bl); strings.HasPrefix(s, "stowline_") {
					found[s] = true
				}
			}
			return true
		})
	}
	return found
}

// goSources parses the repository's Go sources, tests left out.
func goSources(t *testing.T) []*ast.File {
	t.Helper()
	var files []*ast.File
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
