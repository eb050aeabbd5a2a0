package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
	"github.com/stowline/stowline/internal/testpki"
)

// runCheck runs `forwarder check` of the destination of env (the first
// of DESTINATIONS, else the one) and returns stdout, stderr. Without
// --destination it would check the source Orthanc too (TestCheckSources).
func runCheck(t *testing.T, env map[string]string) (string, string, error) {
	t.Helper()
	destination, _, _ := strings.Cut(env["DESTINATIONS"], ",")
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"check", "--destination", cmp.Or(destination, "default")}, func(k string) string { return env[k] }, nil, &out, &errOut)
	t.Logf("forwarder check:\n%s", out.String())
	return out.String(), errOut.String(), err
}

// qido answers a QIDO-RS study search with no study, when the request
// carries want (an Authorization value; "" accepts any).
func qido(want string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/studies") || r.URL.Query().Get("limit") != "1" {
			http.NotFound(w, r)
			return
		}
		if want != "" && r.Header.Get("Authorization") != want {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, "[]")
	}
}

// TestCheckGeneric runs `forwarder check` against the real IdP and a
// Gate: a good setup passes and reports the token's lifetime and scopes
// but never the token or the secret; a wrong secret or a client the
// destination does not accept fail with a verdict.
func TestCheckGeneric(t *testing.T) {
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret), testidp.WithClient("other-client", "other-secret-0123"))
	upstream := httptest.NewServer(qido(""))
	t.Cleanup(upstream.Close)
	gate := idp.Gate(t, upstream.URL)
	base := func(extra map[string]string) map[string]string {
		return authEnv(idp, gate.URL+"/dicom-web", tokenSecret, extra)
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr bool
		want    []string
	}{
		{name: "client_secret_basic", env: base(nil), want: []string{"forwarder    ", "generic (client_secret_basic)", "lifetime", "scopes       dicomweb", "client       " + tokenClientID, "-> 200 OK", "verdict      OK"}},
		{name: "discovery, client_secret_post", env: base(map[string]string{"OAUTH_TOKEN_URL": "", "OAUTH_ISSUER_URL": idp.Issuer, "OAUTH_AUTH_STYLE": "client_secret_post"}),
			want: []string{"generic (client_secret_post)", "from " + idp.TokenURL, "verdict      OK"}},
		{name: "wrong secret", env: base(map[string]string{"OAUTH_CLIENT_SECRET": "wrong-secret-0123"}), wantErr: true,
			want: []string{"generic token endpoint " + idp.TokenURL, "401 Unauthorized: invalid_client", "verdict      FAIL"}},
		{name: "client the destination refuses", env: base(map[string]string{"OAUTH_CLIENT_ID": "other-client", "OAUTH_CLIENT_SECRET": "other-secret-0123"}), wantErr: true,
			want: []string{"401 Unauthorized", "client not allowed", "refused the credential"}},
		// The README's first command sets DICOMWEB_URL alone: a
		// destination that wants a token is told none is configured,
		// not that a credential was refused.
		{name: "no authentication configured", env: map[string]string{"DICOMWEB_URL": gate.URL + "/dicom-web"}, wantErr: true,
			want: []string{"credential   none", "401 Unauthorized", "verdict      FAIL: the destination wants authentication (401) and none is configured", "OAUTH_TOKEN_URL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCheck(t, tt.env)
			if (err != nil) != tt.wantErr || errors.Is(err, app.ErrUsage) {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, secret := range []string{tokenSecret, "wrong-secret-0123", "other-secret-0123", "eyJ"} {
				if strings.Contains(out, secret) {
					t.Errorf("output holds %q", secret)
				}
			}
		})
	}
}

// jwtLike builds an unsigned token with claims, as Entra's look to a client.
func jwtLike(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"typ":"JWT","alg":"RS256"}`)) + "." + enc(b) + ".c2ln"
}

// TestCheckCloudProviders runs `forwarder check` with each cloud
// provider against httptest stand-ins for its token service.
func TestCheckCloudProviders(t *testing.T) {
	// AKS workload identity's projected service account token, in the
	// file the webhook names in AZURE_FEDERATED_TOKEN_FILE.
	federatedToken := jwtLike(map[string]any{"aud": []string{"api://AzureADTokenExchange"}, "sub": "system:serviceaccount:pacs:stowline"})
	tokenFile := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte(federatedToken), 0o600); err != nil {
		t.Fatal(err)
	}
	azureToken := jwtLike(map[string]any{"aud": "https://dicom.healthcareapis.azure.com", "roles": []string{"DICOM.ReadWrite"}, "appid": "app-id-1", "iss": "https://sts.windows.net/tenant-1/"})
	entra := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		federated := r.PostForm.Get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" && r.PostForm.Get("client_assertion") == federatedToken
		if r.URL.Path != "/tenant-1/oauth2/v2.0/token" || (r.PostForm.Get("client_secret") != "azure-secret" && !federated) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}`)
			return
		}
		_, _ = io.WriteString(w, `{"token_type":"Bearer","expires_in":3599,"access_token":"`+azureToken+`"}`)
	}))
	t.Cleanup(entra.Close)
	metadata := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		_, _ = io.WriteString(w, `{"access_token":"ya29.gce","expires_in":1800,"token_type":"Bearer"}`)
	}))
	t.Cleanup(metadata.Close)
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"mi-token","expires_in":"86399","token_type":"Bearer"}`)
	}))
	t.Cleanup(imds.Close)

	tests := []struct {
		name    string
		token   string
		env     map[string]string
		wantErr bool
		want    []string
	}{
		{name: "azure client secret", token: azureToken,
			env:  map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "tenant-1", "AZURE_AUTHORITY_HOST": entra.URL, "OAUTH_CLIENT_ID": "app-id-1", "OAUTH_CLIENT_SECRET": "azure-secret"},
			want: []string{"azure (client secret)", "roles        DICOM.ReadWrite", "audience     https://dicom.healthcareapis.azure.com", "verdict      OK"}},
		{name: "azure wrong secret", env: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "tenant-1", "AZURE_AUTHORITY_HOST": entra.URL, "OAUTH_CLIENT_ID": "app-id-1", "OAUTH_CLIENT_SECRET": "old-secret"},
			wantErr: true, want: []string{"azure token endpoint", "AADSTS7000215: Invalid client secret provided.", "FAIL"}},
		// The variables the webhook sets (AZURE_CLIENT_ID is not read), and OAUTH_CLIENT_ID.
		{name: "azure workload identity", token: azureToken,
			env: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_TENANT_ID": "tenant-1", "AZURE_AUTHORITY_HOST": entra.URL + "/", "AZURE_CLIENT_ID": "app-id-1",
				"AZURE_FEDERATED_TOKEN_FILE": tokenFile, "OAUTH_CLIENT_ID": "app-id-1"},
			want: []string{"azure (workload identity)", "roles        DICOM.ReadWrite", "verdict      OK"}},
		{name: "azure managed identity", token: "mi-token", env: map[string]string{"OAUTH_PROVIDER": "azure", "AZURE_IMDS_ENDPOINT": imds.URL + "/metadata/identity/oauth2/token"},
			want: []string{"azure (managed identity)", "verdict      OK"}},
		{name: "google metadata server", token: "ya29.gce", env: map[string]string{"OAUTH_PROVIDER": "google", "GCE_METADATA_HOST": strings.TrimPrefix(metadata.URL, "http://")},
			want: []string{"google (metadata server)", "lifetime     30m", "verdict      OK"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := httptest.NewServer(qido("Bearer " + tt.token))
			t.Cleanup(dest.Close)
			tt.env["DICOMWEB_URL"] = dest.URL + "/v2"
			out, _, err := runCheck(t, tt.env)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if strings.Contains(out, "azure-secret") || (tt.token != "" && strings.Contains(out, tt.token)) {
				t.Error("output holds the secret or the token")
			}
		})
	}
}

// TestCheckAWS: SigV4 with credentials from the standard chain (here the
// environment); the destination sees a medical-imaging signature.
func TestCheckAWS(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCHECKEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "check/secret/EXAMPLEKEY")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	var authz string
	var searched []string
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz = r.Header.Get("Authorization")
		// The searches the forwarder sends at HealthImaging, for a
		// study and series no one has: none found.
		if p := r.URL.Path; strings.HasSuffix(p, "/series") || strings.HasSuffix(p, "/instances") {
			searched = append(searched, strings.TrimPrefix(p, "/datastore/d9a2a515ab294163a2d2f4069eed584c"))
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = io.WriteString(w, "[]")
			return
		}
		qido("")(w, r)
	}))
	t.Cleanup(dest.Close)
	out, _, err := runCheck(t, map[string]string{"OAUTH_PROVIDER": "aws", "AWS_REGION": "eu-west-1", "DICOMWEB_URL": dest.URL + "/datastore/d9a2a515ab294163a2d2f4069eed584c"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(authz, "AWS4-HMAC-SHA256 Credential=AKIDCHECKEXAMPLE/") || !strings.Contains(authz, "/eu-west-1/medical-imaging/aws4_request") {
		t.Errorf("Authorization = %q", authz)
	}
	if want := []string{"/studies/2.25.0/series", "/studies/2.25.0/series/2.25.0/instances"}; !slices.Equal(searched, want) {
		t.Errorf("searched %q, want the forwarder's series searches %q", searched, want)
	}
	for _, w := range []string{"aws (Signature V4, medical-imaging, eu-west-1)", "the SDK's chain: EnvConfigCredentials", "verdict      OK"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if strings.Contains(out, "check/secret") || strings.Contains(out, "AKIDCHECKEXAMPLE") {
		t.Error("output holds AWS credentials")
	}
}

// TestCheckMutualTLS: the token endpoint and the destination are HTTPS
// servers of a private CA that require a client certificate; TLS_CA_FILE
// and TLS_CERT_FILE/TLS_KEY_FILE serve both. Without the client
// certificate the check fails; TLS_INSECURE_SKIP_VERIFY works without the
// CA and logs a warning.
func TestCheckMutualTLS(t *testing.T) {
	serverCA, clientCA := testpki.NewCA(t, "private-root"), testpki.NewCA(t, "client-ca")
	_, certFile, keyFile := clientCA.Issue(t, "stowline-forwarder", false)
	var tokenClients, destClients []string
	tokenSrv := testpki.MTLSServer(t, serverCA, clientCA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenClients = append(tokenClients, r.TLS.PeerCertificates[0].Subject.CommonName)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"mtls-token","token_type":"Bearer","expires_in":600,"scope":"dicom.write"}`)
	}))
	destSrv := testpki.MTLSServer(t, serverCA, clientCA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		destClients = append(destClients, r.TLS.PeerCertificates[0].Subject.CommonName)
		qido("Bearer mtls-token")(w, r)
	}))
	env := func(extra map[string]string) map[string]string {
		e := map[string]string{
			"DICOMWEB_URL": destSrv.URL + "/dicom-web", "OAUTH_TOKEN_URL": tokenSrv.URL + "/token",
			"OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "mtls-client-secret",
			"TLS_CA_FILE": serverCA.CAFile, "TLS_CERT_FILE": certFile, "TLS_KEY_FILE": keyFile,
		}
		for k, v := range extra {
			e[k] = v
		}
		return e
	}

	out, _, err := runCheck(t, env(nil))
	if err != nil || !strings.Contains(out, "scopes       dicom.write") || !strings.Contains(out, "verdict      OK") {
		t.Fatalf("custom CA and mTLS: err %v", err)
	}
	if len(tokenClients) != 1 || len(destClients) != 1 || tokenClients[0] != "stowline-forwarder" || destClients[0] != "stowline-forwarder" {
		t.Errorf("client certificates seen: token endpoint %v, destination %v", tokenClients, destClients)
	}

	out, _, err = runCheck(t, env(map[string]string{"TLS_CERT_FILE": "", "TLS_KEY_FILE": ""}))
	if err == nil || !strings.Contains(out, "certificate required") {
		t.Errorf("without a client certificate: err %v", err)
	}
	out, _, err = runCheck(t, env(map[string]string{"TLS_CA_FILE": ""}))
	if err == nil || !strings.Contains(out, "unknown authority") {
		t.Errorf("without the CA: err %v", err)
	}
	out, logs, err := runCheck(t, env(map[string]string{"TLS_CA_FILE": "", "TLS_INSECURE_SKIP_VERIFY": "true"}))
	if err != nil || !strings.Contains(out, "verdict      OK") {
		t.Errorf("insecure skip verify: err %v", err)
	}
	if !strings.Contains(logs, `"level":"WARN"`) || !strings.Contains(logs, "TLS_INSECURE_SKIP_VERIFY=true") {
		t.Errorf("no warning logged for TLS_INSECURE_SKIP_VERIFY: %s", logs)
	}
	if strings.Contains(out+logs, "mtls-client-secret") || strings.Contains(out+logs, "mtls-token") {
		t.Error("a secret or the token was printed")
	}
}

// TestCheckRedactsDestinationURL: a query in DICOMWEB_URL (a
// signature or function key some gateways take there) is never printed
// or logged, whether the destination passes the check or its
// configuration is refused (a CA file that holds no certificate);
// internal/app's TestCheckRedactsTheURLOfADestinationNotSetUp covers a
// set-up that fails.
func TestCheckRedactsDestinationURL(t *testing.T) {
	const secret = "query-secret-0123456789"
	dest := httptest.NewServer(qido(""))
	t.Cleanup(dest.Close)
	notCert := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(notCert, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		env       map[string]string
		wantUsage bool // refused as configuration (exit 2); else passes
		want      string
	}{
		{name: "check passes", env: map[string]string{"DICOMWEB_URL": dest.URL + "/v2?code=" + secret},
			want: "destination  " + dest.URL + "/v2\n"},
		{name: "configuration refused", env: map[string]string{"DICOMWEB_URL": "https://dicom.example.org/v2?code=" + secret, "TLS_CA_FILE": notCert},
			wantUsage: true, want: "TLS_CA_FILE: invalid TLS configuration: CA file " + notCert + " holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, logs, err := runCheck(t, tt.env)
			if errors.Is(err, app.ErrUsage) != tt.wantUsage || !tt.wantUsage && err != nil {
				t.Fatalf("err = %v, want a usage error %v", err, tt.wantUsage)
			}
			got := out
			if err != nil {
				got += err.Error()
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("output and error lack %q:\n%s", tt.want, got)
			}
			if strings.Contains(got+logs, secret) {
				t.Errorf("the URL's query was printed or logged:\n%s%s", got, logs)
			}
		})
	}
}

// TestDestinationNotServedHere: in a forwarder group's environment
// (FORWARDER_DESTINATIONS), check and audit --verify of a destination of
// another group say that this process does not serve it, and where to
// run them, rather than that it is not configured: DESTINATIONS names it.
func TestDestinationNotServedHere(t *testing.T) {
	env := map[string]string{
		"NATS_URL": "nats://127.0.0.1:1", "DESTINATIONS": "archive,ai", "FORWARDER_DESTINATIONS": "archive",
		"DESTINATION_ARCHIVE_URL": "https://archive.example.org/dicomweb", "DESTINATION_AI_URL": "https://ai.example.org/dicomweb",
	}
	for _, args := range [][]string{
		{"check", "--destination", "ai"},
		{"audit", "--verify", "--destination", "ai"},
	} {
		t.Run(args[0], func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), args, func(k string) string { return env[k] }, nil, &out, &errOut)
			if !errors.Is(err, app.ErrUsage) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			for _, w := range []string{`"ai"`, "FORWARDER_DESTINATIONS=archive", "not served"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %s", err, w)
				}
			}
			if strings.Contains(err.Error(), "not a configured destination") {
				t.Errorf("error %q calls a destination DESTINATIONS names unconfigured", err)
			}
		})
	}
}

// TestCheckNamesTheDestinationsVariables: a failed check's verdict names
// the variables of the destination checked. With DESTINATIONS it said
// "check DICOMWEB_URL" (or TLS_CA_FILE) for a destination set by
// DESTINATION_AI_URL, a variable that must then be unset: the operator
// was sent to fix a setting the deployment does not have.
func TestCheckNamesTheDestinationsVariables(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>portal</html>")
	}))
	t.Cleanup(page.Close)
	moved := httptest.NewServer(http.RedirectHandler("https://login.example.org/", http.StatusFound))
	t.Cleanup(moved.Close)
	gone := httptest.NewServer(qido(""))
	gone.Close() // nothing listens there any more

	tests := []struct {
		name      string
		url       string
		named     string   // what the verdict names with DESTINATIONS=ai
		unnamed   string   // and for the one default destination
		forbidden []string // what it must not name with DESTINATIONS=ai
	}{
		{"404", notFound.URL + "/v2", "DESTINATION_AI_URL", "DICOMWEB_URL", []string{"DICOMWEB_URL"}},
		{"not a DICOMweb answer", page.URL + "/v2", "DESTINATION_AI_URL", "DICOMWEB_URL", []string{"DICOMWEB_URL"}},
		{"redirect", moved.URL + "/v2", "DESTINATION_AI_URL", "DICOMWEB_URL", []string{"DICOMWEB_URL"}},
		{"unreachable", gone.URL + "/v2", "DESTINATION_AI_TLS_CA_FILE", "see TLS_CA_FILE", []string{"see TLS_CA_FILE", " TLS_CERT_FILE"}},
	}
	verdict := func(t *testing.T, out string) string {
		t.Helper()
		_, v, ok := strings.Cut(out, "verdict ")
		if !ok {
			t.Fatalf("no verdict in:\n%s", out)
		}
		return v
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCheck(t, map[string]string{"DESTINATIONS": "ai", "DESTINATION_AI_URL": tt.url})
			if err == nil || errors.Is(err, app.ErrUsage) {
				t.Fatalf("err = %v, want a failed check", err)
			}
			v := verdict(t, out)
			if !strings.Contains(v, tt.named) {
				t.Errorf("verdict %q does not name %s", v, tt.named)
			}
			for _, f := range tt.forbidden {
				if strings.Contains(strings.ReplaceAll(v, tt.named, ""), f) {
					t.Errorf("verdict %q names %q, which the destination ai does not read", v, f)
				}
			}
			out, _, err = runCheck(t, map[string]string{"DICOMWEB_URL": tt.url})
			if err == nil || errors.Is(err, app.ErrUsage) {
				t.Fatalf("default destination: err = %v, want a failed check", err)
			}
			if v := verdict(t, out); !strings.Contains(v, tt.unnamed) {
				t.Errorf("default destination: verdict %q does not name %s", v, tt.unnamed)
			}
		})
	}
}

// TestCheckSources: `forwarder check` asks each source Orthanc for
// /system with the forwarder's credentials before any study flows, and
// names the variables to fix when one does not answer or refuses them.
// Before, it checked the destinations only, and a wrong Orthanc password
// showed first as held studies. Real Orthanc with authentication.
func TestCheckSources(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts a real Orthanc; skipped in -short mode")
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "check-src", Username: "forwarder", Password: "pw-check-0123"})
	// A site that keeps stowline's user to GET, as
	// docs/orthanc-access.md advises without buffer mode or conversions.
	noDelete := filepath.Join(t.TempDir(), "get-only.lua")
	if err := os.WriteFile(noDelete, []byte("function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n  return method == 'GET'\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ro := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "check-ro", Username: "forwarder", Password: "pw-check-0123", LuaScripts: []string{noDelete}})
	dest := httptest.NewServer(qido(""))
	t.Cleanup(dest.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there any more
	one := func(password string) map[string]string {
		return map[string]string{"DICOMWEB_URL": dest.URL, "ORTHANC_URL": o.URL, "ORTHANC_USERNAME": "forwarder", "ORTHANC_PASSWORD": password}
	}
	buffer := func(url string) map[string]string {
		env := one("pw-check-0123")
		env["ORTHANC_URL"], env["FORWARDER_DELETE_FROM_SOURCE"] = url, "true"
		return env
	}
	converting := func(url string) map[string]string {
		env := one("pw-check-0123")
		env["ORTHANC_URL"], env["STOW_TRANSFER_SYNTAXES"] = url, "1.2.840.10008.1.2.1"
		return env
	}
	two := map[string]string{"DICOMWEB_URL": dest.URL, "ORTHANC_SOURCES": "main,cardio",
		"ORTHANC_MAIN_URL": o.URL, "ORTHANC_MAIN_USERNAME": "forwarder", "ORTHANC_MAIN_PASSWORD": "pw-check-0123",
		"ORTHANC_CARDIO_URL": gone.URL}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr bool
		want    []string
		unwant  []string
	}{
		{"one source and the destination", one("pw-check-0123"), nil, false,
			[]string{"source       " + o.URL + " (ORTHANC_URL)", "GET /system -> Orthanc 1.", "destination  " + dest.URL, "-> 200 OK"}, []string{"FAIL", "DELETE", "modify"}},
		// Buffer mode deletes: a DELETE of an instance that does not
		// exist, answered 404 when allowed and 403 when refused, tells.
		{"buffer mode, delete allowed", buffer(o.URL), nil, false,
			[]string{"DELETE /instances/", "-> not found: the forwarder may delete", "verdict      OK"}, []string{"FAIL"}},
		{"buffer mode, delete refused", buffer(ro.URL), nil, true,
			[]string{"GET /system -> Orthanc 1.", "DELETE /instances/", "403", "verdict      FAIL: Orthanc refuses DELETE to ORTHANC_USERNAME, and buffer mode (FORWARDER_DELETE_FROM_SOURCE=true)"}, nil},
		// A destination that converts reads metadata and asks Orthanc
		// to convert: a proxy allowing only GET refuses every instance.
		{"conversions allowed", converting(o.URL), nil, false,
			[]string{"/metadata?expand (no such instance) -> not found: the forwarder may read", "/modify (no such instance) -> not found: the forwarder may convert", "verdict      OK"}, []string{"FAIL", "DELETE"}},
		{"conversions refused", converting(ro.URL), nil, true,
			[]string{"/metadata?expand (no such instance) -> not found", "POST /instances/", "403",
				"verdict      FAIL: Orthanc refuses POST to ORTHANC_USERNAME, and destination default converts instances"}, []string{"verdict      OK\n"}},
		// A routing rule reading an instance's SOP class reads metadata.
		{"routing rule reads metadata", map[string]string{"DESTINATIONS": "ai", "DESTINATION_AI_URL": dest.URL,
			"DESTINATION_AI_INSTANCE_MATCH": "instance.sopClassUid != '1.2.840.10008.5.1.4.1.1.7'",
			"ORTHANC_URL":                   ro.URL, "ORTHANC_USERNAME": "forwarder", "ORTHANC_PASSWORD": "pw-check-0123"}, nil, false,
			[]string{"/metadata?expand (no such instance) -> not found: the forwarder may read", "verdict      OK\n"}, []string{"modify", "FAIL"}},
		// Buffer mode applies the rules of a destination this forwarder
		// does not serve before it deletes: it reads metadata for them.
		{"buffer mode, an unserved destination's rule reads metadata", map[string]string{"DESTINATIONS": "archive,ai", "FORWARDER_DESTINATIONS": "archive",
			"DESTINATION_ARCHIVE_URL": dest.URL, "DESTINATION_AI_URL": dest.URL,
			"DESTINATION_AI_INSTANCE_MATCH": "instance.sopClassUid != '1.2.840.10008.5.1.4.1.1.7'", "FORWARDER_DELETE_FROM_SOURCE": "true",
			"ORTHANC_URL": o.URL, "ORTHANC_USERNAME": "forwarder", "ORTHANC_PASSWORD": "pw-check-0123"}, nil, false,
			[]string{"/metadata?expand (no such instance) -> not found: the forwarder may read", "verdict      OK\n"}, []string{"FAIL"}},
		{"wrong password", one("pw-wrong-0123"), nil, true,
			[]string{"401", "verdict      FAIL: Orthanc refuses the forwarder: check ORTHANC_USERNAME with ORTHANC_PASSWORD or ORTHANC_PASSWORD_FILE, and that user's rights"}, nil},
		{"one of two sources down", two, nil, true,
			[]string{"source       main " + o.URL + " (ORTHANC_MAIN_URL)", "source       cardio " + gone.URL + " (ORTHANC_CARDIO_URL)", "verdict      FAIL: Orthanc does not answer: check ORTHANC_CARDIO_URL and that this host reaches it", "-> 200 OK"}, nil},
		{"--source names one", two, []string{"--source", "main"}, false,
			[]string{"source       main"}, []string{"cardio", "destination"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), append([]string{"check"}, tt.args...), func(k string) string { return tt.env[k] }, nil, &out, &errOut)
			t.Logf("forwarder check:\n%s", out.String())
			if (err != nil) != tt.wantErr || errors.Is(err, app.ErrUsage) {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range append(tt.unwant, "pw-check-0123", "pw-wrong-0123") {
				if strings.Contains(out.String()+errOut.String(), w) {
					t.Errorf("output holds %q", w)
				}
			}
		})
	}
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"check", "--source", "radiology"}, func(k string) string { return two[k] }, nil, &out, &errOut); !errors.Is(err, app.ErrUsage) || !strings.Contains(err.Error(), `"radiology"`) || !strings.Contains(err.Error(), "main, cardio") {
		t.Errorf("--source of no configured source: err = %v, want a usage error naming it and the sources", err)
	}
}

// TestCheckDeidentification: `forwarder check` says whether each
// destination receives de-identified copies and its key's fingerprint
// (the forwarders log it at start), never the key; and it refuses, as
// the forwarder does, an unread variable that looks like a
// de-identification setting, and a tracing variable it refuses. It passed a STOW_DEIDENTIFIY=basic the
// forwarder refuses, and never said a destination de-identified.
func TestCheckDeidentification(t *testing.T) {
	key := []byte("check-key-0123456789abcdef0123456789")
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := deident.NewKeyer(key, "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		qido("")(w, r)
	}))
	t.Cleanup(dest.Close)
	named := func(extra map[string]string) map[string]string {
		env := map[string]string{"DESTINATIONS": "archive,ai", "DESTINATION_ARCHIVE_URL": dest.URL + "/archive", "DESTINATION_AI_URL": dest.URL + "/ai",
			"DESTINATION_AI_STOW_DEIDENTIFY": "basic", "DESTINATION_AI_DEIDENTIFY_KEY_FILE": keyFile, "DESTINATION_AI_STOW_DEIDENTIFY_OPTIONS": "retain-dates"}
		for k, v := range extra {
			env[k] = v
		}
		return env
	}
	tests := []struct {
		name    string
		env     map[string]string
		refused string   // a usage error naming it, nothing checked
		want    []string // in the report
	}{
		{name: "one destination, originals", env: map[string]string{"DICOMWEB_URL": dest.URL + "/v2"},
			want: []string{"deidentify   off: the destination receives the originals (STOW_DEIDENTIFY)\n", "verdict      OK"}},
		{name: "one destination, de-identified", env: map[string]string{"DICOMWEB_URL": dest.URL + "/v2", "STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": keyFile},
			want: []string{"deidentify   basic: de-identified copies, key fingerprint " + k.Fingerprint() + " (DEIDENTIFY_KEY_FILE), options none, burned-in exclude\n"}},
		{name: "each destination's own", env: named(nil),
			want: []string{
				"destination  archive " + dest.URL + "/archive\nprovider     generic (no authentication)\ndeidentify   off: the destination receives the originals (DESTINATION_ARCHIVE_STOW_DEIDENTIFY)\n",
				"destination  ai " + dest.URL + "/ai\nprovider     generic (no authentication)\ndeidentify   basic: de-identified copies, key fingerprint " + k.Fingerprint() + " (DESTINATION_AI_DEIDENTIFY_KEY_FILE), options retain-dates, burned-in exclude\n",
			}},
		{name: "misspelt STOW_DEIDENTIFY", env: named(map[string]string{"DESTINATION_ARCHIVE_STOW_DEIDENTIFIY": "basic"}), refused: "DESTINATION_ARCHIVE_STOW_DEIDENTIFIY: set but not read"},
		{name: "near miss in lower case", env: named(map[string]string{"stow_deidenitfy": "basic"}), refused: "stow_deidenitfy: set but not read"},
		// The tracing variables the forwarder refuses (its start's
		// invalid configuration), with tracing on only.
		{name: "tracing variable the forwarder refuses", env: named(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_BSP_MAX_QUEUE_SIZE": "-5"}), refused: "OTEL_BSP_MAX_QUEUE_SIZE"},
		{name: "tracing off, its variables unread", env: named(map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "-5"}),
			want: []string{"key fingerprint " + k.Fingerprint()}},
		{name: "another unread variable is no refusal", env: named(map[string]string{"STOW_PARALLEL_REQUEST": "8", "NATS_URL": "nats://127.0.0.1:1"}),
			want: []string{"key fingerprint " + k.Fingerprint()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requests.Store(0)
			var environ []string
			for k, v := range tt.env {
				environ = append(environ, k+"="+v)
			}
			// Each destination in turn: without --destination the
			// source Orthanc is checked too.
			var out, errOut bytes.Buffer
			var err error
			for _, d := range strings.Split(cmp.Or(tt.env["DESTINATIONS"], "default"), ",") {
				if err = run(t.Context(), []string{"check", "--destination", d}, func(k string) string { return tt.env[k] }, environ, &out, &errOut); err != nil {
					break
				}
			}
			t.Logf("forwarder check:\n%s", out.String())
			if tt.refused != "" {
				if !errors.Is(err, app.ErrUsage) || !strings.Contains(err.Error(), tt.refused) || requests.Load() != 0 || strings.Contains(out.String(), "destination") {
					t.Fatalf("err = %v, %d requests; want a usage error naming %q before any check", err, requests.Load(), tt.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if strings.Contains(out.String()+errOut.String(), string(key)) {
				t.Error("the key was printed or logged")
			}
		})
	}
}
