package dicomweb

import (
	"bytes"
	"encoding/xml"
	"fmt"
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

// decodeXML decodes a Native DICOM Model document. One of more than
// maxNodes tags is refused before it is decoded (see answerNodes): each
// element takes one or two tags, and a tag starts with '<', which XML
// allows nowhere else but in comments, CDATA and processing instructions.
func decodeXML(b []byte, maxNodes int) (dataset, error) {
	if len(b) > maxNodes && bytes.Count(b, []byte("<")) > maxNodes {
		return nil, fmt.Errorf("%w: over %d XML tags, more than an answer to the request holds", errMalformedResponse, maxNodes)
	}
	var m xmlModel
	if err := xml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s", errMalformedResponse, snippet([]byte(err.Error()), 200))
	}
	if m.XMLName.Local != "NativeDicomModel" {
		return nil, fmt.Errorf("%w: XML root element is <%s>, want <NativeDicomModel>", errNotSTOWResponse, snippet([]byte(m.XMLName.Local), 100))
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
