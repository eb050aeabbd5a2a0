package dicomweb

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTrimBody(t *testing.T) {
	tests := []struct {
		in    string
		limit int
		want  string
	}{
		{"  short  ", 10, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},             // do not split the two bytes of é
		{"\xff\xfe", 10, "\uFFFD"}, // one replacement per invalid run
	}
	for _, tt := range tests {
		if got := trimBody([]byte(tt.in), tt.limit); got != tt.want {
			t.Errorf("trimBody(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
		}
	}
}

func TestHTTPErrorMessage(t *testing.T) {
	he := &HTTPError{StatusCode: 504, ContentType: "text/html", Body: "<html><title>504 Gateway Time-out</title></html>"}
	want := "stow: server answered 504 Gateway Timeout (text/html): 504 Gateway Time-out"
	if he.Error() != want {
		t.Fatalf("Error() = %q, want %q", he.Error(), want)
	}
	var err error = fmt.Errorf("forward study: %w", he)
	var got *HTTPError
	if !errors.As(err, &got) || got.StatusCode != 504 {
		t.Fatal("errors.As through wrapping failed")
	}
}

// A gateway that echoes the request in its error answer could show the
// bearer token: the answer kept in the error (logs, dead letters) has it
// redacted.
func TestHTTPErrorRedactsTokens(t *testing.T) {
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	he, err := storeRefused(t, http.StatusUnauthorized, nil, "rejected header Authorization: Bearer "+jwt)
	if strings.Contains(he.Body, "eyJzdWIi") || strings.Contains(err.Error(), "eyJzdWIi") || !strings.Contains(he.Body, "[REDACTED JWT]") {
		t.Errorf("body %q, error %q: want the JWT redacted", he.Body, err)
	}
}

// Attribute values a DICOM server quotes in an error answer (Azure's
// "Content \"...\" does not validate VR ...") are patient data: the answer
// kept in the error (logs, dead letters) has them removed.
func TestHTTPErrorRedactsQuotedValues(t *testing.T) {
	body := `{"type":"about:blank","title":"Bad Request","status":400,` +
		`"detail":"DICOM100: (0010,0010) - Content \"DOE^JANE\" does not validate VR PN: value exceeds the maximum length"}`
	he, err := storeRefused(t, http.StatusBadRequest, http.Header{"Content-Type": {"application/problem+json"}}, body)
	if strings.Contains(he.Body, "DOE^JANE") || strings.Contains(err.Error(), "DOE^JANE") ||
		!strings.Contains(he.Body, `(0010,0010) - Content \"[value removed]\" does not validate VR PN`) {
		t.Errorf("body %q, error %q: want the patient's name removed, the rest kept", he.Body, err)
	}
}

// The same answer from a server whose JSON writes quotes as \u escapes
// (System.Text.Json's default encoder, which Azure's DICOM service
// keeps): the value is removed all the same.
func TestHTTPErrorRedactsUnicodeEscapedValues(t *testing.T) {
	body := `{"type":"about:blank","title":"Bad Request","status":400,` +
		`"detail":"DICOM100: (0010,0010) - Dicom element \u0027PatientName\u0027 with value \u0027DOE^JANE\u0027 does not validate VR \u0027PN\u0027: Value contains invalid character."}`
	he, err := storeRefused(t, http.StatusBadRequest, http.Header{"Content-Type": {"application/problem+json"}}, body)
	if strings.Contains(he.Body, "DOE^JANE") || strings.Contains(err.Error(), "DOE^JANE") ||
		!strings.Contains(he.Body, `with value \u0027[value removed]\u0027 does not validate VR`) {
		t.Errorf("body %q, error %q: want the patient's name removed, the rest kept", he.Body, err)
	}
}

func TestRedactValues(t *testing.T) {
	tests := []struct{ in, want string }{
		{`DICOM100: (0010,0020) - Content "PID 12345" does not validate VR LO: value contains invalid character`,
			`DICOM100: (0010,0020) - Content "[value removed]" does not validate VR LO: value contains invalid character`},
		{`(0010,0010) - Content \"DOE^JANE\" does not validate VR PN`, `(0010,0010) - Content \"[value removed]\" does not validate VR PN`},
		{`invalid value 'Smith' for tag (0010,0010); value 'Jones' too`, `invalid value '[value removed]' for tag (0010,0010); value '[value removed]' too`},
		{`invalid value 'O'Brien^Pat' for tag (0010,0010)`, `invalid value '[value removed]' for tag (0010,0010)`},
		{`Content "1.2.840.10008.1.2.4.50" is not a supported transfer syntax`, `Content "1.2.840.10008.1.2.4.50" is not a supported transfer syntax`},
		{`(0010,0020) - Content "12345678" does not validate VR LO`, `(0010,0020) - Content "[value removed]" does not validate VR LO`},
		{`Content "" is empty`, `Content "" is empty`},
		{`Content "DOE^JA`, `Content "[value removed]`},
		{`no value quoted here: Content is fine`, `no value quoted here: Content is fine`},
		{`{"error":"Value out of range"}`, `{"error":"Value out of range"}`},
		// JSON encoders that write quotes as \u escapes: System.Text.Json's
		// default (Azure's DICOM service), Google's.
		{`{"detail":"Dicom element \u0027PatientName\u0027 with value \u0027DOE^JANE\u0027 does not validate VR \u0027PN\u0027"}`,
			`{"detail":"Dicom element \u0027PatientName\u0027 with value \u0027[value removed]\u0027 does not validate VR \u0027PN\u0027"}`},
		{`{"detail":"(0010,0010) - Content \u0022DOE^JANE\u0022 does not validate VR PN"}`,
			`{"detail":"(0010,0010) - Content \u0022[value removed]\u0022 does not validate VR PN"}`},
		{`with value \u0027O\u0027Brien^Pat\u0027 does not`, `with value \u0027[value removed]\u0027 does not`},
		{`with value \u0027D\u0027\u00C1vila^Ana\u0027 does not`, `with value \u0027[value removed]\u0027 does not`},
		{`with value \u00271.2.840.10008.1.2.1\u0027 is fine`, `with value \u00271.2.840.10008.1.2.1\u0027 is fine`},
		{`Content \u0022DOE^JA`, `Content \u0022[value removed]`},
		// The same body wrapped in a gateway's JSON string: escaped twice.
		{`{"message":"{\"detail\":\"(0010,0010) - Content \\\"DOE^JANE\\\" does not validate VR PN\"}"}`,
			`{"message":"{\"detail\":\"(0010,0010) - Content \\\"[value removed]\\\" does not validate VR PN\"}"}`},
		{`{"message":"with value \\u0027D\\u0027\\u00C1vila^Ana\\u0027 does not"}`, `{"message":"with value \\u0027[value removed]\\u0027 does not"}`},
		{`Content \'DOE^JANE\' does not`, `Content \'[value removed]\' does not`},
		// A nickname in quotes inside a name; the keyword followed by a
		// colon or an equals sign, or a JSON key.
		{`(0010,0010) - Content "SMITH^ROBERT "BOBBY"" does not validate VR PN`, `(0010,0010) - Content "[value removed]" does not validate VR PN`},
		{`(0010,0010) - Content "DOE^JANE "JJ" MARIE" does not validate VR PN`, `(0010,0010) - Content "[value removed]" does not validate VR PN`},
		{`(0010,0010) - Content "SMITH^"BOBBY" ROBERT" does not validate VR PN`, `(0010,0010) - Content "[value removed]" does not validate VR PN`},
		{`(0010,0010) - Content "DOE^JANE ("JJ") MARIE" does not validate VR PN`, `(0010,0010) - Content "[value removed]" does not validate VR PN`},
		{`(0010,0010) - Content "DOE^JANE "#1" MARIE" does not validate VR PN`, `(0010,0010) - Content "[value removed]" does not validate VR PN`},
		// A value ending in a backslash does not swallow the next one's
		// opening quote.
		{`(0010,0020) - Content "PID\" does not validate VR LO; (0010,0010) - Content "(555) 123 SMITH" does not validate VR PN`,
			`(0010,0020) - Content "[value removed]" does not validate VR LO; (0010,0010) - Content "[value removed]" does not validate VR PN`},
		// VR UI named for another attribute, after this one's tag.
		{`Value '756.1234.5678.97' of (0010,0020) conflicts with (0020,000D) VR UI`, `Value '[value removed]' of (0010,0020) conflicts with (0020,000D) VR UI`},
		// A string value ending in punctuation, then JSON: its structure stays.
		{`{"value":"DOE.","next":"x"}`, `{"value":"[value removed]","next":"x"}`},
		{`{"detail":"(0010,0010) - Content \"DOE^JANE \\\"JJ\\\" MARIE\" does not validate VR PN"}`,
			`{"detail":"(0010,0010) - Content \"[value removed]\" does not validate VR PN"}`},
		{`Value '756.1234.5678.97' of (0010,0020) is invalid`, `Value '[value removed]' of (0010,0020) is invalid`},
		{`Invalid value: "DOE^JOHN" for (0010,0010)`, `Invalid value: "[value removed]" for (0010,0010)`},
		{`value="PID12345"; Value:"PID2"`, `value="[value removed]"; Value:"[value removed]"`},
		{`{"field":"PatientID","value":"PID12345"}`, `{"field":"PatientID","value":"[value removed]"}`},
		// A UID-shaped value of another VR.
		{`(0010,0020) - Content "756.1234.5678.97" does not validate VR LO`, `(0010,0020) - Content "[value removed]" does not validate VR LO`},
		{`with value \u0027756.1234.5678.97\u0027 does not validate VR \u0027LO\u0027`, `with value \u0027[value removed]\u0027 does not validate VR \u0027LO\u0027`},
		{`(0020,000D) - Content "1.2.3.4" does not validate VR UI`, `(0020,000D) - Content "1.2.3.4" does not validate VR UI`},
	}
	for _, tt := range tests {
		if got := redactValues(tt.in); got != tt.want {
			t.Errorf("redactValues(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactDICOMValues(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JANE","Ideographic":"\"quoted\""}]},"00100020":{"vr":"LO","Value":["PID-1", "PID-2"]}}`,
			`{"00100010":{"vr":"PN","Value":[{"Alphabetic":"[value removed]","Ideographic":"[value removed]"}]},"00100020":{"vr":"LO","Value":["[value removed]", "[value removed]"]}}`},
		{`{"00081155":{"vr":"UI","Value":["1.2.840.113619.2.1"]},"00101030":{"vr":"DS","Value":[72.5]}}`,
			`{"00081155":{"vr":"UI","Value":["1.2.840.113619.2.1"]},"00101030":{"vr":"DS","Value":[72.5]}}`},
		{`{"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JA…`, `{"00100010":{"vr":"PN","Value":[{"Alphabetic":"[value removed]"`},
		{`{"00100020":{"vr":"LO","Value":["PID-`, `{"00100020":{"vr":"LO","Value":["[value removed]"`},
		{`<DicomAttribute tag="00100010" vr="PN" keyword="PatientName"><PersonName number="1"><Alphabetic><FamilyName>Doe</FamilyName><GivenName>Jane</GivenName></Alphabetic></PersonName></DicomAttribute>`,
			`<DicomAttribute tag="00100010" vr="PN" keyword="PatientName"><PersonName number="1"><Alphabetic><FamilyName>[value removed]</FamilyName><GivenName>[value removed]</GivenName></Alphabetic></PersonName></DicomAttribute>`},
		{`<Value number="1">1.2.3</Value><Value number="2">ACC-9`, `<Value number="1">[value removed]</Value><Value number="2">[value removed]`},
		// Only an attribute of VR UI keeps a value shaped like a UID: a
		// Swiss AHV number is a Patient ID, dots and all.
		{`{"00100020":{"vr":"LO","Value":["756.1234.5678.97"]},"0020000D":{"vr":"UI","Value":["1.2.3.4"]},"00101000":{"Value":["12.345.678"],"vr":"UI"}}`,
			`{"00100020":{"vr":"LO","Value":["[value removed]"]},"0020000D":{"vr":"UI","Value":["1.2.3.4"]},"00101000":{"Value":["[value removed]"],"vr":"UI"}}`},
		{`{"00100010":{"vr":"PN","Value":[{"Alphabetic":"1.2.3"}]}}`, `{"00100010":{"vr":"PN","Value":[{"Alphabetic":"[value removed]"}]}}`},
		{`{"0020000D":{"vr":"UI","Value":["1.2.3.4"]}}`, `{"0020000D":{"vr":"UI","Value":["1.2.3.4"]}}`},
		{`<DicomAttribute tag="00081199" vr="SQ"><Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.4</Value></DicomAttribute>` +
			`<DicomAttribute tag="00100020" vr="LO"><Value number="1">756.1234.5678.97</Value></DicomAttribute></Item></DicomAttribute>`,
			`<DicomAttribute tag="00081199" vr="SQ"><Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.4</Value></DicomAttribute>` +
				`<DicomAttribute tag="00100020" vr="LO"><Value number="1">[value removed]</Value></DicomAttribute></Item></DicomAttribute>`},
		// A namespace prefix, a CDATA section, one cut short.
		{`<dcm:DicomAttribute tag="00100010" vr="PN"><dcm:PersonName number="1"><dcm:Alphabetic><dcm:FamilyName>DOE</dcm:FamilyName><dcm:GivenName>JOHN</dcm:GivenName>`,
			`<dcm:DicomAttribute tag="00100010" vr="PN"><dcm:PersonName number="1"><dcm:Alphabetic><dcm:FamilyName>[value removed]</dcm:FamilyName><dcm:GivenName>[value removed]</dcm:GivenName>`},
		{`<DicomAttribute tag="00100020" vr="LO"><Value number="1"><![CDATA[PID<12345>]]></Value></DicomAttribute><Value number="1">A<![CDATA[PID12`,
			`<DicomAttribute tag="00100020" vr="LO"><Value number="1">[value removed]</Value></DicomAttribute><Value number="1">[value removed]`},
		{`{"HttpError":"Unsupported Media Type","HttpStatus":415}`, `{"HttpError":"Unsupported Media Type","HttpStatus":415}`},
		// Digits alone are no UID: a Patient ID, a birth date.
		{`{"00100020":{"vr":"LO","Value":["12345678"]},"00100030":{"vr":"DA","Value":["19800101"]}}`,
			`{"00100020":{"vr":"LO","Value":["[value removed]"]},"00100030":{"vr":"DA","Value":["[value removed]"]}}`},
		{`<Value number="1">19800101</Value>`, `<Value number="1">[value removed]</Value>`},
		// A data set inside a gateway's JSON string.
		{`{"message":"{\"00100010\":{\"vr\":\"PN\",\"Value\":[{\"Alphabetic\":\"DOE^JANE\"}]},\"00100020\":{\"vr\":\"LO\",\"Value\":[\"PID \\\"7\\\"\"]}}"}`,
			`{"message":"{\"00100010\":{\"vr\":\"PN\",\"Value\":[{\"Alphabetic\":\"[value removed]\"}]},\"00100020\":{\"vr\":\"LO\",\"Value\":[\"[value removed]\"]}}"}`},
		{`{"field":"PatientID","value":["PID12345"]}`, `{"field":"PatientID","value":["[value removed]"]}`},
		// Empty values stay: no patient data, and a body of many grows
		// no longer.
		{`{"00100020":{"vr":"LO","Value":["", " "]}}<Value number="1"></Value>`, `{"00100020":{"vr":"LO","Value":["", " "]}}<Value number="1"></Value>`},
		// A bracket inside a value does not end the array.
		{`{"00081030":{"vr":"LO","Value":["A]B", "C"]}}`, `{"00081030":{"vr":"LO","Value":["[value removed]", "[value removed]"]}}`},
	}
	for _, tt := range tests {
		if got := redactDICOMValues(tt.in); got != tt.want {
			t.Errorf("redactDICOMValues(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

// The headers an error answer brings into logs and dead letters are
// bounded, and a redirect's target loses its query (a signed URL).
func TestHTTPErrorHeadersBounded(t *testing.T) {
	he, err := storeRefused(t, http.StatusTemporaryRedirect, http.Header{
		"Content-Type": {"text/plain; x=" + strings.Repeat("a", 100_000)},
		"Location":     {"https://elsewhere.example.org/dicomweb?sig=secret-0123"},
	}, "")
	if len(err.Error()) > 1000 || strings.Contains(err.Error(), "secret-0123") || !strings.Contains(he.Location, "elsewhere.example.org/dicomweb") {
		t.Errorf("error of %d bytes, Location %q: want it bounded, the redirect's host and path, no query", len(err.Error()), he.Location)
	}
}

// storeRefused sends one instance to a destination that answers status
// with header and body, and returns the HTTPError.
func storeRefused(t *testing.T, status int, header http.Header, body string) (*HTTPError, error) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		maps.Copy(w.Header(), header)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	_, err := newTestClient(t, srv.URL).Store(t.Context(), []Part{memPart("1.2.3", []byte("x"))})
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != status {
		t.Fatalf("err = %v, want HTTPError %d", err, status)
	}
	return he, err
}

// A 401 says why in its WWW-Authenticate challenge (RFC 6750 3: error,
// error_description), its body often empty: the error kept in
// logs and dead letters quotes them, so a refused audience or issuer can
// be told from an expired or revoked token.
func TestHTTPErrorQuotesTheChallenge(t *testing.T) {
	const azure = `Bearer authorization_uri="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/authorize", ` +
		`resource_id="https://dicom.healthcareapis.azure.com", realm="https://dicom.healthcareapis.azure.com", ` +
		`error="invalid_token", error_description="The access token is from wrong audience or resource."`
	tests := []struct {
		name, challenge, body string
		want                  string
	}{
		{"azure, no body", azure, "", `stow: server answered 401 Unauthorized: invalid_token: The access token is from wrong audience or resource.`},
		{"google, with a body", `Bearer realm="https://accounts.google.com/", error="invalid_token"`, `{"error":{"code":401,"message":"Request had invalid authentication credentials."}}`,
			`stow: server answered 401 Unauthorized (text/plain; charset=utf-8): invalid_token: {"error":{"code":401,"message":"Request had invalid authentication credentials."}}`},
		{"no error parameter", `Bearer realm="stow"`, "", "stow: server answered 401 Unauthorized"},
		{"insufficient scope", `Bearer error="insufficient_scope", error_description="needs dicom.write", scope="dicom.write"`, "", `stow: server answered 401 Unauthorized: insufficient_scope: needs dicom.write`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := storeRefused(t, http.StatusUnauthorized, http.Header{"Www-Authenticate": {tt.challenge}}, tt.body)
			if err.Error() != tt.want {
				t.Errorf("error %q, want %q", err, tt.want)
			}
		})
	}
}
