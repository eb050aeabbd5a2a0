package dicomweb

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// sized builds parts named by index with the given sizes.
func sized(sizes ...int64) []Part {
	parts := make([]Part, len(sizes))
	for i, s := range sizes {
		parts[i] = Part{SOPInstanceUID: fmt.Sprint(i), Size: s}
	}
	return parts
}

// shape lists the part names of each batch, e.g. [[0 1] [2]].
func shape(batches [][]Part) [][]string {
	out := make([][]string, 0, len(batches))
	for _, b := range batches {
		var names []string
		for _, p := range b {
			names = append(names, p.SOPInstanceUID)
		}
		out = append(out, names)
	}
	return out
}

func TestBatches(t *testing.T) {
	tests := []struct {
		name         string
		sizes        []int64
		maxInstances int
		maxBytes     int64
		want         string
	}{
		{"empty", nil, 10, 100, "[]"},
		{"no limits", []int64{5, 5, 5}, 0, 0, "[[0 1 2]]"},
		{"instance limit", []int64{1, 1, 1, 1, 1}, 2, 0, "[[0 1] [2 3] [4]]"},
		{"instance limit of one", []int64{1, 1, 1}, 1, 0, "[[0] [1] [2]]"},
		{"byte limit exact fit", []int64{40, 60, 50, 50}, 0, 100, "[[0 1] [2 3]]"},
		{"byte limit one over", []int64{40, 61, 50}, 0, 100, "[[0] [1] [2]]"},
		{"both limits, count first", []int64{10, 10, 10, 10}, 3, 1000, "[[0 1 2] [3]]"},
		{"both limits, bytes first", []int64{60, 60, 10}, 3, 100, "[[0] [1 2]]"},
		{"oversized instance alone", []int64{10, 500, 10, 10}, 0, 100, "[[0] [1] [2 3]]"},
		{"oversized first and last", []int64{500, 10, 500}, 10, 100, "[[0] [1] [2]]"},
		{"two oversized in a row", []int64{500, 600}, 10, 100, "[[0] [1]]"},
		{"unknown size alone under a byte limit", []int64{10, -1, 10}, 10, 100, "[[0] [1] [2]]"},
		{"unknown size ignored without a byte limit", []int64{10, -1, 10}, 10, 0, "[[0 1 2]]"},
		{"zero-size parts", []int64{0, 0, 0}, 2, 1, "[[0 1] [2]]"},
		{"instance exactly at the byte limit", []int64{100, 100}, 0, 100, "[[0] [1]]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts := sized(tt.sizes...)
			batches := Batches(parts, tt.maxInstances, tt.maxBytes)
			if got := fmt.Sprint(shape(batches)); got != tt.want {
				t.Fatalf("Batches = %s, want %s", got, tt.want)
			}
			// Invariants: order and coverage kept, limits held.
			var flat []Part
			for _, b := range batches {
				if len(b) == 0 {
					t.Fatal("empty batch")
				}
				if tt.maxInstances > 0 && len(b) > tt.maxInstances {
					t.Fatalf("batch of %d > maxInstances %d", len(b), tt.maxInstances)
				}
				var total int64
				for _, p := range b {
					total += max(p.Size, 0)
				}
				if tt.maxBytes > 0 && total > tt.maxBytes && len(b) > 1 {
					t.Fatalf("batch of %d bytes > maxBytes %d with %d instances", total, tt.maxBytes, len(b))
				}
				flat = append(flat, b...)
			}
			if !slices.EqualFunc(flat, parts, func(a, b Part) bool { return a.SOPInstanceUID == b.SOPInstanceUID }) {
				t.Fatalf("batches do not cover the input in order")
			}
		})
	}
}

func TestBatchesAppendDoesNotClobber(t *testing.T) {
	parts := sized(1, 1, 1, 1)
	batches := Batches(parts, 2, 0)
	_ = append(batches[0], Part{SOPInstanceUID: "new"})
	if parts[2].SOPInstanceUID != "2" {
		t.Fatalf("appending to a batch overwrote the next one: %q", parts[2].SOPInstanceUID)
	}
}

func TestBatchesUseEstimates(t *testing.T) {
	parts := sized(10, -1, -1, 10, -1, -1)
	parts[1].Estimate, parts[2].Estimate, parts[4].Estimate = 30, 30, 200 // parts[5]: none
	got := fmt.Sprint(shape(Batches(parts, 10, 100)))
	if want := "[[0 1 2 3] [4] [5]]"; got != want {
		t.Fatalf("Batches = %s, want %s: estimates within the limit batch, one over it or none goes alone", got, want)
	}
}

// A request made of a batch for maxBytes less MaxFraming is no longer
// than maxBytes, framing and all, whatever the boundary: batched on the
// content alone, a request filled to STOW_MAX_BYTES set at a provider's
// limit went over it by its framing and was refused (413).
func TestMaxFramingKeepsRequestsWithinTheLimit(t *testing.T) {
	const maxBytes, n = 1 << 20, 100
	parts := make([]Part, 3*n)
	for i := range parts {
		parts[i] = Part{SOPInstanceUID: fmt.Sprint(i), Size: maxBytes / n}
	}
	longest := strings.Repeat("b", maxBoundaryLen)
	for _, b := range Batches(parts, n, maxBytes-MaxFraming(n)) {
		if got := multipartLength(longest, b); got > maxBytes {
			t.Errorf("a request of %d parts is %d bytes, over the limit of %d", len(b), got, maxBytes)
		}
	}
	if got := multipartLength(longest, Batches(parts, n, maxBytes)[0]); got <= maxBytes {
		t.Errorf("batched on content alone, the first request is %d bytes: the test does not fill a request", got)
	}
}
