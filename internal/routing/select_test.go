package routing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/orthancapi"
)

// studyOrthanc is a source holding one study's facts and the metadata of
// its instances; an instance without metadata was deleted (404).
type studyOrthanc struct {
	facts orthancapi.StudyFacts
	meta  map[string]orthancapi.InstanceMetadata
	reads *atomic.Int32 // metadata requests, if not nil
}

func (o studyOrthanc) StudyFacts(context.Context, string) (orthancapi.StudyFacts, error) {
	return o.facts, nil
}

func (o studyOrthanc) InstanceMetadata(_ context.Context, id string) (orthancapi.InstanceMetadata, error) {
	if o.reads != nil {
		o.reads.Add(1)
	}
	m, ok := o.meta[id]
	if !ok {
		return m, &orthancapi.Error{Method: "GET", Path: "/instances/" + id + "/metadata", StatusCode: 404}
	}
	return m, nil
}

func instancesOf(n int) []orthancapi.Instance {
	out := make([]orthancapi.Instance, n)
	for i := range out {
		out[i] = orthancapi.Instance{ID: fmt.Sprintf("i%d", i), SOPInstanceUID: fmt.Sprintf("1.2.3.%d", i), SeriesID: "s1"}
	}
	return out
}

// selectIDs compiles the two rules into a Route and returns the IDs of
// the instances its Select keeps of study "st" from source "main".
func selectIDs(t *testing.T, o Orthanc, studyRule, instanceRule string, instances []orthancapi.Instance) ([]string, error) {
	t.Helper()
	study, err := CompileStudyRule(studyRule)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := CompileInstanceRule(instanceRule)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Route{Study: study, Instance: inst}.Select(context.Background(), o, "main", "st", instances)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, in := range got {
		ids = append(ids, in.ID)
	}
	return ids, nil
}

func TestSelect(t *testing.T) {
	ctFacts := orthancapi.StudyFacts{Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "CT"}, "s2": {Modality: "SR"}}}
	sr := orthancapi.InstanceMetadata{SOPClassUID: "1.2.840.10008.5.1.4.1.1.88.33"}
	ct := orthancapi.InstanceMetadata{SOPClassUID: "1.2.840.10008.5.1.4.1.1.2"}
	for _, tt := range []struct {
		name         string
		study, inst  string
		facts        orthancapi.StudyFacts
		meta         map[string]orthancapi.InstanceMetadata // of i0, i1, i2
		want         []string                               // selected IDs
		wantNotFound bool
	}{
		{
			// A ModalitiesInStudy kept from the first instance does not
			// hide a series added later.
			name: "modalities: the study's tag and its series'", study: "'SR' in study.modalities",
			facts: orthancapi.StudyFacts{ModalitiesInStudy: []string{"CT"}, Series: ctFacts.Series},
			want:  []string{"i0", "i1", "i2"},
		},
		{
			// A series without Modality, an instance Orthanc got with no
			// calling AE title, adds no empty value a rule would count.
			name: "no empty values", study: "size(study.modalities) == 1 && size(study.callingAets) == 1",
			facts: orthancapi.StudyFacts{Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "CT"}, "s2": {}}},
			meta:  map[string]orthancapi.InstanceMetadata{"i0": {RemoteAET: "CT01"}, "i1": {}, "i2": {RemoteAET: "CT01"}},
			want:  []string{"i0", "i1", "i2"},
		},
		{
			name: "an unselected instance deleted while its metadata is read", inst: "instance.sopClassUid.startsWith('1.2.840.10008.5.1.4.1.1.88')",
			facts: ctFacts, meta: map[string]orthancapi.InstanceMetadata{"i0": ct, "i2": sr},
			want: []string{"i2"},
		},
		{
			name: "every instance deleted: the study is gone", study: "'1.2.840.10008.5.1.4.1.1.88.33' in study.sopClasses",
			facts: ctFacts, meta: map[string]orthancapi.InstanceMetadata{},
			wantNotFound: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := selectIDs(t, studyOrthanc{facts: tt.facts, meta: tt.meta}, tt.study, tt.inst, instancesOf(3))
			if tt.wantNotFound {
				if !errors.Is(err, orthancapi.ErrNotFound) {
					t.Fatalf("Select: %v, want not found", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("selected %v, want %v", ids, tt.want)
			}
		})
	}
}

// A study rule alone (PRIORITY_RULE) reads the instance list only when it
// looks at the instances, and their metadata only for AE titles or SOP
// classes.
func TestStudyRuleSelects(t *testing.T) {
	o := studyOrthanc{
		facts: orthancapi.StudyFacts{Description: "STAT trauma", Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "MR"}}},
		meta:  map[string]orthancapi.InstanceMetadata{"i0": {RemoteAET: "CT1"}, "i1": {RemoteAET: "ER"}, "i2": {RemoteAET: "CT1"}},
	}
	for _, tt := range []struct {
		rule       string
		list, meta bool // the instance list, their metadata read
		instances  []orthancapi.Instance
		want       bool
	}{
		{"'MR' in study.modalities", false, false, nil, true},
		{"'CT' in study.modalities", false, false, nil, false},
		{"study.instances > 2", true, false, instancesOf(3), true},
		{"'ER' in study.callingAets", true, true, instancesOf(3), true},
		{"'ER' in study.callingAets", true, true, instancesOf(1), false},
		// The metadata is read only when the result depends on it: a
		// 3,000-instance CT whose description already decides is not
		// read instance by instance (PRIORITY_RULE's 5 s).
		{"study.description.contains('STAT') || 'ER' in study.callingAets", true, false, instancesOf(3), true},
		{"'ER' in study.callingAets || study.description.contains('STAT')", true, false, instancesOf(3), true},
		{"study.description.contains('Head') && 'ER' in study.callingAets", true, false, instancesOf(3), false},
		{"study.description.contains('STAT') && 'ER' in study.callingAets", true, true, instancesOf(3), true},
		{"study.description.contains('STAT') && 'ER' in study.callingAets", true, true, instancesOf(1), false},
		{"study.description.contains('Head') || 'ER' in study.callingAets", true, true, instancesOf(3), true},
		// Failing without the metadata, the rule is evaluated with it.
		{"study.callingAets.size() > 0 || study.modalities[1] == 'CT'", true, true, instancesOf(3), true},
		// The whole study handed to a function depends on the metadata.
		{"'ER' in dyn(study).callingAets || study.description == 'x'", true, true, instancesOf(3), true},
		// By a name in brackets, or on the study handed on whole, the same.
		{"dyn(study)['description'] == 'STAT trauma'", false, false, nil, true},
		{"'ER' in dyn(study)['callingAets']", true, true, instancesOf(3), true},
		{"'ER' in dyn(study)['calling' + 'Aets']", true, true, instancesOf(3), true},
		{"'ER' in [dyn(study)][0]['callingAets'] || study.description == 'x'", true, true, instancesOf(3), true},
	} {
		o.reads = &atomic.Int32{}
		r, err := CompileStudyRule(tt.rule)
		if err != nil {
			t.Fatal(err)
		}
		if r.NeedsInstanceList() != tt.list {
			t.Errorf("%s: NeedsInstanceList = %v, want %v", tt.rule, !tt.list, tt.list)
		}
		if got, err := r.Selects(context.Background(), o, "main", "st", tt.instances); err != nil || got != tt.want {
			t.Errorf("%s over %d instances: %v, %v; want %v", tt.rule, len(tt.instances), got, err, tt.want)
		}
		if read := o.reads.Load() > 0; read != tt.meta {
			t.Errorf("%s: metadata read %v, want %v", tt.rule, read, tt.meta)
		}
	}
}

// A destination's study rule that its cheap facts decide reads no
// metadata for an unselected study, even when the instance rule reads it
// (docs/routing.md, what a rule costs).
func TestSelectReadsMetadataOnlyWhenItDecides(t *testing.T) {
	o := studyOrthanc{
		facts: orthancapi.StudyFacts{Description: "Chest", Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "CT"}}},
		meta: map[string]orthancapi.InstanceMetadata{
			"i0": {RemoteAET: "ER", SOPClassUID: "1.2.840.10008.5.1.4.1.1.2"},
			"i1": {RemoteAET: "ER", SOPClassUID: "1.2.840.10008.5.1.4.1.1.88.67"},
		},
	}
	for _, tt := range []struct {
		name, study, inst string
		want              []string
		reads             int32
	}{
		{"not selected by its description", "study.description == 'Head' && 'ER' in study.callingAets", "instance.sopClassUid.endsWith('.67')", nil, 0},
		{"selected by its description", "study.description == 'Chest' || 'ER' in study.callingAets", "", []string{"i0", "i1"}, 0},
		{"selected, the instance rule reads the metadata", "study.description == 'Chest' || 'ER' in study.callingAets", "instance.sopClassUid.endsWith('.67')", []string{"i1"}, 2},
		{"the description does not decide", "study.description == 'Chest' && 'ER' in study.callingAets", "", []string{"i0", "i1"}, 2},
		// A study rule that reads no metadata decides first.
		{"not selected by a rule without metadata", "'MR' in study.modalities", "instance.sopClassUid.endsWith('.67')", nil, 0},
		{"selected by a rule without metadata", "'CT' in study.modalities", "instance.sopClassUid.endsWith('.67')", []string{"i1"}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o.reads = &atomic.Int32{}
			ids, err := selectIDs(t, o, tt.study, tt.inst, instancesOf(2))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, tt.want) || o.reads.Load() != tt.reads {
				t.Errorf("selected %v with %d metadata reads, want %v with %d", ids, o.reads.Load(), tt.want, tt.reads)
			}
		})
	}
}

// Several destinations' routes applied to one study through ReadOnce
// read each instance's metadata once, and select as they do alone.
func TestReadOnce(t *testing.T) {
	o := studyOrthanc{
		facts: orthancapi.StudyFacts{Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "CT"}}},
		meta: map[string]orthancapi.InstanceMetadata{
			"i0": {SOPClassUID: "1.2.840.10008.5.1.4.1.1.2"},
			"i1": {SOPClassUID: "1.2.840.10008.5.1.4.1.1.88.67"},
		},
		reads: &atomic.Int32{},
	}
	once := ReadOnce(o)
	for _, rule := range []struct {
		inst string
		want []string
	}{
		{"instance.sopClassUid.endsWith('.67')", []string{"i1"}},
		{"!instance.sopClassUid.endsWith('.67')", []string{"i0"}},
		{"instance.modality == 'CT'", []string{"i0", "i1"}},
	} {
		ids, err := selectIDs(t, once, "", rule.inst, instancesOf(2))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, rule.want) {
			t.Errorf("%s selected %v, want %v", rule.inst, ids, rule.want)
		}
	}
	if n := o.reads.Load(); n != 2 {
		t.Errorf("%d metadata reads, want 2 (one per instance)", n)
	}
}
