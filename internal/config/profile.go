package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/stowline/stowline/internal/dicomweb"
)

// The provider profiles STOW_PROFILE selects.
const (
	ProfileAzure   = "azure"
	ProfileGoogle  = "google"
	ProfileAWS     = "aws"
	ProfileOrthanc = "orthanc"
	ProfileGeneric = "generic"
)

// The STOW_ON_CONFLICT actions.
const (
	OnConflictSkip       = "skip"
	OnConflictReplace    = "replace"
	OnConflictDeadLetter = "deadletter"
)

// The STOW_REPLACE_METHOD values: how a conflicting instance is replaced.
const (
	ReplacePut    = "put"    // STOW-RS with PUT (Azure's upsert)
	ReplaceDelete = "delete" // DICOMweb DELETE of the instance, then STOW-RS
	ReplaceNone   = "none"   // the destination offers no way
)

// Profile is what stowline knows of a kind of destination: data from the
// provider's conformance statement (Source), each value overridable by its
// own variable (Destination.Profile applies them).
type Profile struct {
	Name string
	// ConflictReasons are the Failure Reasons meaning "already holds this
	// SOP Instance with other content" (STOW_CONFLICT_REASONS).
	ConflictReasons []dicomweb.ConflictRule
	// ReplaceMethod is how STOW_ON_CONFLICT=replace replaces an instance
	// (STOW_REPLACE_METHOD).
	ReplaceMethod string
	// MaxStowBytes is the most bytes one STOW-RS request may carry (0: no
	// known limit); STOW_MAX_BYTES must not exceed it.
	MaxStowBytes ByteSize
	// AcceptedTransferSyntaxes lists the transfer syntaxes the provider
	// documents as accepted; nil: any (STOW_TRANSFER_SYNTAXES).
	AcceptedTransferSyntaxes []string
	// SeriesSearch: the provider searches instances only within a series
	// (no GET studies/{study}/instances), so QIDO-RS lists a study
	// series by series.
	SeriesSearch bool
	// Source is the conformance statement the values come from.
	Source string
}

// TransferSyntaxes returns the transfer syntax UIDs the profile's
// destination accepts, nil for any: the default of STOW_TRANSFER_SYNTAXES.
func (p Profile) TransferSyntaxes() []string {
	return append([]string(nil), p.AcceptedTransferSyntaxes...)
}

// The conflict answers every profile knows: Azure's 45070 "already
// exists", DICOM's 0x0111 duplicate SOP instance (PS3.7 C.4.2.1.4) and,
// in a 409 Conflict answer only, 0x0110 (Google: same UID, other content)
// and 0xA7xx.
var commonConflicts = []dicomweb.ConflictRule{
	{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF},
	{Code: 0x0111, Mask: 0xFFFF},
	{Code: dicomweb.FailureProcessing, Mask: 0xFFFF, Only409: true},
	{Code: 0xA700, Mask: 0xFF00, Only409: true},
}

// explicitVRSyntaxes are the transfer syntaxes of PS3.5 Annex A with
// explicit VR, retired ones included: every one but Implicit VR Little
// Endian (1.2.840.10008.1.2) and Papyrus 3 (1.2.840.10008.1.20). Azure
// states the rule, not a list: a syntax left out here was converted when
// lossless (JPEG 2000 Part 2 needs a plugin for that) and refused when
// lossy, such as an ultrasound cine in H.264, which Azure stores.
var explicitVRSyntaxes = slices.Concat([]string{
	"1.2.840.10008.1.2.1",                                                           // Explicit VR Little Endian
	"1.2.840.10008.1.2.1.99",                                                        // Deflated Explicit VR Little Endian
	"1.2.840.10008.1.2.2",                                                           // Explicit VR Big Endian (retired)
	"1.2.840.10008.1.2.4.50",                                                        // JPEG Baseline
	"1.2.840.10008.1.2.4.51",                                                        // JPEG Extended
	"1.2.840.10008.1.2.4.57",                                                        // JPEG Lossless
	"1.2.840.10008.1.2.4.70",                                                        // JPEG Lossless SV1
	"1.2.840.10008.1.2.4.80",                                                        // JPEG-LS Lossless
	"1.2.840.10008.1.2.4.81",                                                        // JPEG-LS Near-Lossless
	"1.2.840.10008.1.2.4.90",                                                        // JPEG 2000 Lossless
	"1.2.840.10008.1.2.4.91",                                                        // JPEG 2000
	"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", // HTJ2K
	"1.2.840.10008.1.2.5",                              // RLE Lossless
	"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", // JPEG 2000 Part 2
	"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", // JPIP Referenced
	"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112", // JPEG XL
	"1.2.840.10008.1.2.1.98",                                                  // Encapsulated Uncompressed Explicit VR Little Endian
	"1.2.840.10008.1.2.8.1",                                                   // Deflated Image Frame Compression
	"1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3", // SMPTE ST 2110
	// Retired JPEG processes (PS3.5 Table A-1 before 2006).
	"1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55",
	"1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.58", "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60",
	"1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62", "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64",
	"1.2.840.10008.1.2.4.65", "1.2.840.10008.1.2.4.66",
}, videoSyntaxes)

// awsTransferSyntaxes is every UID of the table "HealthImaging supported
// transfer syntaxes"
// (https://docs.aws.amazon.com/healthimaging/latest/devguide/supported-transfer-syntaxes.html),
// Explicit VR Little Endian first: the first lossless syntax of the list
// is what other instances are converted to, and HealthImaging transcodes
// lossless frames to HTJ2K on import whatever it is sent in. The rest in
// the table's order; RLE and HTJ2K are sent as stored, not converted.
var awsTransferSyntaxes = slices.Concat([]string{
	"1.2.840.10008.1.2.1", // Explicit VR Little Endian
	"1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
	"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
	"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
	"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
	"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", // HTJ2K
	"1.2.840.10008.1.2.5", // RLE Lossless
}, videoSyntaxes)

// videoSyntaxes are MPEG-2, H.264 and their fragmentable forms, and HEVC:
// lossy, sent as stored.
var videoSyntaxes = []string{
	"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.101.1",
	"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1",
	"1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
	"1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
}

var profiles = map[string]Profile{
	ProfileAzure: {
		Name:            ProfileAzure,
		ConflictReasons: commonConflicts,
		ReplaceMethod:   ReplacePut,
		// "Requests are limited to 4 GB".
		MaxStowBytes: 4_000_000_000, // read as 10^9 bytes a GB, the stricter reading
		// "Only transfer syntaxes with explicit Value Representations are accepted."
		AcceptedTransferSyntaxes: explicitVRSyntaxes,
		Source:                   "https://learn.microsoft.com/azure/healthcare-apis/dicom/dicom-services-conformance-statement-v2#store-stow-rs",
	},
	ProfileGoogle: {
		Name:            ProfileGoogle,
		ConflictReasons: commonConflicts,
		ReplaceMethod:   ReplaceDelete,
		Source:          "https://cloud.google.com/healthcare-api/docs/dicom#store_transaction",
	},
	ProfileAWS: {
		Name:            ProfileAWS,
		ConflictReasons: commonConflicts,
		// HealthImaging keeps conflicting data as a non-primary image set
		// instead of answering a conflict; no DICOMweb way replaces it.
		ReplaceMethod:            ReplaceNone,
		MaxStowBytes:             awsMaxStowBytes,
		AcceptedTransferSyntaxes: awsTransferSyntaxes,
		// SearchDICOMInstances takes a study and a series: "Searching
		// DICOM data in HealthImaging" (dicomweb-search.html).
		SeriesSearch: true,
		Source:       "https://docs.aws.amazon.com/healthimaging/latest/devguide/supported-transfer-syntaxes.html",
	},
	ProfileOrthanc: {
		Name:            ProfileOrthanc,
		ConflictReasons: commonConflicts,
		// Its DICOMweb plugin answers DELETE and PUT with 405 (measured on
		// 1.10.1), and a duplicate with success, keeping the first
		// version unless the Orthanc sets OverwriteInstances.
		ReplaceMethod: ReplaceNone,
		Source:        "https://orthanc.uclouvain.be/book/plugins/dicomweb.html",
	},
	ProfileGeneric: {
		Name:            ProfileGeneric,
		ConflictReasons: commonConflicts,
		ReplaceMethod:   ReplaceDelete,
		Source:          "https://dicom.nema.org/medical/dicom/current/output/html/part18.html#table_I.2-2",
	},
}

// ConflictRules is STOW_CONFLICT_REASONS: Failure Reasons such as 45070,
// 0xB00E, 0x0110@409 or 0xA7xx@409, separated by commas or spaces.
type ConflictRules []dicomweb.ConflictRule

// UnmarshalText parses the list.
func (c *ConflictRules) UnmarshalText(b []byte) error {
	var words List
	_ = words.UnmarshalText(b)
	out := make(ConflictRules, 0, len(words))
	for _, w := range words {
		r, err := dicomweb.ParseConflictRule(w)
		if err != nil {
			return err
		}
		out = append(out, r)
	}
	*c = out
	return nil
}

func (c ConflictRules) String() string {
	s := make([]string, len(c))
	for i, r := range c {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

// ProfileName is the effective STOW_PROFILE: set, or derived from
// OAUTH_PROVIDER where that names a cloud, else generic.
func (d *Destination) ProfileName() string {
	if d.StowProfile != "" {
		return d.StowProfile
	}
	switch d.Provider {
	case ProviderAzure, ProviderGoogle, ProviderAWS:
		return d.Provider
	}
	return ProfileGeneric
}

// Profile is the destination's effective profile, with the values its
// variables override.
func (d *Destination) Profile() Profile {
	p := profiles[d.ProfileName()]
	if len(d.StowConflictReasons) > 0 {
		p.ConflictReasons = d.StowConflictReasons
	}
	if d.StowReplaceMethod != "" {
		p.ReplaceMethod = d.StowReplaceMethod
	}
	return p
}

// conflictValidate checks STOW_PROFILE, STOW_ON_CONFLICT,
// STOW_REPLACE_METHOD and STOW_MAX_BYTES against the profile.
func (d *Destination) conflictValidate() []error {
	var errs []error
	if _, ok := profiles[d.ProfileName()]; !ok {
		return []error{fmt.Errorf("STOW_PROFILE=%q: want azure, google, aws, orthanc or generic", d.StowProfile)}
	}
	p := d.Profile()
	switch p.ReplaceMethod {
	case ReplacePut, ReplaceDelete, ReplaceNone:
	default:
		errs = append(errs, fmt.Errorf("STOW_REPLACE_METHOD=%q: want put, delete or none", d.StowReplaceMethod))
	}
	switch d.StowOnConflict {
	case OnConflictSkip, OnConflictDeadLetter:
	case OnConflictReplace:
		if p.ReplaceMethod == ReplaceNone {
			errs = append(errs, fmt.Errorf("STOW_ON_CONFLICT=replace: destination profile %s has no way to replace an instance (STOW_REPLACE_METHOD=none); want skip or deadletter", p.Name))
		}
	default:
		errs = append(errs, fmt.Errorf("STOW_ON_CONFLICT=%q: want skip, replace or deadletter", d.StowOnConflict))
	}
	if p.MaxStowBytes > 0 && d.StowMaxBytes > p.MaxStowBytes {
		errs = append(errs, fmt.Errorf("STOW_MAX_BYTES=%s: destination profile %s takes at most %d bytes per request (docs/destinations.md); want at most that", d.StowMaxBytes, p.Name, int64(p.MaxStowBytes)))
	}
	return errs
}
