package dicomweb

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// decodeJSON decodes a DICOM JSON data set, or an array of them (merged),
// as some servers answer. An answer of more than maxNodes values is
// refused before it is decoded (see answerNodes).
func decodeJSON(b []byte, maxNodes int) (dataset, error) {
	if jsonNodesOver(b, maxNodes) {
		return nil, fmt.Errorf("%w: over %d JSON values, more than an answer to the request holds", errMalformedResponse, maxNodes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keep number literals exact
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: %s", errMalformedResponse, snippet([]byte(err.Error()), 200))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON value", errMalformedResponse)
	}
	switch v := top.(type) {
	case map[string]any:
		return jsonDataset(v)
	case []any:
		ds := dataset{}
		for i, item := range v {
			obj, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%w: array element %d is not a data set", errNotSTOWResponse, i)
			}
			d, err := jsonDataset(obj)
			if err != nil {
				return nil, err
			}
			ds.merge(d)
		}
		return ds, nil
	}
	return nil, fmt.Errorf("%w: top-level JSON value is not an object", errNotSTOWResponse)
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
			return nil, fmt.Errorf("%w: attribute %s is not an object", errMalformedResponse, snippet([]byte(k), 100))
		}
		e := &element{}
		vr, _ := attr["vr"].(string)
		if vals, ok := attr["Value"].([]any); ok {
			for _, val := range vals {
				switch x := val.(type) {
				case map[string]any:
					if strings.EqualFold(vr, "PN") {
						// A Person Name's components ({"Alphabetic":
						// ...}), as in the Original Attributes Sequence
						// of a coerced instance: not an item.
						continue
					}
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
		return nil, fmt.Errorf("%w: JSON object has no DICOM tag keys (%s)", errNotSTOWResponse, snippet([]byte(strings.Join(keys, ", ")), 120))
	}
	return ds, nil
}

// jsonNodesOver reports whether JSON text b holds more than limit values.
// It counts '{', '[' and ',' outside strings: each array element and
// object member follows one of them, so the count bounds the values
// (and so the maps, slices and strings decoding b builds) without
// allocating. Text that is not JSON is counted all the same; decoding
// refuses it.
func jsonNodesOver(b []byte, limit int) bool {
	if len(b) <= limit {
		return false // each counted byte is one: a sound answer, unscanned
	}
	n := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			end := stringEnd(b, i)
			if end < 0 {
				return false // unterminated: decoding refuses it
			}
			i = end
		case '{', '[', ',':
			if n++; n > limit {
				return true
			}
		}
	}
	return false
}

// stringEnd is the index of the quote that closes the JSON string opened
// at b[open], or -1. It skips to each quote (most of an answer's bytes
// are in strings: UIDs, URLs) and tells an escaped one by the odd run of
// backslashes before it.
func stringEnd(b []byte, open int) int {
	for j := open + 1; ; j++ {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return -1
		}
		j += k
		escapes := 0
		for p := j - 1; p > open && b[p] == '\\'; p-- {
			escapes++
		}
		if escapes%2 == 0 {
			return j
		}
	}
}
