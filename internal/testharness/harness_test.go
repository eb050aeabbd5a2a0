package testharness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
)

func TestParseStoreSCU(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want map[string]string
	}{
		{
			name: "success, bad file, refused, failed send",
			out: `I: checking input files ...
I: Requesting Association
I: Association Accepted (Max Send PDV: 16372)
I: Sending file: a.dcm
I: Converting transfer syntax: Little Endian Explicit -> Little Endian Explicit
I: Sending Store Request (MsgID 1, CT)
XMIT: .
I: Received Store Response (Success)
I: Sending file: empty.dcm
E: Bad DICOM file: empty.dcm: End of stream
I: Sending file: dir/with space.dcm
W: DcmItem: Length of element (7fe0,0010) is not a multiple of 2 (VR=OW)
I: Received Store Response (Warning: CoercionOfDataElements)
I: Sending file: nostudy.dcm
I: Sending Store Request (MsgID 4, SC)
XMIT: .
I: Received Store Response (Refused: OutOfResources)
I: Sending file: jpeg.dcm
XMIT: W: DIMSE Warning: (STORESCU,EXP1): sendMessage: unable to convert dataset
E: Store Failed, file: jpeg.dcm:
E: 0006:020e DIMSE Failed to send message
I: Releasing Association
`,
			want: map[string]string{
				"a.dcm":              "",
				"empty.dcm":          "Bad DICOM file: empty.dcm: End of stream",
				"dir/with space.dcm": "",
				"nostudy.dcm":        "refused by Orthanc: Refused: OutOfResources",
				"jpeg.dcm":           "Store Failed, file: jpeg.dcm:",
			},
		},
		{
			name: "association refused",
			out: `I: checking input files ...
I: Requesting Association
F: Association Request Failed: 0006:031c TCP Initialization Error: Connection refused
`,
			want: map[string]string{},
		},
		{
			name: "aborted mid-file",
			out: `I: Sending file: a.dcm
I: Sending Store Request (MsgID 1, CT)
`,
			want: map[string]string{"a.dcm": "no store response"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := parseStoreSCU([]byte(tc.out))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestAssociationConfig(t *testing.T) {
	got := string(associationConfig([]pcPair{
		{"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"},
		{"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.70"},
		{"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1"},
	}))
	want := `[[TransferSyntaxes]]
[TS1]
TransferSyntax1 = 1.2.840.10008.1.2.1
[TS2]
TransferSyntax1 = 1.2.840.10008.1.2.4.70
[[PresentationContexts]]
[Contexts]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.2\TS1
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.2\TS2
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.7\TS1
[[Profiles]]
[STOWLINE]
PresentationContexts = Contexts
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestMergeConfig(t *testing.T) {
	tests := []struct {
		name     string
		dst, src map[string]any
		want     map[string]any
	}{
		{
			name: "nested maps merge",
			dst:  map[string]any{"DicomWeb": map[string]any{"Enable": true, "Root": "/dicom-web/"}, "Name": "a"},
			src:  map[string]any{"DicomWeb": map[string]any{"Servers": map[string]any{"x": []string{"u"}}}},
			want: map[string]any{"DicomWeb": map[string]any{"Enable": true, "Root": "/dicom-web/", "Servers": map[string]any{"x": []string{"u"}}}, "Name": "a"},
		},
		{
			name: "scalar replaces",
			dst:  map[string]any{"StableAge": 2},
			src:  map[string]any{"StableAge": 5, "Stowline": map[string]any{"k": "v"}},
			want: map[string]any{"StableAge": 5, "Stowline": map[string]any{"k": "v"}},
		},
		{
			name: "map replaces scalar",
			dst:  map[string]any{"Plugins": []string{}},
			src:  map[string]any{"Plugins": map[string]any{}},
			want: map[string]any{"Plugins": map[string]any{}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeConfig(tc.dst, tc.src); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

// recordingTB records Fatalf and Skipf instead of stopping the goroutine.
type recordingTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordingTB) Helper()                        {}
func (r *recordingTB) Fatalf(format string, a ...any) { r.fatal = fmt.Sprintf(format, a...) }
func (r *recordingTB) Skipf(format string, a ...any)  { r.skip = fmt.Sprintf(format, a...) }

func TestRequireBinaryMissing(t *testing.T) {
	tests := []struct {
		ci        string
		wantFatal bool
	}{
		{ci: "", wantFatal: false},
		{ci: "true", wantFatal: true},
	}
	for _, tc := range tests {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recordingTB{}
			RequireBinary(r, "stowline-no-such-binary")
			if tc.wantFatal && (r.fatal == "" || r.skip != "") {
				t.Errorf("CI set: fatal %q, skip %q; want a failure", r.fatal, r.skip)
			}
			if !tc.wantFatal && (r.skip == "" || r.fatal != "") {
				t.Errorf("CI unset: fatal %q, skip %q; want a skip", r.fatal, r.skip)
			}
		})
	}
}

func TestFindBinaryFindsSbin(t *testing.T) {
	p, err := FindBinary("Orthanc")
	if errors.Is(err, ErrMissing) {
		t.Skip("Orthanc not installed")
	}
	if err != nil || !filepath.IsAbs(p) {
		t.Fatalf("FindBinary = %q, %v", p, err)
	}
}

func TestLaunchOrthancValidates(t *testing.T) {
	tests := []struct {
		name string
		opts OrthancOptions
		want string
	}{
		{"long AET", OrthancOptions{AET: "ABCDEFGHIJKLMNOPQ"}, "longer than 16"},
		{"user without password", OrthancOptions{Username: "u"}, "both Username and Password"},
		{"negative stable age", OrthancOptions{StableAge: -1}, "negative"},
		{"extra sets a port", OrthancOptions{Extra: map[string]any{"HttpPort": 8042}}, `"HttpPort"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LaunchOrthanc(context.Background(), t.TempDir(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestReadFileInfoSamples(t *testing.T) {
	for _, s := range Samples(t) {
		t.Run(s.File, func(t *testing.T) {
			info, err := ReadFileInfo(s.Path)
			switch {
			case s.SOPInstanceUID == "" && s.TransferSyntaxUID == "":
				// Unparseable: empty, gzip, stray byte.
				if !errors.Is(err, errNotDICOM) {
					t.Errorf("err = %v, want errNotDICOM", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if s.TransferSyntaxUID == "" {
				// The bare data set: Implicit VR Little Endian, no meta.
				if info.HasMeta || info.TransferSyntaxUID != implicitVRLittleEndian || info.DatasetOffset != 0 {
					t.Errorf("bare data set: %+v", info)
				}
			} else if info.TransferSyntaxUID != s.TransferSyntaxUID || !info.HasMeta || info.DatasetOffset <= 132 {
				t.Errorf("info %+v, manifest says TS %s", info, s.TransferSyntaxUID)
			}
			if info.SOPInstanceUID != s.SOPInstanceUID {
				t.Errorf("SOPInstanceUID %q, manifest says %q", info.SOPInstanceUID, s.SOPInstanceUID)
			}
		})
	}
}

func TestDatasetMD5(t *testing.T) {
	dir := t.TempDir()
	paths, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{Rows: 4, Columns: 4})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	info, err := ReadFileInfo(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	// A bare data set made of the generated file's data set must hash the
	// same: the meta group is excluded.
	bare := filepath.Join(dir, "bare.dcm")
	if err := os.WriteFile(bare, b[info.DatasetOffset:], 0o600); err != nil {
		t.Fatal(err)
	}
	withMeta, err := FileDatasetMD5(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	without, err := FileDatasetMD5(bare)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := FileMD5(bare)
	if err != nil {
		t.Fatal(err)
	}
	if withMeta != without || without != whole {
		t.Errorf("dataset md5 with meta %s, bare %s, bare file %s: want all equal", withMeta, without, whole)
	}
	if !bytes.HasPrefix(b[info.DatasetOffset:], []byte{0x08, 0x00}) {
		t.Errorf("data set does not start with group 0008: offset %d wrong", info.DatasetOffset)
	}
	bareInfo, err := ReadFileInfo(bare)
	if err != nil {
		t.Fatal(err)
	}
	if bareInfo.HasMeta || bareInfo.TransferSyntaxUID != explicitVRLittleEndian || bareInfo.SOPInstanceUID != info.SOPInstanceUID {
		t.Errorf("bare explicit data set: %+v", bareInfo)
	}
}

func TestPlanBatches(t *testing.T) {
	const ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
	const le, jpeg = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"
	entry := func(path, class, ts string) fileEntry {
		return fileEntry{path: path, info: FileInfo{SOPClassUID: class, MediaStorageSOPClassUID: class, TransferSyntaxUID: ts}}
	}
	bad := fileEntry{path: "bad.dcm", err: errNotDICOM}

	t.Run("one association, exact pairs", func(t *testing.T) {
		mismatch := entry("m.dcm", mr, le)
		mismatch.info.MediaStorageSOPClassUID = ct
		batches, unreadable := planBatches([]fileEntry{
			entry("a.dcm", ct, le), bad, entry("b.dcm", ct, jpeg), entry("c.dcm", ct, le), mismatch,
		}, 120)
		if len(batches) != 1 || unreadable != nil {
			t.Fatalf("%d batches, unreadable %v", len(batches), unreadable)
		}
		wantPairs := []pcPair{{ct, le}, {ct, jpeg}, {mr, le}}
		if !reflect.DeepEqual(batches[0].pairs, wantPairs) {
			t.Errorf("pairs %v, want %v", batches[0].pairs, wantPairs)
		}
		wantFiles := []string{"a.dcm", "b.dcm", "c.dcm", "m.dcm", "bad.dcm"}
		if !reflect.DeepEqual(batches[0].files, wantFiles) {
			t.Errorf("files %v, want %v", batches[0].files, wantFiles)
		}
	})
	t.Run("split at the context limit", func(t *testing.T) {
		var entries []fileEntry
		for i := 0; i < 5; i++ {
			entries = append(entries, entry(fmt.Sprintf("%d.dcm", i), fmt.Sprintf("1.2.3.%d", i), le))
		}
		entries = append(entries, entry("again.dcm", "1.2.3.4", le)) // reuses a context of the last batch
		batches, _ := planBatches(entries, 2)
		var sizes []int
		for _, b := range batches {
			if len(b.pairs) > 2 {
				t.Errorf("batch with %d contexts", len(b.pairs))
			}
			sizes = append(sizes, len(b.files))
		}
		if !reflect.DeepEqual(sizes, []int{2, 2, 2}) {
			t.Errorf("batch sizes %v, want [2 2 2]", sizes)
		}
	})
	t.Run("nothing readable", func(t *testing.T) {
		batches, unreadable := planBatches([]fileEntry{bad}, 120)
		if batches != nil || !errors.Is(unreadable["bad.dcm"], errNotDICOM) {
			t.Errorf("batches %v, unreadable %v", batches, unreadable)
		}
	})
}
