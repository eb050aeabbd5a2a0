package orthancapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The calls in this file serve the reconciler and the audit: they find the
// study a change-log entry belongs to, list every study, read the end
// of the change log and Orthanc's clock.

func (s studyJSON) study() Study {
	return Study{
		ID:               s.ID,
		StudyInstanceUID: s.MainDicomTags.StudyInstanceUID,
		LastUpdate:       s.LastUpdate,
		IsStable:         s.IsStable,
		SeriesIDs:        s.Series,
	}
}

// InstanceStudy returns the study an instance belongs to
// (GET /instances/{id}/study).
func (c *Client) InstanceStudy(ctx context.Context, instanceID string) (Study, error) {
	return c.parentStudy(ctx, "instances", "instance", instanceID)
}

// SeriesStudy returns the study a series belongs to
// (GET /series/{id}/study).
func (c *Client) SeriesStudy(ctx context.Context, seriesID string) (Study, error) {
	return c.parentStudy(ctx, "series", "series", seriesID)
}

func (c *Client) parentStudy(ctx context.Context, collection, kind, id string) (Study, error) {
	if err := checkID(kind, id); err != nil {
		return Study{}, err
	}
	var s studyJSON
	if err := c.getJSON(ctx, c.endpoint(collection, id, "study"), &s); err != nil {
		return Study{}, err
	}
	return s.study(), nil
}

// Studies returns up to limit studies starting at position since of
// Orthanc's list of studies (GET /studies?expand&since=&limit=). Orthanc
// 1.10 lists them in the order they were made, 1.12.7 sorted by ID (the
// orthancapi tests check both; other releases and index plugins may
// differ); either way a study deleted while paging
// shifts the later ones by one: walk the whole list with EachStudy, which
// allows for that.
func (c *Client) Studies(ctx context.Context, since, limit int) ([]Study, error) {
	if since < 0 || limit <= 0 {
		return nil, fmt.Errorf("orthancapi: studies: since (%d) must not be negative and limit (%d) must be positive", since, limit)
	}
	u := c.endpoint("studies")
	q := u.Query()
	q.Set("expand", "")
	q.Set("since", strconv.Itoa(since))
	q.Set("limit", strconv.Itoa(limit))
	u.RawQuery = q.Encode()
	var page []studyJSON
	if err := c.getJSON(ctx, u, &page); err != nil {
		return nil, err
	}
	out := make([]Study, len(page))
	for i, s := range page {
		out[i] = s.study()
	}
	return out, nil
}

// LastChange returns the sequence number of the newest entry still in the
// change log (GET /changes?last). Orthanc deletes a resource's changes
// with it, so this may be below the highest number it gave, which it
// returns only when the log is empty (0 for a new database). That number
// is the Last of a page of Changes read past the end of the log.
func (c *Client) LastChange(ctx context.Context) (int64, error) {
	u := c.endpoint("changes")
	u.RawQuery = "last"
	var ch Changes
	if err := c.getJSON(ctx, u, &ch); err != nil {
		return 0, err
	}
	return ch.Last, nil
}

// Now returns Orthanc's clock, to the second, in UTC (GET /tools/now,
// 1.3.2 on; the clock a study's LastUpdate is read from).
func (c *Client) Now(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	u := c.endpoint("tools", "now")
	resp, err := c.get(ctx, u, "text/plain")
	if err != nil {
		return time.Time{}, err
	}
	defer drainClose(resp.Body)
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return time.Time{}, fmt.Errorf("orthancapi: GET %s: read answer: %w", u.EscapedPath(), err)
	}
	now, err := time.Parse(TimeLayout, strings.TrimSpace(string(b)))
	if err != nil {
		return time.Time{}, fmt.Errorf("orthancapi: GET %s: not Orthanc's time: %w", u.EscapedPath(), err)
	}
	return now, nil
}

// TimeLayout is how Orthanc writes its times (LastUpdate, a change's
// Date, /tools/now): UTC, to the second.
const TimeLayout = "20060102T150405"

// Exists reports whether Orthanc holds a resource of a level ("Patient",
// "Study", "Series" or "Instance", as a change's ResourceType names it):
// GET /patients/{id} and the like, the answer read no further.
func (c *Client) Exists(ctx context.Context, level, id string) (bool, error) {
	collection, ok := map[string]string{"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}[level]
	if !ok {
		return false, fmt.Errorf("orthancapi: exists: unknown resource level %q", level)
	}
	if err := checkID(level, id); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	resp, err := c.get(ctx, c.endpoint(collection, id), "application/json")
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	drainClose(resp.Body)
	return true, nil
}
