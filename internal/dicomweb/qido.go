package dicomweb

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// qidoPageSize is the limit of one QIDO-RS page: Azure's DICOM service
// accepts at most 200.
const qidoPageSize = 200

// maxQIDOPages bounds the pages of one study (a server that ignores
// offset would otherwise be asked forever).
const maxQIDOPages = 1000

// tagSOPInstanceUID is (0008,0018) as QIDO-RS names it.
const tagSOPInstanceUID = "00080018"

// StudyInstanceUIDs asks the destination which instances of the study it
// holds (QIDO-RS GET {base}/studies/{uid}/instances, paged with limit and
// offset) and returns their SOP Instance UIDs. A study the destination
// does not know (404, or 204) has none. Any other non-2xx answer is an
// *HTTPError.
//
// expected is how many instances the caller expects to be listed. A
// page shorter than the limit asked ends the listing once it lists that
// many; until then only an empty page does (or one of nothing new: a
// server that ignores offset), since a server may cap a page below the
// limit asked at a maximum of its own, and a short page is then not the
// last. So a complete study costs no
// request beyond its pages, and one with instances missing one more.
func (c *Client) StudyInstanceUIDs(ctx context.Context, studyInstanceUID string, expected int) ([]string, error) {
	if studyInstanceUID == "" {
		return nil, fmt.Errorf("qido: empty Study Instance UID")
	}
	seen := map[string]bool{}
	var out []string
	offset := 0
	for range maxQIDOPages {
		uids, err := c.qidoPage(ctx, studyInstanceUID, offset, c.qidoPageSize)
		if err != nil {
			return nil, err
		}
		added := 0
		for _, u := range uids {
			if !seen[u] {
				seen[u] = true
				out = append(out, u)
				added++
			}
		}
		if added == 0 || len(uids) < c.qidoPageSize && len(out) >= expected {
			return out, nil
		}
		offset += len(uids)
	}
	return nil, fmt.Errorf("qido: study %s: more than %d pages of %d instances", studyInstanceUID, maxQIDOPages, c.qidoPageSize)
}

// Probe asks the destination for one instance of a study (one QIDO-RS
// page of one): a cheap authenticated request that tells whether the
// destination answers. The error is an *HTTPError for an error status,
// or wraps ErrNoAnswer when nothing answered.
func (c *Client) Probe(ctx context.Context, studyInstanceUID string) error {
	_, err := c.qidoPage(ctx, studyInstanceUID, 0, 1)
	return err
}

func (c *Client) qidoPage(ctx context.Context, studyInstanceUID string, offset, limit int) ([]string, error) {
	q := url.Values{
		"includefield": {tagSOPInstanceUID},
		"limit":        {strconv.Itoa(limit)},
		"offset":       {strconv.Itoa(offset)},
	}
	target, err := c.resource(q, studyInstanceUID, "instances")
	if err != nil {
		return nil, fmt.Errorf("qido: %w", err)
	}
	ctx, cancel := c.bodilessContext(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, fmt.Errorf("qido: build request: %w", err)
	}
	for k, vs := range c.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	req.Header.Set("Accept", acceptMediaType)
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.doBodiless(req)
	if err != nil {
		if refusedRedirect(err) {
			return nil, fmt.Errorf("%w: qido: GET %s/%s/instances: %w", ErrRedirected, c.logURL, studyInstanceUID, c.redact(err))
		}
		return nil, noAnswer(fmt.Errorf("qido: GET %s/%s/instances: %w%s", c.logURL, studyInstanceUID, c.redact(err), c.gaveUp(ctx)))
	}
	defer resp.Body.Close()
	body, tooLarge, readErr := readBody(resp.Body, c.maxResponseBytes)
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, newHTTPError(resp, body)
	case readErr != nil:
		return nil, fmt.Errorf("qido: read answer: %w", readErr)
	case tooLarge:
		return nil, fmt.Errorf("%w: QIDO-RS answer over %d bytes", errResponseTooLarge, c.maxResponseBytes)
	}
	return parseQIDOInstances(body)
}

// parseQIDOInstances reads the SOP Instance UIDs of a QIDO-RS answer: a
// JSON array of DICOM JSON objects (an empty body is an empty array).
func parseQIDOInstances(body []byte) ([]string, error) {
	if len(body) == 0 {
		return nil, nil
	}
	var items []map[string]struct {
		Value []any `json:"Value"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		return nil, notDICOMweb(fmt.Errorf("%w: QIDO-RS answer: %s", errMalformedResponse, snippet([]byte(err.Error()), 200)))
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if a, ok := it[tagSOPInstanceUID]; ok && len(a.Value) > 0 {
			if s, ok := a.Value[0].(string); ok && s != "" {
				out = append(out, s)
			}
		}
	}
	return out, nil
}
