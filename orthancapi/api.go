package orthancapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Study is an Orthanc study (GET /studies/{id}).
type Study struct {
	ID               string
	StudyInstanceUID string
	// LastUpdate is Orthanc's timestamp, e.g. "20240131T104501".
	LastUpdate string
	// IsStable is true once no instance arrived for StableAge seconds.
	IsStable  bool
	SeriesIDs []string
}

type studyJSON struct {
	ID            string
	IsStable      bool
	LastUpdate    string
	MainDicomTags struct{ StudyInstanceUID string }
	Series        []string
}

// Study returns one study.
func (c *Client) Study(ctx context.Context, studyID string) (Study, error) {
	if err := checkID("study", studyID); err != nil {
		return Study{}, err
	}
	var s studyJSON
	if err := c.getJSON(ctx, c.endpoint("studies", studyID), &s); err != nil {
		return Study{}, err
	}
	return Study{
		ID:               s.ID,
		StudyInstanceUID: s.MainDicomTags.StudyInstanceUID,
		LastUpdate:       s.LastUpdate,
		IsStable:         s.IsStable,
		SeriesIDs:        s.Series,
	}, nil
}

// Instance is one instance of a study.
type Instance struct {
	ID                string
	SOPInstanceUID    string
	SeriesInstanceUID string
	// SeriesID is the Orthanc ID of the instance's series.
	SeriesID string
	// FileSize is the size of the DICOM file Orthanc stores.
	FileSize int64
	// FileUUID names that file: Orthanc gives each file it stores a new
	// one, so it changes when the instance is stored again (a corrected
	// copy, with OverwriteInstances) and never otherwise.
	FileUUID string
}

type seriesJSON struct {
	ID            string
	MainDicomTags struct{ SeriesInstanceUID string }
}

type instanceJSON struct {
	ID            string
	FileSize      int64
	FileUUID      string `json:"FileUuid"`
	ParentSeries  string
	MainDicomTags struct {
		SOPInstanceUID string
		InstanceNumber string
	}
}

// Instance returns one instance (GET /instances/{id}) with its file
// (FileUUID); SeriesInstanceUID is left empty, its series unread. An
// instance gone returns ErrNotFound.
func (c *Client) Instance(ctx context.Context, instanceID string) (Instance, error) {
	if err := checkID("instance", instanceID); err != nil {
		return Instance{}, err
	}
	var in instanceJSON
	if err := c.getJSON(ctx, c.endpoint("instances", instanceID), &in); err != nil {
		return Instance{}, err
	}
	return Instance{
		ID:             in.ID,
		SOPInstanceUID: in.MainDicomTags.SOPInstanceUID,
		SeriesID:       in.ParentSeries,
		FileSize:       in.FileSize,
		FileUUID:       in.FileUUID,
	}, nil
}

// StudyInstances returns every instance of a study, ordered by
// SeriesInstanceUID, then InstanceNumber (numerically; missing ones
// last), then SOPInstanceUID, so the order does not depend on arrival.
func (c *Client) StudyInstances(ctx context.Context, studyID string) ([]Instance, error) {
	if err := checkID("study", studyID); err != nil {
		return nil, err
	}
	// Instances do not carry their SeriesInstanceUID: map it from the
	// study's series.
	var series []seriesJSON
	if err := c.getJSON(ctx, c.endpoint("studies", studyID, "series"), &series); err != nil {
		return nil, err
	}
	seriesUID := make(map[string]string, len(series))
	for _, s := range series {
		seriesUID[s.ID] = s.MainDicomTags.SeriesInstanceUID
	}
	type sortable struct {
		Instance
		number    int64
		hasNumber bool
	}
	var out []sortable
	// Orthanc answers every instance with all its main tags, about 1 KB
	// each: decoded one at a time, a study's list costs memory for what is
	// kept, not for the whole answer.
	var unknownSeries []string
	err := eachJSON(ctx, c, c.endpoint("studies", studyID, "instances"), func(in instanceJSON) error {
		if _, ok := seriesUID[in.ParentSeries]; !ok {
			if err := checkID("series", in.ParentSeries); err != nil {
				return fmt.Errorf("instance %s: %w", in.ID, err)
			}
			// A series that arrived between the two calls: looked up after
			// the list is read, so as not to hold its connection.
			seriesUID[in.ParentSeries] = ""
			unknownSeries = append(unknownSeries, in.ParentSeries)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(in.MainDicomTags.InstanceNumber), 10, 64)
		out = append(out, sortable{
			Instance: Instance{
				ID:             in.ID,
				SOPInstanceUID: in.MainDicomTags.SOPInstanceUID,
				SeriesID:       in.ParentSeries,
				FileSize:       in.FileSize,
				FileUUID:       in.FileUUID,
			},
			number:    n,
			hasNumber: err == nil,
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, id := range unknownSeries {
		var s seriesJSON
		if err := c.getJSON(ctx, c.endpoint("series", id), &s); err != nil {
			if errors.Is(err, ErrNotFound) {
				// The series came and went while the study was listed:
				// the study is still there. Not ErrNotFound, which
				// callers read as the study gone; listed again, the
				// study is whole.
				return nil, fmt.Errorf("series %s of study %s left Orthanc while the study was listed: %v", id, studyID, err)
			}
			return nil, err
		}
		seriesUID[id] = s.MainDicomTags.SeriesInstanceUID
	}
	for i := range out {
		out[i].SeriesInstanceUID = seriesUID[out[i].SeriesID]
	}
	slices.SortFunc(out, func(a, b sortable) int {
		if d := cmp.Compare(a.SeriesInstanceUID, b.SeriesInstanceUID); d != 0 {
			return d
		}
		if a.hasNumber != b.hasNumber {
			if a.hasNumber {
				return -1
			}
			return 1
		}
		if d := cmp.Compare(a.number, b.number); d != 0 {
			return d
		}
		if d := cmp.Compare(a.SOPInstanceUID, b.SOPInstanceUID); d != 0 {
			return d
		}
		return cmp.Compare(a.ID, b.ID)
	})
	res := make([]Instance, len(out))
	for i, s := range out {
		res[i] = s.Instance
	}
	return res, nil
}

// OpenInstanceFile streams the DICOM file of an instance, exactly as
// Orthanc stores it (which may be a bare data set without file meta
// information). size is the Content-Length, or -1 if unknown. Only ctx
// bounds the download. The caller must Close the reader; closing before
// the end drops the connection rather than reading the rest.
func (c *Client) OpenInstanceFile(ctx context.Context, instanceID string) (io.ReadCloser, int64, error) {
	if err := checkID("instance", instanceID); err != nil {
		return nil, 0, err
	}
	resp, err := c.get(ctx, c.endpoint("instances", instanceID, "file"), "application/dicom")
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// System is Orthanc's GET /system.
type System struct {
	Name            string
	Version         string
	ApiVersion      int
	DatabaseVersion int
	DicomAet        string
	DicomPort       int
	HttpPort        int
	PluginsEnabled  bool
	// Capabilities are what newer releases announce; 1.10 has none.
	Capabilities struct {
		// HasExtendedChanges: /changes takes a type filter (1.12.5 on).
		HasExtendedChanges bool
	}
}

// System returns Orthanc's identity and version.
func (c *Client) System(ctx context.Context) (System, error) {
	var s System
	// Without a slot of WithMaxRequests: the probe of whether Orthanc
	// answers (a held study's, /readyz's) would otherwise wait behind
	// file streams and take a busy Orthanc for one down.
	if err := c.getJSON(unslotted(ctx), c.endpoint("system"), &s); err != nil {
		return System{}, err
	}
	return s, nil
}

// Change is one entry of Orthanc's change log.
type Change struct {
	Seq int64
	// ChangeType is e.g. "NewInstance", "StableStudy".
	ChangeType string
	// ID is the Orthanc ID of the resource, ResourceType its level
	// ("Patient", "Study", "Series", "Instance").
	ID, ResourceType string
	Date             string
}

// Changes is a page of the change log.
type Changes struct {
	Changes []Change
	// Done is true when there is nothing after Last yet.
	Done bool
	// Last is the Seq to pass as since for the next page.
	Last int64
}

// Changes returns up to limit changes after sequence number since. limit
// 0 uses Orthanc's default (100). types, if any, keeps only changes of
// those types: only for an Orthanc whose System has HasExtendedChanges
// (older ones answer with every change). Last is then the last change
// returned, or the log's end when none is.
func (c *Client) Changes(ctx context.Context, since int64, limit int, types ...string) (Changes, error) {
	if since < 0 || limit < 0 {
		return Changes{}, fmt.Errorf("orthancapi: changes: since (%d) and limit (%d) must not be negative", since, limit)
	}
	u := c.endpoint("changes")
	q := u.Query()
	q.Set("since", strconv.FormatInt(since, 10))
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	u.RawQuery = q.Encode()
	if len(types) > 0 {
		// Orthanc splits the filter at a literal ';' and reads no
		// percent-encoding there; the type names are plain words.
		u.RawQuery += "&type=" + strings.Join(types, ";")
	}
	var ch Changes
	if err := c.getJSON(ctx, u, &ch); err != nil {
		return Changes{}, err
	}
	return ch, nil
}

// DeleteInstance deletes one instance from Orthanc (DELETE
// /instances/{id}); an instance already gone returns ErrNotFound, which
// the caller may take for done. It needs an Orthanc user allowed to
// delete (docs/orthanc-access.md).
func (c *Client) DeleteInstance(ctx context.Context, instanceID string) error {
	if err := checkID("instance", instanceID); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodDelete, c.endpoint("instances", instanceID), "application/json", idempotent())
	if err != nil {
		return err
	}
	drainClose(resp.Body)
	return nil
}
