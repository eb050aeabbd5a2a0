package dicomweb

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// qidoServer answers QIDO-RS for one study of n instances, honouring limit
// and offset unless ignoreOffset; status other than 0 answers every request
// with it.
func qidoServer(t *testing.T, n int, ignoreOffset bool, status int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dicom-web/studies/1.2.3/instances" || r.Header.Get("Accept") != "application/dicom+json" ||
			r.URL.Query().Get("includefield") != "00080018" {
			http.Error(w, "unexpected request "+r.URL.String(), http.StatusBadRequest)
			return
		}
		if status != 0 {
			http.Error(w, "status", status)
			return
		}
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		if ignoreOffset {
			offset, limit = 0, n
		}
		var items []string
		for i := offset; i < min(n, offset+limit); i++ {
			items = append(items, fmt.Sprintf(`{"00080018":{"vr":"UI","Value":["1.2.3.%d"]},"0020000D":{"vr":"UI","Value":["1.2.3"]}}`, i))
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, "["+strings.Join(items, ",")+"]")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestStudyInstanceUIDs(t *testing.T) {
	tests := []struct {
		name         string
		n, pageSize  int
		ignoreOffset bool
		status       int
		want         int
		wantStatus   int
	}{
		{name: "one short page", n: 3, pageSize: 10, want: 3},
		{name: "exact pages", n: 20, pageSize: 10, want: 20},
		{name: "several pages", n: 25, pageSize: 10, want: 25},
		{name: "server ignores offset", n: 25, pageSize: 10, ignoreOffset: true, want: 25},
		{name: "unknown study", n: 0, pageSize: 10, status: http.StatusNotFound, want: 0},
		{name: "refused", n: 0, pageSize: 10, status: http.StatusForbidden, wantStatus: http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := qidoServer(t, tt.n, tt.ignoreOffset, tt.status)
			c, err := New(srv.URL+"/dicom-web", nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.StudyInstanceUIDs(t.Context(), "1.2.3", tt.pageSize)
			if tt.wantStatus != 0 {
				var he *HTTPError
				if !errors.As(err, &he) || he.StatusCode != tt.wantStatus {
					t.Fatalf("err = %v, want HTTP %d", err, tt.wantStatus)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Fatalf("%d UIDs, want %d", len(got), tt.want)
			}
			slices.Sort(got)
			if tt.want > 0 && !slices.Contains(got, "1.2.3.0") {
				t.Errorf("UIDs %v lack 1.2.3.0", got)
			}
		})
	}
}

func TestParseQIDOInstancesRejectsMalformed(t *testing.T) {
	if _, err := parseQIDOInstances([]byte(`{"HttpError":"x"}`)); !errors.Is(err, errMalformedResponse) {
		t.Errorf("err = %v, want errMalformedResponse", err)
	}
}
