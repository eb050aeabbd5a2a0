package chartcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"
)

// TestOperationsExample renders the site.yaml of docs/operations.md
// (section Kubernetes, Install) and runs every check on it, so the
// documented example keeps working.
func TestOperationsExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	const start, end = "cat > site.yaml <<'YAML'\n", "\nYAML\n"
	_, rest, ok := strings.Cut(string(b), start)
	example, _, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("docs/operations.md has no %q ... YAML block", strings.TrimSpace(start))
	}
	var values map[string]any
	if err := sigsyaml.UnmarshalStrict([]byte(example), &values); err != nil {
		t.Fatalf("the example's YAML: %v", err)
	}
	objs := render(t, values)
	checkRelease(t, objs)
	so := of[*scaledObject](objs)
	if len(so) != 1 || so[0].Spec.MaxReplicaCount == nil || *so[0].Spec.MaxReplicaCount != 11 {
		t.Errorf("the example's ScaledObjects %+v, want one with maxReplicaCount 11 (as the section says)", so)
	}
}
