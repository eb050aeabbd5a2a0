// Package dicomgen writes synthetic DICOM Part 10 files (Explicit VR Little
// Endian) for tests and benchmarks: valid CT images by default, images of
// other modalities (MR; the others as Secondary Capture), and stand-ins for non-image objects (SR, KO, PR)
// that carry the patient, study, series and SOP common modules only.
//
// Pixel data is streamed in small chunks, so studies of any size can be
// written without holding them in memory. Output is deterministic for a
// given spec: the same spec gives the same bytes.
package dicomgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/stowline/stowline/events"
)

// Well-known UIDs used by the generated files.
const (
	CTImageStorage                            = "1.2.840.10008.5.1.4.1.1.2"
	MRImageStorage                            = "1.2.840.10008.5.1.4.1.1.4"
	SecondaryCaptureImageStorage              = "1.2.840.10008.5.1.4.1.1.7"
	BasicTextSRStorage                        = "1.2.840.10008.5.1.4.1.1.88.11"
	KeyObjectSelectionDocumentStorage         = "1.2.840.10008.5.1.4.1.1.88.59"
	GrayscaleSoftcopyPresentationStateStorage = "1.2.840.10008.5.1.4.1.1.11.1"
	ExplicitVRLittleEndian                    = "1.2.840.10008.1.2.1"
)

// DefaultModality is the Modality of a spec that names none.
const DefaultModality = "CT"

// SOPClass returns the SOP class dicomgen writes for a modality, and
// whether it is an image (with pixel data). CT and MR have their own
// image classes; SR, KO and PR are non-image objects; any other modality
// is a Secondary Capture image.
func SOPClass(modality string) (uid string, image bool) {
	switch modality {
	case "", "CT":
		return CTImageStorage, true
	case "MR":
		return MRImageStorage, true
	case "SR":
		return BasicTextSRStorage, false
	case "KO":
		return KeyObjectSelectionDocumentStorage, false
	case "PR":
		return GrayscaleSoftcopyPresentationStateStorage, false
	}
	return SecondaryCaptureImageStorage, true
}

// Defaults applied to zero fields of a spec.
const (
	DefaultPatientID   = "DICOMGEN"
	DefaultPatientName = "Synthetic^Patient"
	DefaultStudyDate   = "20000101"
	DefaultStudyTime   = "120000"
	DefaultRows        = 64
	DefaultColumns     = 64
)

// maxPixelBytes is the largest defined length of PixelData: 0xFFFFFFFF
// means "undefined length" and is reserved.
const maxPixelBytes = 0xFFFFFFFE

// ErrInvalidSpec is returned (wrapped) for a spec that cannot be encoded.
var ErrInvalidSpec = errors.New("dicomgen: invalid spec")

// StudySpec describes a CT study of Series x InstancesPerSeries images,
// or a study of the series SeriesList describes. Zero fields get
// defaults: a new StudyInstanceUID, DefaultPatientID, DefaultPatientName,
// one series, one instance, DefaultRows x DefaultColumns.
type StudySpec struct {
	StudyInstanceUID string
	PatientID        string
	PatientName      string
	// Series and InstancesPerSeries must not be negative.
	Series, InstancesPerSeries int
	// SeriesList describes each series instead; Series and
	// InstancesPerSeries must then be zero.
	SeriesList []SeriesSpec
	// Rows and Columns are 1..65535.
	Rows, Columns int
}

// SeriesSpec describes one series of a study: its Modality (default
// DefaultModality; SOPClass tells the SOP class written), its
// SeriesDescription (default "dicomgen series N") and its number of
// instances (at least 1).
type SeriesSpec struct {
	Modality, Description string
	Instances             int
}

// InstanceSpec describes one CT image. The three UIDs are required; other
// zero fields get defaults.
type InstanceSpec struct {
	StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID string
	// FrameOfReferenceUID is written only when set (WriteStudy sets one
	// per study).
	FrameOfReferenceUID string

	PatientID, PatientName string
	// StudyDate is YYYYMMDD, StudyTime HHMMSS.
	StudyDate, StudyTime string
	StudyID              string
	AccessionNumber      string
	SeriesDescription    string
	// Modality defaults to DefaultModality; it decides the SOP class
	// (SOPClass). A non-image object has no image modules, pixel data
	// or frame of reference.
	Modality string

	SeriesNumber, InstanceNumber int
	Rows, Columns                int
}

func (s *InstanceSpec) applyDefaults() {
	if s.PatientID == "" {
		s.PatientID = DefaultPatientID
	}
	if s.PatientName == "" {
		s.PatientName = DefaultPatientName
	}
	if s.StudyDate == "" {
		s.StudyDate = DefaultStudyDate
	}
	if s.StudyTime == "" {
		s.StudyTime = DefaultStudyTime
	}
	if s.Modality == "" {
		s.Modality = DefaultModality
	}
	if s.Rows == 0 {
		s.Rows = DefaultRows
	}
	if s.Columns == 0 {
		s.Columns = DefaultColumns
	}
}

func (s *InstanceSpec) validate() error {
	for _, u := range []struct{ name, v string }{
		{"StudyInstanceUID", s.StudyInstanceUID},
		{"SeriesInstanceUID", s.SeriesInstanceUID},
		{"SOPInstanceUID", s.SOPInstanceUID},
	} {
		if !events.ValidUID(u.v) {
			return fmt.Errorf("%w: %s %q is not a DICOM UID (1 to 64 characters, dot-separated numbers without leading zeros)", ErrInvalidSpec, u.name, u.v)
		}
	}
	if s.FrameOfReferenceUID != "" {
		if !events.ValidUID(s.FrameOfReferenceUID) {
			return fmt.Errorf("%w: FrameOfReferenceUID %q is not a DICOM UID", ErrInvalidSpec, s.FrameOfReferenceUID)
		}
	}
	if s.Rows < 1 || s.Rows > 0xFFFF || s.Columns < 1 || s.Columns > 0xFFFF {
		return fmt.Errorf("%w: Rows and Columns must be 1..65535, got %dx%d", ErrInvalidSpec, s.Rows, s.Columns)
	}
	if int64(s.Rows)*int64(s.Columns)*2 > maxPixelBytes {
		return fmt.Errorf("%w: %dx%d pixels do not fit one PixelData element", ErrInvalidSpec, s.Rows, s.Columns)
	}
	if s.SeriesNumber < 0 || s.InstanceNumber < 0 {
		return fmt.Errorf("%w: negative SeriesNumber or InstanceNumber", ErrInvalidSpec)
	}
	for _, v := range []struct {
		name, v string
		max     int
	}{
		{"PatientID", s.PatientID, 64},
		{"StudyID", s.StudyID, 16},
		{"AccessionNumber", s.AccessionNumber, 16},
		{"SeriesDescription", s.SeriesDescription, 64},
		{"Modality", s.Modality, 16},
		{"StudyDate", s.StudyDate, 8},
		{"StudyTime", s.StudyTime, 16},
	} {
		if err := checkText(v.v, v.max); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalidSpec, v.name, err)
		}
	}
	// PN: up to three component groups of 64 characters each.
	for _, g := range strings.Split(s.PatientName, "=") {
		if err := checkText(g, 64); err != nil {
			return fmt.Errorf("%w: PatientName: %w", ErrInvalidSpec, err)
		}
	}
	return nil
}

// checkText rejects values that would change meaning once encoded: a
// backslash is the multi-value separator, control characters are not
// allowed in these VRs.
func checkText(s string, maxChars int) error {
	if n := len([]rune(s)); n > maxChars {
		return fmt.Errorf("%d characters, at most %d allowed", n, maxChars)
	}
	for _, r := range s {
		if r == '\\' || r < 0x20 || r == 0x7f {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

func isASCII(ss ...string) bool {
	for _, s := range ss {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// dataset returns every data element but PixelData.
func (s *InstanceSpec) dataset() []element {
	sopClass, image := SOPClass(s.Modality)
	e := []element{
		strElem(0x00080016, "UI", sopClass),
		strElem(0x00080018, "UI", s.SOPInstanceUID),
		strElem(0x00080020, "DA", s.StudyDate),
		strElem(0x00080030, "TM", s.StudyTime),
		strElem(0x00080050, "SH", s.AccessionNumber),
		strElem(0x00080060, "CS", s.Modality),
		strElem(0x00080070, "LO", "stowline dicomgen"),
		strElem(0x00080090, "PN", ""),
		strElem(0x0008103E, "LO", s.SeriesDescription),
		strElem(0x00100010, "PN", s.PatientName),
		strElem(0x00100020, "LO", s.PatientID),
		strElem(0x00100030, "DA", ""),
		strElem(0x00100040, "CS", ""),
		strElem(0x0020000D, "UI", s.StudyInstanceUID),
		strElem(0x0020000E, "UI", s.SeriesInstanceUID),
		strElem(0x00200010, "SH", s.StudyID),
		isElem(0x00200011, s.SeriesNumber),
		isElem(0x00200013, s.InstanceNumber),
	}
	// Without (0008,0005) the default repertoire (ASCII) applies; UTF-8 is
	// declared only when it is needed.
	if !isASCII(s.PatientName, s.PatientID, s.SeriesDescription, s.StudyID, s.AccessionNumber) {
		e = append(e, strElem(0x00080005, "CS", "ISO_IR 192"))
	}
	if !image {
		return e
	}
	sliceLoc := fmt.Sprintf("%d", s.InstanceNumber)
	e = append(e,
		strElem(0x00080008, "CS", `ORIGINAL\PRIMARY\AXIAL`),
		strElem(0x00180050, "DS", "1"),
		strElem(0x00180060, "DS", ""),
		strElem(0x00200012, "IS", "1"),
		strElem(0x00200032, "DS", `0\0\`+sliceLoc),
		strElem(0x00200037, "DS", `1\0\0\0\1\0`),
		strElem(0x00201040, "LO", ""),
		strElem(0x00201041, "DS", sliceLoc),
		usElem(0x00280002, 1),
		strElem(0x00280004, "CS", "MONOCHROME2"),
		usElem(0x00280010, uint16(s.Rows)),
		usElem(0x00280011, uint16(s.Columns)),
		strElem(0x00280030, "DS", `0.5\0.5`),
		usElem(0x00280100, 16),
		usElem(0x00280101, 12),
		usElem(0x00280102, 11),
		usElem(0x00280103, 0),
		strElem(0x00281050, "DS", "40"),
		strElem(0x00281051, "DS", "400"),
		strElem(0x00281052, "DS", "-1024"),
		strElem(0x00281053, "DS", "1"),
	)
	if s.FrameOfReferenceUID != "" {
		e = append(e, strElem(0x00200052, "UI", s.FrameOfReferenceUID))
	}
	return e
}

// WriteInstance writes one instance (a CT image unless spec.Modality says
// otherwise) as a Part 10 file to w. Pixel data is generated and written
// in chunks of one row, so memory use does not grow with the image size.
func WriteInstance(w io.Writer, spec InstanceSpec) error {
	spec.applyDefaults()
	if err := spec.validate(); err != nil {
		return err
	}
	sopClass, image := SOPClass(spec.Modality)
	bw := bufio.NewWriterSize(w, 64<<10)
	if err := writeMeta(bw, sopClass, spec.SOPInstanceUID, ExplicitVRLittleEndian); err != nil {
		return fmt.Errorf("dicomgen: write file meta: %w", err)
	}
	if err := writeElements(bw, spec.dataset()); err != nil {
		return fmt.Errorf("dicomgen: write data set: %w", err)
	}
	if image {
		if err := writePixelData(bw, spec.Rows, spec.Columns, spec.InstanceNumber); err != nil {
			return fmt.Errorf("dicomgen: write pixel data: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("dicomgen: %w", err)
	}
	return nil
}

// writePixelData writes (7FE0,0010) OW with a 12-bit pattern that differs
// per instance, so that instances do not deduplicate to the same bytes.
func writePixelData(w io.Writer, rows, cols, seed int) error {
	n := uint32(rows * cols * 2) // even by construction; bounded by validate
	if err := writeHeader(w, 0x7FE00010, "OW", n); err != nil {
		return err
	}
	row := make([]byte, cols*2)
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			v := uint16(x+3*y+7*seed) & 0x0FFF
			row[2*x] = byte(v)
			row[2*x+1] = byte(v >> 8)
		}
		if _, err := w.Write(row); err != nil {
			return err
		}
	}
	return nil
}

// WriteStudy writes a study into dir (created if needed), one file per
// instance named sSSS-iIIIII.dcm, and returns the paths in series then
// instance order. Each series gets a new SeriesInstanceUID, each instance a
// new SOPInstanceUID.
func WriteStudy(dir string, spec StudySpec) ([]string, error) {
	if spec.Series < 0 || spec.InstancesPerSeries < 0 {
		return nil, fmt.Errorf("%w: negative Series or InstancesPerSeries", ErrInvalidSpec)
	}
	series := spec.SeriesList
	if len(series) > 0 && (spec.Series != 0 || spec.InstancesPerSeries != 0) {
		return nil, fmt.Errorf("%w: SeriesList with Series or InstancesPerSeries", ErrInvalidSpec)
	}
	if len(series) == 0 {
		n := max(spec.InstancesPerSeries, 1)
		for range max(spec.Series, 1) {
			series = append(series, SeriesSpec{Instances: n})
		}
	}
	for i, se := range series {
		if se.Instances < 1 {
			return nil, fmt.Errorf("%w: series %d has %d instances", ErrInvalidSpec, i+1, se.Instances)
		}
	}
	if spec.StudyInstanceUID == "" {
		spec.StudyInstanceUID = NewUID()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dicomgen: %w", err)
	}
	frameOfRef := NewUID()
	var paths []string
	for k, se := range series {
		s := k + 1 // series numbers start at 1
		seriesUID := NewUID()
		desc := se.Description
		if desc == "" {
			desc = fmt.Sprintf("dicomgen series %d", s)
		}
		for i := 1; i <= se.Instances; i++ {
			path := filepath.Join(dir, fmt.Sprintf("s%03d-i%05d.dcm", s, i))
			is := InstanceSpec{
				StudyInstanceUID:    spec.StudyInstanceUID,
				SeriesInstanceUID:   seriesUID,
				SOPInstanceUID:      NewUID(),
				FrameOfReferenceUID: frameOfRef,
				PatientID:           spec.PatientID,
				PatientName:         spec.PatientName,
				StudyID:             "1",
				SeriesDescription:   desc,
				Modality:            se.Modality,
				SeriesNumber:        s,
				InstanceNumber:      i,
				Rows:                spec.Rows,
				Columns:             spec.Columns,
			}
			if _, image := SOPClass(is.Modality); !image {
				is.FrameOfReferenceUID = ""
			}
			if err := writeFile(path, is); err != nil {
				return nil, err
			}
			paths = append(paths, path)
		}
	}
	return paths, nil
}

func writeFile(path string, spec InstanceSpec) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("dicomgen: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("dicomgen: close %s: %w", path, cerr)
		}
		if err != nil {
			_ = os.Remove(path) // a partial file would look like a valid one to a directory scan
		}
	}()
	if err := WriteInstance(f, spec); err != nil {
		return fmt.Errorf("%w (file %s)", err, path)
	}
	return nil
}
