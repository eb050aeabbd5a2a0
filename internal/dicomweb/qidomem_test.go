package dicomweb

import (
	"errors"
	"fmt"
	"reflect"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

// hostileQIDOAnswers are QIDO-RS answers of the client's read bound
// (16 MiB), each of one cheap shape repeated. allocated bounds the bytes
// allocated to read one, where the walk allocates little (0: not
// checked; it allocates per token, garbage at once).
var hostileQIDOAnswers = []struct {
	name       string
	head, unit string
	sep, tail  string
	allocated  uint64
}{
	{"instances", `[`, `{}`, `,`, `]`, 4 << 20},
	{"nulls", `[`, `null`, `,`, `]`, 0},
	{"attributes", `[{`, `"00080018":{}`, `,`, `}]`, 0},
	// The decoder buffers the one attribute whole, growing by doubling.
	{"values", `[{"00080018":{"vr":"UI","Value":[`, `{}`, `,`, `]}}]`, 128 << 20},
	{"uids", `[`, `{"00080018":{"Value":["1"]}}`, `,`, `]`, 0},
}

// qidoMemory parses body as a QIDO-RS page and returns the bytes
// allocated and still held once parsed (the UIDs kept alive), the UIDs
// and the error.
func qidoMemory(body []byte) (total, live uint64, uids []string, err error) {
	total, live = heapCost(body, func() any {
		uids, err = parseQIDO(body, tagSOPInstanceUID)
		return uids
	})
	return total, live, uids, err
}

// TestHostileQIDOAnswerMemory: a QIDO-RS answer of the read bound made
// of cheap values is read holding no more than its UIDs: the page is
// walked, not built (a probe's page of one may list a whole study when
// the server ignores limit, so it is not refused for its size).
func TestHostileQIDOAnswerMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 16 MiB answers")
	}
	for _, tt := range hostileQIDOAnswers {
		t.Run(tt.name, func(t *testing.T) {
			body := hostileAnswer(defaultMaxResponseBytes, tt.head, tt.unit, tt.sep, tt.tail)
			total, live, uids, err := qidoMemory(body)
			t.Logf("%d bytes: allocated %d MiB, held %d bytes, %d UIDs", len(body), total>>20, live, len(uids))
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			// The UIDs' slice (grown by doubling) and strings, and the
			// decoder's buffer: what the answer's bytes take, no more.
			if held := uint64(len(uids))*(16+8) + 4<<20; live > held {
				t.Errorf("held %d bytes for %d UIDs, want at most %d", live, len(uids), held)
			}
			if tt.allocated > 0 && total > tt.allocated {
				t.Errorf("allocated %d bytes, want at most %d", total, tt.allocated)
			}
		})
	}
	t.Run("malformed", func(t *testing.T) {
		body := hostileAnswer(defaultMaxResponseBytes, `[`, `{}`, `,`, `]x`)
		if _, _, _, err := qidoMemory(body); !errors.Is(err, errMalformedResponse) || !errors.Is(err, ErrNotDICOMweb) {
			t.Errorf("err = %v, want errMalformedResponse and ErrNotDICOMweb", err)
		}
	})
}

// BenchmarkParseHostileQIDOAnswer reports what one hostile QIDO-RS
// answer of the read bound costs: B/op is allocated, held-B/op still held.
func BenchmarkParseHostileQIDOAnswer(b *testing.B) {
	for _, tt := range hostileQIDOAnswers {
		b.Run(tt.name, func(b *testing.B) {
			body := hostileAnswer(defaultMaxResponseBytes, tt.head, tt.unit, tt.sep, tt.tail)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var held, peak uint64
			for b.Loop() {
				stop := samplePeakHeap(&peak)
				_, live, _, _ := qidoMemory(body)
				stop()
				held = max(held, live)
			}
			b.ReportMetric(float64(held), "held-B/op")
			b.ReportMetric(float64(peak), "peak-heap-B")
		})
	}
}

// samplePeakHeap records in *peak the most heap in objects seen, every
// millisecond until stop is called: an estimate, for benchmarks only.
func samplePeakHeap(peak *uint64) (stop func()) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			*peak = max(*peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

// qidoUnmarshalled is how parseQIDO read an answer before it
// walked it: decoded whole (unmarshalQIDO, still its path for answers
// of a page's size). It is the reference the walk must agree with.
func qidoUnmarshalled(body []byte) ([]string, error) {
	if len(body) == 0 {
		return nil, nil
	}
	return unmarshalQIDO(body, tagSOPInstanceUID)
}

// qidoCases are answers, odd ones among them, on which the walk and the
// whole decoding must agree.
var qidoCases = []string{
	``, ` `, `null`, `[]`, ` [ ] `, `[null]`, `{}`, `"x"`, `1`, `[] x`, `[][]`, `[`, `[{]`,
	`[{"00080018":{"vr":"UI","Value":["1.2.3"]}}]`,
	`[{"00080018":{"Value":["1.2.3"]}},{"00080018":{"Value":["1.2.4"]}},null,{}]`,
	`[{"00080018":{"Value":[""]}}]`,
	`[{"00080018":{"Value":[]}}]`,
	`[{"00080018":{"Value":null}}]`,
	`[{"00080018":null}]`,
	`[{"00080018":{"Value":[1,"1.2.3"]}}]`,
	`[{"00080018":{"Value":[{"Alphabetic":"x"}]}}]`,
	`[{"00080018":{"Value":[ "1.2\u002e3" ]}}]`,
	`[{"00080018":{"value":["lower"]}}]`,
	`[{"00080018":{"VALUE":["upper"],"Value":["last"]}}]`,
	`[{"00080018":{"Value":["a"]},"00080018":{"vr":"UI"}}]`,
	`[{"0008\u0030018":{"Value":["escaped key"]}}]`,
	`[{"00080018":{"Value":["\"q\\\"", 2]}}]`,
	`[{"00080018":{"Value":["\xff\xfe"]}}]`,
	`[{"00080018":{"Value":"1.2.3"}}]`,
	`[{"00080018":"1.2.3"}]`,
	`[{"00080018":[1]}]`,
	`[1]`, `["x"]`, `[[]]`, `[true]`,
	`[{"00100010":{"vr":"PN","Value":[{"Alphabetic":"A"}]},"00080018":{"Value":["1.2"]}}]`,
	`[{"00080018":{"Value":["1.2"]},"00200013":{"Value":[1,2,"x",null,{}]}}]`,
	// Numbers stowline does not read, beyond float64 or odd for their VR
	// (a count given as 1e999, a fraction, a negative): the study's UIDs
	// all the same.
	`[{"00080018":{"Value":["1.2"]},"00201208":{"vr":"IS","Value":[1e999]}}]`,
	`[{"00080018":{"Value":["1.2"]},"00201208":{"vr":"IS","Value":[-1e999,2.5,-3]}}]`,
	`[{"00080018":{"Value":["1.2", 1e999]}}]`,
	`[{"00080018":{"Value":[1e999, "1.2"]}}]`,
	`[{"00080018":{"Value":["1.2"]}}`,
	`[{"00080018":{"Value":["1.2"]}},]`,
}

func TestParseQIDOInstancesAgreesWithDecoding(t *testing.T) {
	for _, body := range qidoCases {
		compareQIDO(t, []byte(body))
	}
}

func FuzzParseQIDOInstances(f *testing.F) {
	for _, body := range qidoCases {
		f.Add([]byte(body))
	}
	f.Fuzz(compareQIDO)
}

// compareQIDO checks the walk, which small answers skip, and
// parseQIDO against decoding whole.
func compareQIDO(t *testing.T, body []byte) {
	t.Helper()
	want, wantErr := qidoUnmarshalled(body)
	if len(body) > 0 {
		got, err := walkQIDO(body, tagSOPInstanceUID)
		if (err != nil) != (wantErr != nil) || !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: walk = %q, %v; decoding whole: %q, %v", body, got, err, want, wantErr)
		}
	}
	got, err := parseQIDO(body, tagSOPInstanceUID)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q: err = %v, decoding whole: %v", body, err, wantErr)
	}
	if err != nil {
		if !errors.Is(err, errMalformedResponse) || !errors.Is(err, ErrNotDICOMweb) {
			t.Fatalf("%q: err = %v, want errMalformedResponse and ErrNotDICOMweb", body, err)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: UIDs %q, decoding whole: %q", body, got, want)
	}
}

// BenchmarkParseQIDOInstances is the cost of reading a sound page: 200
// instances of a few attributes each, as servers answer by default.
func BenchmarkParseQIDOInstances(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[")
	for i := range qidoPageSize {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"00080016":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00080018":{"vr":"UI","Value":["1.2.826.0.1.3680043.8.498.%d"]},`+
			`"00080056":{"vr":"CS","Value":["ONLINE"]},"00081190":{"vr":"UR","Value":["https://archive.example/studies/1.2.3/series/1.2.3.4/instances/1.2.826.0.1.3680043.8.498.%d"]},`+
			`"0020000D":{"vr":"UI","Value":["1.2.3"]},"0020000E":{"vr":"UI","Value":["1.2.3.4"]},"00200013":{"vr":"IS","Value":[%d]},"00280010":{"vr":"US","Value":[512]},"00280011":{"vr":"US","Value":[512]}}`, i, i, i)
	}
	sb.WriteString("]")
	body := []byte(sb.String())
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		uids, err := parseQIDO(body, tagSOPInstanceUID)
		if err != nil || len(uids) != qidoPageSize {
			b.Fatalf("%d UIDs, %v", len(uids), err)
		}
	}
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}
