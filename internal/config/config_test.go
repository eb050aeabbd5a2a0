package config

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func baseEnv() map[string]string {
	return map[string]string{
		"INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": "https://dicom.example.org/v1",
	}
}

// Settings the stricter checks must still take.
func TestValidSettingsLoad(t *testing.T) {
	for name, set := range map[string]map[string]string{
		// Port 0 (any free port) and IPv6 hosts are listen addresses.
		"listen addresses": {"INGEST_ADDR": "127.0.0.1:0", "FORWARDER_ADDR": "[::1]:65535"},
		// A DICOMweb URL may carry an API key in its query (an Azure
		// Function's ?code=...); only the Orthanc URLs refuse one.
		"dicomweb url with a query": {"DICOMWEB_URL": "https://fn.example.org/api/dicomweb?code=0123456789", "ORTHANC_URL": "http://orthanc:8042/"},
		// The default dedupe window and skew, and a window of exactly
		// twice the skew, pass the replay check.
		"hmac secret with the defaults":     {"INGEST_HMAC_SECRET": "9f3c1a7e5b2d4c6a8e0f1b3d5a7c9e2f4b6d8a0c"},
		"dedupe window twice the hmac skew": {"INGEST_HMAC_SECRET": "9f3c1a7e5b2d4c6a8e0f1b3d5a7c9e2f4b6d8a0c", "INGEST_HMAC_MAX_SKEW": "1h", "EVENTS_DEDUPE_WINDOW": "2h"},
	} {
		e := baseEnv()
		maps.Copy(e, set)
		if err := Load(mapEnv(e), &SingleHost{}); err != nil {
			t.Errorf("%s: Load: %v", name, err)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	var c SingleHost
	if err := Load(mapEnv(baseEnv()), &c); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Ingest.Addr != ":8080" || c.Forwarder.Addr != ":8081" {
		t.Errorf("addresses = %q, %q", c.Ingest.Addr, c.Forwarder.Addr)
	}
	if c.Orthanc.URL != "http://localhost:8042" || c.StoreDir != "./data/nats" || !c.Embedded() {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.StowMaxBytes != 256<<20 || c.Concurrency != 4 {
		t.Errorf("StowMaxBytes=%d Concurrency=%d", c.StowMaxBytes, c.Concurrency)
	}
	if c.ShutdownGrace != 30*time.Second {
		t.Errorf("FORWARDER_SHUTDOWN_GRACE default = %s, want 30s", c.ShutdownGrace)
	}
}

func TestLoadErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		name string
		set  map[string]string
		drop string
		want string
	}{
		{"missing token", nil, "INGEST_TOKEN", "INGEST_TOKEN"},
		{"missing dicomweb", nil, "DICOMWEB_URL", "DICOMWEB_URL"},
		{"short token", map[string]string{"INGEST_TOKEN": "short"}, "", "INGEST_TOKEN"},
		// README's placeholder, copied as is, would publish the token.
		{"placeholder token", map[string]string{"INGEST_TOKEN": "change-me-to-a-long-random-string"}, "", `INGEST_TOKEN: the value is a placeholder from an example ("changeme")`},
		{"placeholder token in capitals", map[string]string{"INGEST_TOKEN": "REPLACE_ME_WITH_A_REAL_TOKEN"}, "", `("replaceme")`},
		{"token of few characters", map[string]string{"INGEST_TOKEN": "1212121212121212"}, "", "INGEST_TOKEN: want a random value"},
		{"short previous token", map[string]string{"INGEST_TOKEN_PREVIOUS": "short"}, "", "INGEST_TOKEN_PREVIOUS"},
		{"previous token equal to the token", map[string]string{"INGEST_TOKEN_PREVIOUS": "0123456789abcdef0123"}, "", "INGEST_TOKEN_PREVIOUS equals INGEST_TOKEN"},
		{"admin token equal to the signing secret", map[string]string{"INGEST_HMAC_SECRET": "abcdef0123456789abcdef0123456789", "ADMIN_TOKEN": "abcdef0123456789abcdef0123456789"}, "", "ADMIN_TOKEN must differ from INGEST_HMAC_SECRET"},
		{"signing secret equal to the token", map[string]string{"INGEST_TOKEN": "0123456789abcdef0123456789abcdef", "INGEST_HMAC_SECRET": "0123456789abcdef0123456789abcdef"}, "", "INGEST_HMAC_SECRET equals INGEST_TOKEN"},
		{"previous token with a space", map[string]string{"INGEST_TOKEN_PREVIOUS": "fedcba9876543210fedc "}, "", "INGEST_TOKEN_PREVIOUS"},
		{"bad dicomweb url", map[string]string{"DICOMWEB_URL": "ftp://x"}, "", "DICOMWEB_URL"},
		{"url with credentials", map[string]string{"ORTHANC_URL": "http://u:p@orthanc:8042"}, "", "ORTHANC_URL"},
		// What that error sends the operator to, written as the URL's
		// user info: Orthanc refused every request.
		{"user name with the password", map[string]string{"ORTHANC_USERNAME": "stowline:S3cretPass"}, "", "ORTHANC_USERNAME holds a colon"},
		{"named source's user name with the password", map[string]string{"ORTHANC_SOURCES": "cardio", "ORTHANC_URL": "", "ORTHANC_CARDIO_URL": "http://cardio:8042", "ORTHANC_CARDIO_USERNAME": "stowline:S3cretPass"}, "", "ORTHANC_CARDIO_USERNAME holds a colon"},
		// Orthanc would refuse every request: found at the first study.
		{"user name without a password", map[string]string{"ORTHANC_USERNAME": "stowline"}, "", "ORTHANC_USERNAME is set but ORTHANC_PASSWORD and ORTHANC_PASSWORD_FILE are empty"},
		{"named source's user name without a password", map[string]string{"ORTHANC_SOURCES": "cardio", "ORTHANC_URL": "", "ORTHANC_CARDIO_URL": "http://cardio:8042", "ORTHANC_CARDIO_USERNAME": "stowline"}, "", "ORTHANC_CARDIO_USERNAME is set but"},
		// As orthancapi.parseBaseURL and the DICOMweb client read them.
		{"orthanc url with a query", map[string]string{"ORTHANC_URL": "http://orthanc:8042?x=1"}, "", `ORTHANC_URL="http://orthanc:8042?…": the URL must not have a query`},
		{"orthanc url with an empty query", map[string]string{"ORTHANC_URL": "http://orthanc:8042/?"}, "", "ORTHANC_URL"},
		{"orthanc url with a bad port", map[string]string{"ORTHANC_URL": "http://orthanc:99999"}, "", `ORTHANC_URL="http://orthanc:99999": port "99999"`},
		{"orthanc url with port 0", map[string]string{"ORTHANC_URL": "http://orthanc:0"}, "", `ORTHANC_URL="http://orthanc:0": port "0"`},
		{"orthanc url without host", map[string]string{"ORTHANC_URL": "http://:8042"}, "", `ORTHANC_URL="http://:8042": the URL has no host name`},
		{"orthanc url with a fragment", map[string]string{"ORTHANC_URL": "http://orthanc:8042#x"}, "", "ORTHANC_URL"},
		{"dicomweb url with a fragment", map[string]string{"DICOMWEB_URL": "https://dicom.example.org/v2#x"}, "", `DICOMWEB_URL="https://dicom.example.org/v2#x": the URL must not have a fragment`},
		{"dicomweb url with an empty fragment", map[string]string{"DICOMWEB_URL": "https://dicom.example.org/v2#"}, "", "DICOMWEB_URL"},
		{"dicomweb url without host", map[string]string{"DICOMWEB_URL": "https://:443/v2"}, "", `DICOMWEB_URL="https://:443/v2": the URL has no host name`},
		{"dicomweb url with a bad port", map[string]string{"DICOMWEB_URL": "https://dicom.example.org:65536/v2"}, "", `port "65536"`},
		// Copied from a STOW-RS example: every request would go to
		// .../studies/studies and every study fail.
		{"dicomweb url of the STOW-RS endpoint", map[string]string{"DICOMWEB_URL": "https://dicom.example.org/v2/studies"}, "", `DICOMWEB_URL="https://dicom.example.org/v2/studies": want the DICOMweb base URL`},
		{"dicomweb url of the STOW-RS endpoint, with a slash and a key", map[string]string{"DICOMWEB_URL": "https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2/studies/?code=hunter2"}, "", `DICOMWEB_URL="https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2/studies/?…": want the DICOMweb base URL`},
		{"token url without host", map[string]string{"OAUTH_TOKEN_URL": "https://:443/token", "OAUTH_CLIENT_ID": "x", "OAUTH_CLIENT_SECRET": "y"}, "", "OAUTH_TOKEN_URL"},
		{"bad concurrency", map[string]string{"FORWARDER_CONCURRENCY": "zero"}, "", "FORWARDER_CONCURRENCY"},
		{"concurrency out of range", map[string]string{"FORWARDER_CONCURRENCY": "0"}, "", "FORWARDER_CONCURRENCY"},
		{"bad duration", map[string]string{"FORWARDER_ACK_WAIT": "soon"}, "", "FORWARDER_ACK_WAIT"},
		{"shutdown grace zero", map[string]string{"FORWARDER_SHUTDOWN_GRACE": "0s"}, "", "FORWARDER_SHUTDOWN_GRACE=0s: want 1s to 1h0m0s"},
		{"stored record kept less than a day", map[string]string{"STORED_RECORD_RETENTION": "12h"}, "", "STORED_RECORD_RETENTION=12h0m0s: want at least 24h"},
		{"shutdown grace past an hour", map[string]string{"FORWARDER_SHUTDOWN_GRACE": "2h"}, "", "FORWARDER_SHUTDOWN_GRACE=2h0m0s: want 1s to 1h0m0s"},
		{"bad size", map[string]string{"STOW_MAX_BYTES": "lots"}, "", "STOW_MAX_BYTES"},
		{"bad verify", map[string]string{"STOW_VERIFY": "yes"}, "", `STOW_VERIFY="yes": want off or qido`},
		{"breaker failures negative", map[string]string{"STOW_BREAKER_FAILURES": "-1"}, "", `STOW_BREAKER_FAILURES=-1: want 0 (no breaker) to 1000`},
		{"probe interval too short", map[string]string{"STOW_BREAKER_PROBE_INTERVAL": "100ms"}, "", `STOW_BREAKER_PROBE_INTERVAL=100ms`},
		{"probe intervals reversed", map[string]string{"STOW_BREAKER_PROBE_INTERVAL": "10m"}, "", `STOW_BREAKER_MAX_PROBE_INTERVAL=5m0s: want 1s <= interval <= max interval`},
		{"bandwidth too small", map[string]string{"STOW_MAX_BYTES_PER_SECOND": "100"}, "", `STOW_MAX_BYTES_PER_SECOND=100B: want 0 (no cap) or at least 1KiB`},
		{"bandwidth not a size", map[string]string{"STOW_MAX_BYTES_PER_SECOND": "fast"}, "", `STOW_MAX_BYTES_PER_SECOND`},
		{"parallel ceiling out of range", map[string]string{"STOW_PARALLEL_REQUESTS": "65"}, "", "STOW_PARALLEL_REQUESTS=65: want 1 to 64"},
		{"parallel floor above ceiling", map[string]string{"STOW_PARALLEL_REQUESTS": "4", "STOW_PARALLEL_MIN": "8"}, "", "STOW_PARALLEL_MIN=8: want 1 to STOW_PARALLEL_REQUESTS (4)"},
		{"oauth without client", map[string]string{"OAUTH_TOKEN_URL": "https://idp/token"}, "", "OAUTH_CLIENT_ID"},
		{"client without oauth url", map[string]string{"OAUTH_CLIENT_ID": "x"}, "", "OAUTH_TOKEN_URL"},
		{"bad log level", map[string]string{"LOG_LEVEL": "loud"}, "", "LOG_LEVEL"},
		{"bad addr", map[string]string{"INGEST_ADDR": "8080"}, "", "INGEST_ADDR"},
		{"addr port out of range", map[string]string{"INGEST_ADDR": "127.0.0.1:99999"}, "", `INGEST_ADDR="127.0.0.1:99999": port "99999"`},
		{"addr port not a number", map[string]string{"FORWARDER_ADDR": "foo:bar"}, "", `FORWARDER_ADDR="foo:bar": port "bar"`},
		{"addr port negative", map[string]string{"FORWARDER_ADDR": ":-1"}, "", "FORWARDER_ADDR"},
		{"same addr", map[string]string{"INGEST_ADDR": ":9000", "FORWARDER_ADDR": ":9000"}, "", "FORWARDER_ADDR"},
		{"orthanc response timeout too short", map[string]string{"ORTHANC_RESPONSE_TIMEOUT": "500ms"}, "", "ORTHANC_RESPONSE_TIMEOUT=500ms: want 1s to 1h"},
		{"forwarder trusted proxy not an address", map[string]string{"FORWARDER_TRUSTED_PROXIES": "10.0.0.0/8,ingress.example.org"}, "", `FORWARDER_TRUSTED_PROXIES: "ingress.example.org"`},
		{"forwarder trusts every address", map[string]string{"FORWARDER_TRUSTED_PROXIES": "0.0.0.0/0"}, "", `FORWARDER_TRUSTED_PROXIES: "0.0.0.0/0" trusts every address`},
		{"replicas embedded", map[string]string{"NATS_REPLICAS": "3"}, "", "NATS_REPLICAS"},
		{"dedupe over retention", map[string]string{"EVENTS_DEDUPE_WINDOW": "200h"}, "", "EVENTS_DEDUPE_WINDOW"},
		// A signed request replayed after the dedupe window queued its study again.
		{"dedupe shorter than the signature skew", map[string]string{"INGEST_HMAC_SECRET": "9f3c1a7e5b2d4c6a8e0f1b3d5a7c9e2f4b6d8a0c", "EVENTS_DEDUPE_WINDOW": "2m"}, "",
			"EVENTS_DEDUPE_WINDOW=2m0s is shorter than twice INGEST_HMAC_MAX_SKEW=5m0s (10m0s)"},
		// Signed at T, a request is accepted from T-skew to T+skew: the
		// original stored at T-skew and a copy replayed at T+skew are
		// twice the skew apart.
		{"dedupe shorter than twice the signature skew", map[string]string{"INGEST_HMAC_SECRET": "9f3c1a7e5b2d4c6a8e0f1b3d5a7c9e2f4b6d8a0c", "EVENTS_DEDUPE_WINDOW": "9m59s"}, "",
			"EVENTS_DEDUPE_WINDOW=9m59s is shorter than twice INGEST_HMAC_MAX_SKEW=5m0s (10m0s)"},
		// The default retries wait up to 7h before the dead letter.
		{"retention shorter than the retries", map[string]string{"EVENTS_RETENTION": "6h", "EVENTS_DEDUPE_WINDOW": "1h"}, "", "EVENTS_RETENTION=6h0m0s: shorter than the waits of a failing study"},
		{"bad priority rule", map[string]string{"PRIORITY_RULE": "study.description =="}, "", "PRIORITY_RULE: "},
		{"publish timeout past the write timeout", map[string]string{"INGEST_PUBLISH_TIMEOUT": "90s"}, "", "INGEST_PUBLISH_TIMEOUT=1m30s: want 100ms to 50s"},
		// url.Parse's own error would quote the password.
		{"nats url with a bad port", map[string]string{"NATS_URL": "nats://alice:S3CRETPASS@nats:42x22"}, "", `NATS_URL="nats://…@nats:42x22"`},
		{"nats url of another scheme", map[string]string{"NATS_URL": "nats://a:4222,http://b:4222"}, "", `NATS_URL="http://b:4222": want nats://`},
		{"nats url without host", map[string]string{"NATS_URL": "nats://:4222"}, "", `NATS_URL="nats://:4222"`},
		// nats.go dials port 0 and fails, naming no variable.
		{"nats url with port 0", map[string]string{"NATS_URL": "nats://nats:0"}, "", `NATS_URL="nats://nats:0": port "0": want 1 to 65535`},
		// url.Parse keeps a space in a path or query: every STOW-RS
		// request went to .../v1%20/studies.
		{"dicomweb url with a trailing space", map[string]string{"DICOMWEB_URL": "https://dicom.example.org/v1 "}, "", `DICOMWEB_URL="https://dicom.example.org/v1 ": the URL holds white space`},
		{"dicomweb url with a space in its key", map[string]string{"DICOMWEB_URL": "https://fn.example.org/api?code=abc def"}, "", `DICOMWEB_URL="https://fn.example.org/api?…": the URL holds white space`},
		{"orthanc url with a space", map[string]string{"ORTHANC_URL": "http://orthanc:8042/ "}, "", `ORTHANC_URL="http://orthanc:8042/ ": the URL holds white space`},
		// The README's examples carry comments; systemd keeps them in the
		// value, and "a stray space at its end?" named no cause.
		{"url with an inline comment", map[string]string{"OAUTH_ISSUER_URL": "https://keycloak.example.org/realms/imaging   # or OAUTH_TOKEN_URL"}, "", `OAUTH_ISSUER_URL="https://keycloak.example.org/realms/imaging   # or OAUTH_TOKEN_URL": the URL is followed by an inline # comment`},
		{"named destination url with a trailing space", map[string]string{"DICOMWEB_URL": "", "DESTINATIONS": "ai", "DESTINATION_AI_URL": "https://ai.example.org/v1 "}, "", `DESTINATION_AI_URL="https://ai.example.org/v1 ": the URL holds white space`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			delete(e, tt.drop)
			for k, v := range tt.set {
				e[k] = v
			}
			var c SingleHost
			err := Load(mapEnv(e), &c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load() = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("from-a-file-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := baseEnv()
	delete(e, "INGEST_TOKEN")
	e["INGEST_TOKEN_FILE"] = path
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Token != "from-a-file-0123456789" {
		t.Errorf("Token = %q, want the file content without newline", c.Token)
	}
	// The destination's client secret file is kept, for the token source
	// to read again after a rotation, by every command that forwards.
	withSecret := maps.Clone(e)
	maps.Copy(withSecret, map[string]string{"OAUTH_TOKEN_URL": "https://idp.example.org/token", "OAUTH_CLIENT_ID": "site-1", "OAUTH_CLIENT_SECRET_FILE": path})
	var fwd ForwarderService
	withSecret["NATS_URL"], withSecret["ORTHANC_URL"] = "nats://nats:4222", "http://orthanc:8042"
	for _, dst := range []interface{ DestinationList() []NamedDestination }{&c, &fwd} {
		if err := Load(mapEnv(withSecret), dst); err != nil {
			t.Fatalf("Load with OAUTH_CLIENT_SECRET_FILE: %v", err)
		}
		if d := dst.DestinationList()[0]; d.OAuthClientSecretFile != path || d.OAuthClientSecret != "from-a-file-0123456789" {
			t.Errorf("%T: secret file %q, secret %q; want %s and its content", dst, d.OAuthClientSecretFile, d.OAuthClientSecret, path)
		}
	}

	e["INGEST_TOKEN"] = "also-set-directly-0123"
	if err := Load(mapEnv(e), &SingleHost{}); err == nil || !strings.Contains(err.Error(), "both set") {
		t.Errorf("both VAR and VAR_FILE: err = %v", err)
	}
	delete(e, "INGEST_TOKEN")
	e["INGEST_TOKEN_FILE"] = filepath.Join(dir, "missing")
	if err := Load(mapEnv(e), &SingleHost{}); err == nil || !strings.Contains(err.Error(), "INGEST_TOKEN_FILE") {
		t.Errorf("missing file: err = %v", err)
	}
	// A non-secret variable has no _FILE variant.
	e = baseEnv()
	e["DICOMWEB_URL_FILE"] = path
	delete(e, "DICOMWEB_URL")
	if err := Load(mapEnv(e), &SingleHost{}); err == nil || !strings.Contains(err.Error(), "DICOMWEB_URL") {
		t.Errorf("DICOMWEB_URL_FILE must not count: err = %v", err)
	}
}

func TestListAndByteSize(t *testing.T) {
	e := baseEnv()
	e["OAUTH_SCOPES"] = "a b,c  ,d"
	e["STOW_MAX_BYTES"] = "1GiB"
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.OAuthScopes, "|"); got != "a|b|c|d" {
		t.Errorf("scopes = %q", got)
	}
	if c.StowMaxBytes != 1<<30 || c.StowMaxBytes.String() != "1GiB" {
		t.Errorf("StowMaxBytes = %d (%s)", c.StowMaxBytes, c.StowMaxBytes)
	}
	sizes := map[string]int64{"1048576": 1 << 20, "500MB": 500e6, "2 GiB": 2 << 30, "10KiB": 10 << 10}
	for in, want := range sizes {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err != nil || int64(s) != want {
			t.Errorf("ByteSize(%q) = %d, %v; want %d", in, s, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GB", "GB", "99999999999TiB"} {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("ByteSize(%q) accepted", in)
		}
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	var buf bytes.Buffer
	Usage(&buf, "stowline", &SingleHost{})
	out := buf.String()
	for _, v := range Vars(&SingleHost{}) {
		if !strings.Contains(out, v.Name) {
			t.Errorf("usage does not list %s", v.Name)
		}
		if v.Description == "" {
			t.Errorf("%s has no description", v.Name)
		}
	}
	for _, want := range []string{"INGEST_TOKEN_FILE", "(required)", ":8080"} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

func TestSeparateCommandsNeedNATSURL(t *testing.T) {
	e := baseEnv()
	for _, c := range []any{&IngestService{}, &ForwarderService{}} {
		if err := Load(mapEnv(e), c); err == nil || !strings.Contains(err.Error(), "NATS_URL is required") {
			t.Errorf("%T without NATS_URL: err = %v", c, err)
		}
	}
	e["NATS_URL"] = "nats://127.0.0.1:4222"
	for _, c := range []any{&IngestService{}, &ForwarderService{}} {
		if err := Load(mapEnv(e), c); err != nil {
			t.Errorf("%T: %v", c, err)
		}
	}
}

// docVarRow is a row of a variables table: `NAME` and its default column.
var docVarRow = regexp.MustCompile("(?m)^\\| `([A-Z][A-Z0-9_<>]*)` \\|[ ]*([^|]*?)[ ]*\\|")

// derivedDefaults are the README's defaults of variables whose code default
// is empty because another setting decides it.
var derivedDefaults = map[string]string{
	"INGEST_TOKEN":           "**required**",
	"DICOMWEB_URL":           "**required** without `DESTINATIONS`",
	"OAUTH_AUTH_STYLE":       "`client_secret_basic`",
	"STOW_PROFILE":           "from `OAUTH_PROVIDER`",
	"STOW_TRANSFER_SYNTAXES": "the profile's",
	"STOW_CONFLICT_REASONS":  "the profile's",
	"STOW_REPLACE_METHOD":    "the profile's",
}

// TestReadmeDocumentsEveryVariable: README's configuration table has a
// row for every variable a command reads, with the default the code
// applies, and no row for a variable no command reads; a default that
// another document's table gives is the code's too. It checked only that
// a row existed, for cmd/stowline's variables.
func TestReadmeDocumentsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section, _, _ := strings.Cut(string(readme[bytes.Index(readme, []byte("\n## Configuration\n")):]), "\n## Destination authentication\n")
	documented := map[string]string{}
	for _, m := range docVarRow.FindAllStringSubmatch(section, -1) {
		documented[m[1]] = m[2]
	}
	read := map[string]Var{}
	for _, v := range Vars(&SingleHost{}, &IngestService{}, &ForwarderService{}, &Audit{}, &ReplayCommand{}, &CheckCommand{}) {
		read[v.Name] = v
	}
	if len(read) < 90 || len(documented) < 90 {
		t.Fatalf("%d variables read, %d documented: the parsing is broken", len(read), len(documented))
	}
	for name, v := range read {
		def, ok := documented[name]
		if !ok {
			t.Errorf("README.md has no table row for %s", name)
			continue
		}
		want := ""
		switch {
		case derivedDefaults[name] != "":
			want = derivedDefaults[name]
			if v.Default != "" {
				t.Errorf("%s: the code's default is %q, README's derived %q", name, v.Default, want)
			}
		case v.Default != "":
			want = "`" + v.Default + "`"
		}
		if def != want {
			t.Errorf("README.md: %s's default is %q, want %q (the code's)", name, def, want)
		}
	}
	for name := range documented {
		if _, ok := read[name]; !ok {
			t.Errorf("README.md documents %s, which no command reads", name)
		}
	}

	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range docs {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docVarRow.FindAllStringSubmatch(string(b), -1) {
			v, ok := read[m[1]]
			// Only a default written as one value: other tables say
			// what the variable does there.
			if !ok || v.Default == "" || !regexp.MustCompile("^`[^`]*`$").MatchString(m[2]) {
				continue
			}
			if m[2] != "`"+v.Default+"`" {
				t.Errorf("%s: %s's default is %s, want `%s` (the code's)", filepath.Base(file), m[1], m[2], v.Default)
			}
		}
	}
}

// The retention check counts the nominal delays: the default 48
// deliveries wait up to 7h0m30s in all.
func TestRetentionCoversRetries(t *testing.T) {
	for _, tc := range []struct {
		set  map[string]string
		fail bool
	}{
		{map[string]string{"EVENTS_RETENTION": "7h", "EVENTS_DEDUPE_WINDOW": "1h"}, true},
		{map[string]string{"EVENTS_RETENTION": "7h1m", "EVENTS_DEDUPE_WINDOW": "1h"}, false},
		// The figure README.md and the variable's description give.
		{map[string]string{"EVENTS_RETENTION": "7h0m29s", "EVENTS_DEDUPE_WINDOW": "1h"}, true},
		{map[string]string{"EVENTS_RETENTION": "7h0m30s", "EVENTS_DEDUPE_WINDOW": "1h"}, false},
		{map[string]string{"EVENTS_RETENTION": "1h", "EVENTS_DEDUPE_WINDOW": "1h", "FORWARDER_MAX_DELIVERIES": "0"}, false},
		{map[string]string{"EVENTS_RETENTION": "1h", "EVENTS_DEDUPE_WINDOW": "1h", "FORWARDER_MAX_DELIVERIES": "10"}, false},
		{map[string]string{"FORWARDER_RETRY_MAX_DELAY": "24h", "FORWARDER_RETRY_DELAY": "24h"}, true},
		{map[string]string{"FORWARDER_MAX_DELIVERIES": "2000000000"}, true},
	} {
		e := baseEnv()
		maps.Copy(e, tc.set)
		var c SingleHost
		err := Load(mapEnv(e), &c)
		if got := err != nil && strings.Contains(err.Error(), "shorter than the waits"); got != tc.fail {
			t.Errorf("%v: Load() = %v, want refused: %v", tc.set, err, tc.fail)
		}
	}
}

// TestEmptySecretFileRefused: a VAR_FILE naming an empty file (a Secret
// key left blank, a secrets operator that has not filled it) is an error
// naming VAR_FILE. Read as unset, it would silently turn the webhook's
// HMAC check or the status page off, or report VAR as missing although
// VAR_FILE is set.
func TestEmptySecretFileRefused(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  map[string]string
		drop string
		want string
	}{
		{"hmac secret", map[string]string{"INGEST_HMAC_SECRET_FILE": empty}, "", "INGEST_HMAC_SECRET_FILE"},
		{"admin token", map[string]string{"ADMIN_TOKEN_FILE": empty}, "", "ADMIN_TOKEN_FILE"},
		{"ingest token", map[string]string{"INGEST_TOKEN_FILE": empty}, "INGEST_TOKEN", "INGEST_TOKEN_FILE"},
		{"source password", map[string]string{"ORTHANC_SOURCES": "pacs", "ORTHANC_PACS_URL": "http://pacs:8042",
			"ORTHANC_PACS_USERNAME": "stowline", "ORTHANC_PACS_PASSWORD_FILE": empty}, "", "ORTHANC_PACS_PASSWORD_FILE"},
		{"destination client secret", map[string]string{"DESTINATIONS": "ai", "DESTINATION_AI_URL": "https://ai.example.org/v1",
			"DESTINATION_AI_OAUTH_TOKEN_URL": "https://auth.example.org/token", "DESTINATION_AI_OAUTH_CLIENT_ID": "stowline",
			"DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE": empty}, "DICOMWEB_URL", "DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			delete(e, tt.drop)
			maps.Copy(e, tt.set)
			err := Load(mapEnv(e), &SingleHost{})
			if err == nil || !strings.Contains(err.Error(), tt.want+": "+empty+" is empty") {
				t.Fatalf("Load() = %v, want an error saying %s names an empty file", err, tt.want)
			}
		})
	}
}

// TestUnreadableSecretFileHidesNoOtherError: an unreadable or empty
// secret file is reported together with every other bad variable, so
// the operator fixes them all in one round, and the secret's absence
// adds no error of its own (a missing or too short token).
func TestUnreadableSecretFileHidesNoOtherError(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{"a parse error", map[string]string{"INGEST_TOKEN_FILE": missing, "FORWARDER_CONCURRENCY": "four"},
			[]string{"INGEST_TOKEN_FILE: open " + missing, "FORWARDER_CONCURRENCY"}},
		{"checks of other variables", map[string]string{"INGEST_TOKEN_FILE": missing, "ADMIN_TOKEN_FILE": empty, "ORTHANC_RESPONSE_TIMEOUT": "10ms", "DICOMWEB_URL": "ftp://x"},
			[]string{"INGEST_TOKEN_FILE: open " + missing, "ADMIN_TOKEN_FILE: " + empty + " is empty", "ORTHANC_RESPONSE_TIMEOUT=10ms", "DICOMWEB_URL"}},
		// Set, the HMAC secret makes the dedupe window matter.
		{"a check the secret turns on", map[string]string{"INGEST_HMAC_SECRET_FILE": missing, "EVENTS_DEDUPE_WINDOW": "2m"},
			[]string{"INGEST_HMAC_SECRET_FILE: open " + missing, "EVENTS_DEDUPE_WINDOW=2m0s is shorter than twice INGEST_HMAC_MAX_SKEW"}},
		{"a source's password", map[string]string{"ORTHANC_SOURCES": "pacs", "ORTHANC_PACS_URL": "http://pacs:8042", "ORTHANC_PACS_USERNAME": "stowline",
			"ORTHANC_PACS_PASSWORD_FILE": missing, "INGEST_ADDR": "8080"},
			[]string{"ORTHANC_PACS_PASSWORD_FILE: open " + missing, "INGEST_ADDR"}},
		{"a destination's client secret", map[string]string{"DESTINATIONS": "ai", "DICOMWEB_URL": "", "DESTINATION_AI_URL": "https://ai.example.org/v1",
			"DESTINATION_AI_OAUTH_TOKEN_URL": "https://auth.example.org/token", "DESTINATION_AI_OAUTH_CLIENT_ID": "stowline",
			"DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE": missing, "DESTINATION_AI_STOW_VERIFY": "yes", "FORWARDER_CONCURRENCY": "0"},
			[]string{"DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE: open " + missing, `DESTINATION_AI_STOW_VERIFY="yes"`, "FORWARDER_CONCURRENCY=0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			delete(e, "INGEST_TOKEN")
			if tt.set["INGEST_TOKEN_FILE"] == "" {
				e["INGEST_TOKEN"] = "0123456789abcdef0123"
			}
			maps.Copy(e, tt.set)
			err := Load(mapEnv(e), &SingleHost{})
			if err == nil {
				t.Fatal("Load() = nil, want errors")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Load() = %v\nwant it to name %s too", err, want)
				}
			}
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tt.want) {
				t.Errorf("Load() = %v\nwant %d errors, got %d lines", err, len(tt.want), n)
			}
			if strings.Contains(err.Error(), "unread-") {
				t.Errorf("Load() = %v\nshows the stand-in", err)
			}
		})
	}
}

// A bearer token HTTP cannot carry as written is refused at startup: a
// space at either end is dropped from the Authorization header on the
// way (the ingest then refused every post, its right token included), a
// second line cannot be sent at all. A space inside is sent as is.
func TestHeaderTokenHTTPCannotCarryRefused(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		set  map[string]string
		want string // "" loads
	}{
		{"ingest token file ending in a space", map[string]string{"INGEST_TOKEN_FILE": file("ingest", "0123456789abcdef0123 \n")}, "INGEST_TOKEN: begins or ends with a space or tab"},
		{"admin token file starting with a tab", map[string]string{"ADMIN_TOKEN_FILE": file("admin", "\tadmin-token-0123456789\n")}, "ADMIN_TOKEN: begins or ends with a space or tab"},
		{"ingest token of two lines", map[string]string{"INGEST_TOKEN_FILE": file("two", "0123456789abcdef0123\nfedcba9876543210fedc\n")}, "INGEST_TOKEN: holds a line break"},
		{"admin token with a control character", map[string]string{"ADMIN_TOKEN": "admin-token\x7f0123456789"}, "ADMIN_TOKEN: holds a line break"},
		{"token with a space inside", map[string]string{"ADMIN_TOKEN": "admin token 0123456789"}, ""},
		{"token file with CRLF", map[string]string{"INGEST_TOKEN_FILE": file("crlf", "0123456789abcdef0123\r\n")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			if tt.set["INGEST_TOKEN_FILE"] != "" {
				delete(e, "INGEST_TOKEN")
			}
			maps.Copy(e, tt.set)
			err := Load(mapEnv(e), &SingleHost{})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Load() = %v, want it to load", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "0123456789") {
				t.Fatalf("Load() = %v, want %q without the value", err, tt.want)
			}
		})
	}
}

// A URL with a user and password is refused, and the error says what to
// set instead: ORTHANC_USERNAME and ORTHANC_PASSWORD for an Orthanc
// source; for a destination or its token endpoint, which take no basic
// auth, no _USERNAME/_PASSWORD variable (none exists: one set after such
// advice would be ignored, and every study sent without credentials).
func TestURLCredentialsErrorNamesRealVariables(t *testing.T) {
	tests := []struct {
		name          string
		set           map[string]string
		want, notWant string
	}{
		{"orthanc", map[string]string{"ORTHANC_URL": "http://u:p@orthanc:8042"},
			"ORTHANC_URL: credentials in the URL are not allowed; set ORTHANC_USERNAME and ORTHANC_PASSWORD", ""},
		{"named orthanc source", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://u:p@orthanc:8042"},
			"ORTHANC_MAIN_URL: credentials in the URL are not allowed; set ORTHANC_MAIN_USERNAME and ORTHANC_MAIN_PASSWORD", ""},
		{"destination", map[string]string{"DICOMWEB_URL": "https://u:p@pacs.example.org/dicom-web"},
			"DICOMWEB_URL: credentials in the URL are not allowed", "_USERNAME"},
		{"named destination", map[string]string{"DESTINATIONS": "ai", "DICOMWEB_URL": "", "DESTINATION_AI_URL": "https://u:p@ai.example.org/dicom-web"},
			"DESTINATION_AI_URL: credentials in the URL are not allowed", "_USERNAME"},
		{"token endpoint", map[string]string{"OAUTH_TOKEN_URL": "https://u:p@idp.example.org/token", "OAUTH_CLIENT_ID": "x", "OAUTH_CLIENT_SECRET": "y"},
			"OAUTH_TOKEN_URL: credentials in the URL are not allowed; the client authenticates with OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET", "_USERNAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			maps.Copy(e, tt.set)
			err := Load(mapEnv(e), &SingleHost{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load() = %v, want an error with %q", err, tt.want)
			}
			for line := range strings.Lines(err.Error()) {
				if strings.Contains(line, "credentials in the URL") && tt.notWant != "" && strings.Contains(line, tt.notWant) {
					t.Errorf("%q names a variable that does not exist (%s)", line, tt.notWant)
				}
			}
		})
	}
}

// A command's configuration that embeds two parts with variables read by
// readDynamic (ORTHANC_SOURCES, DESTINATIONS) has no promoted
// readDynamic: Go drops the ambiguous method, and neither part's runs
// unless the command declares its own. `forwarder check` lost
// DESTINATIONS' variables so when it gained the Orthanc sources.
func TestCommandsReadTheirDynamicVariables(t *testing.T) {
	dynamic := reflect.TypeFor[dynamicVars]()
	for _, cmd := range []any{&CheckCommand{}, &IngestService{}, &ForwarderService{}, &SingleHost{}, &Audit{}, &ReplayCommand{}} {
		typ := reflect.TypeOf(cmd)
		for field := range typ.Elem().Fields() {
			if field.Anonymous && reflect.PointerTo(field.Type).Implements(dynamic) && !typ.Implements(dynamic) {
				t.Errorf("%s embeds %s, whose variables readDynamic reads, and has no readDynamic of its own", typ.Elem().Name(), field.Name)
			}
		}
	}
}
