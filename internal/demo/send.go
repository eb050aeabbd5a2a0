package demo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// sendPlan is what the demo sends to the hospital.
type sendPlan struct {
	files []string
	what  string // for the report
}

// planSend picks the files to send: those of dir (see Options.Samples),
// or the shared samples Orthanc accepts, or, without either, a few
// studies generated into genDir.
func planSend(dir, genDir string) (sendPlan, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "MANIFEST.tsv")); err == nil {
			samples, err := testharness.ReadSamples(dir)
			if err != nil {
				return sendPlan{}, err
			}
			return acceptedSamples(samples, dir)
		}
		files, err := regularFiles(dir)
		if err != nil {
			return sendPlan{}, err
		}
		return sendPlan{files: files, what: fmt.Sprintf("the %d files of %s", len(files), dir)}, nil
	}
	samples, err := testharness.FindSamples()
	switch {
	case err == nil:
		return acceptedSamples(samples, "the shared samples")
	case !errors.Is(err, testharness.ErrMissing):
		return sendPlan{}, err
	}
	// A fresh clone has no shared samples: generated studies show the same.
	specs := []dicomgen.StudySpec{
		{PatientID: "DEMO-1", PatientName: "Demo^One", Series: 1, InstancesPerSeries: 5},
		{PatientID: "DEMO-2", PatientName: "Demo^Two", Series: 2, InstancesPerSeries: 10},
		{PatientID: "DEMO-3", PatientName: "Demo^Three", Series: 3, InstancesPerSeries: 20, Rows: 128, Columns: 128},
	}
	var files []string
	for i, spec := range specs {
		f, err := dicomgen.WriteStudy(filepath.Join(genDir, fmt.Sprintf("study%d", i+1)), spec)
		if err != nil {
			return sendPlan{}, fmt.Errorf("generate studies: %w", err)
		}
		files = append(files, f...)
	}
	return sendPlan{files: files, what: fmt.Sprintf("%d generated CT instances in %d studies (no shared samples found: set %s to use them)", len(files), len(specs), testharness.SamplesEnv)}, nil
}

// acceptedSamples keeps the samples Orthanc stores: the shared set also
// holds broken files on purpose.
func acceptedSamples(samples []testharness.Sample, from string) (sendPlan, error) {
	var files []string
	studies := map[string]bool{}
	for _, s := range samples {
		if s.OrthancAccepts {
			files = append(files, s.Path)
			studies[s.StudyInstanceUID] = true
		}
	}
	if len(files) == 0 {
		return sendPlan{}, fmt.Errorf("%s: no file that Orthanc accepts", from)
	}
	return sendPlan{files: files, what: fmt.Sprintf("%d files of %s (%d studies; the broken ones left out)", len(files), from, len(studies))}, nil
}

func regularFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("samples: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("samples: no file in %s", dir)
	}
	return files, nil
}
