package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/deident"
)

// deidentPatientPrefix is the STOW_DEIDENTIFY_PATIENT_PREFIX of the
// de-identifying cases.
const deidentPatientPrefix = "PSEUDO-"

// The generated study's Patient ID and Name (loadStudy), which no
// de-identified copy may carry.
const (
	benchPatientID   = "BENCH-PIPELINE"
	benchPatientName = "Synthetic^Bench"
)

// writeDeidentifyKey writes a fresh site key into dir, as an operator
// would (head -c 32 /dev/urandom | base64), and returns its path with the
// Keyer stowline derives from it.
func writeDeidentifyKey(b *testing.B, dir string) (string, *deident.Keyer) {
	b.Helper()
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // never fails (crypto/rand)
	path := filepath.Join(dir, "deidentify.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	key, err := deident.ReadKeyFile(path)
	if err != nil {
		b.Fatal(err)
	}
	k, err := deident.NewKeyer(key, deidentPatientPrefix)
	if err != nil {
		b.Fatal(err)
	}
	return path, k
}

// keyedSOPInstanceUIDs maps the keyed SOP Instance UID of every instance
// of the study to the instance.
func (p *pipeline) keyedSOPInstanceUIDs() map[string]instance {
	m := make(map[string]instance, p.n())
	for _, in := range p.instances {
		m[p.keyer.UID(in.SOPInstanceUID)] = in
	}
	return m
}

// checkAndResetDeidentifiedSink verifies that the sink got every instance
// exactly once under its keyed SOP Instance UID, and empties it. The
// bytes differ from the study's: the copies are rewritten.
func (p *pipeline) checkAndResetDeidentifiedSink() error {
	st, distinct := p.sink.Stats(), p.sink.Distinct()
	missing := 0
	for uid := range p.keyedSOPInstanceUIDs() {
		if !p.sink.Holds(uid) {
			missing++
		}
	}
	p.sink.Reset()
	if distinct != p.n() || st.Instances != int64(p.n()) || missing > 0 {
		return fmt.Errorf("the sink got %d de-identified instances (%d distinct, %d of the keyed SOP Instance UIDs missing); the study has %d",
			st.Instances, distinct, missing, p.n())
	}
	return nil
}

// checkAndEmptyDeidentifiedB verifies that B holds exactly the study's
// de-identified copies: one study under the keyed Study Instance UID and
// the Patient ID pseudonym, every instance under its keyed SOP Instance
// UID, and, on a sample of instances (a different one each round), a file
// with neither the original UIDs nor the patient's name or ID. Then it
// empties B. MD5s do not apply: the copies are rewritten.
func (p *pipeline) checkAndEmptyDeidentifiedB(ctx context.Context, round int) error {
	o := p.b
	var studies []struct {
		ID                   string
		MainDicomTags        struct{ StudyInstanceUID string }
		PatientMainDicomTags struct{ PatientID string }
	}
	if err := o.Do(ctx, http.MethodGet, "/studies?expand", nil, &studies); err != nil {
		return err
	}
	if len(studies) != 1 {
		return fmt.Errorf("%s holds %d studies after a de-identified forward, want 1", o.Name, len(studies))
	}
	if got, want := studies[0].MainDicomTags.StudyInstanceUID, p.keyer.UID(p.studyUID); got != want {
		return fmt.Errorf("%s holds study %s, want the keyed Study Instance UID %s", o.Name, got, want)
	}
	if got, want := studies[0].PatientMainDicomTags.PatientID, p.keyer.PatientID(benchPatientID); got != want {
		return fmt.Errorf("%s holds the study under Patient ID %q, want the pseudonym %q", o.Name, got, want)
	}
	var held []struct {
		ID            string
		MainDicomTags struct{ SOPInstanceUID string }
	}
	if err := o.Do(ctx, http.MethodGet, "/studies/"+studies[0].ID+"/instances", nil, &held); err != nil {
		return err
	}
	keyed := p.keyedSOPInstanceUIDs()
	byKeyed := make(map[string]string, len(held))
	for _, h := range held {
		if _, ok := keyed[h.MainDicomTags.SOPInstanceUID]; !ok {
			return fmt.Errorf("%s holds SOP instance %s, which is not the keyed UID of any instance of the study", o.Name, h.MainDicomTags.SOPInstanceUID)
		}
		byKeyed[h.MainDicomTags.SOPInstanceUID] = h.ID
	}
	if len(held) != p.n() || len(byKeyed) != p.n() {
		return fmt.Errorf("%s holds %d instances (%d distinct keyed UIDs), want %d", o.Name, len(held), len(byKeyed), p.n())
	}
	const samples = 10
	for j := range min(samples, p.n()) {
		in := p.instances[(j*p.n()/samples+round*7)%p.n()]
		var copy bytes.Buffer
		if _, err := p.getFile(ctx, o, byKeyed[p.keyer.UID(in.SOPInstanceUID)], &copy); err != nil {
			return fmt.Errorf("%s: %w", o.Name, err)
		}
		for _, original := range []string{in.SOPInstanceUID, p.studyUID, benchPatientID, benchPatientName} {
			if bytes.Contains(copy.Bytes(), []byte(original)) {
				return fmt.Errorf("%s's copy of SOP instance %s still holds %q", o.Name, in.SOPInstanceUID, original)
			}
		}
	}
	if err := o.Do(ctx, http.MethodDelete, "/studies/"+studies[0].ID, nil, nil); err != nil {
		return fmt.Errorf("empty %s: %w", o.Name, err)
	}
	if n, err := count(ctx, o); err != nil || n != 0 {
		return fmt.Errorf("%s holds %d instances after the delete (err %v)", o.Name, n, err)
	}
	return nil
}

// TestDeidentifySettings: the de-identifying cases are off by default, so
// the default run is unchanged, and STOWLINE_BENCH_DEIDENTIFY turns them on.
func TestDeidentifySettings(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  []fwdSetting
	}{
		{"", nil},
		{"-", nil},
		{"4/100", []fwdSetting{{Concurrency: 4, MaxInstances: 100}}},
		{"4/100,1/50/2", []fwdSetting{{Concurrency: 4, MaxInstances: 100}, {Concurrency: 1, MaxInstances: 50, Parallel: 2}}},
	} {
		s, err := loadSettings(func(k string) string {
			if k == envPrefix+"DEIDENTIFY" {
				return tc.value
			}
			return ""
		})
		if err != nil {
			t.Fatalf("%q: %v", tc.value, err)
		}
		if !slices.Equal(s.Deidentify, tc.want) {
			t.Errorf("%sDEIDENTIFY=%q: %v, want %v", envPrefix, tc.value, s.Deidentify, tc.want)
		}
	}
	if _, err := loadSettings(func(k string) string {
		if k == envPrefix+"DEIDENTIFY" {
			return "4"
		}
		return ""
	}); err == nil || !strings.Contains(err.Error(), envPrefix+"DEIDENTIFY") {
		t.Errorf("a bad %sDEIDENTIFY: %v", envPrefix, err)
	}
}
