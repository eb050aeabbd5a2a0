package lua

import (
	"os"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/testharness"
)

// The README's set-up for a packaged Orthanc works as written: its
// Stowline file, beside a main configuration that defines LuaScripts and
// StableAge (as Debian's orthanc.json does), starts Orthanc, and the
// script posts with the token from the environment. A file holding the
// README's first block, LuaScripts and all, stopped a packaged Orthanc
// ("defined in 2 different configuration files").
func TestReadmePackagedOrthancSetup(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i := strings.Index(text, "**On a packaged Orthanc**")
	if i < 0 {
		t.Fatal("README.md has no packaged Orthanc set-up")
	}
	text = text[i:]
	const open, end = "cat > /etc/orthanc/stowline.json <<'JSON'\n", "\nJSON\n"
	j := strings.Index(text, open)
	k := strings.Index(text, end)
	if j < 0 || k < j {
		t.Fatal("README.md's packaged set-up writes no /etc/orthanc/stowline.json")
	}
	file := text[j+len(open) : k]
	const readmeURL = "http://localhost:8080/webhooks/orthanc"
	if !strings.Contains(file, readmeURL) {
		t.Fatalf("the README's stowline.json posts elsewhere than %s:\n%s", readmeURL, file)
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Release:     rel,
			LuaScripts:  []string{scriptPath(t)},
			StableAge:   1,
			ConfigFiles: map[string]string{"stowline.json": strings.Replace(file, readmeURL, "http://"+in.addr+"/webhooks/orthanc", 1)},
			Env:         []string{"STOWLINE_INGEST_TOKEN=" + ingestToken},
		})
		id := addStudy(t, o)
		p := waitPost(t, in, 1)
		if p.Event["orthancStudyId"] != id || p.Auth != "Bearer "+ingestToken {
			t.Errorf("event %v with Authorization %q, want study %s with the token", p.Event, p.Auth, id)
		}
	})
}
