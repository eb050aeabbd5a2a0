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

// The install block at the top of the script, copied as written, is a
// configuration Orthanc starts with, and its event names the example's
// source and no priority, which PRIORITY_RULE then picks. Its
// annotations were Lua's "--" comments, which stopped Orthanc ("Cannot
// parse a JSON document"); its example priority, copied, put every study
// of that Orthanc in one lane, PRIORITY_RULE unseen.
func TestScriptInstallBlock(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script, err := os.ReadFile(scriptPath(t))
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(script), "\n") {
		switch {
		case strings.HasPrefix(line, `--   "Stowline": {`):
			block = append(block, "{")
		case block == nil:
			continue
		case !strings.HasPrefix(line, "--"):
			t.Fatalf("the install block does not end: %q", line)
		}
		block = append(block, strings.TrimPrefix(line, "--"))
		if line == "--   }" {
			block = append(block, "}")
			break
		}
	}
	if block == nil || block[len(block)-1] != "}" {
		t.Fatalf("stowline.lua has no install block ending in --   }:\n%s", strings.Join(block, "\n"))
	}
	file := strings.Join(block, "\n")
	const exampleURL = "http://stowline:8080/webhooks/orthanc"
	if !strings.Contains(file, exampleURL) {
		t.Fatalf("the install block posts elsewhere than %s:\n%s", exampleURL, file)
	}
	in := startIngest(t)
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{
		LuaScripts:  []string{scriptPath(t)},
		StableAge:   1,
		ConfigFiles: map[string]string{"stowline.json": strings.Replace(file, exampleURL, "http://"+in.addr+"/webhooks/orthanc", 1)},
		Env:         []string{"STOWLINE_INGEST_TOKEN=" + ingestToken},
	})
	id := addStudy(t, o)
	p := waitPost(t, in, 1)
	if _, named := p.Event["priority"]; p.Event["orthancStudyId"] != id || p.Event["source"] != "orthanc-main" || named || p.Auth != "Bearer "+ingestToken {
		t.Errorf("event %v with Authorization %q, want study %s of orthanc-main, no priority, with the token", p.Event, p.Auth, id)
	}
}
