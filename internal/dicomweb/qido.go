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

// awsSearchCap is the most records one AWS HealthImaging QIDO-RS search
// returns: "a maximum of 10,000 records. In the case that more than
// 10,000 resources exist, they will not be retrievable via the QIDO-RS
// actions" (docs.aws.amazon.com/healthimaging/latest/devguide/
// dicomweb-search.html). A series of more instances cannot be listed in
// full, by any offset.
const awsSearchCap = 10000

// ErrListingCapped is returned by StudyInstanceUIDs, with the UIDs it
// listed, when instances looked for are not among them and a listing
// reached the destination's search cap (WithSeriesSearch: awsSearchCap
// records): the destination may hold them past the cap, where no search
// sees them. They are unverifiable, not known missing.
var ErrListingCapped = errors.New("qido: listing capped by the destination's search limit")

// tagSOPInstanceUID is (0008,0018) and tagSeriesInstanceUID (0020,000E)
// as QIDO-RS names them.
const (
	tagSOPInstanceUID    = "00080018"
	tagSeriesInstanceUID = "0020000E"
)

// Expected is what a caller of StudyInstanceUIDs looks for in a study:
// the SOP Instance UIDs it sent (as the destination names them), and at
// least Count instances (for a caller that can only count them).
type Expected struct {
	UIDs  []string
	Count int
}

// StudyInstanceUIDs asks the destination which instances of the study it
// holds (QIDO-RS GET {base}/studies/{uid}/instances, paged with limit and
// offset; series by series with WithSeriesSearch) and returns their SOP
// Instance UIDs. A study the destination does not know (404, or 204) has
// none. Any other non-2xx answer is an *HTTPError. If instances looked
// for are not listed and a listing reached the search cap, the UIDs
// listed come with an error wrapping ErrListingCapped.
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
	l := newQIDOListing(c, want)
	if c.seriesSearch {
		out, err := l.bySeries(ctx, studyInstanceUID)
		if err == nil && l.capped > 0 && l.missing() {
			return out, fmt.Errorf("%w: study %s: %d listings reached %d records", ErrListingCapped, studyInstanceUID, l.capped, c.searchCap)
		}
		return out, err
	}
	if _, _, err := l.pages(ctx, qidoList{study: studyInstanceUID, tag: tagSOPInstanceUID}, 0, false); err != nil {
		return nil, err
	}
	return l.out, nil
}

// qidoListing gathers the SOP Instance UIDs one StudyInstanceUIDs call
// lists, and what it still looks for.
type qidoListing struct {
	c      *Client
	want   Expected
	wanted map[string]bool // want.UIDs not listed yet
	seen   map[string]bool
	out    []string
	// capped counts the listings (a series', the series list) that
	// reached c.searchCap: what they did not list is unverifiable.
	capped int
	// A page is read up to what its limit allows, qidoItemBytes an item
	// (or the fixed bound). Only the one request for the whole study
	// (series), without limit and offset, is read up to what the
	// instances looked for take: with that bound on every page, any page
	// of a 100,000-instance study could hold a verifying worker to
	// 200 MB, twice that while read.
	pageBytes, wholeBytes int64
}

func newQIDOListing(c *Client, want Expected) *qidoListing {
	l := &qidoListing{c: c, want: want, wanted: make(map[string]bool, len(want.UIDs)), seen: map[string]bool{}}
	for _, u := range want.UIDs {
		l.wanted[u] = true
	}
	itemBytes := min(c.perInstance, qidoItemBytes)
	l.pageBytes = max(c.maxResponseBytes, int64(c.qidoPageSize)*itemBytes)
	l.wholeBytes = max(c.maxResponseBytes, int64(max(want.Count, len(want.UIDs)))*itemBytes)
	return l
}

// add keeps the instances not listed before and returns how many.
func (l *qidoListing) add(uids []string) (added int) {
	for _, u := range uids {
		if !l.seen[u] {
			l.seen[u] = true
			l.out = append(l.out, u)
			added++
			delete(l.wanted, u)
		}
	}
	return added
}

// missing reports whether the listing still lacks an instance looked for.
func (l *qidoListing) missing() bool {
	return len(l.wanted) > 0 || len(l.out) < l.want.Count
}

// qidoList is one QIDO-RS listing: the study's instances, a series'
// instances (series set), or the study's series (tag 0020000E).
type qidoList struct {
	study, series string
	seriesOfStudy bool
	tag           string
}

func (q qidoList) path() []string {
	switch {
	case q.seriesOfStudy:
		return []string{q.study, "series"}
	case q.series != "":
		return []string{q.study, "series", q.series, "instances"}
	}
	return []string{q.study, "instances"}
}

// pages pages through one listing of instances from offset, adding to l
// what it lists. It returns the offset reached and short:
// it stopped at a short page that was not empty, which a server capping
// pages below the limit asked may answer before the last. stopShort: any
// short page ends it (a caller that comes back if still missing);
// otherwise only one when nothing is missing, as StudyInstanceUIDs says.
func (l *qidoListing) pages(ctx context.Context, q qidoList, offset int, stopShort bool) (next int, short bool, err error) {
	return l.pagesTo(ctx, q, offset, stopShort, l.add)
}

// pagesTo is pages with add for what a page lists (a study's series).
func (l *qidoListing) pagesTo(ctx context.Context, q qidoList, offset int, stopShort bool, add func([]string) int) (next int, short bool, err error) {
	c := l.c
	whole := func() (int, bool, error) {
		uids, err := c.qidoPage(ctx, q, 0, 0, false, l.wholeBytes)
		if err != nil {
			return offset, false, err
		}
		add(uids)
		return offset, false, nil
	}
	for range maxQIDOPages {
		limit := c.qidoPageSize
		if c.searchCap > 0 {
			if offset >= c.searchCap {
				// Past the cap nothing is listed (or the offset is
				// refused): the listing is capped, not ended.
				l.capped++
				return offset, false, nil
			}
			limit = min(limit, c.searchCap-offset)
		}
		uids, err := c.qidoPage(ctx, q, offset, limit, false, l.pageBytes)
		if errors.Is(err, errResponseTooLarge) && l.wholeBytes > l.pageBytes {
			// More than a page can hold: the server ignores limit and
			// answers the whole study, which a page's bound refuses
			// past a few thousand instances (every verification of a
			// larger study would fail). Asked once without limit and
			// offset.
			return whole()
		}
		if err != nil {
			return offset, false, err
		}
		added := add(uids)
		if added == 0 && offset > 0 && len(uids) > 0 && l.missing() {
			// The page repeats earlier ones: the server ignores offset
			// and may honour limit all the same, its later instances
			// never listed (a study verified as missing them, at every
			// delivery). Asked once without limit and offset.
			return whole()
		}
		if added == 0 {
			return offset, false, nil
		}
		offset += len(uids)
		if len(uids) < limit && (stopShort || !l.missing()) {
			return offset, stopShort, nil
		}
	}
	return offset, false, fmt.Errorf("qido: study %s: more than %d pages of %d", q.study, maxQIDOPages, c.qidoPageSize)
}

// bySeries lists the study's instances series by series: AWS
// HealthImaging searches instances only within a series
// (SearchDICOMInstances, GET studies/{study}/series/{series}/instances)
// and has no study-level instance search. The study's series are listed
// first (SearchDICOMSeries). A short page ends a series, and the
// listing stops once nothing is missing; only if something still is are
// the series (and the series list) that ended on a short page asked
// again from where they stopped, until an empty page: a complete study
// costs its series list and one page a series, at most.
func (l *qidoListing) bySeries(ctx context.Context, study string) ([]string, error) {
	var series []string
	known := map[string]bool{}
	addSeries := func(uids []string) (added int) {
		for _, u := range uids {
			if !known[u] {
				known[u] = true
				series = append(series, u)
				added++
			}
		}
		return added
	}
	type resume struct {
		q      qidoList
		offset int
	}
	var again []resume
	seriesList := qidoList{study: study, seriesOfStudy: true, tag: tagSeriesInstanceUID}
	listOffset, listShort, err := l.pagesTo(ctx, seriesList, 0, true, addSeries)
	if err != nil {
		return nil, err
	}
	done := 0
	listNew := func(stopShort bool) error {
		for ; done < len(series); done++ {
			if !l.missing() {
				return nil
			}
			q := qidoList{study: study, series: series[done], tag: tagSOPInstanceUID}
			next, short, err := l.pages(ctx, q, 0, stopShort)
			if err != nil {
				return err
			}
			if short {
				again = append(again, resume{q, next})
			}
		}
		return nil
	}
	if err := listNew(true); err != nil {
		return nil, err
	}
	if !l.missing() {
		return l.out, nil
	}
	for _, r := range again {
		if !l.missing() {
			return l.out, nil
		}
		if _, _, err := l.pages(ctx, r.q, r.offset, false); err != nil {
			return nil, err
		}
	}
	if listShort && l.missing() {
		// The series list may have been cut by a page cap: its rest,
		// and their instances.
		if _, _, err := l.pagesTo(ctx, seriesList, listOffset, false, addSeries); err != nil {
			return nil, err
		}
		if err := listNew(false); err != nil {
			return nil, err
		}
	}
	return l.out, nil
}

// Probe asks the destination for one instance of a study (one QIDO-RS
// page of one; with WithSeriesSearch one series of the study, the
// narrowest search such a destination offers without a series UID): a
// cheap authenticated request that tells whether the destination
// answers. The error is an *HTTPError for an error status, a 404 that is
// no empty result included (notEmptyResult), or wraps ErrNoAnswer when
// nothing answered.
func (c *Client) Probe(ctx context.Context, studyInstanceUID string) error {
	q := qidoList{study: studyInstanceUID, tag: tagSOPInstanceUID}
	if c.seriesSearch {
		q = qidoList{study: studyInstanceUID, seriesOfStudy: true, tag: tagSeriesInstanceUID}
	}
	_, err := c.qidoPage(ctx, q, 0, 1, true, c.maxResponseBytes)
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

// qidoPage asks for one page of a listing (the study's instances by
// default), its answer read up to maxBytes; limit 0: the whole listing,
// without limit and offset. probe: a 404 that is notEmptyResult is an
// error (for a listing, verification, it stays "none listed", as
// before).
func (c *Client) qidoPage(ctx context.Context, list qidoList, offset, limit int, probe bool, maxBytes int64) ([]string, error) {
	q := url.Values{"includefield": {list.tag}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
		q.Set("offset", strconv.Itoa(offset))
	}
	path := list.path()
	target, err := c.resource(q, path...)
	if err != nil {
		return nil, fmt.Errorf("qido: %w", err)
	}
	ctx, cancel := c.bodilessContext(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, fmt.Errorf("qido: build request: %w", err)
	}
	req.Header.Set("Accept", acceptMediaType)
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.doBodiless(req)
	if err != nil {
		if refusedRedirect(err) {
			return nil, fmt.Errorf("%w: qido: GET %s/%s: %w", ErrRedirected, c.logURL, strings.Join(path, "/"), c.redact(err))
		}
		return nil, noAnswer(fmt.Errorf("qido: GET %s/%s: %w%s", c.logURL, strings.Join(path, "/"), c.redact(err), c.gaveUp(ctx)))
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
	return parseQIDO(body, list.tag)
}

// parseQIDO reads the UIDs of attribute tag (00080018, a series
// listing's 0020000E) of a QIDO-RS answer: a JSON array of DICOM JSON
// objects (an empty body is an empty array).
//
// An answer of up to qidoDecodeNodes values (a sound page of the default
// size) is decoded whole, which is fastest. A larger one is walked, one
// attribute at a time: decoded whole, a broken or hostile answer of the
// read bound made of cheap values ([{},{},...]) builds millions of maps.
// It cannot be refused for its size instead, as STOW-RS answers are: a
// server that ignores limit lists a whole study in a probe's page of one.
// Both ways accept and refuse the same answers.
func parseQIDO(body []byte, tag string) ([]string, error) {
	if len(body) == 0 {
		return nil, nil
	}
	read := unmarshalQIDO
	if jsonNodesOver(body, qidoDecodeNodes) {
		read = walkQIDO
	}
	out, err := read(body, tag)
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
func unmarshalQIDO(body []byte, tag string) ([]string, error) {
	var items []map[string]struct {
		Value []json.RawMessage `json:"Value"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if a, ok := it[tag]; ok && len(a.Value) > 0 {
			var s string
			if json.Unmarshal(a.Value[0], &s) == nil && s != "" {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// walkQIDO reads a QIDO-RS answer, an array of instances (or null), and
// the UID of tag of each, holding one attribute at a time.
func walkQIDO(body []byte, tag string) ([]string, error) {
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
			uid, err := qidoInstance(dec, tag)
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
func qidoInstance(dec *json.Decoder, tag string) (string, error) {
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
		if key == tag {
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
