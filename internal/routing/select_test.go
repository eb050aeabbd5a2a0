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
			study, err := CompileStudyRule(tt.study)
			if err != nil {
				t.Fatal(err)
			}
			inst, err := CompileInstanceRule(tt.inst)
			if err != nil {
				t.Fatal(err)
			}
			o := studyOrthanc{facts: tt.facts, meta: tt.meta}
			got, err := Route{Study: study, Instance: inst}.Select(context.Background(), o, "main", "st", instancesOf(3))
			if tt.wantNotFound {
				if !errors.Is(err, orthancapi.ErrNotFound) {
					t.Fatalf("Select: %v, want not found", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, in := range got {
				ids = append(ids, in.ID)
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
		facts: orthancapi.StudyFacts{Series: map[string]orthancapi.SeriesFacts{"s1": {Modality: "MR"}}},
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
