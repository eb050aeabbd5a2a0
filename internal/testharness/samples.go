package testharness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// SamplesEnv overrides where the shared DICOM samples are.
const SamplesEnv = "STOWLINE_DICOM_SAMPLES"

// Sample is one line of the samples' MANIFEST.tsv.
type Sample struct {
	File, Path        string
	SOPClassUID       string
	TransferSyntaxUID string // "" for unparseable files and bare data sets
	StudyInstanceUID  string
	SOPInstanceUID    string
	MD5               string
	// OrthancAccepts is true if Orthanc 1.10.1 stores the file.
	OrthancAccepts bool
	Notes          string
}

// SamplesDir returns the shared DICOM samples directory: $SamplesEnv, or
// shared/dicom-samples in the working directory or one of its parents
// (CI clones the repository next to shared/). If it is missing the test is
// skipped, or fails in CI.
func SamplesDir(t testing.TB) string {
	t.Helper()
	dir, err := findSamplesDir()
	if err != nil {
		missing(t, err)
	}
	return dir
}

func findSamplesDir() (string, error) {
	if d := os.Getenv(SamplesEnv); d != "" {
		if _, err := os.Stat(filepath.Join(d, "MANIFEST.tsv")); err != nil {
			return "", fmt.Errorf("%s=%s: %w", SamplesEnv, d, err)
		}
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		d := filepath.Join(dir, "shared", "dicom-samples")
		if _, err := os.Stat(filepath.Join(d, "MANIFEST.tsv")); err == nil {
			return d, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("shared/dicom-samples above %s: %w (set %s)", wd, ErrMissing, SamplesEnv)
		}
	}
}

// Samples returns the samples listed in MANIFEST.tsv.
func Samples(t testing.TB) []Sample {
	t.Helper()
	dir := SamplesDir(t)
	s, err := readManifest(dir)
	if err != nil {
		t.Fatalf("read samples manifest: %v", err)
	}
	return s
}

func readManifest(dir string) ([]Sample, error) {
	f, err := os.Open(filepath.Join(dir, "MANIFEST.tsv"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var col map[string]int
	var out []Sample
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if col == nil {
			col = map[string]int{}
			for i, h := range fields {
				col[h] = i
			}
			for _, h := range []string{"file", "sop_class", "transfer_syntax", "study_instance_uid", "sop_instance_uid", "md5", "orthanc_accepts"} {
				if _, ok := col[h]; !ok {
					return nil, fmt.Errorf("samples manifest: MANIFEST.tsv has no column %q", h)
				}
			}
			continue
		}
		get := func(h string) string {
			i, ok := col[h]
			if !ok || i >= len(fields) {
				return ""
			}
			return fields[i]
		}
		s := Sample{
			File:              get("file"),
			SOPClassUID:       uidField(get("sop_class")),
			TransferSyntaxUID: uidField(get("transfer_syntax")),
			StudyInstanceUID:  uidField(get("study_instance_uid")),
			SOPInstanceUID:    uidField(get("sop_instance_uid")),
			MD5:               get("md5"),
			OrthancAccepts:    get("orthanc_accepts") == "yes",
			Notes:             get("notes"),
		}
		s.Path = filepath.Join(dir, s.File)
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("samples manifest: MANIFEST.tsv lists no file")
	}
	return out, nil
}

// uidField keeps the UID of a manifest cell such as
// "1.2.840.10008.1.2.1 (LittleEndianExplicit)"; "-" and descriptions
// without a UID give "".
func uidField(s string) string {
	u, _, _ := strings.Cut(strings.TrimSpace(s), " ")
	if u == "" || u == "-" || strings.HasPrefix(u, "(") {
		return ""
	}
	return u
}
