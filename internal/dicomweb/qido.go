package dicomweb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// qidoPageSize is the limit of one QIDO-RS page: Azure's DICOM service
// accepts at most 200.
const qidoPageSize = 200

// maxQIDOPages bounds the pages of one study (a server that ignores
// offset would otherwise be asked forever).
const maxQIDOPages = 1000

// qidoItemBytes bounds what a listing may take an instance: an item with
// the attributes a server returns by default besides 00080018 is about
// 1 KB.
const qidoItemBytes = 2 << 10

// tagSOPInstanceUID is (0008,0018) as QIDO-RS names it.
const tagSOPInstanceUID = "00080018"

// Expected is what a caller of StudyInstanceUIDs looks for in a study:
// the SOP Instance UIDs it sent (as the destination names them), and at
// least Count instances (for a caller that can only count them).
type Expected struct {
	UIDs  []string
	Count int
}

// StudyInstanceUIDs asks the destination which instances of the study it
// holds (QIDO-RS GET {base}/studies/{uid}/instances, paged with limit and
// offset) and returns their SOP Instance UIDs. A study the destination
// does not know (404, or 204) has none. Any other non-2xx answer is an
// *HTTPError.
//
// A page shorter than the limit asked ends the listing once it lists
// every UID of want and at least want.Count instances; until then only
// an empty page does (or one of nothing new: a server that ignores
// offset), since a server may cap a page below the limit asked at a
// maximum of its own, and a short page is
// then not the last. Counting the instances listed is not enough: the
// destination may hold others of the study besides those sent (a routing
// rule sent one series), and those sent be on a later page. So a
// complete study costs no request beyond its pages, and one with
// instances missing one more.
func (c *Client) StudyInstanceUIDs(ctx context.Context, studyInstanceUID string, want Expected) ([]string, error) {
	if studyInstanceUID == "" {
		return nil, fmt.Errorf("qido: empty Study Instance UID")
	}
	wanted := make(map[string]bool, len(want.UIDs))
	for _, u := range want.UIDs {
		wanted[u] = true
	}
	seen := map[string]bool{}
	var out []string
	add := func(uids []string) (added int) {
		for _, u := range uids {
			if !seen[u] {
				seen[u] = true
				out = append(out, u)
				added++
				delete(wanted, u)
			}
		}
		return added
	}
	// A page is read up to what its limit allows, qidoItemBytes an item
	// (or the fixed bound). Only the one request for the whole study,
	// without limit and offset, is read up to what the instances looked
	// for take: with that bound on every page, any page of a
	// 100,000-instance study could hold a verifying worker to 200 MB,
	// twice that while read.
	itemBytes := min(c.perInstance, qidoItemBytes)
	pageBytes := max(c.maxResponseBytes, int64(c.qidoPageSize)*itemBytes)
	studyBytes := max(c.maxResponseBytes, int64(max(want.Count, len(want.UIDs)))*itemBytes)
	wholeStudy := func() ([]string, error) {
		uids, err := c.qidoPage(ctx, studyInstanceUID, 0, 0, false, studyBytes)
		if err != nil {
			return nil, err
		}
		add(uids)
		return out, nil
	}
	offset := 0
	for range maxQIDOPages {
		uids, err := c.qidoPage(ctx, studyInstanceUID, offset, c.qidoPageSize, false, pageBytes)
		if errors.Is(err, errResponseTooLarge) && studyBytes > pageBytes {
			// More than a page can hold: the server ignores limit and
			// answers the whole study, which a page's bound refuses
			// past a few thousand instances (every verification of a
			// larger study would fail). Asked once without limit and
			// offset.
			return wholeStudy()
		}
		if err != nil {
			return nil, err
		}
		added := add(uids)
		missing := len(wanted) > 0 || len(out) < want.Count
		if added == 0 && offset > 0 && len(uids) > 0 && missing {
			// The page repeats earlier ones: the server ignores offset
			// and may honour limit all the same, its later instances
			// never listed (a study verified as missing them, at every
			// delivery). Asked once without limit and offset.
			return wholeStudy()
		}
		if added == 0 || len(uids) < c.qidoPageSize && !missing {
			return out, nil
		}
		offset += len(uids)
	}
	return nil, fmt.Errorf("qido: study %s: more than %d pages of %d instances", studyInstanceUID, maxQIDOPages, c.qidoPageSize)
}

// Probe asks the destination for one instance of a study (one QIDO-RS
// page of one): a cheap authenticated request that tells whether the
// destination answers. The error is an *HTTPError for an error status,
// a 404 that is no empty result included (notEmptyResult), or wraps
// ErrNoAnswer when nothing answered.
func (c *Client) Probe(ctx context.Context, studyInstanceUID string) error {
	_, err := c.qidoPage(ctx, studyInstanceUID, 0, 1, true, c.maxResponseBytes)
	return err
}

// notEmptyResult reports whether a 404 to a QIDO-RS query is something
// else than a DICOMweb server's "no such study": a page (HTML, plain
// text) from an ingress's default backend or a proxy in front, which
// answers 404 to every request. An empty body or JSON is the server's.
func notEmptyResult(resp *http.Response, body []byte) bool {
	if len(bytes.TrimSpace(body)) == 0 {
		return false
	}
	mt := mediaType(resp.Header.Get("Content-Type"))
	return mt != "application/json" && mt != "application/dicom+json" && !strings.HasSuffix(mt, "+json")
}

// qidoPage asks for one page of the study's instances, its answer read
// up to maxBytes; limit 0: the whole study, without limit and offset.
// probe: a 404 that is notEmptyResult is an error (for a listing,
// verification, it stays "none listed", as before).
func (c *Client) qidoPage(ctx context.Context, studyInstanceUID string, offset, limit int, probe bool, maxBytes int64) ([]string, error) {
	q := url.Values{"includefield": {tagSOPInstanceUID}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
		q.Set("offset", strconv.Itoa(offset))
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
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// An error page (a proxy's HTML) is kept to maxErrorBody, and
		// notEmptyResult needs a byte of it: read no more than that,
		// not a page's or a whole study's bound.
		maxBytes = maxErrorBody
	}
	body, tooLarge, readErr := readBody(resp.Body, maxBytes)
	switch {
	case resp.StatusCode == http.StatusNotFound && probe && notEmptyResult(resp, body):
		return nil, newHTTPError(resp, body)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, newHTTPError(resp, body)
	case readErr != nil:
		return nil, fmt.Errorf("qido: read answer: %w", readErr)
	case tooLarge:
		return nil, fmt.Errorf("%w: QIDO-RS answer over %d bytes", errResponseTooLarge, maxBytes)
	}
	return parseQIDOInstances(body)
}

// parseQIDOInstances reads the SOP Instance UIDs of a QIDO-RS answer: a
// JSON array of DICOM JSON objects (an empty body is an empty array).
//
// An answer of up to qidoDecodeNodes values (a sound page of the default
// size) is decoded whole, which is fastest. A larger one is walked, one
// attribute at a time: decoded whole, a broken or hostile answer of the
// read bound made of cheap values ([{},{},...]) builds millions of maps.
// It cannot be refused for its size instead, as STOW-RS answers are: a
// server that ignores limit lists a whole study in a probe's page of one.
// Both ways accept and refuse the same answers.
func parseQIDOInstances(body []byte) ([]string, error) {
	if len(body) == 0 {
		return nil, nil
	}
	read := unmarshalQIDO
	if jsonNodesOver(body, qidoDecodeNodes) {
		read = walkQIDO
	}
	out, err := read(body)
	if err != nil {
		return nil, notDICOMweb(fmt.Errorf("%w: QIDO-RS answer: %s", errMalformedResponse, snippet([]byte(err.Error()), 200)))
	}
	return out, nil
}

// qidoDecodeNodes is the most JSON values of a QIDO-RS answer decoded
// whole (some 10 to 20 MB decoded): what answerNodes allows a page.
const qidoDecodeNodes = answerNodesBase + qidoPageSize*answerNodesPerInstance

// unmarshalQIDO decodes a QIDO-RS answer whole. Values stay raw JSON:
// decoded as numbers, one beyond float64 (an attribute given as 1e999)
// refused the whole answer, and with it the verification of the study,
// over an attribute stowline does not read, which the walk passes.
func unmarshalQIDO(body []byte) ([]string, error) {
	var items []map[string]struct {
		Value []json.RawMessage `json:"Value"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if a, ok := it[tagSOPInstanceUID]; ok && len(a.Value) > 0 {
			var s string
			if json.Unmarshal(a.Value[0], &s) == nil && s != "" {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// walkQIDO reads a QIDO-RS answer, an array of instances (or null), and
// the UID of each, holding one attribute at a time.
func walkQIDO(body []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	out := []string{}
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	switch tok {
	case nil:
	case json.Delim('['):
		for dec.More() {
			uid, err := qidoInstance(dec)
			if err != nil {
				return nil, err
			}
			if uid != "" {
				out = append(out, uid)
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return nil, err
		}
	default:
		return nil, fmt.Errorf("the answer is not an array (%s)", jsonKind(tok))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the JSON value")
	}
	return out, nil
}

// qidoInstance reads one instance of the array (an object, or null) and
// returns its SOP Instance UID: the first value of its last (0008,0018)
// attribute, if a non-empty string.
func qidoInstance(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	switch tok {
	case nil:
		return "", nil
	case json.Delim('{'):
	default:
		return "", fmt.Errorf("an instance is not an object (%s)", jsonKind(tok))
	}
	uid := ""
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return "", err
		}
		// Each attribute: an object (or null) whose Value is only
		// looked at, not built.
		var attr struct {
			Value firstString `json:"Value"`
		}
		if err := dec.Decode(&attr); err != nil {
			return "", err
		}
		if key == tagSOPInstanceUID {
			uid = string(attr.Value)
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return "", err
	}
	return uid, nil
}

// firstString is the first value of a DICOM JSON Value array when it is
// a string ("" otherwise), read without decoding the rest of the array.
type firstString string

func (f *firstString) UnmarshalJSON(b []byte) error {
	*f = ""
	switch {
	case string(b) == "null":
		return nil
	case len(b) == 0 || b[0] != '[':
		return fmt.Errorf("a Value is not an array")
	}
	// b is valid JSON (the decoder checked it): after '[' and blanks, a
	// string starts with its quote.
	rest := bytes.TrimLeft(b[1:], " \t\r\n")
	if len(rest) == 0 || rest[0] != '"' {
		return nil
	}
	end := stringEnd(rest, 0)
	if end < 0 {
		return fmt.Errorf("a Value's string does not end")
	}
	var s string
	if err := json.Unmarshal(rest[:end+1], &s); err != nil {
		return err
	}
	*f = firstString(s)
	return nil
}

// jsonKind names what a JSON token opens or is, for an error.
func jsonKind(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		return fmt.Sprintf("%v", tok)
	case string:
		return "a string"
	case float64, json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}
