package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/testharness"
)

// SegmentationStorage is the SOP class of a Segmentation (SEG).
const segmentationStorage = "1.2.840.10008.5.1.4.1.1.66.4"

// heldInstance is an instance a destination holds: its Orthanc ID and
// its simplified tags.
type heldInstance struct {
	id   string
	tags map[string]any
}

// ctImage is what a SEG references of a CT image.
type ctImage struct{ sop, series, frameOfRef string }

// readCTImage reads a generated CT image's UIDs (dcmdump).
func readCTImage(t *testing.T, path string) ctImage {
	t.Helper()
	out, err := exec.Command("dcmdump", "+P", "0008,0018", "+P", "0020,000e", "+P", "0020,0052", path).Output()
	if err != nil {
		t.Fatalf("dcmdump %s: %v", path, err)
	}
	vals := map[string]string{}
	for _, m := range regexp.MustCompile(`\((0008,0018|0020,000e|0020,0052)\) UI \[([0-9.]+)\]`).FindAllStringSubmatch(string(out), -1) {
		vals[m[1]] = m[2]
	}
	img := ctImage{sop: vals["0008,0018"], series: vals["0020,000e"], frameOfRef: vals["0020,0052"]}
	if img.sop == "" || img.series == "" || img.frameOfRef == "" {
		t.Fatalf("dcmdump %s: %q", path, out)
	}
	return img
}

// segmentation writes a Segmentation instance (dcmtk's dump2dcm, Explicit
// VR Little Endian) in the study, one binary frame per CT image: the
// images are referenced in the Referenced Series Sequence > Referenced
// Instance Sequence and, per frame, in the Derivation Image Sequence >
// Source Image Sequence; the SEG shares the images' Frame of Reference.
// Structurally plausible, not a validated SEG. It also carries the
// patient's identity where the profile's table does not look: free text,
// an attribute the profile keeps, a private creator block with a private
// sequence. Its Other Patient IDs (4147) and Birth Name (Sion) are parts
// of a code value (4147007) and of the Segment Label (lesion), which must
// arrive as they are. It returns the file and its SOP Instance UID.
func segmentation(t *testing.T, studyUID, patientID, patientName string, images []ctImage) (path, uid string) {
	t.Helper()
	uid = studyUID + ".66.1"
	var refs, frames strings.Builder
	for i, img := range images {
		if img.series != images[0].series || img.frameOfRef != images[0].frameOfRef {
			t.Fatal("segmentation: the images must be of one series")
		}
		fmt.Fprintf(&refs, `      (fffe,e000) na (Item with undefined length)
        (0008,1150) UI [1.2.840.10008.5.1.4.1.1.2]
        (0008,1155) UI [%s]
      (fffe,e00d) na (ItemDelimitationItem)
`, img.sop)
		fmt.Fprintf(&frames, `  (fffe,e000) na (Item with undefined length)
    (0008,9124) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0008,2112) SQ (Sequence with undefined length)
          (fffe,e000) na (Item with undefined length)
            (0008,1150) UI [1.2.840.10008.5.1.4.1.1.2]
            (0008,1155) UI [%[1]s]
            (0040,a170) SQ (Sequence with undefined length)
              (fffe,e000) na (Item with undefined length)
                (0008,0100) SH [121322]
                (0008,0102) SH [DCM]
                (0008,0104) LO [Source image for image processing operation]
              (fffe,e00d) na (ItemDelimitationItem)
            (fffe,e0dd) na (SequenceDelimitationItem)
          (fffe,e00d) na (ItemDelimitationItem)
        (fffe,e0dd) na (SequenceDelimitationItem)
        (0008,9215) SQ (Sequence with undefined length)
          (fffe,e000) na (Item with undefined length)
            (0008,0100) SH [113076]
            (0008,0102) SH [DCM]
            (0008,0104) LO [Segmentation]
          (fffe,e00d) na (ItemDelimitationItem)
        (fffe,e0dd) na (SequenceDelimitationItem)
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0020,9111) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0020,9157) UL 1\%[2]d
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0020,9113) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0020,0032) DS [0\0\%[2]d]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0062,000a) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0062,000b) US 1
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
  (fffe,e00d) na (ItemDelimitationItem)
`, img.sop, i+1)
	}
	family, _, _ := strings.Cut(patientName, "^")
	pixels := strings.TrimSuffix(strings.Repeat(`0f\`, 32*len(images)), `\`) // 16x16 bits a frame
	dump := fmt.Sprintf(`(0008,0005) CS [ISO_IR 100]
(0008,0016) UI [%[1]s]
(0008,0018) UI [%[2]s]
(0008,0060) CS [SEG]
(0008,0070) LO [stowline test]
(0008,1030) LO [CT %[3]s %[4]s]
(0008,103e) LO [lesion of %[5]s]
(0008,1115) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0008,114a) SQ (Sequence with undefined length)
%[6]s    (fffe,e0dd) na (SequenceDelimitationItem)
    (0020,000e) UI [%[7]s]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0009,0010) LO [ACME 1.0]
(0009,1001) LO [%[8]s]
(0009,1002) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0010,0010) PN [%[8]s]
    (0010,0030) DA [19700314]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0010,0010) PN [%[8]s]
(0010,0020) LO [%[4]s]
(0010,0030) DA [19700314]
(0010,1000) LO [4147]
(0010,1005) PN [Sion]
(0018,1020) LO [v1 %[4]s]
(0020,000d) UI [%[9]s]
(0020,000e) UI [%[2]s.1]
(0020,0011) IS [99]
(0020,0013) IS [1]
(0020,0052) UI [%[10]s]
(0020,4000) LT [%[8]s born 14.03.1970, %[4]s]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0008) IS [%[11]d]
(0028,0010) US 16
(0028,0011) US 16
(0028,0100) US 1
(0028,0101) US 1
(0028,0102) US 0
(0028,0103) US 0
(0062,0001) CS [BINARY]
(0062,0002) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0062,0003) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0008,0100) SH [49755003]
        (0008,0102) SH [SCT]
        (0008,0104) LO [Morphologically Altered Structure]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0062,0004) US 1
    (0062,0005) LO [lesion]
    (0062,0008) CS [MANUAL]
    (0062,000f) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0008,0100) SH [4147007]
        (0008,0102) SH [SCT]
        (0008,0104) LO [Mass]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(5200,9229) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0020,9116) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0020,0037) DS [1\0\0\0\1\0]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0028,9110) SQ (Sequence with undefined length)
      (fffe,e000) na (Item with undefined length)
        (0018,0050) DS [1]
        (0028,0030) DS [0.5\0.5]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(5200,9230) SQ (Sequence with undefined length)
%[12]s(fffe,e0dd) na (SequenceDelimitationItem)
(7fe0,0010) OB %[13]s
`, segmentationStorage, uid, strings.ToUpper(patientName[strings.Index(patientName, "^")+1:]+" "+family), patientID, family,
		refs.String(), images[0].series, patientName, studyUID, images[0].frameOfRef, len(images), frames.String(), pixels)
	return dumpToDICOM(t, dump), uid
}

// checkSegmentation checks a destination's copy of the SEG: every
// Referenced SOP Instance UID in it (at any depth) names an instance the
// destination holds, its Frame of Reference UID and Referenced Series
// Instance UID are the pseudonymised CT images', and the patient's
// identity planted in it did not arrive (every value, and the raw bytes
// of the file).
func checkSegmentation(t *testing.T, d *siteDest, k *deident.Keyer, segUID string, images []ctImage, tagsOf map[string]heldInstance, patient []string) {
	t.Helper()
	held := tagsOf[k.UID(segUID)]
	seg := held.tags
	if seg == nil {
		t.Errorf("%s: the SEG %s is not held under %s", d.name, segUID, k.UID(segUID))
		return
	}
	ct := tagsOf[k.UID(images[0].sop)].tags
	if ct == nil {
		t.Errorf("%s: the CT image %s is not held", d.name, images[0].sop)
		return
	}
	if got, want := seg["FrameOfReferenceUID"], ct["FrameOfReferenceUID"]; got != want || want != k.UID(images[0].frameOfRef) {
		t.Errorf("%s: SEG Frame of Reference UID %v, CT's %v, want both %s", d.name, got, want, k.UID(images[0].frameOfRef))
	}
	referenced := 0
	walkTags(seg, "", func(path, name, v string) {
		switch name {
		case "ReferencedSOPInstanceUID":
			referenced++
			if tagsOf[v].tags == nil {
				t.Errorf("%s: the SEG's %s = %s names no instance the destination holds", d.name, path, v)
			}
		case "SeriesInstanceUID":
			if strings.HasPrefix(path, "ReferencedSeriesSequence") && v != ct["SeriesInstanceUID"] {
				t.Errorf("%s: the SEG's %s = %s, want the CT's series %v", d.name, path, v, ct["SeriesInstanceUID"])
			}
		}
		for _, p := range patient {
			if len(p) > 2 && strings.Contains(strings.ToLower(v), strings.ToLower(p)) {
				t.Errorf("%s: the SEG's %s = %q holds %q", d.name, path, v, p)
			}
		}
	})
	// Codes and the Segment Label arrive as they are, although the
	// patient's Other Patient IDs and Birth Name are parts of them.
	segment := firstItem(seg["SegmentSequence"])
	for _, c := range []struct {
		path  string
		got   any
		value string
	}{
		{"SegmentLabel", segment["SegmentLabel"], "lesion"},
		{"SegmentedPropertyCategoryCodeSequence.CodeValue", firstItem(segment["SegmentedPropertyCategoryCodeSequence"])["CodeValue"], "49755003"},
		{"SegmentedPropertyTypeCodeSequence.CodeValue", firstItem(segment["SegmentedPropertyTypeCodeSequence"])["CodeValue"], "4147007"},
		{"SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator", firstItem(segment["SegmentedPropertyTypeCodeSequence"])["CodingSchemeDesignator"], "SCT"},
	} {
		if s, _ := c.got.(string); strings.TrimSpace(s) != c.value {
			t.Errorf("%s: the SEG's SegmentSequence.%s = %#v, want %q", d.name, c.path, c.got, c.value)
		}
	}
	// Referenced Instance Sequence and Source Image Sequence: two each a image.
	if referenced != 2*len(images) {
		t.Errorf("%s: the SEG holds %d references, want %d", d.name, referenced, 2*len(images))
	}
	raw := orthancFile(t, d.orthanc, held.id)
	for _, p := range patient {
		if len(p) > 3 && bytes.Contains(bytes.ToLower(raw), []byte(strings.ToLower(p))) {
			t.Errorf("%s: the SEG's file holds %q", d.name, p)
		}
	}
}

// firstItem is the first item of a simplified sequence, nil if none.
func firstItem(v any) map[string]any {
	items, _ := v.([]any)
	if len(items) == 0 {
		return nil
	}
	m, _ := items[0].(map[string]any)
	return m
}

// orthancFile reads an instance's file from Orthanc.
func orthancFile(t *testing.T, o *testharness.Orthanc, id string) []byte {
	t.Helper()
	b, err := o.Bytes(t.Context(), http.MethodGet, "/instances/"+id+"/file", nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
