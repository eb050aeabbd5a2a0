package routing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/orthancapi"
)

// metadataReads bounds the instance metadata requests one study makes at
// once.
const metadataReads = 8

// Orthanc is what the rules read from a source.
type Orthanc interface {
	StudyFacts(ctx context.Context, studyID string) (orthancapi.StudyFacts, error)
	InstanceMetadata(ctx context.Context, instanceID string) (orthancapi.InstanceMetadata, error)
}

// Route is a destination's rules.
type Route struct {
	Study    *StudyRule
	Instance *InstanceRule
}

// RuleError is a rule that failed on a study: a permanent failure of that
// study at that destination. Instance tells the instance rule from the
// study rule.
type RuleError struct {
	Instance bool
	Err      error
}

func (e *RuleError) Error() string { return e.Err.Error() }
func (e *RuleError) Unwrap() error { return e.Err }

// Select returns the instances of a study the rules send to the
// destination, in their order; none when the study is not for it. It
// reads the study's facts once, and each instance's metadata only when a
// rule needs it. Errors reading Orthanc are returned as they are.
func (r Route) Select(ctx context.Context, o Orthanc, source, studyID string, instances []orthancapi.Instance) ([]orthancapi.Instance, error) {
	if r.Study.All() && r.Instance.All() {
		return instances, nil
	}
	ok, facts, instances, meta, err := r.Study.decide(ctx, o, source, studyID, instances, r.Instance.NeedsMetadata())
	if err != nil || !ok {
		return nil, err
	}
	if r.Instance.All() {
		return instances, nil
	}
	var out []orthancapi.Instance
	for i, in := range instances {
		s := facts.Series[in.SeriesID]
		inst := &Instance{Modality: s.Modality, SeriesDescription: s.Description}
		if meta != nil {
			inst.SOPClassUID, inst.TransferSyntaxUID, inst.CallingAET = meta[i].SOPClassUID, meta[i].TransferSyntaxUID, meta[i].RemoteAET
		}
		ok, err := r.Instance.Match(inst)
		if err != nil {
			return nil, &RuleError{Instance: true, Err: fmt.Errorf("instance %s: %w", in.SOPInstanceUID, err)}
		}
		if ok {
			out = append(out, in)
		}
	}
	return out, nil
}

// Selects reports whether the study rule selects a study, reading what
// it needs: the study's facts, and its instances' metadata when the
// result depends on NeedsInstances' facts. instances may be nil for a
// rule that does not NeedsInstanceList.
func (r *StudyRule) Selects(ctx context.Context, o Orthanc, source, studyID string, instances []orthancapi.Instance) (bool, error) {
	if r.All() {
		return true, nil
	}
	ok, _, _, _, err := r.decide(ctx, o, source, studyID, instances, false)
	return ok, err
}

// decide reads the study's facts and evaluates the rule. The instances'
// metadata, one request per instance (thousands for a CT), is read only
// when the rule's result depends on it, or with withMeta (an instance
// rule needs it) for a study the rule selects. It returns what it read
// (readMetadata: the instances deleted meanwhile are left out of both).
func (r *StudyRule) decide(ctx context.Context, o Orthanc, source, studyID string, instances []orthancapi.Instance, withMeta bool) (bool, orthancapi.StudyFacts, []orthancapi.Instance, []orthancapi.InstanceMetadata, error) {
	facts, err := o.StudyFacts(ctx, studyID)
	if err != nil {
		return false, facts, nil, nil, fmt.Errorf("read study %s for its routing rules: %w", studyID, err)
	}
	if r.NeedsInstances() {
		if ok, decided := r.matchWithoutMetadata(source, study(facts, instances, nil)); decided && (!ok || !withMeta) {
			return ok, facts, instances, nil, nil
		}
	} else {
		// The rule needs no metadata: only a study it selects reads it,
		// for the instance rule.
		ok, err := r.matchFacts(source, facts, instances, nil)
		if err != nil || !ok || !withMeta {
			return ok, facts, instances, nil, err
		}
	}
	instances, meta, err := readMetadata(ctx, o, instances)
	if err != nil {
		return false, facts, nil, nil, err
	}
	ok, err := r.matchFacts(source, facts, instances, meta)
	return ok, facts, instances, meta, err
}

// matchFacts evaluates the rule on what was read; a failure is a
// RuleError.
func (r *StudyRule) matchFacts(source string, facts orthancapi.StudyFacts, instances []orthancapi.Instance, meta []orthancapi.InstanceMetadata) (bool, error) {
	if r.All() {
		return true, nil
	}
	ok, err := r.Match(source, study(facts, instances, meta))
	if err != nil {
		return false, &RuleError{Err: err}
	}
	return ok, nil
}

// study builds what a study rule sees.
func study(f orthancapi.StudyFacts, instances []orthancapi.Instance, meta []orthancapi.InstanceMetadata) *Study {
	s := &Study{Description: f.Description, Institution: f.Institution, Instances: len(instances)}
	// Both: Orthanc keeps the study's ModalitiesInStudy as its first
	// instance had it, which a series added later (an SR, a PR) is not in.
	s.Modalities = slices.Clone(f.ModalitiesInStudy)
	for _, series := range f.Series {
		s.Modalities = append(s.Modalities, series.Modality)
	}
	for _, m := range meta {
		s.CallingAETs = append(s.CallingAETs, m.RemoteAET)
		s.SOPClasses = append(s.SOPClasses, m.SOPClassUID)
	}
	s.Modalities, s.CallingAETs, s.SOPClasses = distinct(s.Modalities), distinct(s.CallingAETs), distinct(s.SOPClasses)
	return s
}

// distinct sorts the non-empty values and drops repeats.
func distinct(v []string) []string {
	v = slices.DeleteFunc(slices.Clone(v), func(s string) bool { return s == "" })
	slices.Sort(v)
	return slices.Compact(v)
}

// readMetadata reads every instance's metadata, a few at a time. An
// instance deleted meanwhile (404) is left out with its metadata: in
// buffer mode another destination's forward may release instances this
// one's rules do not select while it reads them. If every instance is
// gone, so is the study: the 404 is returned.
func readMetadata(ctx context.Context, o Orthanc, instances []orthancapi.Instance) ([]orthancapi.Instance, []orthancapi.InstanceMetadata, error) {
	out := make([]orthancapi.InstanceMetadata, len(instances))
	gone := make([]bool, len(instances))
	var lastGone error
	var mu sync.Mutex
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(metadataReads)
	for i, in := range instances {
		g.Go(func() error {
			m, err := o.InstanceMetadata(ctx, in.ID)
			if err != nil {
				err = fmt.Errorf("read metadata of instance %s for the routing rules: %w", in.ID, err)
				if errors.Is(err, orthancapi.ErrNotFound) {
					mu.Lock()
					gone[i], lastGone = true, err
					mu.Unlock()
					return nil
				}
				return err
			}
			out[i] = m
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	if lastGone == nil {
		return instances, out, nil
	}
	var kept []orthancapi.Instance
	var keptMeta []orthancapi.InstanceMetadata
	for i, in := range instances {
		if !gone[i] {
			kept, keptMeta = append(kept, in), append(keptMeta, out[i])
		}
	}
	if len(kept) == 0 {
		return nil, nil, lastGone
	}
	return kept, keptMeta, nil
}

// ReadOnce returns an Orthanc that reads each study's facts, and each
// instance's metadata, from o once: the rules of several destinations
// applied to one study (buffer mode) then cost one read of it, and see
// the same study whatever is deleted from it meanwhile. An error is
// remembered as the answer. It is for one pass over one study: nothing is
// ever forgotten.
func ReadOnce(o Orthanc) Orthanc {
	return &readOnce{o: o, facts: map[string]factsRead{}, meta: map[string]metaRead{}}
}

type readOnce struct {
	o     Orthanc
	mu    sync.Mutex
	facts map[string]factsRead
	meta  map[string]metaRead
}

type factsRead struct {
	f   orthancapi.StudyFacts
	err error
}

type metaRead struct {
	m   orthancapi.InstanceMetadata
	err error
}

func (r *readOnce) StudyFacts(ctx context.Context, studyID string) (orthancapi.StudyFacts, error) {
	r.mu.Lock()
	defer r.mu.Unlock() // one study: its routes ask one after the other
	read, ok := r.facts[studyID]
	if !ok {
		read.f, read.err = r.o.StudyFacts(ctx, studyID)
		r.facts[studyID] = read
	}
	return read.f, read.err
}

func (r *readOnce) InstanceMetadata(ctx context.Context, instanceID string) (orthancapi.InstanceMetadata, error) {
	r.mu.Lock()
	read, ok := r.meta[instanceID]
	r.mu.Unlock()
	if ok {
		return read.m, read.err
	}
	// Unlocked: one route reads its study's instances 8 at a time.
	read.m, read.err = r.o.InstanceMetadata(ctx, instanceID)
	r.mu.Lock()
	r.meta[instanceID] = read
	r.mu.Unlock()
	return read.m, read.err
}
