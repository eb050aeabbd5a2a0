package dicomweb

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// startOrthanc runs a private Orthanc with the DICOMweb plugin (the
// harness fails instead of skipping under CI when it is not installed) and
// returns its DICOMweb base URL. It is stopped when the test ends.
func startOrthanc(t *testing.T) string {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc; skipped in -short mode")
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "stow-test", DicomWeb: true})
	return o.URL + "/dicom-web"
}

// makeDICOM returns a Part 10 file that Orthanc accepts (a dicomgen CT
// image). A non-empty payload is appended as Data Set Trailing Padding
// (FFFC,FFFC) OB, the last element a data set may have, to make instances
// of any size and content: STOW-RS and WADO-RS keep it byte for byte.
func makeDICOM(t *testing.T, study, series, sop string, payload []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{
		StudyInstanceUID: study, SeriesInstanceUID: series, SOPInstanceUID: sop,
		PatientID: "STOW-TEST", PatientName: "Stow^Test", Rows: 8, Columns: 8,
	})
	if err != nil {
		t.Fatalf("dicomgen: %v", err)
	}
	if len(payload) > 0 {
		if len(payload)%2 == 1 {
			payload = append(payload, 0)
		}
		// Explicit VR Little Endian: tag, "OB", two reserved bytes, 32-bit length.
		b.Write([]byte{0xFC, 0xFF, 0xFC, 0xFF, 'O', 'B', 0, 0})
		b.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(payload))))
		b.Write(payload)
	}
	return b.Bytes()
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
	c, err := New(base, &http.Client{}, withBufferSize(4096)) // small buffer: many chunk edges
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	study, series := dicomgen.NewUID(), dicomgen.NewUID()
	var parts []Part
	var uids []string
	files := map[string][]byte{}
	for i := range 5 {
		uid := dicomgen.NewUID()
		payload := []byte("tiny")
		if i == 2 {
			// 2 MB of delimiter-like bytes streamed through a 4 KiB buffer.
			payload = bytes.Repeat([]byte("\r\n--stowline.\r\n"), 128<<10)
		}
		files[uid] = makeDICOM(t, study, series, uid, payload)
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
		good := dicomgen.NewUID()
		body := makeDICOM(t, study, series, good, nil)
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
			st, se := dicomgen.NewUID(), dicomgen.NewUID()
			var ps []Part
			var us []string
			for range 3 {
				u := dicomgen.NewUID()
				ps = append(ps, memPart(u, makeDICOM(t, st, se, u, bytes.Repeat([]byte{0xAB}, 100_000))))
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

	// The body AWS HealthImaging needs (Content-Length, not chunked), here
	// against a real STOW-RS server: what it stores is what was sent.
	t.Run("announced length", func(t *testing.T) {
		var announced []int64
		var mu sync.Mutex
		rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
			mu.Lock()
			announced = append(announced, req.ContentLength)
			mu.Unlock()
			return http.DefaultTransport.RoundTrip(req)
		})
		lc, err := New(base, &http.Client{Transport: rt}, WithContentLength(), withBufferSize(4096))
		if err != nil {
			t.Fatal(err)
		}
		st, se := dicomgen.NewUID(), dicomgen.NewUID()
		var ps []Part
		var us []string
		sent := map[string][]byte{}
		for i := range 3 {
			u := dicomgen.NewUID()
			payload := []byte("tiny")
			if i == 1 {
				payload = bytes.Repeat([]byte{0xCD}, 2<<20)
			}
			sent[u] = makeDICOM(t, st, se, u, payload)
			ps = append(ps, memPart(u, sent[u]))
			us = append(us, u)
		}
		res, err := lc.Store(ctx, ps)
		if err != nil {
			t.Fatalf("Store: %v", err)
		}
		if m := res.Missing(us); m != nil || len(res.Failed) != 0 {
			t.Fatalf("Result = %+v, missing %q", res, m)
		}
		if len(announced) != 1 || announced[0] != res.BytesSent {
			t.Errorf("Content-Length announced %v, want one request of the %d bytes sent", announced, res.BytesSent)
		}
		for _, in := range res.Stored {
			if got := retrieveInstance(t, in.RetrieveURL); !bytes.Equal(got, sent[in.SOPInstanceUID]) {
				t.Errorf("instance %s: retrieved %d bytes, sent %d", in.SOPInstanceUID, len(got), len(sent[in.SOPInstanceUID]))
			}
		}
	})

	t.Run("shared sample files in batches", func(t *testing.T) {
		var parts []Part
		for _, s := range testharness.Samples(t) {
			if !s.OrthancAccepts {
				continue
			}
			st, err := os.Stat(s.Path)
			if err != nil {
				t.Fatalf("sample %s: %v", s.File, err)
			}
			path := s.Path
			parts = append(parts, Part{
				SOPInstanceUID: s.SOPInstanceUID,
				Size:           st.Size(),
				Open: func(context.Context) (io.ReadCloser, error) {
					return os.Open(path)
				},
			})
		}
		if len(parts) == 0 {
			t.Fatal("the samples manifest lists no file that Orthanc accepts")
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

// A real DICOMweb server passes the check: its QIDO-RS answer, empty
// store or not, is what the check takes for one.
func TestCheckAgainstOrthanc(t *testing.T) {
	base := startOrthanc(t)
	c := newTestClient(t, base)
	study := "1.2.826.0.1.3680043.8.498.77"
	for _, stored := range []bool{false, true} {
		if stored {
			data := makeDICOM(t, study, study+".1", study+".1.1", nil)
			if _, err := c.Store(t.Context(), []Part{memPart(study+".1.1", data)}); err != nil {
				t.Fatalf("Store: %v", err)
			}
		}
		rep, err := Check(t.Context(), CheckOptions{BaseURL: base, Client: &http.Client{}})
		if err != nil || !rep.OK {
			var out bytes.Buffer
			rep.WriteText(&out)
			t.Fatalf("stored %v: err = %v\n%s", stored, err, out.String())
		}
	}
}
