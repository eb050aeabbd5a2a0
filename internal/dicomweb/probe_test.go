package dicomweb

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestProbeTellsAnEmptyResultFromAPage: the breaker's probe takes a 404
// for "no such study" only when a DICOMweb server could have said it (an
// empty body, JSON); an ingress's default backend or a proxy answering
// every request with a 404 page is an error status, so that a URL that
// answers 404 to everything does not look healthy. Verification's
// listing keeps reading any 404 as none listed.
func TestProbeTellsAnEmptyResultFromAPage(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		contentType string
		body        string
		wantStatus  int // 0: no error
	}{
		{name: "404 without a body", status: http.StatusNotFound},
		{name: "404 in JSON", status: http.StatusNotFound, contentType: "application/json", body: `{"error":"study not found"}`},
		{name: "404 in DICOM JSON", status: http.StatusNotFound, contentType: "application/dicom+json", body: `[]`},
		{name: "204", status: http.StatusNoContent},
		{name: "empty list", status: http.StatusOK, contentType: "application/dicom+json", body: `[]`},
		{name: "ingress's 404 page", status: http.StatusNotFound, contentType: "text/html", body: "<html><body>default backend - 404</body></html>", wantStatus: http.StatusNotFound},
		{name: "proxy's 404 text", status: http.StatusNotFound, contentType: "text/plain; charset=utf-8", body: "404 page not found", wantStatus: http.StatusNotFound},
		{name: "403", status: http.StatusForbidden, wantStatus: http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tt.contentType != "" {
					w.Header().Set("Content-Type", tt.contentType)
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			t.Cleanup(srv.Close)
			c, err := New(srv.URL+"/dicom-web", nil)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Probe(t.Context(), "1.2.3")
			var he *HTTPError
			switch {
			case tt.wantStatus == 0 && err != nil:
				t.Errorf("Probe: %v, want an answer", err)
			case tt.wantStatus != 0 && (!errors.As(err, &he) || he.StatusCode != tt.wantStatus):
				t.Errorf("Probe: %v, want HTTP %d", err, tt.wantStatus)
			}
			if tt.status == http.StatusNotFound {
				if uids, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", Expected{Count: 3}); err != nil || len(uids) != 0 {
					t.Errorf("StudyInstanceUIDs: %v, %v; want none listed", uids, err)
				}
			}
		})
	}
}
