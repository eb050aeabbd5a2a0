package chartcheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// goFacts are the constants of the main module the chart must agree with,
// read from its source (this module does not import it).
type goFacts struct {
	// httpShutdownGrace is app.HTTPShutdownGrace: how long the HTTP
	// servers give in-flight requests after SIGTERM.
	httpShutdownGrace time.Duration
	// ingestShutdownGrace is app.IngestShutdownGrace: how long the
	// ingest takes to stop.
	ingestShutdownGrace time.Duration
	// ingestMaxShutdownGrace is app.IngestMaxShutdownGrace: how long
	// it takes with the longest INGEST_PUBLISH_TIMEOUT.
	ingestMaxShutdownGrace time.Duration
	// publishAnswerMargin and triageShutdownWait are app's: the ingest's
	// HTTP grace is the longer of httpShutdownGrace and
	// INGEST_PUBLISH_TIMEOUT + publishAnswerMargin, then it waits up to
	// triageShutdownWait (app.ingestHTTPGrace).
	publishAnswerMargin, triageShutdownWait time.Duration
	// maxIngestPublishTimeout is config.MaxIngestPublishTimeout.
	maxIngestPublishTimeout time.Duration
	// forwarderShutdownGrace is forward.DefaultShutdownGrace: how long a
	// forwarder gives in-flight studies.
	forwarderShutdownGrace time.Duration
	// maxForwarderShutdownGrace is config.MaxForwarderShutdownGrace: the
	// longest FORWARDER_SHUTDOWN_GRACE.
	maxForwarderShutdownGrace time.Duration
	// readyTimeout is web.ReadyTimeout: how long /readyz may take.
	readyTimeout time.Duration
	// provisionTimeout is app.provisionTimeout: how long each creation
	// of the streams and buckets at startup may take, before the
	// listener opens.
	provisionTimeout time.Duration
	// eventStream and forwarderConsumer are natsjs.EventStream and
	// natsjs.ForwarderConsumer: what KEDA watches.
	eventStream, forwarderConsumer string
	// statConsumerPrefix is natsjs.StatConsumerPrefix: the stat lane's
	// consumer of a destination, which KEDA watches too.
	statConsumerPrefix string
	// destinationVars are the default destination's variables (the env
	// tags of config.Destination and the structs it embeds,
	// config.DestinationAuth and config.Deidentify), true for a
	// secret (which may be given as _FILE). A destination of DESTINATIONS
	// reads each as DESTINATION_<NAME>_ + the name (DICOMWEB_URL as URL).
	destinationVars map[string]bool
	// secretVars are the variables of internal/config tagged
	// secret:"true" (ORTHANC_<NAME>_PASSWORD with its <NAME>).
	secretVars []string
	// tracingVars are app.TracingVars: the OTEL_* variables stowline
	// follows, read by the OpenTelemetry SDK (so not listed by -h).
	tracingVars map[string]bool
}

var (
	factsOnce sync.Once
	facts     goFacts
	factsErr  error
)

func readGoFacts(t *testing.T) goFacts {
	t.Helper()
	factsOnce.Do(func() {
		var consts map[string]ast.Expr
		if consts, factsErr = declarations("internal/app", "internal/config", "internal/forward", "internal/natsjs", "internal/web"); factsErr != nil {
			return
		}
		get := func(name string) ast.Expr {
			e, ok := consts[name]
			if !ok {
				factsErr = &missingConst{name}
			}
			return e
		}
		facts.httpShutdownGrace = duration(get("app.HTTPShutdownGrace"))
		facts.ingestShutdownGrace = duration(get("app.IngestShutdownGrace"))
		facts.ingestMaxShutdownGrace = duration(get("app.IngestMaxShutdownGrace"))
		facts.publishAnswerMargin = duration(get("app.publishAnswerMargin"))
		facts.triageShutdownWait = duration(get("app.triageShutdownWait"))
		facts.maxIngestPublishTimeout = duration(get("config.MaxIngestPublishTimeout"))
		facts.forwarderShutdownGrace = duration(get("forward.DefaultShutdownGrace"))
		facts.maxForwarderShutdownGrace = duration(get("config.MaxForwarderShutdownGrace"))
		facts.readyTimeout = duration(get("web.ReadyTimeout"))
		facts.provisionTimeout = duration(get("app.provisionTimeout"))
		facts.eventStream = str(get("natsjs.EventStream"))
		facts.forwarderConsumer = str(get("natsjs.ForwarderConsumer"))
		facts.statConsumerPrefix = str(get("natsjs.StatConsumerPrefix"))
		facts.tracingVars = map[string]bool{}
		if list, ok := get("app.TracingVars").(*ast.CompositeLit); ok {
			for _, e := range list.Elts {
				facts.tracingVars[str(e)] = true
			}
		}
		if factsErr == nil {
			// Destination's embedded structs too: it reads theirs as its own.
			facts.destinationVars, factsErr = structEnvVars("internal/config", "Destination", "DestinationAuth", "Deidentify")
		}
		if factsErr == nil {
			var all map[string]bool
			all, factsErr = structEnvVars("internal/config")
			for name, secret := range all {
				if secret {
					facts.secretVars = append(facts.secretVars, name)
				}
			}
			slices.Sort(facts.secretVars)
		}
	})
	if factsErr != nil {
		t.Fatal(factsErr)
	}
	_, hasURL := facts.destinationVars["DICOMWEB_URL"]
	if facts.httpShutdownGrace <= 0 || facts.ingestShutdownGrace <= 0 || facts.ingestMaxShutdownGrace <= 0 ||
		facts.publishAnswerMargin <= 0 || facts.triageShutdownWait <= 0 || facts.maxIngestPublishTimeout <= 0 || facts.forwarderShutdownGrace <= 0 || facts.maxForwarderShutdownGrace <= 0 || facts.provisionTimeout <= 0 || facts.eventStream == "" || facts.forwarderConsumer == "" || facts.statConsumerPrefix == "" ||
		!hasURL || !facts.destinationVars["OAUTH_CLIENT_SECRET"] || !slices.Contains(facts.secretVars, "INGEST_TOKEN") || !facts.tracingVars["OTEL_EXPORTER_OTLP_ENDPOINT"] {
		t.Fatalf("constants not understood (the parser here reads `N * time.Second` and string literals): %+v", facts)
	}
	return facts
}

// ingestGrace is how long the ingest takes to stop with publishTimeout
// as INGEST_PUBLISH_TIMEOUT: app.ingestHTTPGrace, then the triage's wait.
func (f goFacts) ingestGrace(publishTimeout time.Duration) time.Duration {
	return max(f.httpShutdownGrace, publishTimeout+f.publishAnswerMargin) + f.triageShutdownWait
}

type missingConst struct{ name string }

func (e *missingConst) Error() string {
	return "constant " + e.name + " not found in the main module's source"
}

// declarations returns the values of the package-level constants and
// variables of the non-test files of dirs (relative to the repository),
// keyed "package.Name".
func declarations(dirs ...string) (map[string]ast.Expr, error) {
	out := map[string]ast.Expr{}
	fset := token.NewFileSet()
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(repoRoot, dir, "*.go"))
		if err != nil {
			return nil, err
		}
		for _, path := range files {
			if filepath.Ext(path) != ".go" || len(path) > 8 && path[len(path)-8:] == "_test.go" {
				continue
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return nil, err
			}
			for _, decl := range f.Decls {
				g, ok := decl.(*ast.GenDecl)
				if !ok || g.Tok != token.CONST && g.Tok != token.VAR {
					continue
				}
				for _, spec := range g.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, name := range vs.Names {
						if i < len(vs.Values) {
							out[f.Name.Name+"."+name.Name] = vs.Values[i]
						}
					}
				}
			}
		}
	}
	return out, nil
}

// duration evaluates `N * time.Unit`; anything else gives 0.
func duration(e ast.Expr) time.Duration {
	b, ok := e.(*ast.BinaryExpr)
	if !ok || b.Op != token.MUL {
		return 0
	}
	lit, ok := b.X.(*ast.BasicLit)
	sel, ok2 := b.Y.(*ast.SelectorExpr)
	if !ok || !ok2 || lit.Kind != token.INT {
		return 0
	}
	n, err := strconv.Atoi(lit.Value)
	if err != nil {
		return 0
	}
	unit := map[string]time.Duration{"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute}[sel.Sel.Name]
	return time.Duration(n) * unit
}

// str evaluates a string literal; anything else gives "".
func str(e ast.Expr) string {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return ""
	}
	s, err := strconv.Unquote(lit.Value)
	if err != nil {
		return ""
	}
	return s
}

// structEnvVars returns the env tags of the fields of the named struct
// types of dir (relative to the repository), of all its struct types when
// none is named, true for those tagged secret:"true" (in any of them).
func structEnvVars(dir string, types ...string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(repoRoot, dir, "*.go"))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	fset := token.NewFileSet()
	found := 0
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || len(types) > 0 && !slices.Contains(types, ts.Name.Name) {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			found++
			for _, field := range st.Fields.List {
				if field.Tag == nil {
					continue
				}
				tag, err := strconv.Unquote(field.Tag.Value)
				if err != nil {
					continue
				}
				name, _, _ := strings.Cut(reflect.StructTag(tag).Get("env"), ",")
				if name != "" {
					out[name] = out[name] || reflect.StructTag(tag).Get("secret") == "true"
				}
			}
			return false
		})
	}
	if len(types) > 0 && found != len(types) {
		return nil, &missingConst{strings.Join(types, ", ") + " (struct types)"}
	}
	return out, nil
}
