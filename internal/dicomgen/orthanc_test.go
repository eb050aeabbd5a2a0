package dicomgen_test

import (
	"testing"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// TestOrthancStoresGeneratedStudy checks that a real Orthanc accepts the
// files, indexes the tags the forwarder relies on and serves them back
// unchanged.
func TestOrthancStoresGeneratedStudy(t *testing.T) {
	t.Parallel()
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dicomgen"})
	study := dicomgen.NewUID()
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: study, PatientID: "GEN-1", Series: 2, InstancesPerSeries: 3, Rows: 16, Columns: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	res := o.Upload(t, paths...)
	if len(res.Failed) != 0 {
		t.Fatalf("Orthanc refused generated files: %v", res.Failed)
	}

	var studies []struct {
		MainDicomTags        map[string]string
		PatientMainDicomTags map[string]string
		Series               []string
	}
	o.GetJSON(t, "/studies?expand", &studies)
	if len(studies) != 1 {
		t.Fatalf("%d studies, want 1", len(studies))
	}
	s := studies[0]
	if s.MainDicomTags["StudyInstanceUID"] != study || s.PatientMainDicomTags["PatientID"] != "GEN-1" || len(s.Series) != 2 {
		t.Errorf("study = %+v", s)
	}
	var series []struct {
		MainDicomTags map[string]string
		Instances     []string
	}
	o.GetJSON(t, "/series?expand", &series)
	for _, se := range series {
		if se.MainDicomTags["Modality"] != "CT" || len(se.Instances) != 3 {
			t.Errorf("series = %+v", se)
		}
	}

	got := o.InstanceMD5s(t)
	if len(got) != len(paths) {
		t.Fatalf("%d instances, want %d", len(got), len(paths))
	}
	for _, p := range paths {
		info, err := testharness.ReadFileInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		want, err := testharness.FileMD5(p)
		if err != nil {
			t.Fatal(err)
		}
		if got[info.SOPInstanceUID] != want {
			t.Errorf("%s: Orthanc serves md5 %s, file has %s", p, got[info.SOPInstanceUID], want)
		}
	}
	checkModalities(t, o)
}

// checkModalities stores an MR study with an SR series and checks that
// Orthanc indexes each series' Modality and each instance's SOP class, as
// the routing rules read them.
func checkModalities(t *testing.T, o *testharness.Orthanc) {
	t.Helper()
	study := dicomgen.NewUID()
	paths, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: study, PatientID: "GEN-2", Rows: 8, Columns: 8,
		SeriesList: []dicomgen.SeriesSpec{{Modality: "MR", Instances: 2}, {Modality: "SR", Description: "report", Instances: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, paths...); len(res.Failed) != 0 {
		t.Fatalf("Orthanc refused generated MR and SR files: %v", res.Failed)
	}
	var series []struct {
		MainDicomTags map[string]string
		Instances     []string
	}
	o.GetJSON(t, "/series?expand", &series)
	got := map[string]int{}
	for _, se := range series {
		got[se.MainDicomTags["Modality"]+" "+se.MainDicomTags["SeriesDescription"]] += len(se.Instances)
		if se.MainDicomTags["Modality"] == "SR" {
			var meta map[string]string
			o.GetJSON(t, "/instances/"+se.Instances[0]+"/metadata?expand", &meta)
			if meta["SopClassUid"] != dicomgen.BasicTextSRStorage {
				t.Errorf("SR instance has SOP class %q", meta["SopClassUid"])
			}
		}
	}
	if got["MR dicomgen series 1"] != 2 || got["SR report"] != 1 {
		t.Errorf("series by modality and description: %v", got)
	}
}
