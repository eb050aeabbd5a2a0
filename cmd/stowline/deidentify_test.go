package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/testharness"
)

// TestDeidentifiedDestination sends the shared samples to a destination
// with STOW_DEIDENTIFY=basic (a real Orthanc) and reads every instance it
// holds back, sequences included (Orthanc's /tags): no original UID,
// Patient ID or Patient's Name of any sample remains anywhere; every
// instance arrives under its keyed SOP Instance UID; two studies of one
// patient carry one pseudonym; a resend of everything leaves the
// destination with the same instances (same UIDs); the instances that
// may carry burned-in text (Secondary Capture, Ultrasound) are not sent
// and are listed in the dead letter with the reason. A generated Key
// Object Selection and a Segmentation reference CT images of their study:
// every reference resolves at the destination, and the SEG keeps the
// images' (keyed) Frame of Reference and series; the patient's name, ID
// and birth date planted in the SEG's free text, a kept attribute and
// private tags do not arrive (research also cleans descriptors). The rewrite itself
// (profile, idempotence, dcmdump validity) is tested in internal/deident.
// ai verifies with STOW_VERIFY=qido, and forwarder audit --verify checks
// it: both under the studies' pseudonyms.
func TestDeidentifiedDestination(t *testing.T) {
	testharness.ForEachRelease(t, testDeidentifiedDestination)
}

func testDeidentifiedDestination(t *testing.T, rel testharness.Release) {
	s := newSiteWith(t, siteOptions{release: rel, destinations: []string{"research", "ai"}, nats: true})
	research, ai := s.destination(t, "research"), s.destination(t, "ai")
	key, aiKey := []byte("a-test-site-key-of-at-least-32-bytes-long"), []byte("another-key-for-the-ai-vendor-of-32-bytes")
	for _, d := range []struct {
		dest *siteDest
		key  []byte
	}{{research, key}, {ai, aiKey}} {
		keyFile := filepath.Join(t.TempDir(), "deident.key")
		if err := os.WriteFile(keyFile, append(d.key, '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
		s.env[d.dest.varName("STOW_DEIDENTIFY")] = "basic"
		s.env[d.dest.varName("DEIDENTIFY_KEY_FILE")] = keyFile
	}
	s.env[research.varName("STOW_DEIDENTIFY_OPTIONS")] = "retain-dates,clean-descriptors"
	// ai takes the instances that may carry burned-in text: the samples
	// in other character sets, big endian and deflated (converted by
	// Orthanc first) are then checked at a destination too.
	s.env[ai.varName("STOW_DEIDENTIFY_BURNED_IN")] = "include"
	// ai verifies over QIDO-RS: it is asked under the studies' pseudonyms
	// and lists the keyed SOP Instance UIDs.
	s.env[ai.varName("STOW_VERIFY")] = "qido"
	s.env["FORWARDER_MAX_DELIVERIES"] = "2"
	s.start(t)
	store, err := deadletter.Open(t.Context(), s.js)
	if err != nil {
		t.Fatal(err)
	}
	k, err := deident.NewKeyer(key, "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	aiK, err := deident.NewKeyer(aiKey, "ANON-")
	if err != nil {
		t.Fatal(err)
	}

	var files []string
	class := map[string]string{} // SOP Instance UID: SOP class
	for _, smp := range testharness.Samples(t) {
		if smp.OrthancAccepts {
			files = append(files, smp.Path)
			class[smp.SOPInstanceUID] = smp.SOPClassUID
		}
	}
	// Two generated studies of one patient: one pseudonym for both.
	const patientID = "PAT-42"
	studyUIDs := []string{"1.2.826.0.1.3680043.8.498.4217.1", "1.2.826.0.1.3680043.8.498.4217.2"}
	for _, uid := range studyUIDs {
		gen, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, PatientID: patientID,
			PatientName: "Roe^Richard", Series: 1, InstancesPerSeries: 2, Rows: 16, Columns: 16})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, gen...)
		for _, u := range sopUIDs(t, gen...) {
			class[u] = "1.2.840.10008.5.1.4.1.1.2"
		}
	}
	// A Key Object Selection document in the first generated study that
	// references its CT images, as an SR or SEG does: the references must
	// resolve at the destination.
	ko, koUID, koRefs := keyObject(t, studyUIDs[0], patientID, files[len(files)-4:len(files)-2])
	// A Segmentation of the same images, which also carries the
	// patient's identity in free text, a kept attribute and private tags.
	var images []ctImage
	for _, f := range files[len(files)-4 : len(files)-2] {
		images = append(images, readCTImage(t, f))
	}
	seg, segUID := segmentation(t, studyUIDs[0], patientID, "Roe^Richard", images)
	files = append(files, ko, seg)
	class[koUID] = "1.2.840.10008.5.1.4.1.1.88.59"
	class[segUID] = segmentationStorage
	src := s.sources["main"]
	if res := src.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	src.WaitStable(t, time.Minute)
	s.waitDone(t, 2*time.Minute, "research", "ai")

	// What must not arrive: every UID, Patient ID and name of the source.
	secrets := map[string]string{}
	var ids []string
	src.GetJSON(t, "/instances", &ids)
	for _, id := range ids {
		var tags map[string]any
		src.GetJSON(t, "/instances/"+id+"/tags?simplify", &tags)
		walkTags(tags, "", func(path, name, v string) {
			switch {
			case strings.HasSuffix(name, "UID") && !strings.HasPrefix(v, "1.2.840.10008."),
				name == "PatientID", name == "PatientName", name == "OtherPatientIDs", name == "AccessionNumber",
				name == "InstitutionName", name == "ReferringPhysicianName":
				if len(v) > 2 {
					secrets[secretKey(name, v)] = path
				}
			}
		})
	}
	if len(secrets) < 30 {
		t.Fatalf("only %d identifying values read from the source", len(secrets))
	}

	held, got, patients, refs, tagsOf := deidentifiedHoldings(t, research, secrets)
	aiHeld, aiGot, _, aiRefs, aiTagsOf := deidentifiedHoldings(t, ai, secrets)
	for _, d := range []struct {
		dest   *siteDest
		name   string
		k      *deident.Keyer
		got    map[string]bool
		refs   map[string][]string
		tagsOf map[string]heldInstance
	}{{research, "research", k, got, refs, tagsOf}, {ai, "ai", aiK, aiGot, aiRefs, aiTagsOf}} {
		checkSegmentation(t, d.dest, d.k, segUID, images, d.tagsOf, []string{"Roe^Richard", "Roe", "Richard", patientID, "19700314", "14.03.1970"})
		desc := d.tagsOf[d.k.UID(segUID)].tags["StudyDescription"]
		if want := map[string]any{"research": "CT", "ai": nil}[d.name]; desc != want {
			t.Errorf("%s: the SEG's Study Description %#v, want %#v (clean-descriptors: research only)", d.name, desc, want)
		}
		r := d.refs[d.k.UID(koUID)]
		if len(r) != len(koRefs) {
			t.Errorf("%s: the key object references %d instances, want %d", d.name, len(r), len(koRefs))
		}
		for _, u := range r {
			if !d.got[u] {
				t.Errorf("%s: the key object references %s, which the destination does not hold", d.name, u)
			}
		}
	}
	if aiRefused := refusedInstances(t, store, "ai"); len(aiRefused) > 0 {
		t.Errorf("ai (burned-in included) refused %v", aiRefused)
	}
	for uid := range class {
		if !aiGot[aiK.UID(uid)] {
			t.Errorf("ai: %s (%s) not held under its keyed UID", uid, class[uid])
		}
		if aiGot[k.UID(uid)] {
			t.Errorf("ai holds %s under research's pseudonym: two keys must not link", uid)
		}
	}
	if len(aiHeld) != len(class) {
		t.Errorf("ai holds %d instances, want %d", len(aiHeld), len(class))
	}
	for _, uid := range studyUIDs {
		if p := patients[k.UID(uid)]; len(p) != 1 || !p[k.PatientID(patientID)] {
			t.Errorf("generated study %s: Patient IDs %v at the destination, want only the pseudonym %s", uid, p, k.PatientID(patientID))
		}
	}
	// The site's ledger records each study's pseudonym per destination.
	var studies []struct {
		ID            string
		MainDicomTags map[string]string
	}
	src.GetJSON(t, "/studies?expand", &studies)
	found := false
	for _, st := range studies {
		if st.MainDicomTags["StudyInstanceUID"] != studyUIDs[0] {
			continue
		}
		found = true
		for dest, keyer := range map[string]*deident.Keyer{"research": k, "ai": aiK} {
			l, err := ledger.Open(t.Context(), s.js, dest)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := l.Lookup(t.Context(), "main", st.ID)
			if err != nil || rec.StudyInstanceUID != studyUIDs[0] || rec.PseudonymStudyInstanceUID != keyer.UID(studyUIDs[0]) {
				t.Errorf("%s ledger: %+v, %v; want the study under %s", dest, rec, err, keyer.UID(studyUIDs[0]))
			}
		}
	}
	if !found {
		t.Errorf("study %s not in the source", studyUIDs[0])
	}
	refused := refusedInstances(t, store, "research")
	for uid, sopClass := range class {
		burnedIn := strings.HasPrefix(sopClass, "1.2.840.10008.5.1.4.1.1.7") || strings.HasPrefix(sopClass, "1.2.840.10008.5.1.4.1.1.6.1")
		switch {
		case burnedIn:
			if got[k.UID(uid)] || !strings.Contains(refused[uid], "burned-in") || !strings.Contains(refused[uid], "DESTINATION_RESEARCH_STOW_DEIDENTIFY") {
				t.Errorf("%s (%s): held %v, refused with %q; want kept out as burned-in", uid, sopClass, got[k.UID(uid)], refused[uid])
			}
		case !got[k.UID(uid)]:
			t.Errorf("%s (%s): not held under its keyed UID %s; refused with %q", uid, sopClass, k.UID(uid), refused[uid])
		}
	}
	if len(got) < 10 {
		t.Errorf("destination holds %d instances", len(got))
	}
	fwd := "http://" + s.fwdAddr + "/metrics"
	burnedIn := metricValue(t, fwd, `stowline_forwarder_deidentified_total{destination="research",result="burned_in"}`)
	written := metricValue(t, fwd, `stowline_forwarder_deidentified_total{destination="ai",result="written"}`)
	if burnedIn < 1 || written < float64(len(class)) {
		t.Errorf("deidentified_total: research burned_in %v, ai written %v (want at least %d)", burnedIn, written, len(class))
	}
	forwarded := metricValue(t, fwd, `stowline_forwarder_studies_total{destination="ai",result="forwarded"}`)
	for result, want := range map[string]float64{"verified": forwarded, "missing": 0, "error": 0} {
		if got := metricValue(t, fwd, `stowline_forwarder_verifications_total{destination="ai",result="`+result+`"}`); got != want || forwarded < 2 {
			t.Errorf("ai (STOW_VERIFY=qido): verifications_total{result=%q} = %v, want %v (%v studies forwarded)", result, got, want, forwarded)
		}
	}
	// The audit asks under the pseudonyms too: every study is held in full.
	if out := s.command(t, app.RunAudit, "--verify", "--destination", "ai", "--since", "1h", "--json"); strings.TrimSpace(out) != "" {
		t.Errorf("audit --verify of ai: findings %s, want none", out)
	}

	// A resend of every study writes the same copies: the destination
	// ends with the same instances, none twice.
	requests := research.proxy.STOWRequests()
	out := s.command(t, app.RunBackfill, "--destination", "research", "--since", "1h", "--from", "source")
	if !strings.Contains(out, "studies queued for research") {
		t.Fatalf("backfill: %s", out)
	}
	testharness.WaitFor(t, "the resend's STOW-RS requests", time.Minute, func() bool { return research.proxy.STOWRequests() > requests })
	s.waitIdle(t, time.Minute, "research")
	var again []string
	research.orthanc.GetJSON(t, "/instances", &again)
	if len(again) != len(held) {
		t.Errorf("after a resend the destination holds %d instances, before %d", len(again), len(held))
	}
	have := research.uids(t)
	for uid := range got {
		if !have[uid] {
			t.Errorf("after a resend %s is gone", uid)
		}
	}
}

// deidentifiedHoldings reads every instance a destination holds, checks
// that no value of secrets is in it (sequences included), that Patient's
// Name is the Patient ID pseudonym and Patient Identity Removed is YES,
// and returns the Orthanc IDs, the SOP Instance UIDs and the Patient IDs
// of each (keyed) study.
func deidentifiedHoldings(t *testing.T, d *siteDest, secrets map[string]string) (held []string, got map[string]bool, patients map[string]map[string]bool, refs map[string][]string, tagsOf map[string]heldInstance) {
	t.Helper()
	got, patients, refs, tagsOf = map[string]bool{}, map[string]map[string]bool{}, map[string][]string{}, map[string]heldInstance{}
	d.orthanc.GetJSON(t, "/instances", &held)
	for _, id := range held {
		var tags map[string]any
		d.orthanc.GetJSON(t, "/instances/"+id+"/tags?simplify", &tags)
		walkTags(tags, "", func(path, name, v string) {
			if p, ok := secrets[secretKey(name, v)]; ok {
				t.Errorf("%s: instance %s: %s holds the original value of the source's %s", d.name, id, path, p)
			}
			if name == "SOPInstanceUID" && path == "SOPInstanceUID" {
				got[v] = true
			}
			if name == "ReferencedSOPInstanceUID" {
				sop := fmt.Sprint(tags["SOPInstanceUID"])
				refs[sop] = append(refs[sop], v)
			}
			if name == "PatientName" && path == "PatientName" && v != "" && v != fmt.Sprint(tags["PatientID"]) {
				t.Errorf("%s: instance %s: Patient's Name %q is not the pseudonym %v", d.name, id, v, tags["PatientID"])
			}
			if name == "PatientName" && path != "PatientName" && v != "" {
				t.Errorf("%s: instance %s: %s is %q, want emptied (a name in a sequence)", d.name, id, path, v)
			}
			if name == "PatientIdentityRemoved" && v != "YES" {
				t.Errorf("%s: instance %s: PatientIdentityRemoved %q", d.name, id, v)
			}
		})
		tagsOf[fmt.Sprint(tags["SOPInstanceUID"])] = heldInstance{id: id, tags: tags}
		study := fmt.Sprint(tags["StudyInstanceUID"])
		if patients[study] == nil {
			patients[study] = map[string]bool{}
		}
		patients[study][fmt.Sprint(tags["PatientID"])] = true
	}
	return held, got, patients, refs, tagsOf
}

// keyObject writes a Key Object Selection document (dcmtk's dump2dcm) in
// the study that references the images, with their series; it returns
// the file, its SOP Instance UID and the referenced SOP Instance UIDs.
func keyObject(t *testing.T, studyUID, patientID string, images []string) (path, uid string, refs []string) {
	t.Helper()
	uid = studyUID + ".99.1"
	var series strings.Builder
	for _, f := range images {
		out, err := exec.Command("dcmdump", "+P", "0020,000e", "+P", "0008,0018", f).Output()
		if err != nil {
			t.Fatalf("dcmdump %s: %v", f, err)
		}
		vals := map[string]string{}
		for _, m := range regexp.MustCompile(`\((0008,0018|0020,000e)\) UI \[([0-9.]+)\]`).FindAllStringSubmatch(string(out), -1) {
			vals[m[1]] = m[2]
		}
		sop, ser := vals["0008,0018"], vals["0020,000e"]
		if sop == "" || ser == "" {
			t.Fatalf("dcmdump %s: %q", f, out)
		}
		refs = append(refs, sop)
		fmt.Fprintf(&series, `      (fffe,e000) na (Item with undefined length)
        (0008,1199) SQ (Sequence with undefined length)
          (fffe,e000) na (Item with undefined length)
            (0008,1150) UI =CTImageStorage
            (0008,1155) UI [%s]
          (fffe,e00d) na (ItemDelimitationItem)
        (fffe,e0dd) na (SequenceDelimitationItem)
        (0020,000e) UI [%s]
      (fffe,e00d) na (ItemDelimitationItem)
`, sop, ser)
	}
	dump := fmt.Sprintf(`(0008,0016) UI =KeyObjectSelectionDocumentStorage
(0008,0018) UI [%[1]s]
(0008,0060) CS [KO]
(0010,0010) PN [Roe^Richard]
(0010,0020) LO [%[2]s]
(0020,000d) UI [%[3]s]
(0020,000e) UI [%[3]s.99]
(0040,a375) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0008,1115) SQ (Sequence with undefined length)
%[4]s    (fffe,e0dd) na (SequenceDelimitationItem)
    (0020,000d) UI [%[3]s]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
`, uid, patientID, studyUID, series.String())
	return dumpToDICOM(t, dump), uid, refs
}

// secretKey: a UID must not appear anywhere; another value not in the
// same attribute (a manufacturer may share an institution's name).
func secretKey(name, v string) string {
	if strings.HasSuffix(name, "UID") {
		return v
	}
	return name + "=" + v
}

// walkTags calls f for every string value of Orthanc's simplified tags,
// in sequences too, with its path (Seq[0].Name).
func walkTags(v any, path string, f func(path, name, value string)) {
	switch x := v.(type) {
	case map[string]any:
		for name, c := range x {
			p := name
			if path != "" {
				p = path + "." + name
			}
			if s, ok := c.(string); ok {
				f(p, name, strings.TrimSpace(s))
				continue
			}
			walkTags(c, p, f)
		}
	case []any:
		for i, c := range x {
			walkTags(c, fmt.Sprintf("%s[%d]", path, i), f)
		}
	}
}

// dumpToDICOM writes a dcmdump-style text as a DICOM file (dcmtk's
// dump2dcm, explicit VR little endian) and returns its path.
func dumpToDICOM(t *testing.T, dump string) string {
	t.Helper()
	dir := t.TempDir()
	src, path := filepath.Join(dir, "instance.dump"), filepath.Join(dir, "instance.dcm")
	if err := os.WriteFile(src, []byte(dump), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testharness.RequireBinary(t, "dump2dcm"), "+te", src, path).CombinedOutput(); err != nil {
		t.Fatalf("dump2dcm: %v\n%s", err, out)
	}
	return path
}
