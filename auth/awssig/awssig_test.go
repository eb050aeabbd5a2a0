package awssig

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
)

// The credentials, date, region and service of AWS's published Signature
// Version 4 test suite (aws-sig-v4-test-suite, "Signature Version 4 test
// suite" in the AWS General Reference).
const (
	suiteKeyID  = "AKIDEXAMPLE"
	suiteSecret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	suiteToken  = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
	suiteScope  = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
)

var suiteTime = time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestPublishedVectors signs the suite's requests through sign, the
// code path of the Transport, and compares the Authorization header with
// the suite's .authz files; the test's own SigV4 verifier, used below on
// what the server receives, must accept each of them too.
func TestPublishedVectors(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		target  string
		headers map[string]string
		body    string
		token   bool
		signed  string
		sig     string
	}{
		{name: "get-vanilla", method: "GET", target: "/", signed: "host;x-amz-date", sig: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
		{name: "get-vanilla-query-order-key-case", method: "GET", target: "/?Param2=value2&Param1=value1", signed: "host;x-amz-date", sig: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
		{name: "post-vanilla", method: "POST", target: "/", signed: "host;x-amz-date", sig: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
		{name: "post-vanilla-query", method: "POST", target: "/?Param1=value1", signed: "host;x-amz-date", sig: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"},
		{name: "post-header-key-case", method: "POST", target: "/", headers: map[string]string{"My-Header1": "value1"}, signed: "host;my-header1;x-amz-date", sig: "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"},
		{name: "post-header-value-case", method: "POST", target: "/", headers: map[string]string{"My-Header1": "VALUE1"}, signed: "host;my-header1;x-amz-date", sig: "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
		{name: "post-x-www-form-urlencoded", method: "POST", target: "/", headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, body: "Param1=value1", signed: "content-type;host;x-amz-date", sig: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
		{name: "post-sts-token/post-sts-header-before", method: "POST", target: "/", token: true, signed: "host;x-amz-date;x-amz-security-token", sig: "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The suite's requests carry no Content-Length header, so
			// none is signed: the body only goes into the payload hash.
			req, err := http.NewRequest(tt.method, "https://example.amazonaws.com"+tt.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			creds := aws.Credentials{AccessKeyID: suiteKeyID, SecretAccessKey: suiteSecret}
			if tt.token {
				creds.SessionToken = suiteToken
			}
			payload := sha(tt.body)
			if err := sign(context.Background(), v4.NewSigner(), creds, req, payload, "service", "us-east-1", suiteTime); err != nil {
				t.Fatal(err)
			}
			want := "AWS4-HMAC-SHA256 Credential=" + suiteScope + ", SignedHeaders=" + tt.signed + ", Signature=" + tt.sig
			if got := req.Header.Get("Authorization"); got != want {
				t.Errorf("Authorization:\n got %s\nwant %s", got, want)
			}
			if req.Header.Get("X-Amz-Date") != "20150830T123600Z" {
				t.Errorf("X-Amz-Date = %q", req.Header.Get("X-Amz-Date"))
			}
			req.Host = req.URL.Host
			if err := verifySigV4(req, payload, suiteSecret); err != nil {
				t.Errorf("the test's verifier rejects the published vector: %v", err)
			}
		})
	}
}

// verifySigV4 checks r's Authorization header by recomputing the
// signature from r as received, independently of the SDK: canonical
// request, string to sign, derived key (Signature Version 4 signing
// process, tasks 1 to 4).
func verifySigV4(r *http.Request, payloadHash, secret string) error {
	authz := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(authz, "AWS4-HMAC-SHA256 ")
	if !ok {
		return fmt.Errorf("not SigV4: %q", authz)
	}
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ", ") {
		k, v, _ := strings.Cut(f, "=")
		fields[k] = v
	}
	scope := strings.SplitN(fields["Credential"], "/", 2)
	if len(scope) != 2 {
		return fmt.Errorf("credential %q", fields["Credential"])
	}
	parts := strings.Split(scope[1], "/") // date/region/service/aws4_request
	signed := strings.Split(fields["SignedHeaders"], ";")
	var canon strings.Builder
	for _, h := range signed {
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = strconv.FormatInt(r.ContentLength, 10)
		default:
			// A signed header the request does not carry is refused: a
			// service may not read it as empty, as this check would.
			if len(r.Header.Values(h)) == 0 {
				return fmt.Errorf("signed header %q is not in the request", h)
			}
			v = strings.Join(strings.Fields(strings.Join(r.Header.Values(h), ",")), " ")
		}
		canon.WriteString(h + ":" + v + "\n")
	}
	q := r.URL.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var query []string
	for _, k := range keys {
		vs := slices.Clone(q[k])
		slices.Sort(vs)
		for _, v := range vs {
			query = append(query, url.QueryEscape(k)+"="+strings.ReplaceAll(url.QueryEscape(v), "+", "%20"))
		}
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	creq := strings.Join([]string{r.Method, path, strings.Join(query, "&"), canon.String(), fields["SignedHeaders"], payloadHash}, "\n")
	sts := strings.Join([]string{"AWS4-HMAC-SHA256", r.Header.Get("X-Amz-Date"), scope[1], sha(creq)}, "\n")
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	key := []byte("AWS4" + secret)
	for _, p := range parts {
		key = mac(key, p)
	}
	if got := hex.EncodeToString(mac(key, sts)); got != fields["Signature"] {
		return fmt.Errorf("signature %s, recomputed %s\ncanonical request:\n%s", fields["Signature"], got, creq)
	}
	return nil
}

// staticCreds are temporary credentials, as from IRSA or instance roles.
func staticCreds() aws.CredentialsProvider {
	return aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret/EXAMPLE+key", SessionToken: "session-token", Source: "test"}, nil
	})
}

// TestStreamedBodySigned sends a body that is still being written when
// the server has the headers (the signer must not read it) and checks on
// the server side the documented HealthImaging headers and the signature.
func TestStreamedBodySigned(t *testing.T) {
	const first, total = 64 << 10, 5 << 20
	headersSeen := make(chan struct{})
	var verr error
	var gotBytes int64
	var gotHeader http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHeader = r.Header.Clone()
		verr = verifySigV4(r, r.Header.Get("X-Amz-Content-Sha256"), "secret/EXAMPLE+key")
		close(headersSeen)
		gotBytes, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	rt, err := Transport(staticCreds(), "eu-west-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(bytes.Repeat([]byte{'a'}, first))
		select {
		case <-headersSeen:
			_, _ = pw.Write(bytes.Repeat([]byte{'b'}, total-first))
			_ = pw.Close()
		case <-time.After(5 * time.Second):
			_ = pw.CloseWithError(errors.New("the server never got the headers: the signer waits for the body"))
		}
	}()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/datastore/d9a2a515ab294163a2d2f4069eed584c/studies", pr)
	req.ContentLength = total
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=x`)
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if verr != nil {
		t.Fatalf("server-side verification: %v", verr)
	}
	if gotBytes != total || gotHeader.Get("X-Amz-Content-Sha256") != streamingPayload ||
		gotHeader.Get("X-Amz-Decoded-Content-Length") != strconv.Itoa(total) || gotHeader.Get("X-Amz-Security-Token") != "session-token" {
		t.Errorf("received %d bytes, headers %v", gotBytes, gotHeader)
	}
	authz := gotHeader.Get("Authorization")
	for _, want := range []string{"Credential=ASIAEXAMPLE/", "/eu-west-1/medical-imaging/aws4_request",
		"SignedHeaders=accept;content-length;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-security-token"} {
		if !strings.Contains(authz, want) {
			t.Errorf("Authorization %q lacks %q", authz, want)
		}
	}
	if strings.Contains(authz, "secret/EXAMPLE") {
		t.Error("the secret key is in the header")
	}
}

// TestSTOWThroughSigner: a STOW-RS request of the real client, with its
// length announced, reaches the server signed and intact.
func TestSTOWThroughSigner(t *testing.T) {
	parts := map[string][]byte{"1.2.3.1": bytes.Repeat([]byte{1}, 1000), "1.2.3.2": bytes.Repeat([]byte{2}, 70000)}
	var verr error
	var got map[string]int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		verr = verifySigV4(r, r.Header.Get("X-Amz-Content-Sha256"), "secret/EXAMPLE+key")
		if r.Header.Get("X-Amz-Decoded-Content-Length") != strconv.FormatInt(r.ContentLength, 10) || len(r.TransferEncoding) > 0 {
			verr = errors.Join(verr, fmt.Errorf("length %d, decoded %q, transfer encoding %v", r.ContentLength, r.Header.Get("X-Amz-Decoded-Content-Length"), r.TransferEncoding))
		}
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		mr := multipart.NewReader(r.Body, params["boundary"])
		got = map[string]int{}
		var uids []string
		for i := 0; ; i++ {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			n, _ := io.Copy(io.Discard, p)
			uid := fmt.Sprintf("1.2.3.%d", i+1)
			got[uid] = int(n)
			uids = append(uids, `{"00081155":{"vr":"UI","Value":["`+uid+`"]}}`)
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, `{"00081199":{"vr":"SQ","Value":[`+strings.Join(uids, ",")+`]}}`)
	}))
	t.Cleanup(srv.Close)
	rt, _ := Transport(staticCreds(), "us-east-1", nil)
	client, err := dicomweb.New(srv.URL+"/datastore/abc", &http.Client{Transport: rt}, dicomweb.WithContentLength())
	if err != nil {
		t.Fatal(err)
	}
	var ps []dicomweb.Part
	for _, uid := range []string{"1.2.3.1", "1.2.3.2"} {
		data := parts[uid]
		ps = append(ps, dicomweb.Part{SOPInstanceUID: uid, Size: int64(len(data)), Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}})
	}
	res, err := client.Store(t.Context(), ps)
	if err != nil {
		t.Fatal(err)
	}
	if verr != nil {
		t.Fatal(verr)
	}
	if len(res.Stored) != 2 || got["1.2.3.1"] != 1000 || got["1.2.3.2"] != 70000 {
		t.Errorf("stored %d, received %v", len(res.Stored), got)
	}
}

func TestUnknownLengthAndNoCredentials(t *testing.T) {
	rt, _ := Transport(staticCreds(), "us-east-1", nil)
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/studies", io.NopCloser(strings.NewReader("x")))
	req.ContentLength = -1
	if _, err := rt.RoundTrip(req); !errors.Is(err, errUnknownLength) {
		t.Errorf("unknown length: %v", err)
	}
	none := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{}, errors.New("no EC2 IMDS role found")
	})
	rt, _ = Transport(none, "us-east-1", nil)
	req, _ = http.NewRequest(http.MethodGet, "http://127.0.0.1:1/studies", nil)
	if _, err := rt.RoundTrip(req); !errors.Is(err, errCredentials) || !strings.Contains(err.Error(), "IMDS") {
		t.Errorf("no credentials: %v", err)
	}
}

// A signed request redirected to another origin is refused before the
// signature is sent there.
func TestCrossOriginRedirectRefused(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/x", http.StatusFound)
	}))
	t.Cleanup(dest.Close)
	rt, err := Transport(staticCreds(), "us-east-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&http.Client{Transport: rt}).Get(dest.URL + "/datastore/abc/studies")
	if !errors.Is(err, auth.ErrCrossOriginRedirect) || elsewhere.Load() != 0 {
		t.Errorf("err = %v, %d requests elsewhere; want ErrCrossOriginRedirect and none", err, elsewhere.Load())
	}
}

// countingProvider hands out credentials valid for life and counts its
// fetches.
type countingProvider struct {
	life    time.Duration
	fetches atomic.Int32
}

func (p *countingProvider) Retrieve(context.Context) (aws.Credentials, error) {
	p.fetches.Add(1)
	return aws.Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret", CanExpire: true, Expires: time.Now().Add(p.life)}, nil
}

// TestExpiryWindowBelowTheShortestCredentials: OAUTH_REFRESH_MARGIN=30m
// with 15-minute credentials (the shortest STS session) still reuses them:
// a window longer than their life had the SDK's cache fetch new ones for
// every request.
func TestExpiryWindowBelowTheShortestCredentials(t *testing.T) {
	p := &countingProvider{life: 15 * time.Minute}
	cache := aws.NewCredentialsCache(p, func(o *aws.CredentialsCacheOptions) {
		o.ExpiryWindow = expiryWindow(30 * time.Minute)
		o.ExpiryWindowJitterFrac = 0.2
	})
	for range 100 {
		if _, err := cache.Retrieve(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.fetches.Load(); n != 1 {
		t.Errorf("%d credential fetches for 100 requests, want 1", n)
	}
	if w := expiryWindow(2 * time.Minute); w != 2*time.Minute {
		t.Errorf("a 2m margin became %v", w)
	}
}

// TestExpiryWindowBounds: OAUTH_REFRESH_MARGIN promises a credential
// replaced at least 20 s before it expires; a margin of 0 (or 10s) left
// the SDK's cache handing out credentials in their last instants, and a
// request signed then (the connection made after signing) reached
// HealthImaging expired: 403, dead-lettered at once. The jitter the cache
// takes off (up to a fifth) is counted.
func TestExpiryWindowBounds(t *testing.T) {
	tests := []struct {
		margin, want time.Duration
	}{
		{0, 25 * time.Second},
		{10 * time.Second, 25 * time.Second},
		{25 * time.Second, 25 * time.Second},
		{2 * time.Minute, 2 * time.Minute},
		{5 * time.Minute, 5 * time.Minute},
		{30 * time.Minute, maxExpiryWindow},
	}
	for _, tt := range tests {
		w := expiryWindow(tt.margin)
		if w != tt.want {
			t.Errorf("margin %v: window %v, want %v", tt.margin, w, tt.want)
		}
		if least := w - w/5; least < 20*time.Second {
			t.Errorf("margin %v: after jitter, credentials are replaced %v before expiry, want at least 20s", tt.margin, least)
		}
	}
}

// A host whose clock is an hour off has its first request refused, as
// AWS does (403, "Signature expired"): that refusal is an error to retry,
// not a 403 to dead-letter, and the next request is signed at AWS's time
// (its answers' Date) and accepted. A 403 while the clocks agree stays a
// 403.
func TestClockSkewCorrected(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ahead time.Duration // AWS's clock from this host's
	}{
		{"AWS ahead", time.Hour},
		{"AWS behind", -20 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var forbid atomic.Bool // refuse every request, whatever its time
			srv, _ := skewedAWS(t, func(int32) time.Duration { return tc.ahead }, func(w http.ResponseWriter, r *http.Request) {
				if forbid.Load() {
					w.WriteHeader(http.StatusForbidden)
					io.WriteString(w, `{"__type":"AccessDeniedException"}`)
				}
			})
			get := studiesGetter(t, staticCreds(), srv.URL)
			if status, err := get(); !errors.Is(err, auth.ErrClockSkew) {
				t.Fatalf("first request: status %d, err %v; want the clock refusal as an error", status, err)
			}
			if status, err := get(); err != nil || status != http.StatusOK {
				t.Fatalf("second request: status %d, err %v; want it signed at AWS's time and accepted", status, err)
			}
			forbid.Store(true)
			if status, err := get(); err != nil || status != http.StatusForbidden {
				t.Errorf("a 403 with the clocks agreeing: status %d, err %v; want the 403", status, err)
			}
		})
	}
}

// A STOW-RS request AWS refuses for this host's clock is sent again at
// once by the dicomweb client, signed at AWS's time: every request in
// flight when the clock went off (up to 16 per destination) is refused
// alike, and as ErrNoAnswer they counted the destination down for its
// breaker. One refused again (AWS's clock jumping) is returned as the
// clock's refusal, not as no answer. Nothing was stored: not Resent.
func TestSTOWRefusedForTheClockSentAgain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ahead   func(n int32) time.Duration // AWS's clock from this host's at its nth request
		stores  int                         // at once
		refused bool                        // the second sending too
	}{
		{"AWS an hour ahead", func(int32) time.Duration { return time.Hour }, 1, false},
		{"AWS an hour ahead, requests in flight", func(int32) time.Duration { return time.Hour }, 4, false},
		{"AWS's clock jumping", func(n int32) time.Duration { return time.Duration(n) * time.Hour }, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, requests := skewedAWS(t, tc.ahead, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/dicom+json")
				io.WriteString(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3.1"]}}]}}`)
			})
			rt, _ := Transport(staticCreds(), "us-east-1", nil)
			client, err := dicomweb.New(srv.URL+"/datastore/abc", &http.Client{Transport: rt}, dicomweb.WithContentLength())
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte{1}, 1000)
			parts := []dicomweb.Part{{SOPInstanceUID: "1.2.3.1", Size: int64(len(data)), Open: func(context.Context) (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(data)), nil
			}}}
			type answer struct {
				res *dicomweb.Result
				err error
			}
			answers := make(chan answer, tc.stores)
			for range tc.stores {
				go func() {
					res, err := client.Store(t.Context(), parts)
					answers <- answer{res, err}
				}()
			}
			for range tc.stores {
				a := <-answers
				switch {
				case tc.refused && (!errors.Is(a.err, auth.ErrClockSkew) || errors.Is(a.err, dicomweb.ErrNoAnswer)):
					t.Errorf("refused twice: err %v (no answer: %t); want the clock's refusal, not no answer",
						a.err, errors.Is(a.err, dicomweb.ErrNoAnswer))
				case !tc.refused && a.err != nil:
					t.Errorf("err %v (no answer: %t); want the request sent again at AWS's time and stored",
						a.err, errors.Is(a.err, dicomweb.ErrNoAnswer))
				case !tc.refused && (len(a.res.Stored) != 1 || a.res.Resent):
					t.Errorf("stored %d, resent %t; want 1 stored, not resent", len(a.res.Stored), a.res.Resent)
				}
			}
			if n := requests.Load(); n > int32(2*tc.stores) || tc.refused && n != int32(2*tc.stores) {
				t.Errorf("%d requests for %d stores; want each sent again once (at most, when accepted)", n, tc.stores)
			}
		})
	}
}

// A request without a body AWS refuses for this host's clock (a QIDO-RS
// search: a verification or a breaker's probe; a DELETE of
// delete-and-replace) is sent again at once, signed at AWS's time, as a
// STOW-RS request is (TestSTOWRefusedForTheClockSentAgain). As
// ErrNoAnswer the refusal counted the destination down: a probe kept its
// breaker open one more interval, a verification failed for an outage.
// Refused again (AWS's clock jumping), it is the clock's refusal, not no
// answer, and not sent a third time.
func TestBodilessRefusedForTheClockSentAgain(t *testing.T) {
	const study, series, sop = "1.2.3", "1.2.3.4", "1.2.3.4.5"
	requests := []struct {
		name string
		send func(context.Context, *dicomweb.Client) error
	}{
		{"QIDO-RS search", func(ctx context.Context, c *dicomweb.Client) error {
			uids, err := c.StudyInstanceUIDs(ctx, study, dicomweb.Expected{UIDs: []string{sop}})
			if err == nil && !slices.Equal(uids, []string{sop}) {
				return fmt.Errorf("listed %v; want [%s]", uids, sop)
			}
			return err
		}},
		{"probe", func(ctx context.Context, c *dicomweb.Client) error { return c.Probe(ctx, study) }},
		{"DELETE", func(ctx context.Context, c *dicomweb.Client) error { return c.DeleteInstance(ctx, study, series, sop) }},
	}
	clocks := []struct {
		name    string
		ahead   func(n int32) time.Duration // AWS's clock from this host's at its nth request
		refused bool                        // the second sending too
	}{
		{"AWS an hour ahead", func(int32) time.Duration { return time.Hour }, false},
		{"AWS's clock jumping", func(n int32) time.Duration { return time.Duration(n) * time.Hour }, true},
	}
	for _, rq := range requests {
		for _, clock := range clocks {
			t.Run(rq.name+"/"+clock.name, func(t *testing.T) {
				srv, sent := skewedAWS(t, clock.ahead, func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						w.Header().Set("Content-Type", "application/dicom+json")
						io.WriteString(w, `[{"00080018":{"vr":"UI","Value":["`+sop+`"]}}]`)
					}
				})
				rt, _ := Transport(staticCreds(), "us-east-1", nil)
				client, err := dicomweb.New(srv.URL+"/datastore/abc", &http.Client{Transport: rt})
				if err != nil {
					t.Fatal(err)
				}
				err = rq.send(t.Context(), client)
				switch {
				case clock.refused && (!errors.Is(err, auth.ErrClockSkew) || errors.Is(err, dicomweb.ErrNoAnswer)):
					t.Errorf("refused twice: err %v (no answer: %t); want the clock's refusal, not no answer",
						err, errors.Is(err, dicomweb.ErrNoAnswer))
				case !clock.refused && err != nil:
					t.Errorf("err %v (no answer: %t); want the request sent again at AWS's time and answered",
						err, errors.Is(err, dicomweb.ErrNoAnswer))
				}
				if n := sent.Load(); n != 2 {
					t.Errorf("%d requests; want the refused one sent again once", n)
				}
			})
		}
	}
}

// TestHungCredentialFetchEnds: a credential fetch whose endpoint takes the
// request and never answers (an STS behind a stalled proxy) must end. The
// SDK's cache runs one fetch for all callers with their cancellation
// suppressed, and its default HTTP client has no overall timeout: a hung
// fetch held every later request of the destination until a restart. The
// first STS request here hangs; the second answers.
func TestHungCredentialFetchEnds(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>AKIDHUNG</AccessKeyId><SecretAccessKey>secret</SecretAccessKey><SessionToken>token</SessionToken><Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	}))
	t.Cleanup(sts.Close)
	t.Cleanup(func() { close(release) })

	dir := t.TempDir()
	tokenFile := dir + "/token"
	if err := os.WriteFile(tokenFile, []byte("web-identity-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
		"AWS_CONFIG_FILE": dir + "/none", "AWS_SHARED_CREDENTIALS_FILE": dir + "/none",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/stowline",
		"AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile, "AWS_ENDPOINT_URL_STS": sts.URL,
	} {
		t.Setenv(k, v)
	}
	creds, err := loadCredentials(t.Context(), "us-east-1", time.Minute, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got, err := creds.Retrieve(ctx)
	if err != nil {
		t.Fatalf("credentials after a hung STS request: %v (STS requests: %d)", err, calls.Load())
	}
	if got.AccessKeyID != "AKIDHUNG" {
		t.Errorf("access key %q", got.AccessKeyID)
	}
}

// On a host whose clock is behind AWS's by more than the cache's refresh
// margin, the cache took credentials AWS had expired for valid (it reads
// their expiry by the host's clock): every request was refused with 403
// ExpiredToken until the host's clock caught up. Once AWS's clock is
// known, credentials it has expired are fetched again.
func TestCredentialsExpiredByAWSClockFetchedAgain(t *testing.T) {
	const ahead = time.Hour // AWS's clock from this host's
	var fetches atomic.Int32
	cache := aws.NewCredentialsCache(aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		n := fetches.Add(1)
		return aws.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret/EXAMPLE+key", SessionToken: fmt.Sprintf("session-%d", n),
			CanExpire: true, Expires: time.Now().Add(ahead + time.Duration(n-1)*2*ahead - 10*time.Minute), Source: "test"}, nil
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().Add(ahead)
		w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
		signed, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
		switch {
		case err != nil || now.Sub(signed).Abs() > 5*time.Minute:
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"__type":"InvalidSignatureException","message":"Signature expired"}`)
		case r.Header.Get("X-Amz-Security-Token") == "session-1": // expired 10 min ago, AWS's time
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"__type":"ExpiredTokenException"}`)
		}
	}))
	t.Cleanup(srv.Close)
	get := studiesGetter(t, cache, srv.URL)
	if _, err := get(); !errors.Is(err, auth.ErrClockSkew) {
		t.Fatalf("first request: err %v; want the clock refusal", err)
	}
	for range 3 {
		if status, err := get(); err != nil || status != http.StatusOK {
			t.Fatalf("request at AWS's time: status %d, err %v; want fresh credentials and 200", status, err)
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d credential fetches, want 2", n)
	}
}

// Credentials that every fetch gives already expired by AWS's clock (a
// credential source as far behind as this host) are fetched again at
// most once a refetchEvery, not once a request: an STS call per STOW-RS
// and QIDO-RS request.
func TestCredentialsExpiredByAWSClockFetchedAgainAtMostOnceAMinute(t *testing.T) {
	const ahead = time.Hour // AWS's clock from this host's
	var fetches atomic.Int32
	cache := aws.NewCredentialsCache(aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		n := fetches.Add(1)
		return aws.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret/EXAMPLE+key", SessionToken: fmt.Sprintf("session-%d", n),
			CanExpire: true, Expires: time.Now().Add(ahead - 10*time.Minute), Source: "test"}, nil
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().Add(ahead)
		w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
		signed, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
		if err != nil || now.Sub(signed).Abs() > 5*time.Minute {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"__type":"InvalidSignatureException","message":"Signature expired"}`)
		}
	}))
	t.Cleanup(srv.Close)
	get := studiesGetter(t, cache, srv.URL)
	if _, err := get(); !errors.Is(err, auth.ErrClockSkew) {
		t.Fatalf("first request: err %v; want the clock refusal", err)
	}
	for range 5 {
		if status, err := get(); err != nil || status != http.StatusOK {
			t.Fatalf("request at AWS's time: status %d, err %v; want 200", status, err)
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d credential fetches for 6 requests within a minute, want 2 (the first, one again)", n)
	}
}

// studiesGetter sends, at each call, a GET of a datastore's studies to
// url, signed with creds; it returns the answer's status.
func studiesGetter(t *testing.T, creds aws.CredentialsProvider, url string) func() (int, error) {
	t.Helper()
	rt, err := Transport(creds, "us-east-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: rt}
	return func() (int, error) {
		resp, err := client.Get(url + "/datastore/abc/studies")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
}

// skewedAWS is an AWS endpoint whose clock is ahead(n) from this host's
// at its nth request (counted in the returned counter). As AWS does, it
// refuses a request signed more than 5 minutes from its clock (403,
// "Signature expired"), and a bad signature; answer answers the others.
func skewedAWS(t *testing.T, ahead func(n int32) time.Duration, answer http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().Add(ahead(requests.Add(1)))
		w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
		payload := r.Header.Get("X-Amz-Content-Sha256")
		if payload == "" {
			payload = emptyPayload
		}
		signed, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
		switch {
		case err != nil || verifySigV4(r, payload, "secret/EXAMPLE+key") != nil:
			http.Error(w, "bad signature", http.StatusBadRequest)
		case now.Sub(signed).Abs() > 5*time.Minute:
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"__type":"InvalidSignatureException","message":"Signature expired"}`)
		default:
			answer(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &requests
}
