package testharness_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// TestStoreSCUSamplesAndGeneratedStudy sends every sample (broken ones
// included) and a generated 300-instance study in one StoreSCU call, then
// restarts Orthanc and checks nothing was lost.
func TestStoreSCUSamplesAndGeneratedStudy(t *testing.T) {
	t.Parallel()
	samples := testharness.Samples(t)
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "storescu", AET: "STORESCU-TEST", DicomWeb: true})

	gen, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		Series: 3, InstancesPerSeries: 100, Rows: 32, Columns: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	wantStored := map[string]bool{}
	for _, s := range samples {
		files = append(files, s.Path)
		wantStored[s.Path] = s.OrthancAccepts
	}
	for _, g := range gen {
		files = append(files, g)
		wantStored[g] = true
	}

	start := time.Now()
	res := o.StoreSCU(t, files...)
	t.Logf("storescu sent %d files (%d stored, %d failed) in %v", len(files), len(res.Stored), len(res.Failed), time.Since(start))

	for _, f := range res.Stored {
		if !wantStored[f] {
			t.Errorf("%s: stored, but Orthanc should refuse it", filepath.Base(f))
		}
	}
	for _, f := range files {
		reason, failed := res.Failed[f]
		if wantStored[f] && failed {
			t.Errorf("%s: not stored: %s", filepath.Base(f), reason)
		}
		if !wantStored[f] && !failed {
			t.Errorf("%s: not reported as failed", filepath.Base(f))
		}
		if failed {
			t.Logf("rejected as expected: %s: %s", filepath.Base(f), reason)
		}
	}
	if t.Failed() {
		t.Logf("storescu output:\n%s", res.Output)
	}
	accepted := len(res.Stored)
	if got := o.Statistics(t).CountInstances; got != accepted {
		t.Fatalf("Orthanc holds %d instances, storescu stored %d", got, accepted)
	}

	// storescu proposed each file's own transfer syntax, so nothing was
	// converted: Orthanc keeps Implicit, Big Endian and compressed files
	// in their syntax.
	bySOP := map[string]testharness.Sample{}
	for _, s := range samples {
		if s.OrthancAccepts {
			bySOP[s.SOPInstanceUID] = s
		}
	}
	var insts []struct {
		ID            string
		MainDicomTags struct{ SOPInstanceUID string }
	}
	o.GetJSON(t, "/instances?expand", &insts)
	for _, in := range insts {
		s, ok := bySOP[in.MainDicomTags.SOPInstanceUID]
		if !ok {
			continue
		}
		var meta struct{ TransferSyntax string }
		o.GetJSON(t, "/instances/"+in.ID+"/metadata?expand", &meta)
		want := s.TransferSyntaxUID
		if want == "" {
			want = "1.2.840.10008.1.2" // the bare data set is Implicit VR Little Endian
		}
		if meta.TransferSyntax != want {
			t.Errorf("%s: Orthanc stored transfer syntax %s, file has %s", s.File, meta.TransferSyntax, want)
		}
	}

	// Generated files are in dcmtk's canonical encoding: even after a
	// C-STORE (which re-encodes) the data set is byte-identical.
	before := o.InstanceDatasetMD5s(t)
	for _, g := range gen[:5] {
		info, err := testharness.ReadFileInfo(g)
		if err != nil {
			t.Fatal(err)
		}
		want, err := testharness.FileDatasetMD5(g)
		if err != nil {
			t.Fatal(err)
		}
		if before[info.SOPInstanceUID] != want {
			t.Errorf("%s: data set md5 in Orthanc %s, file %s", filepath.Base(g), before[info.SOPInstanceUID], want)
		}
	}

	o.Stop(t)
	if o.Running() {
		t.Fatal("Running after Stop")
	}
	o.Start(t)
	after := o.InstanceDatasetMD5s(t)
	if len(after) != len(before) {
		t.Fatalf("%d instances after restart, %d before", len(after), len(before))
	}
	for uid, sum := range before {
		if after[uid] != sum {
			t.Errorf("instance %s changed across restart", uid)
		}
	}
}

// TestSTOWStoresBytesVerbatim answers whether a file POSTed with STOW-RS
// to Orthanc's DICOMweb plugin is stored byte for byte: it is, for every
// accepted sample, even the bare data set without file meta information
// and the Big Endian one (the plugin passes each part to POST /instances).
func TestSTOWStoresBytesVerbatim(t *testing.T) {
	t.Parallel()
	samples := testharness.Samples(t)
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "stow", DicomWeb: true})

	for _, s := range samples {
		status, body := stow(t, o, s.Path)
		switch {
		case s.OrthancAccepts && status != http.StatusOK:
			t.Errorf("%s: STOW-RS answered %d: %s", s.File, status, body)
		case !s.OrthancAccepts && status == http.StatusOK:
			t.Errorf("%s: STOW-RS accepted a broken file", s.File)
		}
	}
	got := o.InstanceMD5s(t)
	accepted := 0
	for _, s := range samples {
		if !s.OrthancAccepts {
			continue
		}
		accepted++
		if got[s.SOPInstanceUID] != s.MD5 {
			t.Errorf("%s: stored md5 %q, file md5 %s", s.File, got[s.SOPInstanceUID], s.MD5)
		}
	}
	if len(got) != accepted {
		t.Errorf("Orthanc holds %d instances, want %d", len(got), accepted)
	}
}

// stow sends one file in a STOW-RS request and returns the status.
func stow(t *testing.T, o *testharness.Orthanc, path string) (int, string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	pw, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
	if err != nil {
		t.Fatal(err)
	}
	pw.Write(data)
	mw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.URL+"/dicom-web/studies", &body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", fmt.Sprintf(`multipart/related; type="application/dicom"; boundary=%s`, mw.Boundary()))
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, string(b)
}

// TestOrthancConfigPlumbing checks Lua scripts, Extra and Env reach
// Orthanc, and that the same Orthanc survives DeleteAll and WaitStable.
func TestOrthancConfigPlumbing(t *testing.T) {
	t.Parallel()
	lua := filepath.Join(t.TempDir(), "hello.lua")
	if err := os.WriteFile(lua, []byte(`function StowlineHello() return "hello from lua" end`), 0o600); err != nil {
		t.Fatal(err)
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{
		Name:       "plumbing",
		LuaScripts: []string{lua},
		StableAge:  1,
		Extra: map[string]any{
			"ExecuteLuaEnabled": true,
			"Stowline":          map[string]any{"Greeting": "${STOWLINE_TEST_GREETING}"},
		},
		Env: []string{"STOWLINE_TEST_GREETING=hi-from-env"},
	})
	out := execLua(t, o, `print(StowlineHello()) print(GetOrthancConfiguration()["Stowline"]["Greeting"])`)
	if !strings.Contains(out, "hello from lua") || !strings.Contains(out, "hi-from-env") {
		t.Errorf("lua output %q", out)
	}

	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{InstancesPerSeries: 2, Rows: 4, Columns: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	o.WaitStudies(t, 1, 5*time.Second)
	o.WaitStable(t, 10*time.Second)
	o.DeleteAll(t)
	if s := o.Statistics(t); s.CountInstances != 0 {
		t.Errorf("after DeleteAll: %+v", s)
	}
}

func execLua(t *testing.T, o *testharness.Orthanc, script string) string {
	t.Helper()
	resp, err := http.Post(o.URL+"/tools/execute-script", "text/plain", strings.NewReader(script))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("execute-script: HTTP %d: %s", resp.StatusCode, b)
	}
	return string(b)
}
