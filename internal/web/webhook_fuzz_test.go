package web

import (
	"bytes"
	"net/http"
	"testing"
)

// FuzzDecodeEvent: the webhook body parser never panics, and answers
// either an event or a 4xx with a message.
func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"type":"orthanc.study.stable","version":1,"source":"orthanc-a","orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"1.2.3","lastUpdate":"20261126T101500"}`))
	f.Add([]byte(`{"type":"orthanc.study.stable"}{"x":1}`))
	f.Add([]byte(`{"receivedAt":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"version":"1"}`))
	f.Add([]byte(``))
	f.Add(bytes.Repeat([]byte(`[`), 10000))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, status, reason, err := decodeEvent(body)
		if err == nil {
			if ev == nil || ev.Validate() != nil {
				t.Fatalf("accepted an invalid event: %+v", ev)
			}
			return
		}
		if status < 400 || status >= 500 || reason == "" || err.Error() == "" {
			t.Fatalf("rejection without a 4xx status, reason or message: %d %q %v", status, reason, err)
		}
		if status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge {
			t.Fatalf("unexpected status %d", status)
		}
	})
}
