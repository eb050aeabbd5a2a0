package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestVerdicts(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		cred   func(context.Context) (Credential, error)
		ok     bool
		want   []string
	}{
		{name: "accepted", status: 200, body: "[]", cred: okCred, ok: true, want: []string{"OK: the destination accepted", "lifetime     1h0m0s", "scopes       a b"}},
		{name: "no authentication", status: 204, ok: true, want: []string{"credential   none", "answered without authentication"}},
		{name: "forbidden", status: 403, body: `{"message":"no DICOM Data Owner role for eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"}`, cred: okCred,
			want: []string{"403", "not allowed", "[REDACTED JWT]"}},
		{name: "not found", status: 404, cred: okCred, want: []string{"404", "DICOMWEB_URL"}},
		// Patient values in a body are removed as in an HTTPError.
		{name: "misrouted data set", status: 200, body: `{"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JANE"}]}}`, cred: okCred,
			want: []string{"not a DICOMweb search answer", `"Value":[{"Alphabetic":"` + valueRemoved + `"}]`}},
		{name: "error quoting a value", status: 400, body: `PatientName has invalid value "DOE^JANE"`, cred: okCred,
			want: []string{"answered 400", `invalid value "` + valueRemoved + `"`}},
		{name: "server error", status: 502, cred: okCred, want: []string{"answered 502 Bad Gateway"}},
		{name: "no credential", cred: func(context.Context) (Credential, error) { return Credential{}, errors.New("invalid_client") },
			want: []string{"ERROR invalid_client", "no credential could be obtained"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests++
				if r.URL.Path != "/v2/studies" || r.URL.RawQuery != "limit=1" || r.Header.Get("Accept") != "application/dicom+json" {
					t.Errorf("request %s", r.URL)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}))
			t.Cleanup(srv.Close)
			rep, err := Check(t.Context(), CheckOptions{BaseURL: srv.URL + "/v2", Client: srv.Client(), Credential: tt.cred})
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, errCheckFailed)) || rep.OK != tt.ok {
				t.Fatalf("err = %v, OK = %v; want ok %v", err, rep.OK, tt.ok)
			}
			var out bytes.Buffer
			rep.WriteText(&out)
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), "eyJzdWIi") {
				t.Error("a token went to the output")
			}
			if strings.Contains(out.String(), "DOE^JANE") {
				t.Errorf("a patient's name went to the output:\n%s", out.String())
			}
		})
	}
}

func okCred(context.Context) (Credential, error) {
	return Credential{Kind: "OAuth2 Bearer token", Source: "https://idp/token", OAuth: true, Lifetime: time.Hour,
		Expiry: time.Now().Add(time.Hour), Scopes: []string{"a", "b"}}, nil
}

func TestUnreachable(t *testing.T) {
	rep, err := Check(t.Context(), CheckOptions{BaseURL: "http://127.0.0.1:1/x", Client: http.DefaultClient, Timeout: time.Second})
	if !errors.Is(err, errCheckFailed) || rep.RequestErr == nil || !strings.Contains(rep.Verdict, "could not be reached") {
		t.Fatalf("err = %v, report %+v", err, rep)
	}
}

// A base URL's query (an API key) goes with the check's request, as with
// every request, but never into its report, reached or not.
func TestCheckKeepsTheQueryOutOfTheReport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("code") != "SECRET-KEY" || r.URL.Query().Get("limit") != "1" {
			t.Errorf("request %s: want the base URL's code and limit=1", r.URL)
		}
		_, _ = w.Write([]byte("[]"))
	}))
	base := srv.URL + "/v2?code=SECRET-KEY"
	for _, reachable := range []bool{true, false} {
		if !reachable {
			srv.Close()
		}
		rep, err := Check(t.Context(), CheckOptions{BaseURL: base, Client: &http.Client{}})
		if reachable != (err == nil) {
			t.Fatalf("reachable %v: err = %v", reachable, err)
		}
		var out bytes.Buffer
		rep.WriteText(&out)
		if strings.Contains(out.String(), "SECRET-KEY") || (err != nil && strings.Contains(err.Error(), "SECRET-KEY")) {
			t.Errorf("reachable %v: the query reached the report:\n%s\n%v", reachable, out.String(), err)
		}
	}
}

// An authenticating proxy that redirects to its login page (which
// answers 200) is no accepted request.
func TestCheckRedirectedToALoginPage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			_, _ = w.Write([]byte("<html><title>Sign in</title></html>"))
			return
		}
		http.Redirect(w, r, "/login?next=x", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	rep, err := Check(t.Context(), CheckOptions{BaseURL: srv.URL + "/v2", Client: srv.Client(), Credential: okCred})
	if err == nil || rep.OK {
		t.Fatalf("err = %v, OK = %v; want a failure", err, rep.OK)
	}
	var out bytes.Buffer
	rep.WriteText(&out)
	if !strings.Contains(out.String(), "STOW-RS requests do not follow redirects") || !strings.Contains(out.String(), "/login") {
		t.Errorf("output:\n%s", out.String())
	}
}

// Any redirect fails the check, the way it fails every STOW-RS request
// (a POST is not sent on to a 301, 302, 303, 307 or 308's Location):
// the common case is DICOMWEB_URL with http:// where the destination
// redirects to the same path under https://.
func TestCheckRedirectedToTheSamePath(t *testing.T) {
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("[]"))
	}))
	t.Cleanup(tlsSrv.Close)
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, tlsSrv.URL+r.URL.RequestURI(), status)
			}))
			t.Cleanup(plain.Close)
			rep, err := Check(t.Context(), CheckOptions{BaseURL: plain.URL + "/v2", Client: tlsSrv.Client(), Credential: okCred})
			if err == nil || rep.OK {
				t.Fatalf("err = %v, OK = %v; want a failure", err, rep.OK)
			}
			var out bytes.Buffer
			rep.WriteText(&out)
			if !strings.Contains(out.String(), "STOW-RS requests do not follow redirects") || !strings.Contains(out.String(), tlsSrv.URL+"/v2/studies") {
				t.Errorf("output:\n%s", out.String())
			}
		})
	}
}

// A 200 that is no QIDO-RS answer fails the check: a web application
// that answers every path with its page (a viewer's single-page app at
// DICOMWEB_URL) is no DICOMweb service, and every study would fail.
func TestCheckNotADICOMwebAnswer(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		ok                      bool
	}{
		{"viewer page", "text/html; charset=utf-8", "<!doctype html><html><head><title>OHIF Viewer</title></head><body></body></html>", false},
		{"JSON object", "application/json", `{"status":"ok"}`, false},
		{"DICOM JSON", "application/dicom+json", `[{"0020000D":{"vr":"UI","Value":["1.2.3"]}}]`, true},
		{"DICOM JSON without a content type", "", " [] ", true},
		{"empty", "application/dicom+json", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = []string{tt.contentType}
				_, _ = w.Write([]byte(tt.body))
			}))
			t.Cleanup(srv.Close)
			rep, err := Check(t.Context(), CheckOptions{BaseURL: srv.URL + "/v2", Client: srv.Client(), Credential: okCred})
			if (err == nil) != tt.ok || rep.OK != tt.ok {
				t.Fatalf("err = %v, OK = %v; want ok %v", err, rep.OK, tt.ok)
			}
			var out bytes.Buffer
			rep.WriteText(&out)
			if !tt.ok && !strings.Contains(out.String(), "not a DICOMweb search answer") {
				t.Errorf("output:\n%s", out.String())
			}
		})
	}
}

// TestCheckSendsTheSeriesSearches: with SeriesSearch (the aws profile)
// the check also sends the searches the forwarder sends to HealthImaging,
// a study's series and a series' instances, and fails when one is
// refused: an identity allowed SearchDICOMStudies alone passed the check
// and then failed every verification.
func TestCheckSendsTheSeriesSearches(t *testing.T) {
	const series, instances = "/datastore/d1/studies/2.25.0/series", "/datastore/d1/studies/2.25.0/series/2.25.0/instances"
	tests := []struct {
		name   string
		refuse string // the path answered 403
		page   string // the path answered 404 with an HTML page
		ok     bool
		want   []string
	}{
		{name: "allowed", ok: true, want: []string{series + "?includefield=0020000E&limit=1 -> 200 OK",
			instances + "?includefield=00080018&limit=1 -> 404 Not Found", "are allowed"}},
		{name: "instances refused", refuse: instances, want: []string{"403", "medical-imaging:SearchDICOMInstances"}},
		{name: "series refused", refuse: series, want: []string{"403", "medical-imaging:SearchDICOMSeries"}},
		{name: "not served", page: series, want: []string{"answered 404 Not Found to the search the forwarder sends"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked = append(asked, r.URL.Path)
				switch {
				case r.URL.Path == tt.refuse:
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusForbidden)
					_, _ = w.Write([]byte(`{"message":"not authorized to perform: medical-imaging:SearchDICOM..."}`))
				case r.URL.Path == tt.page:
					w.Header().Set("Content-Type", "text/html")
					w.WriteHeader(http.StatusNotFound)
					_, _ = w.Write([]byte(`<html>default backend</html>`))
				case r.URL.Path == "/datastore/d1/studies" || r.URL.Path == series:
					w.Header().Set("Content-Type", "application/dicom+json")
					_, _ = w.Write([]byte(`[]`))
				default: // HealthImaging: the study is unknown
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					_, _ = w.Write([]byte(`{"message":"Not Found"}`))
				}
			}))
			t.Cleanup(srv.Close)
			rep, err := Check(t.Context(), CheckOptions{BaseURL: srv.URL + "/datastore/d1", Client: srv.Client(), Credential: okCred, SeriesSearch: true})
			if (err == nil) != tt.ok || rep.OK != tt.ok {
				t.Fatalf("err = %v, OK = %v; want ok %v", err, rep.OK, tt.ok)
			}
			var out bytes.Buffer
			rep.WriteText(&out)
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if tt.ok && len(asked) != 3 {
				t.Errorf("asked %v, want the studies, then the two searches", asked)
			}
		})
	}
}
