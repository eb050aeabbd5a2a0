package dicomweb

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestConflictRule(t *testing.T) {
	tests := []struct {
		text    string
		reason  int
		status  int
		matches bool
		bad     bool
	}{
		{text: "45070", reason: 45070, status: 200, matches: true},
		{text: "0xB00E", reason: 45070, status: 409, matches: true},
		{text: "0xb00e", reason: 45071, status: 200},
		{text: "0x0110@409", reason: 272, status: 409, matches: true},
		{text: "0x0110@409", reason: 272, status: 200}, // a processing failure, not a conflict
		{text: "0xA7xx@409", reason: 0xA701, status: 409, matches: true},
		{text: "0xA7xx@409", reason: 0xA701, status: 202},
		{text: "0xA7xx", reason: 0xA800, status: 409},
		{text: "0x01G0", bad: true},
		{text: "70000", bad: true},
		{text: "", bad: true},
		// Rules that match a failure without a reason, or every failure.
		{text: "0", bad: true},
		{text: "0x0000", bad: true},
		{text: "0xxxxx", bad: true},
		{text: "0x00xx@409", bad: true},
	}
	for _, tt := range tests {
		r, err := ParseConflictRule(tt.text)
		if tt.bad {
			if err == nil {
				t.Errorf("%q: parsed as %v, want an error", tt.text, r)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tt.text, err)
		}
		if got := r.Matches(tt.reason, tt.status); got != tt.matches {
			t.Errorf("%q.Matches(%#x, %d) = %v", tt.text, tt.reason, tt.status, got)
		}
		again, err := ParseConflictRule(r.String())
		if err != nil || again != r {
			t.Errorf("%q: String() %q reads back as %v, %v", tt.text, r.String(), again, err)
		}
	}
}

func TestNonPrimary(t *testing.T) {
	for url, want := range map[string]bool{
		"": false,
		"https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/d/studies/1.2/series/1.3/instances/1.4":                         false,
		"https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/d/studies/1.2/series/1.3/instances/1.4?imageSetId=0123456789ab": true,
	} {
		if got := NonPrimary(Instance{SOPInstanceUID: "1.4", RetrieveURL: url}); got != want {
			t.Errorf("NonPrimary(%q) = %v", url, got)
		}
	}
}

func TestUpsertAndDeleteInstance(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path)
		switch r.Method {
		case http.MethodPut:
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = w.Write([]byte(`{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.4"]}}]}}`))
		case http.MethodDelete:
			if r.URL.Path == "/dw/studies/1.2/series/1.3/instances/9.9" {
				http.Error(w, "no", http.StatusMethodNotAllowed)
				return
			}
			if r.URL.Path == "/dw/studies/1.2/series/1.3/instances/8.8" {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL+"/dw", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := c.Upsert(ctx, []Part{memPart("1.4", []byte("DICM"))})
	if err != nil || len(res.Stored) != 1 {
		t.Fatalf("Upsert: %v, %+v", err, res)
	}
	if err := c.DeleteInstance(ctx, "1.2", "1.3", "1.4"); err != nil {
		t.Errorf("DeleteInstance: %v", err)
	}
	if err := c.DeleteInstance(ctx, "1.2", "1.3", "8.8"); err != nil {
		t.Errorf("DeleteInstance of a missing instance: %v", err)
	}
	var he *HTTPError
	if err := c.DeleteInstance(ctx, "1.2", "1.3", "9.9"); !errors.As(err, &he) || he.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DeleteInstance refused: %v", err)
	}
	want := []string{"PUT /dw/studies", "DELETE /dw/studies/1.2/series/1.3/instances/1.4", "DELETE /dw/studies/1.2/series/1.3/instances/8.8", "DELETE /dw/studies/1.2/series/1.3/instances/9.9"}
	if len(got) != len(want) {
		t.Fatalf("requests %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("request %d: %s, want %s", i, got[i], want[i])
		}
	}
}

// A base URL's query (an API key) goes with the QIDO-RS and DELETE
// requests as with STOW-RS, after their own path and parameters.
func TestBaseQueryOnEveryRequest(t *testing.T) {
	type request struct{ method, path, code, includefield string }
	got := make(chan request, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- request{r.Method, r.URL.Path, r.URL.Query().Get("code"), r.URL.Query().Get("includefield")}
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = w.Write([]byte(`[]`))
		}
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/v2?code=key-0123", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Probe(t.Context(), "1.2.3"); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r != (request{"GET", "/v2/studies/1.2.3/instances", "key-0123", tagSOPInstanceUID}) {
		t.Errorf("QIDO-RS request %+v", r)
	}
	if err := c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.4", "1.2.3.4.5"); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r != (request{"DELETE", "/v2/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5", "key-0123", ""}) {
		t.Errorf("DELETE request %+v", r)
	}
}

// A DELETE answered with an endless error body, or redirected with 303
// (the client then asks with GET), is no deleted instance, and does not
// hang.
func TestDeleteInstanceAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/redirected":
			w.WriteHeader(http.StatusOK)
		case r.URL.Query().Get("redirect") != "":
			http.Redirect(w, r, "/redirected", http.StatusSeeOther)
		default:
			w.WriteHeader(http.StatusInternalServerError)
			for r.Context().Err() == nil {
				if _, err := w.Write(make([]byte, 64<<10)); err != nil {
					return
				}
			}
		}
	}))
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		base string
		want func(error) bool
	}{
		{srv.URL, func(err error) bool { var he *HTTPError; return errors.As(err, &he) && he.StatusCode == 500 }},
		{srv.URL + "?redirect=1", func(err error) bool { return errors.Is(err, ErrRedirected) }},
	} {
		c, err := New(tt.base, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		err = c.DeleteInstance(ctx, "1.2.3", "1.2.3.4", "1.2.3.4.5")
		if ctx.Err() != nil || !tt.want(err) {
			t.Errorf("%s: DeleteInstance = %v (context: %v)", tt.base, err, ctx.Err())
		}
		cancel()
	}
}

// A UID is one segment of the URL's path, whatever the modality put in
// it: escaped, and one that could climb ("." or "..", a slash, a
// backslash, a percent sign a proxy may decode) is refused before any
// request.
func TestDeleteInstanceKeepsUIDsInTheirSegment(t *testing.T) {
	paths := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.EscapedPath()
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/v2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.4", "1.2.3.4.5 6"); err != nil {
		t.Fatal(err)
	}
	if p := <-paths; p != "/v2/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5%206" {
		t.Errorf("DELETE %s", p)
	}
	for _, sop := range []string{"..", ".", "", "../../../../9.9.9", `..\9`, "..%2F9"} {
		if err := c.DeleteInstance(t.Context(), "1.2.3", "1.2.3.4", sop); !errors.Is(err, errPathSegment) {
			t.Errorf("SOP Instance UID %q: %v, want errPathSegment", sop, err)
		}
	}
	if len(paths) != 0 {
		t.Errorf("a request was sent: %s", <-paths)
	}
}
