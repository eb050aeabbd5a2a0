package forward

// The transfer syntaxes stowline names in its messages and knows to be
// lossy (PS3.5 Annex A, PS3.6 Table A-1). A syntax not listed here is
// taken as lossless: Orthanc's answer tells whether it can convert it.
var syntaxNames = map[string]string{
	"1.2.840.10008.1.2":         "Implicit VR Little Endian",
	"1.2.840.10008.1.2.1":       "Explicit VR Little Endian",
	"1.2.840.10008.1.2.1.99":    "Deflated Explicit VR Little Endian",
	"1.2.840.10008.1.2.2":       "Explicit VR Big Endian",
	"1.2.840.10008.1.2.4.57":    "JPEG Lossless (Process 14)",
	"1.2.840.10008.1.2.4.70":    "JPEG Lossless (Process 14, SV1)",
	"1.2.840.10008.1.2.4.80":    "JPEG-LS Lossless",
	"1.2.840.10008.1.2.4.90":    "JPEG 2000 (Lossless Only)",
	"1.2.840.10008.1.2.4.92":    "JPEG 2000 Part 2 Multi-component (Lossless Only)",
	"1.2.840.10008.1.2.4.201":   "HTJ2K (Lossless Only)",
	"1.2.840.10008.1.2.4.202":   "HTJ2K with RPCL Options (Lossless Only)",
	"1.2.840.10008.1.2.5":       "RLE Lossless",
	"1.2.840.10008.1.2.8.1":     "Deflated Image Frame Compression",
	"1.2.840.10008.1.2.4.94":    "JPIP Referenced",
	"1.2.840.10008.1.2.4.95":    "JPIP Referenced Deflate",
	"1.2.840.10008.1.2.4.50":    "JPEG Baseline (Process 1, lossy)",
	"1.2.840.10008.1.2.4.51":    "JPEG Extended (Process 2 & 4, lossy)",
	"1.2.840.10008.1.2.4.81":    "JPEG-LS Near-Lossless (lossy)",
	"1.2.840.10008.1.2.4.91":    "JPEG 2000 (lossless or lossy)",
	"1.2.840.10008.1.2.4.93":    "JPEG 2000 Part 2 Multi-component (lossless or lossy)",
	"1.2.840.10008.1.2.4.203":   "HTJ2K (lossless or lossy)",
	"1.2.840.10008.1.2.4.100":   "MPEG2 Main Profile (lossy)",
	"1.2.840.10008.1.2.4.101":   "MPEG2 High Profile (lossy)",
	"1.2.840.10008.1.2.4.102":   "MPEG-4 AVC/H.264 (lossy)",
	"1.2.840.10008.1.2.4.103":   "MPEG-4 AVC/H.264 BD-compatible (lossy)",
	"1.2.840.10008.1.2.4.104":   "MPEG-4 AVC/H.264 for 2D Video (lossy)",
	"1.2.840.10008.1.2.4.105":   "MPEG-4 AVC/H.264 for 3D Video (lossy)",
	"1.2.840.10008.1.2.4.106":   "MPEG-4 AVC/H.264 Stereo (lossy)",
	"1.2.840.10008.1.2.4.107":   "HEVC/H.265 Main Profile (lossy)",
	"1.2.840.10008.1.2.4.108":   "HEVC/H.265 Main 10 Profile (lossy)",
	"1.2.840.10008.1.2.4.100.1": "MPEG2 Main Profile Fragmentable (lossy)",
}

// lossySyntax reports whether pixel data in syntax ts may have been
// compressed with loss. Syntaxes that allow both (JPEG 2000, HTJ2K) count
// as lossy: the syntax alone cannot prove the data lossless.
func lossySyntax(ts string) bool {
	switch ts {
	case "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
		"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
		// The retired lossy JPEG processes (extended, spectral selection,
		// progressive, and their hierarchical forms: PS3.5 Table A-1
		// before 2006); .4.57, .4.58, .4.65, .4.66 are lossless.
		"1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.54",
		"1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.59",
		"1.2.840.10008.1.2.4.60", "1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62",
		"1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64",
		// JPEG XL: JPEG recompression (of a lossy JPEG), and JPEG XL
		// itself (either); .4.110 is lossless.
		"1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112":
		return true
	}
	// The MPEG and HEVC video syntaxes: 1.2.840.10008.1.2.4.100 to .108
	// and their fragmentable variants.
	if len(ts) >= len("1.2.840.10008.1.2.4.10") && ts[:len("1.2.840.10008.1.2.4.10")] == "1.2.840.10008.1.2.4.10" {
		return true
	}
	return false
}

// gdcmSyntax reports whether Orthanc needs its GDCM plugin to decode ts
// (JPEG 2000 and HTJ2K; measured on Orthanc 1.10.1 for JPEG 2000).
func gdcmSyntax(ts string) bool {
	switch ts {
	case "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
		"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203":
		return true
	}
	return false
}

// orthancWrites reports whether Orthanc converts to ts with its own
// transcoder, without a plugin: DcmtkTranscoder::IsSupported of Orthanc
// 1.7 to 1.12 (uncompressed and deflated, JPEG processes 1, 2 & 4 and
// 14, JPEG-LS). JPEG 2000, HTJ2K, JPEG XL and RLE it writes only with a
// plugin that does (GDCM for JPEG 2000), if any.
func orthancWrites(ts string) bool {
	switch ts {
	case "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
		"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
		"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81":
		return true
	}
	return false
}

// syntaxName is "Name (UID)", or the UID alone when it has no name here.
func syntaxName(ts string) string {
	if n, ok := syntaxNames[ts]; ok {
		return n + " (" + ts + ")"
	}
	if ts == "" {
		return "an unknown transfer syntax"
	}
	return ts
}

// uncompressedSyntax reports whether ts encodes pixel data natively: a
// conversion between two such syntaxes keeps the size within a few
// bytes an element.
func uncompressedSyntax(ts string) bool {
	switch ts {
	case "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2":
		return true
	}
	return false
}
