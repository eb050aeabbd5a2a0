package dicomweb

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// hostileAnswer is a body of about size bytes: head, then sep-joined
// copies of unit, then tail; the shapes of a broken or hostile answer
// that cost the most memory per byte.
func hostileAnswer(size int, head, unit, sep, tail string) []byte {
	var b bytes.Buffer
	b.Grow(size + len(head) + len(tail))
	b.WriteString(head)
	for n := 0; b.Len()+len(unit)+len(tail) < size; n++ {
		if n > 0 {
			b.WriteString(sep)
		}
		b.WriteString(unit)
	}
	b.WriteString(tail)
	return b.Bytes()
}

// hostileAnswers are answers of the client's read bound (16 MiB) to a
// request of one instance, each of one cheap shape repeated.
var hostileAnswers = []struct {
	name        string
	contentType string
	head, unit  string
	sep, tail   string
}{
	{"json-items", "application/dicom+json", `{"00081199":{"vr":"SQ","Value":[`, `{}`, `,`, `]}}`},
	{"json-values", "application/dicom+json", `{"00081190":{"vr":"UR","Value":[`, `""`, `,`, `]}}`},
	{"json-numbers", "application/dicom+json", `{"00081196":{"vr":"US","Value":[`, `0`, `,`, `]}}`},
	{"json-array", "application/dicom+json", `[`, `{}`, `,`, `]`},
	{"xml-items", "application/dicom+xml", `<NativeDicomModel><DicomAttribute tag="00081199" vr="SQ">`, `<Item/>`, ``, `</DicomAttribute></NativeDicomModel>`},
	{"xml-values", "application/dicom+xml", `<NativeDicomModel><DicomAttribute tag="00081190" vr="UR">`, `<Value/>`, ``, `</DicomAttribute></NativeDicomModel>`},
}

// parseMemory parses body as the client parses an answer to a request
// of parts instances and returns the bytes allocated and the bytes still
// held once parsed (the Result kept alive), and the error.
func parseMemory(contentType string, body []byte, parts int) (total, live uint64, err error) {
	total, live = heapCost(body, func() any {
		res, perr := parseResponse(contentType, body, parts)
		err = perr
		return res
	})
	return total, live, err
}

// heapCost runs parse and returns the bytes it allocated and the bytes
// still held once it returned (its result and body kept alive).
func heapCost(body []byte, parse func() any) (total, live uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res := parse()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(res)
	runtime.KeepAlive(body) // else freed meanwhile, hiding what is held
	if after.HeapAlloc > before.HeapAlloc {
		live = after.HeapAlloc - before.HeapAlloc
	}
	return after.TotalAlloc - before.TotalAlloc, live
}

// TestHostileAnswerMemory: an answer of the read bound made of cheap
// items or values is refused as malformed, without building it: it
// would take on the order of a gigabyte.
func TestHostileAnswerMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 16 MiB answers")
	}
	const budget = 4 << 20 // bytes allocated to refuse one answer
	for _, tt := range hostileAnswers {
		t.Run(tt.name, func(t *testing.T) {
			body := hostileAnswer(defaultMaxResponseBytes, tt.head, tt.unit, tt.sep, tt.tail)
			total, live, err := parseMemory(tt.contentType, body, 1)
			t.Logf("%d bytes: allocated %d MiB, held %d MiB", len(body), total>>20, live>>20)
			if !errors.Is(err, errMalformedResponse) {
				t.Errorf("err = %v, want errMalformedResponse", err)
			}
			if total > budget {
				t.Errorf("allocated %d bytes, want at most %d", total, budget)
			}
		})
	}
}

// BenchmarkParseHostileAnswer reports what one hostile answer of the
// read bound costs: B/op is allocated, held-B/op still held after parsing.
func BenchmarkParseHostileAnswer(b *testing.B) {
	for _, tt := range hostileAnswers {
		b.Run(tt.name, func(b *testing.B) {
			body := hostileAnswer(defaultMaxResponseBytes, tt.head, tt.unit, tt.sep, tt.tail)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var held uint64
			for b.Loop() {
				_, live, _ := parseMemory(tt.contentType, body, 1)
				held = max(held, live)
			}
			b.ReportMetric(float64(held), "held-B/op")
		})
	}
}

// TestSoundAnswersWithinNodeBound: answers to requests of 1 to 5,000
// instances, each item as large as a sound one gets (an Original
// Attributes Sequence of 40 coerced values, three error comments), are
// all read, in JSON and in XML.
func TestSoundAnswersWithinNodeBound(t *testing.T) {
	item := func(uid string) string {
		var b strings.Builder
		fmt.Fprintf(&b, `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":[%q]},`, uid)
		b.WriteString(`"00081196":{"vr":"US","Value":[45070]},"04000561":{"vr":"SQ","Value":[{"04000550":{"vr":"SQ","Value":[{`)
		for i := range 40 {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `"0010%04X":{"vr":"PN","Value":[{"Alphabetic":"A^B"}]}`, i)
		}
		b.WriteString(`}]}}]},"00741048":{"vr":"SQ","Value":[`)
		for i := range 3 {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"00000902":{"vr":"LO","Value":["comment %d, with [brackets], {braces} and \"quotes\""]}}`, i)
		}
		b.WriteString(`]}}`)
		return b.String()
	}
	for _, n := range []int{1, 2, 100, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			items := make([]string, n)
			for i := range items {
				items[i] = item(fmt.Sprintf("1.2.3.%d", i))
			}
			body := `{"00081190":{"vr":"UR","Value":["https://archive.example/studies/1.2.3"]},` +
				`"00081199":{"vr":"SQ","Value":[` + strings.Join(items, ",") + `]}}`
			res, err := parseResponse("application/dicom+json", []byte(body), n)
			if err != nil {
				t.Fatalf("parseResponse: %v", err)
			}
			if len(res.Stored) != n || len(res.Warnings) != n || len(res.Warnings[0].Comments) != 3 {
				t.Errorf("stored %d, warnings %d, want %d with 3 comments each", len(res.Stored), len(res.Warnings), n)
			}
		})
	}
	t.Run("xml", func(t *testing.T) {
		const n = 100
		var b strings.Builder
		b.WriteString(`<?xml version="1.0" encoding="utf-8"?><NativeDicomModel><DicomAttribute tag="00081199" vr="SQ">`)
		for i := range n {
			fmt.Fprintf(&b, `<Item number="%d"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.%d</Value></DicomAttribute>`, i+1, i)
			b.WriteString(`<DicomAttribute tag="00081196" vr="US"><Value number="1">45070</Value></DicomAttribute>`)
			b.WriteString(`<DicomAttribute tag="04000561" vr="SQ"><Item number="1"><DicomAttribute tag="04000550" vr="SQ"><Item number="1">`)
			for j := range 40 {
				fmt.Fprintf(&b, `<DicomAttribute tag="0010%04X" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>A</FamilyName></Alphabetic></PersonName></DicomAttribute>`, j)
			}
			b.WriteString(`</Item></DicomAttribute></Item></DicomAttribute></Item>`)
		}
		b.WriteString(`</DicomAttribute></NativeDicomModel>`)
		res, err := parseResponse("application/dicom+xml", []byte(b.String()), n)
		if err != nil || len(res.Stored) != n {
			t.Fatalf("parseResponse = %d stored, %v; want %d", len(res.Stored), err, n)
		}
	})
}

func TestJSONNodesOver(t *testing.T) {
	tests := []struct {
		body  string
		limit int
		want  bool
	}{
		{`{}`, 1, false},
		{`[[[[`, 4, false}, // no more than its bytes
		{`[[[[`, 3, true},
		{`{}`, 0, true},
		{`[1,2,3]`, 3, false},
		{`[1,2,3]`, 2, true},
		{`["a,b,c{[", "d"]`, 2, false},
		{`["a\",[{,", "d"]`, 2, false},
		{`["a\\",[{,"]`, 2, true}, // the string ends after the escaped backslash
		{`"unterminated,,,,`, 0, false},
		{`"\\\",[`, 0, false},  // an escaped quote after an escaped backslash
		{`["\\\\",[`, 2, true}, // two escaped backslashes end the string
		{``, 0, false},
	}
	for _, tt := range tests {
		if got := jsonNodesOver([]byte(tt.body), tt.limit); got != tt.want {
			t.Errorf("jsonNodesOver(%s, %d) = %v, want %v", tt.body, tt.limit, got, tt.want)
		}
	}
}

// BenchmarkParseResponse is the cost of reading sound answers: 16 and
// 100 instances stored (JSON), a recorded Azure answer with warnings and
// a recorded Orthanc XML answer.
func BenchmarkParseResponse(b *testing.B) {
	uids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("1.2.826.0.1.3680043.8.498.%d", i)
		}
		return out
	}
	cases := []struct {
		name, contentType string
		body              []byte
		instances         int
	}{
		{"json-16", "application/dicom+json", stowJSON(b, uids(16), nil, 0), 16},
		{"json-100", "application/dicom+json", stowJSON(b, uids(100), nil, 0), 100},
		{"azure-warning", "application/dicom+json", readTestdata(b, "docs/azure-v2-stored-with-warning.json"), 1},
		{"orthanc-xml", "application/dicom+xml", readTestdata(b, "orthanc/orthanc-success-xml.xml"), 2},
	}
	for _, tt := range cases {
		b.Run(tt.name, func(b *testing.B) {
			b.SetBytes(int64(len(tt.body)))
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if _, err := parseResponse(tt.contentType, tt.body, tt.instances); err != nil {
					b.Fatal(err)
				}
			}
			// CPU time, unlike ns/op, holds on a loaded machine.
			if cpu := processCPU() - cpu0; cpu > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// BenchmarkAnswerBound is the count that bounds an answer, alone, over
// a whole answer (one shorter than its bound is not scanned).
func BenchmarkAnswerBound(b *testing.B) {
	uids := make([]string, 100)
	for i := range uids {
		uids[i] = fmt.Sprintf("1.2.826.0.1.3680043.8.498.%d", i)
	}
	body := stowJSON(b, uids, nil, 0)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if jsonNodesOver(body, len(body)-1) {
			b.Fatal("over")
		}
	}
}
