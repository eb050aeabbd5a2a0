package deident

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// BenchmarkOrthancAnonymize compares, on one real Orthanc, reading an
// instance as it is, reading it through the rewrite, and Orthanc's own
// POST /instances/{id}/anonymize (the file comes back, nothing stored),
// with the five identifying values supplied in Replace as the forwarder
// would have to. It then asks Orthanc twice to anonymize the nested SR
// sample with the same Replace and logs whether the UIDs nested in its
// sequences came out the same (docs/deidentification.md).
//
//	go test -run '^$' -bench OrthancAnonymize -benchtime 200x ./internal/deident/
func BenchmarkOrthancAnonymize(b *testing.B) {
	o := testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "anonymize"})
	var ct bytes.Buffer
	if err := dicomgen.WriteInstance(&ct, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4",
		SOPInstanceUID: "1.2.3.4.5", FrameOfReferenceUID: "1.2.3.9", Rows: 512, Columns: 512}); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ctPath := filepath.Join(dir, "ct.dcm")
	if err := os.WriteFile(ctPath, ct.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	srPath := filepath.Join(testharness.SamplesDir(b), "sr-comprehensive-nested.dcm")
	if res := o.Upload(b, ctPath, srPath); len(res.Failed) > 0 {
		b.Fatalf("upload: %v", res.Failed)
	}
	var ids []string
	o.GetJSON(b, "/instances", &ids)
	var ctID, srID string
	for _, id := range ids {
		var tags map[string]any
		o.GetJSON(b, "/instances/"+id+"/simplified-tags", &tags)
		if tags["Modality"] == "SR" {
			srID = id
		} else {
			ctID = id
		}
	}
	k, _ := NewKeyer(testKey, "ANON-")
	d, err := New(k, Options{RetainDates: true})
	if err != nil {
		b.Fatal(err)
	}
	get := func(b *testing.B, path string, body []byte, sink func(io.Reader) error) {
		method, rd := http.MethodGet, io.Reader(nil)
		if body != nil {
			method, rd = http.MethodPost, bytes.NewReader(body)
		}
		req, _ := http.NewRequestWithContext(b.Context(), method, o.URL+path, rd)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			b.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, msg)
		}
		if err := sink(resp.Body); err != nil {
			b.Fatal(err)
		}
	}
	discard := func(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
	rewrite := func(r io.Reader) error { _, err := d.Rewrite(io.Discard, r); return err }
	replace := func(uid string) []byte {
		body, _ := json.Marshal(map[string]any{"Force": true, "Replace": map[string]string{
			"StudyInstanceUID": k.UID("1.2.3"), "SeriesInstanceUID": k.UID("1.2.3.4"), "SOPInstanceUID": k.UID(uid),
			"PatientID": k.PatientID("x"), "PatientName": k.PatientID("x")}})
		return body
	}
	for name, id := range map[string]string{"ct-512": ctID, "sr-nested": srID} {
		b.Run(name+"/plain", func(b *testing.B) {
			for b.Loop() {
				get(b, "/instances/"+id+"/file", nil, discard)
			}
		})
		b.Run(name+"/stowline-rewrite", func(b *testing.B) {
			for b.Loop() {
				get(b, "/instances/"+id+"/file", nil, rewrite)
			}
		})
		b.Run(name+"/orthanc-anonymize", func(b *testing.B) {
			body := replace(id)
			for b.Loop() {
				get(b, "/instances/"+id+"/anonymize", body, discard)
			}
		})
	}
	// Consistency across calls: the nested Referenced SOP Instance UIDs.
	nested := func() []string {
		var out bytes.Buffer
		get(b, "/instances/"+srID+"/anonymize", replace(srID), func(r io.Reader) error { _, err := io.Copy(&out, r); return err })
		var uids []string
		for _, m := range regexp.MustCompile(`\x08\x00\x55\x11UI..([0-9.]+)`).FindAllSubmatch(out.Bytes(), -1) {
			uids = append(uids, string(m[1]))
		}
		return uids
	}
	first, second := nested(), nested()
	b.Logf("Orthanc anonymize, two calls with the same Replace: nested Referenced SOP Instance UIDs %v then %v (same: %v)",
		first, second, fmt.Sprint(first) == fmt.Sprint(second))
}
