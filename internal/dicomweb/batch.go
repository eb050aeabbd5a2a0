package dicomweb

import "strings"

// Batches splits parts, in order, into consecutive batches of at most
// maxInstances parts and maxBytes bytes (Part.Size), so that each batch can
// be one Store request. A limit <= 0 means no limit.
//
// An instance larger than maxBytes goes alone in its own batch. So does an
// instance of unknown size (Size < 0) when maxBytes > 0, unless its
// Estimate bounds it: it might be larger than the limit, and guessing
// would risk a request the server refuses.
//
// The batches share parts' backing array (with capacity clipped, so
// appending to one never overwrites the next). Empty input gives nil.
func Batches(parts []Part, maxInstances int, maxBytes int64) [][]Part {
	var out [][]Part
	start := 0
	var bytes int64
	for i, p := range parts {
		count := i - start
		size := p.Size
		if size < 0 && p.Estimate > 0 {
			size = p.Estimate
		}
		alone := maxBytes > 0 && (size < 0 || size > maxBytes)
		full := count > 0 && (alone ||
			(maxInstances > 0 && count >= maxInstances) ||
			(maxBytes > 0 && bytes+size > maxBytes))
		if full {
			out = append(out, parts[start:i:i])
			start, bytes = i, 0
		}
		if alone {
			out = append(out, parts[i:i+1:i+1])
			start, bytes = i+1, 0
			continue
		}
		bytes += max(size, 0)
	}
	if start < len(parts) {
		out = append(out, parts[start:len(parts):len(parts)])
	}
	return out
}

// MaxFraming is the most bytes the multipart framing adds to the content
// of a Store request of n parts (delimiters of the longest boundary RFC
// 2046 allows, each part's header): batches of at most maxBytes less it
// make requests of at most maxBytes, as a destination's limit counts them.
func MaxFraming(n int) int64 {
	return multipartLength(strings.Repeat("b", maxBoundaryLen), make([]Part, n))
}
