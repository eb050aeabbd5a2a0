package dicomweb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	orthancBinary         = "/usr/sbin/Orthanc"
	orthancDicomWebPlugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)

// requireOrthanc skips the test when Orthanc or its DICOMweb plugin is not
// installed, except under CI (CI set), where that is a failure.
func requireOrthanc(t *testing.T) {
	t.Helper()
	for _, path := range []string{orthancBinary, orthancDicomWebPlugin} {
		if _, err := os.Stat(path); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI is set but %s is missing: %v", path, err)
			}
			t.Skipf("%s not installed: %v", path, err)
		}
	}
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc; skipped in -short mode")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startOrthanc runs a private Orthanc with the DICOMweb plugin in a temp
// dir and returns its DICOMweb base URL. It is stopped when the test ends.
func startOrthanc(t *testing.T) string {
	t.Helper()
	requireOrthanc(t)
	dir := t.TempDir()
	httpPort, dicomPort := freePort(t), freePort(t)
	cfg := map[string]any{
		"Name":                  "stow-test",
		"StorageDirectory":      filepath.Join(dir, "db"),
		"IndexDirectory":        filepath.Join(dir, "db"),
		"HttpPort":              httpPort,
		"DicomPort":             dicomPort,
		"RemoteAccessAllowed":   true,
		"AuthenticationEnabled": false,
		"Plugins":               []string{orthancDicomWebPlugin},
		"DicomWeb":              map[string]any{"Enable": true, "Root": "/dicom-web/"},
	}
	cfgPath := filepath.Join(dir, "orthanc.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "orthanc.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(orthancBinary, cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Orthanc: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				t.Logf("Orthanc log:\n%s", log)
			}
		}
	})

	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/system")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base + "/dicom-web"
			}
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("Orthanc exited early (%v):\n%s", err, log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("Orthanc did not answer on %s within 30s", base)
		}
	}
}

// testUID returns a random UID under the 2.25 (UUID-derived) root.
func testUID(r *rand.Rand) string {
	return fmt.Sprintf("2.25.%d%d", r.Uint64()|1<<63, r.Uint64())
}

// makeDICOM builds a minimal Part 10 file (Explicit VR Little Endian,
// Secondary Capture) that Orthanc accepts. payload goes into a private OB
// element, to make instances of any size and content.
func makeDICOM(study, series, sop string, payload []byte) []byte {
	const sopClass = "1.2.840.10008.5.1.4.1.1.7"
	var meta, ds bytes.Buffer
	elem := func(w *bytes.Buffer, group, element uint16, vr string, value []byte) {
		if len(value)%2 == 1 {
			pad := byte(' ')
			if vr == "UI" || vr == "OB" {
				pad = 0
			}
			value = append(value, pad)
		}
		binary.Write(w, binary.LittleEndian, [2]uint16{group, element})
		w.WriteString(vr)
		switch vr {
		case "OB", "OW", "SQ", "UN", "UT":
			w.Write([]byte{0, 0})
			binary.Write(w, binary.LittleEndian, uint32(len(value)))
		default:
			binary.Write(w, binary.LittleEndian, uint16(len(value)))
		}
		w.Write(value)
	}
	elem(&meta, 0x0002, 0x0001, "OB", []byte{0, 1})
	elem(&meta, 0x0002, 0x0002, "UI", []byte(sopClass))
	elem(&meta, 0x0002, 0x0003, "UI", []byte(sop))
	elem(&meta, 0x0002, 0x0010, "UI", []byte("1.2.840.10008.1.2.1"))
	elem(&meta, 0x0002, 0x0012, "UI", []byte("2.25.1"))

	elem(&ds, 0x0008, 0x0016, "UI", []byte(sopClass))
	elem(&ds, 0x0008, 0x0018, "UI", []byte(sop))
	elem(&ds, 0x0008, 0x0060, "CS", []byte("OT"))
	elem(&ds, 0x0009, 0x0010, "LO", []byte("STOWLINE TEST"))
	elem(&ds, 0x0009, 0x1000, "OB", payload)
	elem(&ds, 0x0010, 0x0010, "PN", []byte("Stow^Test"))
	elem(&ds, 0x0010, 0x0020, "LO", []byte("STOW-TEST"))
	elem(&ds, 0x0020, 0x000D, "UI", []byte(study))
	elem(&ds, 0x0020, 0x000E, "UI", []byte(series))

	var out bytes.Buffer
	out.Write(make([]byte, 128))
	out.WriteString("DICM")
	elem(&out, 0x0002, 0x0000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(meta.Len())))
	out.Write(meta.Bytes())
	out.Write(ds.Bytes())
	return out.Bytes()
}

// retrieveInstance fetches an instance back with WADO-RS.
func retrieveInstance(t *testing.T, url string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", `multipart/related; type="application/dicom"`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("WADO-RS GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("WADO-RS GET %s: %s", url, resp.Status)
	}
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("WADO-RS Content-Type %q: %v", resp.Header.Get("Content-Type"), err)
	}
	p, err := multipart.NewReader(resp.Body, params["boundary"]).NextRawPart()
	if err != nil {
		t.Fatalf("WADO-RS body: %v", err)
	}
	b, err := io.ReadAll(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStoreAgainstOrthanc(t *testing.T) {
	base := startOrthanc(t)
	c, err := New(base, &http.Client{}, WithBufferSize(4096)) // small buffer: many chunk edges
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42))

	study, series := testUID(r), testUID(r)
	var parts []Part
	var uids []string
	files := map[string][]byte{}
	for i := range 5 {
		uid := testUID(r)
		payload := []byte("tiny")
		if i == 2 {
			// 2 MB of delimiter-like bytes streamed through a 4 KiB buffer.
			payload = bytes.Repeat([]byte("\r\n--stowline.\r\n"), 128<<10)
		}
		files[uid] = makeDICOM(study, series, uid, payload)
		parts = append(parts, memPart(uid, files[uid]))
		uids = append(uids, uid)
	}

	t.Run("store a study", func(t *testing.T) {
		res, err := c.Store(ctx, parts)
		if err != nil {
			t.Fatalf("Store: %v", err)
		}
		if res.StatusCode != http.StatusOK {
			t.Errorf("status %d", res.StatusCode)
		}
		if m := res.Missing(uids); m != nil {
			t.Fatalf("Missing = %q", m)
		}
		if len(res.Failed) != 0 || !strings.HasSuffix(res.RetrieveURL, "/studies/"+study) {
			t.Errorf("Result = %+v", res)
		}
		var total int64
		for _, f := range files {
			total += int64(len(f))
		}
		if res.BytesSent <= total {
			t.Errorf("BytesSent = %d, want more than the %d content bytes", res.BytesSent, total)
		}
		// What Orthanc stored is byte for byte what was streamed.
		for _, in := range res.Stored {
			if got := retrieveInstance(t, in.RetrieveURL); !bytes.Equal(got, files[in.SOPInstanceUID]) {
				t.Errorf("instance %s: retrieved %d bytes, sent %d", in.SOPInstanceUID, len(got), len(files[in.SOPInstanceUID]))
			}
		}
	})

	t.Run("duplicates are reported as stored", func(t *testing.T) {
		res, err := c.Store(ctx, parts[:2])
		if err != nil {
			t.Fatalf("Store: %v", err)
		}
		if res.StatusCode != http.StatusOK || res.Missing(uids[:2]) != nil || len(res.Failed) != 0 {
			t.Fatalf("Result = %+v", res)
		}
	})

	t.Run("broken part: 400 that still lists what was stored", func(t *testing.T) {
		good := testUID(r)
		body := makeDICOM(study, series, good, nil)
		_, err := c.Store(ctx, []Part{memPart(good, body), memPart("not-dicom", []byte("\x1f\x8b garbage"))})
		var he *HTTPError
		if !errors.As(err, &he) || he.StatusCode != http.StatusBadRequest {
			t.Fatalf("err = %v, want HTTPError 400", err)
		}
		if he.Result == nil {
			t.Fatalf("400 body not parsed: %q (content type %q)", he.Body, he.ContentType)
		}
		if got := he.Result.Missing([]string{good, "not-dicom"}); !slices.Equal(got, []string{"not-dicom"}) {
			t.Errorf("Missing = %q", got)
		}
	})

	t.Run("concurrent stores", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			st, se := testUID(r), testUID(r)
			var ps []Part
			var us []string
			for range 3 {
				u := testUID(r)
				ps = append(ps, memPart(u, makeDICOM(st, se, u, bytes.Repeat([]byte{0xAB}, 100_000))))
				us = append(us, u)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := c.Store(ctx, ps)
				if err == nil && res.Missing(us) != nil {
					err = fmt.Errorf("missing %q", res.Missing(us))
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("shared sample files in batches", func(t *testing.T) {
		dir, accepted := sampleFiles(t)
		if len(accepted) == 0 {
			t.Skip("no shared DICOM samples found (set STOWLINE_DICOM_SAMPLES)")
		}
		var parts []Part
		for _, name := range accepted {
			path := filepath.Join(dir, name.file)
			parts = append(parts, Part{
				SOPInstanceUID: name.sopUID,
				Size:           name.size,
				Open: func(context.Context) (io.ReadCloser, error) {
					return os.Open(path)
				},
			})
		}
		for i, batch := range Batches(parts, 8, 512<<10) {
			var sent []string
			for _, p := range batch {
				sent = append(sent, p.SOPInstanceUID)
			}
			res, err := c.Store(ctx, batch)
			if err != nil {
				t.Fatalf("batch %d: %v", i, err)
			}
			if m := res.Missing(sent); m != nil {
				t.Errorf("batch %d: Missing = %q", i, m)
			}
		}
	})
}

type sampleFile struct {
	file, sopUID string
	size         int64
}

// sampleFiles lists the shared samples Orthanc accepts, from MANIFEST.tsv.
func sampleFiles(t *testing.T) (string, []sampleFile) {
	t.Helper()
	candidates := []string{os.Getenv("STOWLINE_DICOM_SAMPLES"), "../../shared/dicom-samples", "/work/shared/dicom-samples"}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		f, err := os.Open(filepath.Join(dir, "MANIFEST.tsv"))
		if err != nil {
			continue
		}
		defer f.Close()
		var out []sampleFile
		sc := bufio.NewScanner(f)
		var cols map[string]int
		for sc.Scan() {
			fields := strings.Split(sc.Text(), "\t")
			if cols == nil {
				cols = map[string]int{}
				for i, name := range fields {
					cols[name] = i
				}
				continue
			}
			get := func(name string) string {
				if i, ok := cols[name]; ok && i < len(fields) {
					return fields[i]
				}
				return ""
			}
			if get("orthanc_accepts") != "yes" {
				continue
			}
			var size int64
			fmt.Sscan(get("bytes"), &size)
			out = append(out, sampleFile{file: get("file"), sopUID: get("sop_instance_uid"), size: size})
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("read manifest: %v", err)
		}
		return dir, out
	}
	return "", nil
}
