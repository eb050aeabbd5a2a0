package orthancapi_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// TestAgainstOrthanc runs the client against a real Orthanc with basic
// authentication.
func TestAgainstOrthanc(t *testing.T) {
	t.Parallel()
	testharness.ForEachRelease(t, testAgainstOrthanc)
}

func testAgainstOrthanc(t *testing.T, rel testharness.Release) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{
		Name: "orthancapi", AET: "APITEST", Username: "forwarder", Password: "pw-123", StableAge: 1, Release: rel,
	})
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		PatientID: "API-1", Series: 2, InstancesPerSeries: 3, Rows: 16, Columns: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	local := map[string]string{} // SOPInstanceUID -> md5
	var studyUID string
	for _, p := range paths {
		info, err := testharness.ReadFileInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		sum, err := testharness.FileMD5(p)
		if err != nil {
			t.Fatal(err)
		}
		local[info.SOPInstanceUID] = sum
	}

	c := newClient(t, o.URL, orthancapi.WithBasicAuth(o.Username, o.Password))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sys, err := c.System(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sys.Name != "orthancapi" || sys.DicomAet != "APITEST" || sys.HttpPort != o.HTTPPort || sys.Version == "" || sys.ApiVersion == 0 {
		t.Errorf("system %+v", sys)
	}

	// Find the study through the change log, as the forwarder does.
	var studyID string
	var since int64
	for {
		ch, err := c.Changes(ctx, since, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ch.Changes {
			if x.ChangeType == "NewStudy" && x.ResourceType == "Study" {
				studyID = x.ID
			}
			if x.Seq <= since {
				t.Fatalf("change seq %d not after %d", x.Seq, since)
			}
		}
		since = ch.Last
		if ch.Done {
			break
		}
	}
	if !orthancapi.ValidID(studyID) {
		t.Fatalf("no NewStudy change (study ID %q)", studyID)
	}

	st, err := c.Study(ctx, studyID)
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != studyID || len(st.SeriesIDs) != 2 || st.StudyInstanceUID == "" || st.LastUpdate == "" {
		t.Errorf("study %+v", st)
	}
	studyUID = st.StudyInstanceUID

	insts, err := c.StudyInstances(ctx, studyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) != len(paths) {
		t.Fatalf("%d instances, want %d", len(insts), len(paths))
	}
	for i, in := range insts {
		if i > 0 && insts[i-1].SeriesInstanceUID > in.SeriesInstanceUID {
			t.Errorf("instances not ordered by series")
		}
		if _, ok := local[in.SOPInstanceUID]; !ok {
			t.Errorf("unknown SOPInstanceUID %s", in.SOPInstanceUID)
		}
		if in.FileUUID == "" {
			t.Errorf("%s: no FileUUID", in.ID)
		}
		// Read alone, as buffer mode's deletes do: the same file, and a
		// reception no later than the study's LastUpdate, in its form.
		one, err := c.Instance(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if one.ID != in.ID || one.FileUUID != in.FileUUID || one.SOPInstanceUID != in.SOPInstanceUID || one.SeriesID != in.SeriesID {
			t.Errorf("instance read alone %+v, listed %+v", one, in)
		}
		md, err := c.InstanceMetadata(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(md.ReceptionDate) != len(st.LastUpdate) || md.ReceptionDate > st.LastUpdate {
			t.Errorf("%s: ReceptionDate %q, study LastUpdate %q", in.ID, md.ReceptionDate, st.LastUpdate)
		}
		rc, size, err := c.OpenInstanceFile(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		h := md5.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if size != in.FileSize || n != in.FileSize {
			t.Errorf("%s: Content-Length %d, read %d, FileSize %d", in.ID, size, n, in.FileSize)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != local[in.SOPInstanceUID] {
			t.Errorf("%s: file md5 %s, uploaded %s", in.ID, got, local[in.SOPInstanceUID])
		}
	}

	// The study becomes stable after StableAge.
	deadline := time.Now().Add(15 * time.Second)
	for !st.IsStable && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if st, err = c.Study(ctx, studyID); err != nil {
			t.Fatal(err)
		}
	}
	if !st.IsStable || st.StudyInstanceUID != studyUID {
		t.Errorf("study not stable: %+v", st)
	}

	const missingID = "00000000-00000000-00000000-00000000-00000000"
	if _, err := c.Study(ctx, missingID); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("unknown study: err = %v, want ErrNotFound", err)
	}
	if _, err := c.StudyInstances(ctx, missingID); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("unknown study instances: err = %v, want ErrNotFound", err)
	}
	if _, err := c.Instance(ctx, missingID); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("unknown instance: err = %v, want ErrNotFound", err)
	}
	_, _, err = c.OpenInstanceFile(ctx, missingID)
	var oe *orthancapi.Error
	if !errors.As(err, &oe) || oe.StatusCode != 404 || oe.OrthancMessage == "" {
		t.Errorf("unknown instance: err = %v, want a 404 with Orthanc's message", err)
	}

	bad := newClient(t, o.URL, orthancapi.WithBasicAuth(o.Username, "wrong"))
	if _, err := bad.System(ctx); !errors.As(err, &oe) || oe.StatusCode != 401 {
		t.Errorf("wrong password: err = %v, want HTTP 401", err)
	}
}

// TestBareDatasetServedAsIs: Orthanc keeps a file without file meta
// information as it is, and OpenInstanceFile returns those bytes.
func TestBareDatasetServedAsIs(t *testing.T) {
	t.Parallel()
	testharness.ForEachRelease(t, testBareDatasetServedAsIs)
}

func testBareDatasetServedAsIs(t *testing.T, rel testharness.Release) {
	var bare testharness.Sample
	for _, s := range testharness.Samples(t) {
		if s.OrthancAccepts && s.TransferSyntaxUID == "" {
			bare = s
		}
	}
	if bare.Path == "" {
		t.Fatal("no bare data set among the samples")
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "orthancapi-bare", Release: rel})
	if res := o.Upload(t, bare.Path); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	var studies []string
	o.GetJSON(t, "/studies", &studies)
	if len(studies) != 1 {
		t.Fatalf("%d studies", len(studies))
	}
	c := newClient(t, o.URL)
	ctx := context.Background()
	insts, err := c.StudyInstances(ctx, studies[0])
	if err != nil || len(insts) != 1 {
		t.Fatalf("instances %v, %v", insts, err)
	}
	rc, size, err := c.OpenInstanceFile(ctx, insts[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(bare.Path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) || size != int64(len(want)) {
		t.Errorf("served %d bytes (Content-Length %d), file has %d; equal: %v", len(got), size, len(want), string(got) == string(want))
	}
	if string(got[min(128, len(got)):min(132, len(got))]) == "DICM" {
		t.Error("bare data set came back with a Part 10 header")
	}
}

// TestNotFoundOnlyFromOrthanc: through a reverse proxy, a 404 is "not
// found" only when Orthanc said it. The proxy's own 404s, a page
// (Traefik while Orthanc's pod is replaced) or an empty answer (Envoy
// without a route), are errors of another kind: the reconciler would
// otherwise skip the study for good, and routing drop its instances.
func TestNotFoundOnlyFromOrthanc(t *testing.T) {
	t.Parallel()
	testharness.ForEachRelease(t, testNotFoundOnlyFromOrthanc)
}

func testNotFoundOnlyFromOrthanc(t *testing.T, rel testharness.Release) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "orthancapi-proxy", Release: rel})
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	var studies, instances []string
	o.GetJSON(t, "/studies", &studies)
	o.GetJSON(t, "/instances", &instances)
	if len(studies) != 1 || len(instances) != 1 {
		t.Fatalf("studies %v, instances %v", studies, instances)
	}
	target, err := url.Parse(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	var mode atomic.Value // "pass", "page" or "empty"
	mode.Store("pass")
	upstream := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case "page":
			http.NotFound(w, r)
		case "empty":
			w.WriteHeader(http.StatusNotFound)
		default:
			upstream.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(proxy.Close)
	c := newClient(t, proxy.URL)
	ctx := context.Background()
	const unknown = "00000000-00000000-00000000-00000000-00000000"

	// Orthanc's own 404s, empty (a study) and JSON (an instance's parent).
	if _, err := c.Study(ctx, unknown); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("unknown study through the proxy: %v, want ErrNotFound", err)
	}
	if _, err := c.InstanceStudy(ctx, unknown); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("unknown instance's study through the proxy: %v, want ErrNotFound", err)
	}
	if err := c.DeleteInstance(ctx, unknown); !errors.Is(err, orthancapi.ErrNotFound) {
		t.Errorf("delete of an unknown instance through the proxy: %v, want ErrNotFound", err)
	}

	for _, m := range []string{"page", "empty"} {
		mode.Store(m)
		for name, call := range map[string]func() error{
			"study":          func() error { _, err := c.Study(ctx, studies[0]); return err },
			"instance study": func() error { _, err := c.InstanceStudy(ctx, instances[0]); return err },
			"metadata":       func() error { _, err := c.InstanceMetadata(ctx, instances[0]); return err },
			"file": func() error {
				rc, _, err := c.OpenInstanceFile(ctx, instances[0])
				if err == nil {
					rc.Close()
				}
				return err
			},
		} {
			err := call()
			var oe *orthancapi.Error
			if errors.Is(err, orthancapi.ErrNotFound) || !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound || oe.NotFromOrthanc == "" {
				t.Errorf("%s with the proxy's %s 404: %v, want a 404 not taken for Orthanc's", name, m, err)
			}
		}
	}
	mode.Store("pass")
	if _, err := c.Study(ctx, studies[0]); err != nil {
		t.Errorf("study once the proxy passes again: %v", err)
	}
}

// TestPasswordFileReadAgainWhenRefused: with the password in a file, a
// password changed in the file before Orthanc's is used as soon as
// Orthanc refuses the old one, without a restart; one changed at Orthanc
// first is refused until the file holds it. A request with a body (a
// conversion) is sent again whole.
func TestPasswordFileReadAgainWhenRefused(t *testing.T) {
	t.Parallel()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{
		Name: "pwfile", AET: "PWFILE", Username: "forwarder", Password: "pw-first-0123",
	})
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{PatientID: "PW-1", Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	var ids []string
	if b, err := o.Bytes(t.Context(), http.MethodGet, "/instances", nil); err != nil || json.Unmarshal(b, &ids) != nil || len(ids) != 1 {
		t.Fatalf("instances: %s (%v)", b, err)
	}
	file := filepath.Join(t.TempDir(), "password")
	write := func(pw string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pw-first-0123")
	c := newClient(t, o.URL, orthancapi.WithBasicAuthFile("forwarder", file))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.System(ctx); err != nil {
		t.Fatal(err)
	}

	write("pw-second-4567")
	if _, err := c.System(ctx); err != nil {
		t.Fatalf("file changed, Orthanc not yet: %v", err)
	}
	o.ChangePassword(t, "pw-second-4567")
	if _, err := c.System(ctx); err != nil {
		t.Fatalf("Orthanc changed after the file: %v", err)
	}

	o.ChangePassword(t, "pw-third-89ab")
	var oe *orthancapi.Error
	if _, err := c.System(ctx); !errors.As(err, &oe) || oe.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Orthanc changed, the file not yet: err = %v, want HTTP 401", err)
	}
	write("pw-third-89ab")
	rc, err := c.OpenTranscodedInstance(ctx, ids[0], "1.2.840.10008.1.2")
	if err != nil {
		t.Fatalf("conversion after the file changed: %v", err)
	}
	defer rc.Close()
	if b, err := io.ReadAll(rc); err != nil || len(b) < 132 || string(b[128:132]) != "DICM" {
		t.Errorf("converted instance: %d bytes, err %v; want a DICOM file", len(b), err)
	}

	// Refused while the file cannot be read: the error says so, and is
	// still Orthanc's 401.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	o.ChangePassword(t, "pw-fourth-cdef")
	_, err = c.System(ctx)
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusUnauthorized || !strings.Contains(err.Error(), "password file") ||
		!strings.Contains(err.Error(), "the password read before was sent") {
		t.Errorf("file unreadable: err = %v, want HTTP 401 saying the file was not read", err)
	}
}

func TestPasswordFileChecked(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{empty, filepath.Join(t.TempDir(), "missing")} {
		if _, err := orthancapi.New("http://orthanc:8042", orthancapi.WithBasicAuthFile("forwarder", path)); err == nil || !strings.Contains(err.Error(), "password file") {
			t.Errorf("%s: err = %v, want a password file error", path, err)
		}
	}
}

// TestRefusedCredentialsSaySo: Orthanc's 401 has no body, so the error
// says what it means: the user name and password sent were refused, or
// Orthanc wants some and none were set (a newcomer's first two
// mistakes), rather than a bare "HTTP 401 Unauthorized".
func TestRefusedCredentialsSaySo(t *testing.T) {
	t.Parallel()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "orthancapi-401", Username: "forwarder", Password: "pw-right-0123"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, tt := range map[string]struct {
		opts []orthancapi.Option
		want string
	}{
		"wrong password": {[]orthancapi.Option{orthancapi.WithBasicAuth("forwarder", "pw-wrong-4567")}, "Orthanc refused the user name and password sent"},
		"no credentials": {nil, "Orthanc wants a user name and password, and none is set"},
	} {
		_, err := newClient(t, o.URL, tt.opts...).System(ctx)
		var oe *orthancapi.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusUnauthorized || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v; want HTTP 401 saying %q", name, err, tt.want)
		}
		if strings.Contains(err.Error(), "pw-") {
			t.Errorf("%s: the error quotes a password: %v", name, err)
		}
	}
}
