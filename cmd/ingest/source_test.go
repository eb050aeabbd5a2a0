package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// The webhook's events name a source the reconciler does not publish
// under (the Lua script's Stowline.Source against ORTHANC_SOURCE_NAME):
// the ingest, which runs both, counts them and says so, naming both
// names; the reconciler's own name is not counted.
func TestWebhookEventOfAnotherSourceCounted(t *testing.T) {
	r := newRig(t)
	rep := r.startIngest(t) // ORTHANC_SOURCE_NAME=src
	const counted = "stowline_ingest_events_unreconciled_source_total"
	post := func(source, study string) {
		t.Helper()
		body := fmt.Sprintf(`{"type":"orthanc.study.stable","version":1,"source":%q,"orthancStudyId":%q,`+
			`"studyInstanceUid":"1.2.3.%d","lastUpdate":"20261207T101500"}`, source, study, len(study))
		status, err := postEvent(rep.addr, body)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusAccepted {
			t.Fatalf("status %d, want 202: an event of another source is queued all the same", status)
		}
	}
	post("src", "27f7126f-4f66fb14-03f4081b-f9341db2-53925988")
	if got := rep.metric(t, counted); got != 0 {
		t.Errorf("%s = %v after an event of the reconciler's source, want 0", counted, got)
	}
	post("MyOrthanc", "27f7126f-4f66fb14-03f4081b-f9341db2-53925989")
	post("MyOrthanc", "27f7126f-4f66fb14-03f4081b-f9341db2-53925990")
	if got := rep.metric(t, counted); got != 2 {
		t.Errorf("%s = %v after two events of another source, want 2", counted, got)
	}
	logs := rep.logs.String()
	if n := strings.Count(logs, "webhook event names a source the reconciler does not"); n != 1 || !strings.Contains(logs, `"reconciled_sources":["src"]`) {
		t.Errorf("%d warnings (want 1, naming the reconciler's source src):\n%s", n, logs)
	}
	// ORTHANC_SOURCE_NAME is set: the forwarders refuse the other name,
	// they do not forward the study twice.
	if !strings.Contains(logs, "dead-letter it as from an unknown source") || strings.Contains(logs, "forwarded twice") {
		t.Errorf("the warning does not say what the forwarders do with a configured source name:\n%s", logs)
	}
}
