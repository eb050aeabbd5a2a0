package dicomweb

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"mime"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Result is a parsed Store Instances Response Module (PS3.18 Annex I).
type Result struct {
	// StatusCode is the HTTP status of the response (0 from ParseResponse).
	StatusCode int
	// RetrieveURL (0008,1190) of the study, if the server sent one.
	RetrieveURL string
	// Stored lists the ReferencedSOPSequence (0008,1199): instances the
	// server stored.
	Stored []Instance
	// Failed lists the FailedSOPSequence (0008,1198).
	Failed []FailedInstance
	// OtherFailures lists the OtherFailuresSequence (0008,119A): failures
	// not tied to a SOP Instance, so the UIDs are often empty.
	OtherFailures []FailedInstance
	// Warnings lists the stored instances that came with a WarningReason
	// (0008,1196) or error comments (Azure's FailedAttributesSequence).
	Warnings []Warning
	// BytesSent is the request body size actually sent, framing included
	// (0 from ParseResponse).
	BytesSent int64
}

// Instance is one item of the ReferencedSOPSequence.
type Instance struct {
	SOPClassUID    string
	SOPInstanceUID string
	RetrieveURL    string
	// WarningReason is 0 when the instance was stored without warning.
	WarningReason int
}

// FailedInstance is one item of the FailedSOPSequence or
// OtherFailuresSequence.
type FailedInstance struct {
	SOPClassUID    string
	SOPInstanceUID string
	// FailureReason (0008,1197); see FailureReasonText. 0 if the server
	// sent none or an unparseable one.
	FailureReason int
	// Comments are ErrorComment (0000,0902) values, direct or inside a
	// FailedAttributesSequence (0074,1048) as Azure sends them.
	Comments []string
}

// AlreadyStored reports whether the server refused the instance because it
// already holds it (Azure's 45070), which a forwarder may count as
// delivered. Orthanc instead lists duplicates as stored.
func (f FailedInstance) AlreadyStored() bool {
	return f.FailureReason == FailureAzureAlreadyExists
}

// Warning is a stored instance that came with a warning.
type Warning struct {
	SOPClassUID    string
	SOPInstanceUID string
	WarningReason  int
	Comments       []string
}

// Missing returns the SOP Instance UIDs of sent that are not in the
// ReferencedSOPSequence, in order and without duplicates. Failed instances
// are missing too, as is everything when r is nil: the caller decides which
// to resend.
func (r *Result) Missing(sent []string) []string {
	stored := make(map[string]struct{})
	if r != nil {
		for _, in := range r.Stored {
			stored[in.SOPInstanceUID] = struct{}{}
		}
	}
	var out []string
	seen := make(map[string]struct{})
	for _, uid := range sent {
		if _, ok := stored[uid]; ok {
			continue
		}
		if _, ok := seen[uid]; ok {
			continue
		}
		seen[uid] = struct{}{}
		out = append(out, uid)
	}
	return out
}

// Failure Reason (0008,1197) values: PS3.18 Table I.2-2, and the codes the
// Azure DICOM service documents in its conformance statement v2.
const (
	FailureProcessing                 = 0x0110 // 272
	FailureSOPClassNotSupported       = 0x0122 // 290
	FailureTransferSyntaxNotSupported = 0xC122 // 49442
	FailureAzureValidation            = 0xA900 // 43264
	FailureAzureStudyMismatch         = 0xA901 // 43265
	FailureAzureAlreadyExists         = 0xB00E // 45070
	FailureAzureBeingCreated          = 0xB00F // 45071
)

// Warning Reason (0008,1196) values: PS3.18 Table I.2-1, and Azure's
// validation warning.
const (
	WarningCoercion          = 0xB000 // 45056
	WarningElementsDiscarded = 0xB006 // 45062
	WarningDataSetMismatch   = 0xB007 // 45063
	WarningAzureValidation   = 1
)

// FailureReasonText describes a Failure Reason code for logs.
func FailureReasonText(code int) string {
	switch code {
	case FailureProcessing:
		return "processing failure"
	case FailureSOPClassNotSupported:
		return "referenced SOP Class not supported"
	case FailureTransferSyntaxNotSupported:
		return "referenced Transfer Syntax not supported"
	case FailureAzureValidation:
		return "data set does not match SOP Class (Azure: instance failed validation)"
	case FailureAzureStudyMismatch:
		return "StudyInstanceUID does not match the study in the request URL"
	case FailureAzureAlreadyExists:
		return "instance already exists"
	case FailureAzureBeingCreated:
		return "instance is being created by another request"
	}
	switch {
	case code&0xFF00 == 0xA700:
		return "refused: out of resources"
	case code&0xFF00 == 0xA900:
		return "data set does not match SOP Class"
	case code&0xF000 == 0xC000:
		return "cannot understand"
	}
	return fmt.Sprintf("failure reason %d (0x%04X)", code, code)
}

// WarningReasonText describes a Warning Reason code for logs.
func WarningReasonText(code int) string {
	switch code {
	case WarningCoercion:
		return "coercion of data elements"
	case WarningElementsDiscarded:
		return "data elements discarded"
	case WarningDataSetMismatch:
		return "data set does not match SOP Class"
	case WarningAzureValidation:
		return "validation warnings"
	}
	return fmt.Sprintf("warning reason %d (0x%04X)", code, code)
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

// xmlKeywords maps the keywords a Native DICOM Model attribute may carry
// instead of a tag.
var xmlKeywords = map[string]uint32{
	"ErrorComment":             tagErrorComment,
	"ReferencedSOPClassUID":    tagReferencedSOPClassUID,
	"ReferencedSOPInstanceUID": tagReferencedSOPInstanceUID,
	"RetrieveURL":              tagRetrieveURL,
	"WarningReason":            tagWarningReason,
	"FailureReason":            tagFailureReason,
	"FailedSOPSequence":        tagFailedSOPSequence,
	"ReferencedSOPSequence":    tagReferencedSOPSequence,
	"OtherFailuresSequence":    tagOtherFailuresSequence,
	"FailedAttributesSequence": tagFailedAttributesSequence,
}

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
					out = append(out, v)
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

// ParseResponse parses a STOW-RS response body. contentType is the
// response's Content-Type header: application/dicom+json and
// application/json hold the DICOM JSON Model (PS3.18 Annex F),
// application/dicom+xml and application/xml the Native DICOM Model (PS3.19
// Annex A). An empty or application/octet-stream Content-Type is sniffed,
// because Orthanc sends its 400 and 409 STOW bodies without one.
//
// An empty body gives an empty Result. Anything else (an HTML page from a
// proxy, plain text) gives an error wrapping ErrUnexpectedContentType that
// quotes the content type and the start of the body.
func ParseResponse(contentType string, body io.Reader) (*Result, error) {
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("stow: read response: %w", err)
	}
	return parseResponse(contentType, data)
}

type bodyFormat int

const (
	formatUnknown bodyFormat = iota
	formatJSON
	formatXML
)

func parseResponse(contentType string, data []byte) (*Result, error) {
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
		ds, err := decodeJSON(trimmed)
		if err != nil {
			return nil, fmt.Errorf("%w (content type %q, body %q)", err, snippet([]byte(contentType), 100), snippet(trimmed, 200))
		}
		return buildResult(ds), nil
	case formatXML:
		ds, err := decodeXML(trimmed)
		if err != nil {
			return nil, fmt.Errorf("%w (content type %q, body %q)", err, snippet([]byte(contentType), 100), snippet(trimmed, 200))
		}
		return buildResult(ds), nil
	}
	// Both are the server's words: bounded, printable, so a hostile answer
	// can't flood the logs or the dead letter's reason.
	got := snippet([]byte(contentType), 100)
	if got == "" {
		got = "none"
	}
	return nil, fmt.Errorf("%w: got %q, body %q", ErrUnexpectedContentType, got, snippet(trimmed, 200))
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

// decodeJSON decodes a DICOM JSON data set, or an array of them (merged),
// as some servers answer.
func decodeJSON(b []byte) (dataset, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keep number literals exact
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformedResponse, snippet([]byte(err.Error()), 200))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON value", ErrMalformedResponse)
	}
	switch v := top.(type) {
	case map[string]any:
		return jsonDataset(v)
	case []any:
		ds := dataset{}
		for i, item := range v {
			obj, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%w: array element %d is not a data set", ErrNotSTOWResponse, i)
			}
			d, err := jsonDataset(obj)
			if err != nil {
				return nil, err
			}
			ds.merge(d)
		}
		return ds, nil
	}
	return nil, fmt.Errorf("%w: top-level JSON value is not an object", ErrNotSTOWResponse)
}

// jsonDataset converts one DICOM JSON object. Keys that are not tags are
// ignored, but an object with only such keys is not a data set at all.
func jsonDataset(obj map[string]any) (dataset, error) {
	ds := make(dataset, len(obj))
	other := 0
	for k, v := range obj {
		tag, ok := parseTag(k)
		if !ok {
			other++
			continue
		}
		attr, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: attribute %s is not an object", ErrMalformedResponse, snippet([]byte(k), 100))
		}
		e := &element{}
		if vals, ok := attr["Value"].([]any); ok {
			for _, val := range vals {
				switch x := val.(type) {
				case map[string]any:
					item, err := jsonDataset(x)
					if err != nil {
						return nil, err
					}
					e.items = append(e.items, item)
				case string:
					e.values = append(e.values, x)
				case json.Number:
					e.values = append(e.values, x.String())
				}
			}
		}
		ds[tag] = e
	}
	if len(ds) == 0 && other > 0 {
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return nil, fmt.Errorf("%w: JSON object has no DICOM tag keys (%s)", ErrNotSTOWResponse, snippet([]byte(strings.Join(keys, ", ")), 120))
	}
	return ds, nil
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

// Native DICOM Model (PS3.19 Annex A). Orthanc adds an empty <Value/> next
// to the Items of a sequence; it is harmless here.
type xmlModel struct {
	XMLName xml.Name
	Attrs   []xmlAttr `xml:"DicomAttribute"`
}

type xmlAttr struct {
	Tag     string    `xml:"tag,attr"`
	Keyword string    `xml:"keyword,attr"`
	Values  []string  `xml:"Value"`
	Items   []xmlItem `xml:"Item"`
}

type xmlItem struct {
	Attrs []xmlAttr `xml:"DicomAttribute"`
}

func decodeXML(b []byte) (dataset, error) {
	var m xmlModel
	if err := xml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformedResponse, snippet([]byte(err.Error()), 200))
	}
	if m.XMLName.Local != "NativeDicomModel" {
		return nil, fmt.Errorf("%w: XML root element is <%s>, want <NativeDicomModel>", ErrNotSTOWResponse, snippet([]byte(m.XMLName.Local), 100))
	}
	return xmlDataset(m.Attrs), nil
}

func xmlDataset(attrs []xmlAttr) dataset {
	ds := make(dataset, len(attrs))
	for _, a := range attrs {
		tag, ok := parseTag(a.Tag)
		if !ok {
			if tag, ok = xmlKeywords[a.Keyword]; !ok {
				continue
			}
		}
		e := &element{values: a.Values}
		for _, it := range a.Items {
			e.items = append(e.items, xmlDataset(it.Attrs))
		}
		if cur := ds[tag]; cur != nil {
			cur.values = append(cur.values, e.values...)
			cur.items = append(cur.items, e.items...)
			continue
		}
		ds[tag] = e
	}
	return ds
}

// snippet makes a body fit for an error message or log line: the HTML
// <title> if there is one, whitespace collapsed, control characters and
// invalid UTF-8 dropped, cut to at most max bytes.
func snippet(b []byte, max int) string {
	if t := htmlTitle(b); len(t) > 0 {
		b = t
	}
	var sb strings.Builder
	space := false
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size <= 1:
			continue
		case unicode.IsSpace(r):
			space = sb.Len() > 0
			continue
		case !unicode.IsPrint(r):
			continue
		}
		need := utf8.RuneLen(r)
		if space {
			need++
		}
		if sb.Len()+need > max {
			sb.WriteString("…")
			break
		}
		if space {
			sb.WriteByte(' ')
			space = false
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func htmlTitle(b []byte) []byte {
	// ASCII-only lowering keeps byte offsets: bytes.ToLower may change the
	// length (invalid UTF-8, some case pairs), and the offsets index b.
	head := b[:min(len(b), 4096)]
	lower := make([]byte, len(head))
	for k, c := range head {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[k] = c
	}
	i := bytes.Index(lower, []byte("<title>"))
	if i < 0 {
		return nil
	}
	j := bytes.Index(lower[i:], []byte("</title>"))
	if j < 0 {
		return nil
	}
	return bytes.TrimSpace(b[i+len("<title>") : i+j])
}
