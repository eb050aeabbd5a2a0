package testharness

// FindSamples is Samples for programs that are not tests (the local demo):
// it looks for the shared samples where SamplesDir does ($SamplesEnv, or
// shared/dicom-samples in the working directory or a parent) and reads
// their manifest. Not finding them is an error wrapping ErrMissing.
func FindSamples() ([]Sample, error) {
	dir, err := findSamplesDir()
	if err != nil {
		return nil, err
	}
	return readManifest(dir)
}

// ReadSamples reads the manifest of the samples in dir.
func ReadSamples(dir string) ([]Sample, error) { return readManifest(dir) }
