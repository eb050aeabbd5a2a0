package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// What the benchmarks share besides the child processes (proc_test.go):
// the checks before a run, building the binaries, loading A, the order of
// the rounds, medians and settings.

// checkBenchRun fails the benchmark unless it runs with -benchtime 1x on
// Linux. The rounds run inside the benchmark (alternating between cases;
// roundsVar sets how many); the sub-benchmarks only report. Any other
// benchtime would re-run the reporting functions and print a meaningless
// iteration count.
func checkBenchRun(b *testing.B, bench, roundsVar string) {
	b.Helper()
	if f := flag.Lookup("test.benchtime"); f == nil || f.Value.String() != "1x" {
		b.Fatalf("run with -benchtime 1x (rounds are set with %s), e.g.\n"+
			"  go test -run '^$' -bench %s -benchtime 1x -timeout 30m ./internal/bench/", roundsVar, bench)
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		b.Fatalf("this benchmark reads /proc (Linux only): %v", err)
	}
}

// moduleRoot is the absolute path of the module a benchmark builds its
// binary from: source, or this repository when source is empty (go test
// runs in the package directory, internal/bench).
func moduleRoot(source string) (string, error) {
	if source == "" {
		source = filepath.Join("..", "..")
	}
	root, err := filepath.Abs(source)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", err
	}
	return root, nil
}

// profiledOverlay returns the go build flags that add this checkout's
// internal/bench/cmd/<name>/main.go to root: the profiling main comes from here
// whatever the source, and an overlay adds it to a source that lacks it
// (an older commit) without touching that tree. The overlay file is
// written into tmp.
func profiledOverlay(b *testing.B, root, tmp, name string) []string {
	b.Helper()
	own, err := filepath.Abs(filepath.Join("cmd", name, "main.go"))
	if err != nil {
		b.Fatal(err)
	}
	overlay, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, "internal", "bench", "cmd", name, "main.go"): own,
	}})
	if err != nil {
		b.Fatal(err)
	}
	overlayPath := filepath.Join(tmp, name+"-overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o600); err != nil {
		b.Fatal(err)
	}
	return []string{"-overlay", overlayPath}
}

// goBuild runs go build [flags] -o out pkg in the module at root; what
// names the binary if the go command is missing.
func goBuild(b *testing.B, root, what, pkg, out string, flags ...string) {
	b.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		b.Fatalf("the go command builds %s: %v", what, err)
	}
	args := append(append([]string{"build"}, flags...), "-o", out, pkg)
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s in %s: %v\n%s", pkg, root, err, msg)
	}
}

// describeSource says what a binary was built from: root, and its commit
// and whether it has uncommitted changes if it is a git checkout.
func describeSource(root string) string {
	source := root
	if rev, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output(); err == nil {
		source += " at commit " + strings.TrimSpace(string(rev))
		if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			source += " with uncommitted changes"
		}
	}
	return source
}

// uploadAll uploads files to a with POST /instances (which keeps every
// byte), four at a time, and fails the benchmark if a refuses any.
func uploadAll(b *testing.B, a *testharness.Orthanc, files []string) {
	b.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]string{}
	const uploaders = 4
	for w := range uploaders {
		wg.Go(func() {
			var mine []string
			for i := w; i < len(files); i += uploaders {
				mine = append(mine, files[i])
			}
			res := a.Upload(b, mine...)
			mu.Lock()
			for f, why := range res.Failed {
				failed[f] = why
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		b.Fatalf("A refused %d generated files: %v", len(failed), failed)
	}
}

// roundOrder is the order the cases run in round (from 0): as given in
// even rounds, reversed in odd ones, so that drift (caches warming, B's
// index growing, other programs) does not favour one case.
func roundOrder[C any](cases []C, round int) []C {
	order := slices.Clone(cases)
	if round%2 == 1 {
		slices.Reverse(order)
	}
	return order
}

// medianOf is the median of f over samples.
func medianOf[S any](samples []S, f func(S) float64) float64 {
	v := make([]float64, len(samples))
	for i, x := range samples {
		v[i] = f(x)
	}
	return median(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// printMachine prints the header line that names the machine.
func printMachine() {
	fmt.Printf("# machine: %d CPUs (%s), %s, %s/%s\n", runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// envVars reads a benchmark's settings from the variables prefix+NAME and
// collects what is wrong with them; a bad value leaves the default.
type envVars struct {
	prefix string
	getenv func(string) string
	errs   []string
}

func (e *envVars) get(name string) string { return e.getenv(e.prefix + name) }

// bad records that variable name holds v where it should hold want.
func (e *envVars) bad(name, v, want string) {
	e.errs = append(e.errs, fmt.Sprintf("%s%s=%q: want %s", e.prefix, name, v, want))
}

// integer is an integer in lo..hi.
func (e *envVars) integer(name string, def, lo, hi int) int {
	v := e.get(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		e.bad(name, v, fmt.Sprintf("an integer in %d..%d", lo, hi))
		return def
	}
	return n
}

// duration is a duration of at least lo; want describes that.
func (e *envVars) duration(name string, def, lo time.Duration, want string) time.Duration {
	v := e.get(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo {
		e.bad(name, v, want)
		return def
	}
	return d
}

// cores is a load in cores, 0 or more (the MAX_OTHER_LOAD variables).
func (e *envVars) cores(name string, def float64) float64 {
	v := e.get(name)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		e.bad(name, v, "a number of cores, 0 to disable")
		return def
	}
	return f
}

// ints is a comma-separated list of integers in lo..hi (def when unset),
// or "-" for none.
func (e *envVars) ints(name, def string, lo, hi int) []int {
	v := e.get(name)
	if v == "" {
		v = def
	}
	if v == "-" {
		return nil
	}
	var out []int
	for _, item := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(item))
		if err != nil || n < lo || n > hi {
			e.errs = append(e.errs, fmt.Sprintf("%s%s: %q is not an integer in %d..%d", e.prefix, name, item, lo, hi))
			continue
		}
		out = append(out, n)
	}
	return out
}

// tuples is a comma-separated list of lo to hi positive integers
// separated by / (def when unset), or "-" for none; every tuple gets a 0
// appended, so that an optional last element reads as 0.
func (e *envVars) tuples(name, def string, lo, hi int) [][]int {
	v := e.get(name)
	if v == "" {
		v = def
	}
	if v == "-" {
		return nil
	}
	var out [][]int
	for _, item := range strings.Split(v, ",") {
		var t []int
		for _, f := range strings.Split(strings.TrimSpace(item), "/") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				t = nil
				break
			}
			t = append(t, n)
		}
		if len(t) < lo || len(t) > hi {
			e.errs = append(e.errs, fmt.Sprintf("%s%s: %q is not %d to %d positive integers separated by /", e.prefix, name, item, lo, hi))
			continue
		}
		out = append(out, append(t, 0))
	}
	return out
}

// fwdSettings is a list of forwarder settings,
// concurrency/max instances[/parallel requests].
func (e *envVars) fwdSettings(name, def string) []fwdSetting {
	var out []fwdSetting
	for _, t := range e.tuples(name, def, 2, 3) {
		out = append(out, fwdSetting{Concurrency: t[0], MaxInstances: t[1], Parallel: t[2]})
	}
	return out
}

// err lists every bad value, and doc (the variables), or is nil.
func (e *envVars) err(doc string) error {
	if len(e.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s\n(variables: %s)", strings.Join(e.errs, "\n"), doc)
}
