package events

import (
	"strings"
	"testing"
)

// FuzzDecode: no input makes Decode panic, and whatever it accepts is safe
// to turn into a NATS subject token (the source) and a de-duplication ID.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"orthanc.study.stable","version":1,"source":"orthanc-a","orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"1.2.840.113619.2.1.2411.1031152382.365.1.736169244","lastUpdate":"20261126T101500"}`))
	f.Add([]byte(`{"type":"orthanc.study.stable","version":1,"source":"a.b","orthancStudyId":"../../tools/reset","studyInstanceUid":"1.2","lastUpdate":"x"}`))
	f.Add([]byte(`{"type":"orthanc.study.stable","version":1,"source":">","orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758","lastUpdate":"20261126T101500"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"version":1e400}`))
	f.Add([]byte("{\"source\":\"\u0000\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := Decode(data)
		if err != nil {
			return
		}
		for _, s := range []string{ev.Source, ev.MsgID()} {
			if strings.ContainsAny(s, " \t\r\n*>\x00") {
				t.Fatalf("accepted event gives unsafe subject or ID %q", s)
			}
		}
		if strings.Contains(ev.Source, ".") {
			t.Fatalf("source %q adds subject tokens", ev.Source)
		}
		if strings.Contains(ev.OrthancStudyID, "/") || strings.Contains(ev.OrthancStudyID, "%") {
			t.Fatalf("accepted Orthanc ID %q could steer a URL", ev.OrthancStudyID)
		}
	})
}
