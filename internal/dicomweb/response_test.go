package dicomweb

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// recording is one entry of testdata/orthanc/index.json.
type recording struct {
	File        string  `json:"file"`
	Status      int     `json:"status"`
	ContentType *string `json:"content_type"`
	Request     struct {
		Path  string   `json:"path"`
		Parts []string `json:"parts"`
	} `json:"request"`
}

func loadRecordings(t testing.TB) map[string]recording {
	t.Helper()
	var idx map[string]recording
	if err := json.Unmarshal(readTestdata(t, "orthanc/index.json"), &idx); err != nil {
		t.Fatalf("parse index.json: %v", err)
	}
	return idx
}

func (r recording) contentType() string {
	if r.ContentType == nil {
		return ""
	}
	return *r.ContentType
}

func storedUIDs(r *Result) []string {
	var out []string
	for _, in := range r.Stored {
		out = append(out, in.SOPInstanceUID)
	}
	return out
}

func failedSummary(fs []FailedInstance) []string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s/%s/%d", f.SOPClassUID, f.SOPInstanceUID, f.FailureReason))
	}
	return out
}

const (
	ctStudy     = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.1"
	ctStudyURL  = "http://127.0.0.1:54165/dicom-web/studies/" + ctStudy
	ctInstance  = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0."
	secondaryCS = "1.2.840.10008.5.1.4.1.1.7"
)

func TestParseResponseOrthancRecordings(t *testing.T) {
	want := map[string]struct {
		stored      []string
		failed      []string
		retrieveURL string
		err         error
	}{
		"orthanc-success":             {stored: []string{ctInstance + "3", ctInstance + "5"}, retrieveURL: ctStudyURL},
		"orthanc-duplicate":           {stored: []string{ctInstance + "3", ctInstance + "5"}, retrieveURL: ctStudyURL},
		"orthanc-partial-broken":      {stored: []string{ctInstance + "12", ctInstance + "13"}, retrieveURL: ctStudyURL},
		"orthanc-partial-broken-xml":  {stored: []string{ctInstance + "16"}, retrieveURL: ctStudyURL},
		"orthanc-success-xml":         {stored: []string{ctInstance + "15"}, retrieveURL: ctStudyURL},
		"orthanc-all-broken":          {},
		"orthanc-empty-part":          {},
		"orthanc-dicomdir-part":       {},
		"orthanc-zero-parts":          {},
		"orthanc-malformed-multipart": {},
		"orthanc-wrong-boundary":      {},
		"orthanc-study-mismatch": {
			stored:      []string{ctInstance + "14"},
			failed:      []string{secondaryCS + "/1.3.6.1.4.1.5962.1.1.0.1.1.1175775772.5720.0/272"},
			retrieveURL: ctStudyURL,
		},
		"orthanc-study-mismatch-all": {
			failed: []string{secondaryCS + "/1.3.6.1.4.1.5962.1.1.0.1.1.1175775771.5711.0/272"},
		},
		"orthanc-no-accept": {
			stored:      []string{"1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457"},
			retrieveURL: "http://127.0.0.1:54165/dicom-web/studies/1.3.6.1.4.1.5962.1.2.8.20040826185059.5457",
		},
		"orthanc-no-meta-part": {
			stored:      []string{"1.2.826.0.1.3680043.8.498.2010020400001"},
			retrieveURL: "http://127.0.0.1:54165/dicom-web/studies/1.2.826.0.1.3680043.8.498.2010020400001.1",
		},
		"orthanc-single-application-dicom": {err: errNotSTOWResponse},
	}
	recs := loadRecordings(t)
	for name := range recs {
		if _, ok := want[name]; !ok {
			t.Errorf("recording %s has no expectation in this test", name)
		}
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			rec, ok := recs[name]
			if !ok {
				t.Fatalf("no recording %s in index.json", name)
			}
			body := readTestdata(t, "orthanc/"+rec.File)
			res, err := parseResponse(rec.contentType(), body, 1)
			if w.err != nil {
				if !errors.Is(err, w.err) {
					t.Fatalf("err = %v, want %v", err, w.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseResponse(%q): %v", rec.contentType(), err)
			}
			if got := storedUIDs(res); !slices.Equal(got, w.stored) {
				t.Errorf("stored = %q, want %q", got, w.stored)
			}
			if got := failedSummary(res.Failed); !slices.Equal(got, w.failed) {
				t.Errorf("failed = %q, want %q", got, w.failed)
			}
			if res.RetrieveURL != w.retrieveURL {
				t.Errorf("RetrieveURL = %q, want %q", res.RetrieveURL, w.retrieveURL)
			}
			for _, in := range res.Stored {
				if in.SOPClassUID == "" || !strings.HasSuffix(in.RetrieveURL, "/instances/"+in.SOPInstanceUID) {
					t.Errorf("stored instance incomplete: %+v", in)
				}
			}
			if len(res.Warnings) != 0 || len(res.OtherFailures) != 0 {
				t.Errorf("unexpected warnings %v or other failures %v", res.Warnings, res.OtherFailures)
			}
			// Every part Orthanc did not store shows up in Missing.
			if len(rec.Request.Parts) > 0 && len(res.Stored) > len(rec.Request.Parts) {
				t.Errorf("more stored instances than parts sent")
			}
		})
	}
}

func TestParseResponseVendorShapes(t *testing.T) {
	tests := []struct {
		file, contentType string
		stored            []string
		failed            []string
		other             []string
		warnings          []Warning
		retrieveURL       string
	}{
		{
			file: "docs/azure-v2-failed-and-stored.json", contentType: "application/dicom+json",
			stored:      []string{"4a858cbb-a71f-4c01-b9b5-85f88b031365"},
			failed:      []string{"cd70f89a-05bc-4dab-b6b8-1f3d2fcafeec/22c35d16-11ce-43fa-8f86-90ceed6cf4e7/43265"},
			retrieveURL: "http://localhost/studies/d09e8215-e1e1-4c7a-8496-b4f6641ed232",
		},
		{
			file: "docs/azure-v2-stored-with-warning.json", contentType: "application/dicom+json; charset=utf-8",
			stored: []string{"4a858cbb-a71f-4c01-b9b5-85f88b031365"},
			warnings: []Warning{{
				SOPClassUID:    "d246deb5-18c8-4336-a591-aeb6f8596664",
				SOPInstanceUID: "4a858cbb-a71f-4c01-b9b5-85f88b031365",
				WarningReason:  1, // Azure: validation warnings
				// The values Azure quotes (patient data in general) are
				// removed: comments go to logs and dead letters.
				Comments: []string{
					`DICOM100: (0008,0020) - Content "[value removed]" does not validate VR DA: one of the date values does not match the pattern YYYYMMDD`,
					`DICOM100: (0008,002a) - Content "[value removed]" does not validate VR DT: value does not mach pattern YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]]`,
				},
			}},
			retrieveURL: "http://localhost/studies/d09e8215-e1e1-4c7a-8496-b4f6641ed232",
		},
		{
			file: "docs/constructed-azure-duplicate-45070.json", contentType: "application/json",
			failed: []string{"1.2.840.10008.5.1.4.1.1.2/" + ctInstance + "3/45070"},
		},
		{
			file: "docs/constructed-other-failures.json", contentType: "application/dicom+json",
			other: []string{"//272"},
		},
		{
			file: "docs/constructed-ps318-stored-and-failed.xml", contentType: "application/dicom+xml",
			stored: []string{"1.2.3.4.1"},
			failed: []string{secondaryCS + "/1.2.3.4.2/49442"},
			warnings: []Warning{{
				SOPClassUID: secondaryCS, SOPInstanceUID: "1.2.3.4.1", WarningReason: 0xB000, // coercion of data elements
			}},
			retrieveURL: "https://example.invalid/dicomWeb/studies/1.2.3",
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			res, err := parseResponse(tt.contentType, readTestdata(t, tt.file), 1)
			if err != nil {
				t.Fatal(err)
			}
			if got := storedUIDs(res); !slices.Equal(got, tt.stored) {
				t.Errorf("stored = %q, want %q", got, tt.stored)
			}
			if got := failedSummary(res.Failed); !slices.Equal(got, tt.failed) {
				t.Errorf("failed = %q, want %q", got, tt.failed)
			}
			if got := failedSummary(res.OtherFailures); !slices.Equal(got, tt.other) {
				t.Errorf("other failures = %q, want %q", got, tt.other)
			}
			if fmt.Sprintf("%+v", res.Warnings) != fmt.Sprintf("%+v", tt.warnings) {
				t.Errorf("warnings = %+v\nwant %+v", res.Warnings, tt.warnings)
			}
			if res.RetrieveURL != tt.retrieveURL {
				t.Errorf("RetrieveURL = %q, want %q", res.RetrieveURL, tt.retrieveURL)
			}
		})
	}
}

func TestParseResponseContentHandling(t *testing.T) {
	const one = `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]}}`
	tests := []struct {
		name        string
		contentType string
		body        string
		stored      int
		err         error
		errContains []string
	}{
		{name: "empty body, json type", contentType: "application/dicom+json", body: ""},
		{name: "empty body, no type", contentType: "", body: " \r\n"},
		{name: "empty body, html type", contentType: "text/html", body: ""},
		{name: "empty object", contentType: "application/dicom+json", body: "{}"},
		{name: "application/json", contentType: "application/json", body: one, stored: 1},
		{name: "type parameters and case", contentType: "Application/DICOM+JSON; charset=UTF-8", body: one, stored: 1},
		{name: "unparseable type header", contentType: "application/dicom+json;;;", body: one, stored: 1},
		{name: "no type, sniffed JSON", contentType: "", body: "\n" + one, stored: 1},
		{name: "octet-stream, sniffed JSON", contentType: "application/octet-stream", body: one, stored: 1},
		{name: "array of data sets", contentType: "application/dicom+json", body: "[" + one + "," + one + "]", stored: 2},
		{name: "non-tag keys next to tags are ignored", contentType: "application/dicom+json", body: `{"x":1,` + one[1:], stored: 1},
		{
			name: "numbers as strings and padding", contentType: "application/dicom+json", stored: 0,
			body: `{"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3\u0000"]},"00081197":{"vr":"US","Value":["272"]}}]}}`,
		},
		{
			name: "nginx 502 page", contentType: "text/html", body: string(readTestdata(t, "docs/proxy-502.html")),
			err: errUnexpectedContentType, errContains: []string{`"text/html"`, "502 Bad Gateway"},
		},
		{
			name: "html without a type", contentType: "", body: "<html><body>Gateway Timeout</body></html>",
			err: errUnexpectedContentType, errContains: []string{`"none"`, "Gateway Timeout"},
		},
		{
			name: "plain text", contentType: "text/plain; charset=utf-8", body: "upstream connect error or disconnect/reset before headers\n\n\n" + strings.Repeat("x", 1000),
			err: errUnexpectedContentType, errContains: []string{"text/plain", "upstream connect error or disconnect/reset before headers xxx", "…"},
		},
		{name: "truncated JSON", contentType: "application/dicom+json", body: one[:20], err: errMalformedResponse},
		{
			name: "truncated data set", contentType: "application/dicom+json", err: errMalformedResponse,
			body:        `{"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JANE"}]},"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]`,
			errContains: []string{`[value removed]`, `1.2.3`},
		},
		{
			name: "data set as text", contentType: "text/plain", err: errUnexpectedContentType,
			body: `echo of 00100020 {"vr":"LO","Value":["PID-12345"]}`, errContains: []string{`[value removed]`},
		},
		{name: "trailing data", contentType: "application/dicom+json", body: one + "}", err: errMalformedResponse},
		{name: "two values", contentType: "application/dicom+json", body: one + one, err: errMalformedResponse},
		{name: "attribute not an object", contentType: "application/dicom+json", body: `{"00081199":[1]}`, err: errMalformedResponse},
		{name: "Orthanc error object", contentType: "application/json", body: `{"HttpError":"Unsupported Media Type","HttpStatus":415}`, err: errNotSTOWResponse, errContains: []string{"HttpError"}},
		{name: "JSON string", contentType: "application/json", body: `"hello"`, err: errNotSTOWResponse},
		{name: "array of numbers", contentType: "application/json", body: `[1]`, err: errNotSTOWResponse},
		{name: "malformed XML", contentType: "application/dicom+xml", body: "<NativeDicomModel><DicomAttribute>", err: errMalformedResponse},
		{name: "XML with another root", contentType: "application/xml", body: "<html><title>x</title></html>", err: errNotSTOWResponse},
		{
			name: "XML keyword only, unknown attributes skipped", contentType: "text/xml", stored: 1,
			body: `<NativeDicomModel><DicomAttribute keyword="Unknown"/><DicomAttribute tag="zz"/><DicomAttribute keyword="ReferencedSOPSequence" vr="SQ"><Item number="1"><DicomAttribute keyword="ReferencedSOPInstanceUID" vr="UI"><Value number="1">1.2</Value></DicomAttribute></Item></DicomAttribute></NativeDicomModel>`,
		},
		{name: "XML sniffed without a type", contentType: "", body: `<?xml version="1.0"?><NativeDicomModel/>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := parseResponse(tt.contentType, []byte(tt.body), 1)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				for _, s := range tt.errContains {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				if strings.Contains(err.Error(), "DOE^JANE") || strings.Contains(err.Error(), "PID-12345") {
					t.Errorf("error %q quotes patient data", err)
				}
				if len(err.Error()) > 600 {
					t.Errorf("error message is %d bytes long, want it trimmed", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(res.Stored) != tt.stored {
				t.Errorf("stored %d, want %d", len(res.Stored), tt.stored)
			}
		})
	}
}

func TestParseResponseLenientNumbers(t *testing.T) {
	body := `{"00081198":{"vr":"SQ","Value":[
		{"00081155":{"vr":"UI","Value":["a"]},"00081197":{"vr":"US","Value":["272"]}},
		{"00081155":{"vr":"UI","Value":["b"]},"00081197":{"vr":"US","Value":[1e3]}},
		{"00081155":{"vr":"UI","Value":["c"]},"00081197":{"vr":"US","Value":[null]}},
		{"00081155":{"vr":"UI","Value":["d\u0000"]}}
	]}}`
	res, err := parseResponse("application/dicom+json", []byte(body), 1)
	if err != nil {
		t.Fatal(err)
	}
	got := failedSummary(res.Failed)
	want := []string{"/a/272", "/b/0", "/c/0", "/d/0"}
	if !slices.Equal(got, want) {
		t.Fatalf("failed = %q, want %q", got, want)
	}
}

func TestParseResponseLowerCaseTag(t *testing.T) {
	body := `{"0008119a":{"vr":"SQ","Value":[{"00081197":{"vr":"US","Value":[272]}}]}}`
	res, err := parseResponse("application/dicom+json", []byte(body), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := failedSummary(res.OtherFailures); !slices.Equal(got, []string{"//272"}) {
		t.Fatalf("other failures = %q", got)
	}
}

// PS3.18 Table I.1-1: a stored instance's item may carry the Original
// Attributes Sequence (0400,0561) of the values the server coerced, a
// Person Name among them, whose JSON values are objects, not items.
func TestParseResponseCoercedPersonName(t *testing.T) {
	body := `{"00081199":{"vr":"SQ","Value":[{
		"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.7"]},
		"00081155":{"vr":"UI","Value":["a"]},
		"00081196":{"vr":"US","Value":[45056]},
		"04000561":{"vr":"SQ","Value":[{
			"04000562":{"vr":"DT","Value":["20261204110000"]},
			"04000550":{"vr":"SQ","Value":[{
				"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JOHN"}]},
				"00100020":{"vr":"LO","Value":["12345"]}
			}]}
		}]}
	}]}}`
	res, err := parseResponse("application/dicom+json", []byte(body), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := storedUIDs(res); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("stored = %q, want [a]", got)
	}
	if len(res.Warnings) != 1 || res.Warnings[0].WarningReason != WarningCoercion {
		t.Fatalf("warnings = %+v, want one coercion", res.Warnings)
	}
}

// TestStoredWithCommentsOnlyIsAWarning: a stored instance whose item
// carries error comments (Azure's FailedAttributesSequence) but no
// WarningReason is a warning all the same, its comments kept: they say
// what the destination found wrong in what it stored.
func TestStoredWithCommentsOnlyIsAWarning(t *testing.T) {
	body := `{"00081199":{"vr":"SQ","Value":[{
		"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},
		"00081155":{"vr":"UI","Value":["1.2.3.4.1"]},
		"00741048":{"vr":"SQ","Value":[{"00000902":{"vr":"LO","Value":["DICOM100: (0008,0020) does not validate VR DA"]}}]}
	}]}}`
	res, err := parseResponse("application/dicom+json", []byte(body), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []Warning{{SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", SOPInstanceUID: "1.2.3.4.1",
		Comments: []string{"DICOM100: (0008,0020) does not validate VR DA"}}}
	if fmt.Sprintf("%+v", res.Warnings) != fmt.Sprintf("%+v", want) {
		t.Errorf("warnings = %+v\nwant %+v", res.Warnings, want)
	}
}
