package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
)

// ORTHANC_MAX_CONNECTIONS shows on the forwarder's /metrics: the cap, and
// no slot still taken once a study forwarded in parallel requests is
// done (a slot a request kept would show here, and would stall the
// source for good at the cap).
func TestOrthancMaxConnectionsReported(t *testing.T) {
	r := newRig(t)
	r.startForwarder(t, map[string]string{
		"ORTHANC_MAX_CONNECTIONS": "2",
		"STOW_MAX_INSTANCES":      "2",
		"STOW_PARALLEL_REQUESTS":  "4",
		"STOW_PARALLEL_MIN":       "4",
	})
	study := r.addStudy(t, 12, 128)
	r.publish(t, study)
	r.waitDest(t, 12, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	r.assertIdentical(t)
	if got := r.metric(t, "stowline_orthanc_request_slots", ""); got != 2 {
		t.Errorf("stowline_orthanc_request_slots = %v, want 2", got)
	}
	if got := r.metric(t, "stowline_orthanc_request_slots_in_use", ""); got != 0 {
		t.Errorf("stowline_orthanc_request_slots_in_use = %v once the study is forwarded, want 0", got)
	}
	t.Logf("requests that waited for a slot: %v, for %vs in all",
		r.metric(t, "stowline_orthanc_request_slot_waits_total", ""), r.metric(t, "stowline_orthanc_request_slot_wait_seconds_total", ""))
}

// A destination that stops reading its STOW-RS bodies mid-request (a
// hung server or proxy) keeps the Orthanc file streams feeding them, and
// their slots of ORTHANC_MAX_CONNECTIONS, until its stall time-out
// (minutes). It must leave a slot to each other destination of the
// process: with the cap at its request ceiling it took them all, and the
// healthy archive's studies waited the 5 minutes, spending deliveries.
func TestStalledDestinationLeavesSlotsToTheOthers(t *testing.T) {
	r := newRig(t)
	stuck := stalledDestination(t)
	r.startForwarder(t, map[string]string{
		"DICOMWEB_URL":                             "",
		"DESTINATIONS":                             "archive,stuck",
		"DESTINATION_ARCHIVE_URL":                  r.proxy.URL + "/dicom-web",
		"DESTINATION_STUCK_URL":                    stuck.URL + "/dicom-web",
		"DESTINATION_STUCK_MATCH":                  "'MR' in study.modalities",
		"ORTHANC_MAX_CONNECTIONS":                  "4",
		"DESTINATION_STUCK_STOW_PARALLEL_REQUESTS": "4",
		"DESTINATION_STUCK_STOW_PARALLEL_MIN":      "4",
	})
	// An MR study for both: the archive stores it, stuck's four requests
	// stall with a file stream open each.
	r.publish(t, r.addModalityStudy(t, "MR", 8, 1536))
	r.waitDest(t, 8, time.Minute)
	// Its share: the cap of 4 less one for the archive.
	r.waitMetric(t, "stowline_orthanc_request_slots_in_use", 3, 30*time.Second)
	// The metrics name the destination holding them.
	for _, m := range []struct {
		sample string
		want   float64
	}{
		{`stowline_orthanc_request_slot_share{destination="stuck"}`, 3},
		{`stowline_orthanc_request_slot_share_in_use{destination="stuck"}`, 3},
		{`stowline_orthanc_request_slot_share{destination="archive"}`, 3},
		{`stowline_orthanc_request_slot_share_in_use{destination="archive"}`, 0},
	} {
		if got := r.metric(t, m.sample, ""); got != m.want {
			t.Errorf("%s = %v, want %v", m.sample, got, m.want)
		}
	}
	// The archive's next study goes at once (about a second alone).
	r.publish(t, r.addModalityStudy(t, "CT", 2, 64))
	r.waitDest(t, 10, 30*time.Second)
}

// stalledDestination reads 32 KiB of each STOW-RS request's body, then
// stops reading and never answers, until the test ends; its connections
// have a small receive buffer, so that the sender stalls soon.
func stalledDestination(t *testing.T) *httptest.Server {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.CopyN(io.Discard, r.Body, 32<<10)
		}
		select { // a QIDO probe hangs too
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	srv.Listener = smallReceiveBuffer{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop); srv.CloseClientConnections() }) // first
	return srv
}

// smallReceiveBuffer accepts connections with a 4 KiB receive buffer.
type smallReceiveBuffer struct{ net.Listener }

func (l smallReceiveBuffer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	return c, err
}

// addModalityStudy is addStudy with one series of modality.
func (r *rig) addModalityStudy(t *testing.T, modality string, n, rows int) string {
	t.Helper()
	uid := dicomgen.NewUID()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "FWD-TEST", PatientName: "Synthetic^Forwarder",
		SeriesList: []dicomgen.SeriesSpec{{Modality: modality, Instances: n}}, Rows: rows, Columns: rows,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.storeStudy(t, uid, files)
}
