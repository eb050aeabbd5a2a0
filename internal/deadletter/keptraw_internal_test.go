package deadletter

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/forward"
)

// What a letter keeps of a message the forwarder could not read: an
// event of stowline's whole (a newer ingest's other types too), so that
// a replay stores it again; anything else its first kilobyte, for the
// operator to see what it is, and not replayed.
func TestKeptRaw(t *testing.T) {
	event := []byte(`{"type":"orthanc.study.stable","version":1,"priority":"urgent"}`)
	newer := []byte(`{"type":"orthanc.series.stable","version":2}`)
	big := append(append([]byte(`{"type":"orthanc.study.stable","version":1,"x":"`), bytes.Repeat([]byte("x"), MaxRawBytes)...), `"}`...)
	tooManyHeaders := map[string][]string{"Tracestate": {strings.Repeat("k=v,", 1200)}}
	for _, tt := range []struct {
		name    string
		raw     forward.RawEvent
		partial bool
		dataLen int
		kept    bool // headers kept
	}{
		{"stowline's event", forward.RawEvent{Data: event, Header: map[string][]string{"Traceparent": {"00-1"}}}, false, len(event), true},
		{"a newer ingest's type", forward.RawEvent{Data: newer, Header: map[string][]string{"Traceparent": {"00-1"}}}, false, len(newer), true},
		{"an event past 64 KiB", forward.RawEvent{Data: big}, true, MaxRawBytes, false},
		{"an event with 5 KB of headers", forward.RawEvent{Data: event, Header: tooManyHeaders}, false, len(event), false},
		{"garbage", forward.RawEvent{Data: bytes.Repeat([]byte{0xff}, 5000), Header: map[string][]string{"X": {"y"}}}, true, maxForeignBytes, false},
		{"JSON of another kind", forward.RawEvent{Data: []byte(`{"type":"invoice","version":1}`), Header: map[string][]string{"X": {"y"}}}, true, 30, false},
	} {
		got := keptRaw(tt.raw)
		if got.Partial != tt.partial || len(got.Data) != tt.dataLen || (got.Header != nil) != tt.kept {
			t.Errorf("%s: partial %v, %d bytes, headers %v; want partial %v, %d bytes, headers kept %v",
				tt.name, got.Partial, len(got.Data), got.Header != nil, tt.partial, tt.dataLen, tt.kept)
		}
	}
}
