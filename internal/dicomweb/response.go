package dicomweb

import (
	"bytes"
	"fmt"
	"mime"
	"strconv"
	"strings"

	"github.com/stowline/stowline/internal/ellipsis"
)

// A decoded answer takes memory by its values, not its bytes: 16 MiB of
// {"00081199":{"vr":"SQ","Value":[{},{},...]}} are 5.6 million items,
// over 3 GB allocated to build them. So an answer is refused beyond
// answerNodes values (JSON) or tags (XML), counted before decoding.
// A sound answer names each instance in an item of a few attributes
// (ReferencedSOPSequence, FailedSOPSequence), some 10 to 40 values, a
// few hundred with an Original Attributes Sequence of coerced values;
// the bounds are generous on that.
const (
	// answerNodesBase is for what an answer holds besides its items,
	// and an answer of a request of few instances.
	answerNodesBase = 8 << 10
	// answerNodesPerInstance is for each instance's item: one value per
	// 16 bytes of the answerBytesPerInstance an item may take.
	answerNodesPerInstance = answerBytesPerInstance / 16
)

// answerNodes is the most values (JSON) or tags (XML) an answer about
// that many instances may hold.
func answerNodes(instances int) int {
	return answerNodesBase + max(instances, 0)*answerNodesPerInstance
}

type bodyFormat int

const (
	formatUnknown bodyFormat = iota
	formatJSON
	formatXML
)

// parseResponse parses a STOW-RS response body. contentType is the
// response's Content-Type header: application/dicom+json and
// application/json hold the DICOM JSON Model (PS3.18 Annex F),
// application/dicom+xml and application/xml the Native DICOM Model (PS3.19
// Annex A). An empty or application/octet-stream Content-Type is sniffed,
// because Orthanc sends its 400 and 409 STOW bodies without one.
//
// instances is how many instances the request sent: an answer that could
// not be about them (more than answerNodes(instances) JSON values or XML
// tags) is refused as malformed before it is decoded.
//
// An empty body gives an empty Result. Anything else (an HTML page from a
// proxy, plain text) gives an error wrapping errUnexpectedContentType that
// quotes the content type and the start of the body.
func parseResponse(contentType string, data []byte, instances int) (*Result, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return &Result{}, nil
	}
	mt := mediaType(contentType)
	format := formatUnknown
	switch mt {
	case "application/dicom+json", "application/json", "text/json":
		format = formatJSON
	case "application/dicom+xml", "application/xml", "text/xml":
		format = formatXML
	case "", "application/octet-stream":
		format = sniff(trimmed)
	}
	switch format {
	case formatJSON:
		ds, err := decodeJSON(trimmed, answerNodes(instances))
		if err != nil {
			return nil, fmt.Errorf("%w (content type %q, body %q)", err, snippet([]byte(contentType), 100), bodySnippet(trimmed))
		}
		return buildResult(ds), nil
	case formatXML:
		ds, err := decodeXML(trimmed, answerNodes(instances))
		if err != nil {
			return nil, fmt.Errorf("%w (content type %q, body %q)", err, snippet([]byte(contentType), 100), bodySnippet(trimmed))
		}
		return buildResult(ds), nil
	}
	// Both are the server's words: bounded, printable, so a hostile answer
	// can't flood the logs or the dead letter's reason.
	got := snippet([]byte(contentType), 100)
	if got == "" {
		got = "none"
	}
	return nil, fmt.Errorf("%w: got %q, body %q", errUnexpectedContentType, got, bodySnippet(trimmed))
}

// bodySnippet is the start of an answer stowline could not read, for an
// error that goes to logs and dead letters: a malformed answer may be a
// data set (patient data) or echo the request's credentials.
// Bounded again after the redaction, which lengthens short values.
func bodySnippet(b []byte) string {
	return ellipsis.Truncate(redactBody(snippet(b, 200)), 300)
}

func mediaType(ct string) string {
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	mt, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

// sniff only trusts what cannot be an error page: JSON, or XML that names
// the Native DICOM Model.
func sniff(b []byte) bodyFormat {
	switch b[0] {
	case '{', '[':
		return formatJSON
	case '<':
		if bytes.Contains(b, []byte("NativeDicomModel")) {
			return formatXML
		}
	}
	return formatUnknown
}

// Tags of the Store Instances Response Module.
const (
	tagErrorComment             uint32 = 0x00000902
	tagReferencedSOPClassUID    uint32 = 0x00081150
	tagReferencedSOPInstanceUID uint32 = 0x00081155
	tagRetrieveURL              uint32 = 0x00081190
	tagWarningReason            uint32 = 0x00081196
	tagFailureReason            uint32 = 0x00081197
	tagFailedSOPSequence        uint32 = 0x00081198
	tagReferencedSOPSequence    uint32 = 0x00081199
	tagOtherFailuresSequence    uint32 = 0x0008119A
	tagFailedAttributesSequence uint32 = 0x00741048
)

// dataset is the part of a DICOM data set the parser needs, independent of
// its JSON or XML encoding.
type dataset map[uint32]*element

type element struct {
	values []string
	items  []dataset
}

func (d dataset) str(tag uint32) string {
	if e := d[tag]; e != nil {
		for _, v := range e.values {
			if v = strings.TrimRight(strings.TrimSpace(v), "\x00"); v != "" {
				return v
			}
		}
	}
	return ""
}

// integer is lenient: a server's odd number must not hide the instances it
// stored, so anything unparseable reads as 0.
func (d dataset) integer(tag uint32) int {
	s := d.str(tag)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return 0
	}
	return int(n)
}

func (d dataset) items(tag uint32) []dataset {
	if e := d[tag]; e != nil {
		return e.items
	}
	return nil
}

func (d dataset) comments() []string {
	var out []string
	add := func(ds dataset) {
		if e := ds[tagErrorComment]; e != nil {
			for _, v := range e.values {
				if v = strings.TrimSpace(v); v != "" {
					out = append(out, redactValues(v))
				}
			}
		}
	}
	add(d)
	for _, it := range d.items(tagFailedAttributesSequence) {
		add(it)
	}
	return out
}

func (d dataset) merge(o dataset) {
	for tag, e := range o {
		if cur := d[tag]; cur != nil {
			cur.values = append(cur.values, e.values...)
			cur.items = append(cur.items, e.items...)
			continue
		}
		d[tag] = e
	}
}

func buildResult(ds dataset) *Result {
	r := &Result{RetrieveURL: ds.str(tagRetrieveURL)}
	for _, it := range ds.items(tagReferencedSOPSequence) {
		in := Instance{
			SOPClassUID:    it.str(tagReferencedSOPClassUID),
			SOPInstanceUID: it.str(tagReferencedSOPInstanceUID),
			RetrieveURL:    it.str(tagRetrieveURL),
			WarningReason:  it.integer(tagWarningReason),
		}
		r.Stored = append(r.Stored, in)
		if c := it.comments(); in.WarningReason != 0 || len(c) > 0 {
			r.Warnings = append(r.Warnings, Warning{
				SOPClassUID:    in.SOPClassUID,
				SOPInstanceUID: in.SOPInstanceUID,
				WarningReason:  in.WarningReason,
				Comments:       c,
			})
		}
	}
	failed := func(items []dataset) []FailedInstance {
		var out []FailedInstance
		for _, it := range items {
			out = append(out, FailedInstance{
				SOPClassUID:    it.str(tagReferencedSOPClassUID),
				SOPInstanceUID: it.str(tagReferencedSOPInstanceUID),
				FailureReason:  it.integer(tagFailureReason),
				Comments:       it.comments(),
			})
		}
		return out
	}
	r.Failed = failed(ds.items(tagFailedSOPSequence))
	r.OtherFailures = failed(ds.items(tagOtherFailuresSequence))
	return r
}

func parseTag(s string) (uint32, bool) {
	if len(s) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}
