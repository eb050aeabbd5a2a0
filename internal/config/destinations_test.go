package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// destEnv is a single-host environment with the destinations archive and
// ai, each with its own credentials.
func destEnv(t *testing.T) map[string]string {
	t.Helper()
	secretFile := filepath.Join(t.TempDir(), "ai-secret")
	if err := os.WriteFile(secretFile, []byte("ai-secret-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"INGEST_TOKEN":                              "0123456789abcdef0123",
		"DESTINATIONS":                              "archive,ai-2",
		"DESTINATION_ARCHIVE_URL":                   "https://archive.example.org/dicomweb",
		"DESTINATION_ARCHIVE_OAUTH_TOKEN_URL":       "https://login.example.org/token",
		"DESTINATION_ARCHIVE_OAUTH_CLIENT_ID":       "archive",
		"DESTINATION_ARCHIVE_OAUTH_CLIENT_SECRET":   "archive-secret",
		"DESTINATION_ARCHIVE_STOW_MAX_INSTANCES":    "50",
		"DESTINATION_AI_2_URL":                      "https://ai.example.com/v1",
		"DESTINATION_AI_2_OAUTH_TOKEN_URL":          "https://idp.ai.example.com/token",
		"DESTINATION_AI_2_OAUTH_CLIENT_ID":          "site-7",
		"DESTINATION_AI_2_OAUTH_CLIENT_SECRET_FILE": secretFile,
		"DESTINATION_AI_2_MATCH":                    "'MR' in study.modalities",
		"DESTINATION_AI_2_INSTANCE_MATCH":           "!(instance.modality in ['SR', 'KO', 'PR'])",
	}
}

func TestDestinations(t *testing.T) {
	var c SingleHost
	if err := Load(mapEnv(destEnv(t)), &c); err != nil {
		t.Fatal(err)
	}
	ds := c.DestinationList()
	if len(ds) != 2 || ds[0].Name != "archive" || ds[1].Name != "ai-2" {
		t.Fatalf("destinations = %+v", ds)
	}
	archive, ai := ds[0], ds[1]
	if archive.DICOMwebURL != "https://archive.example.org/dicomweb" || archive.OAuthClientSecret != "archive-secret" ||
		archive.StowMaxInstances != 50 || archive.Match != "" {
		t.Errorf("archive = %+v", archive)
	}
	// Nothing of one destination reaches the other: each has its own
	// secret (one from a file), and a setting not given takes its default.
	if ai.OAuthClientSecret != "ai-secret-from-file" || ai.OAuthClientID != "site-7" || ai.StowMaxInstances != 100 ||
		ai.Match == "" || ai.InstanceMatch == "" || ai.Var != "DESTINATION_AI_2_" {
		t.Errorf("ai-2 = %+v", ai)
	}
	// The file is kept, for the token source to read again (rotation).
	if ai.OAuthClientSecretFile == "" || archive.OAuthClientSecretFile != "" {
		t.Errorf("secret files: ai-2 %q, archive %q; want ai-2's file only", ai.OAuthClientSecretFile, archive.OAuthClientSecretFile)
	}
	if got := ai.VarName("DICOMWEB_URL"); got != "DESTINATION_AI_2_URL" {
		t.Errorf("VarName(DICOMWEB_URL) = %q", got)
	}
	if got := len(c.Served()); got != 2 {
		t.Errorf("served %d destinations without FORWARDER_DESTINATIONS, want all 2", got)
	}
}

// Variables a platform sets on its own (EKS's AWS_REGION, AKS workload
// identity's AZURE_TENANT_ID) do not stop a forwarder with DESTINATIONS.
func TestDestinationsIgnorePlatformVariables(t *testing.T) {
	e := destEnv(t)
	e["AWS_REGION"] = "eu-west-1"
	e["AZURE_TENANT_ID"] = "00000000-0000-0000-0000-000000000000"
	e["AZURE_AUTHORITY_HOST"] = "https://login.microsoftonline.com/"
	e["AZURE_FEDERATED_TOKEN_FILE"] = "/var/run/secrets/azure/tokens/azure-identity-token"
	e["GOOGLE_APPLICATION_CREDENTIALS"] = "/var/run/secrets/gcp/key.json"
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	// Named for the start's warning: one may have been meant for a
	// destination, which reads only its DESTINATION_<NAME>_ form.
	want := []string{"AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST", "AZURE_FEDERATED_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS", "AWS_REGION"}
	if got := c.IgnoredPlatformVariables(); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("IgnoredPlatformVariables() = %v, want %v", got, want)
	}
}

// A forwarder group serving some destinations needs only the others'
// names and rules, never their credentials.
func TestForwarderDestinationsNeedOnlyTheirOwnSettings(t *testing.T) {
	e := destEnv(t)
	e["FORWARDER_DESTINATIONS"] = "ai-2"
	e["NATS_URL"] = "nats://nats:4222" // archive's forwarders reach it too
	for k := range e {
		if strings.HasPrefix(k, "DESTINATION_ARCHIVE_") && k != "DESTINATION_ARCHIVE_URL" {
			delete(e, k)
		}
	}
	e["DESTINATION_ARCHIVE_OAUTH_CLIENT_SECRET_FILE"] = "/nonexistent/secret" // read only by archive's forwarders
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	if s := c.Served(); len(s) != 1 || s[0].Name != "ai-2" || len(c.DestinationList()) != 2 {
		t.Errorf("served %+v of %+v", s, c.DestinationList())
	}
}

// On the embedded JetStream server, which no other process reaches, a
// single host serving some destinations would queue the others' studies
// for nobody.
func TestSingleHostServesEveryDestinationOnEmbeddedNATS(t *testing.T) {
	e := destEnv(t)
	e["FORWARDER_DESTINATIONS"] = "ai-2"
	var c SingleHost
	err := Load(mapEnv(e), &c)
	if err == nil || !strings.Contains(err.Error(), "FORWARDER_DESTINATIONS=ai-2 leaves archive unserved") {
		t.Fatalf("Load() = %v, want FORWARDER_DESTINATIONS refused", err)
	}
}

// The default destination named in DESTINATIONS keeps its name; DEFAULT
// too, in its case: a deployment earlier builds let make it forwards
// through its own consumer, which only the forwarder's start can look for
// (it refuses a new one).
func TestDestinationsNameDefault(t *testing.T) {
	for _, name := range []string{"default", "DEFAULT", "Default"} {
		t.Run(name, func(t *testing.T) {
			e := destEnv(t)
			e["DESTINATIONS"] = name + ",ai-2"
			e["DESTINATION_DEFAULT_URL"] = "https://pacs.example.org/dicom-web"
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			if got := c.DestinationList()[0]; got.Name != name || got.Var != "DESTINATION_DEFAULT_" {
				t.Errorf("first destination %q, variables %s; want %s, DESTINATION_DEFAULT_", got.Name, got.Var, name)
			}
		})
	}
}

func TestDestinationErrorsNameTheirVariables(t *testing.T) {
	tests := []struct {
		name string
		edit func(map[string]string)
		want []string
	}{
		{"default destination variables with DESTINATIONS", func(e map[string]string) { e["DICOMWEB_URL"] = "https://x.example.org" },
			[]string{"DICOMWEB_URL: set, but DESTINATIONS names the destinations"}},
		{"missing URL", func(e map[string]string) { delete(e, "DESTINATION_AI_2_URL") },
			[]string{"DESTINATION_AI_2_URL is required"}},
		{"bad URL", func(e map[string]string) { e["DESTINATION_AI_2_URL"] = "ftp://ai" },
			[]string{"DESTINATION_AI_2_URL=\"ftp://ai\""}},
		{"STOW-RS endpoint for URL", func(e map[string]string) { e["DESTINATION_AI_2_URL"] = "https://ai.example.com/v1/studies" },
			[]string{"DESTINATION_AI_2_URL=\"https://ai.example.com/v1/studies\": want the DICOMweb base URL"}},
		{"secret missing", func(e map[string]string) { delete(e, "DESTINATION_AI_2_OAUTH_CLIENT_SECRET_FILE") },
			[]string{"DESTINATION_AI_2_OAUTH_CLIENT_SECRET is required"}},
		{"bad size", func(e map[string]string) { e["DESTINATION_ARCHIVE_STOW_MAX_BYTES"] = "lots" },
			[]string{"DESTINATION_ARCHIVE_STOW_MAX_BYTES"}},
		{"bad verify", func(e map[string]string) { e["DESTINATION_AI_2_STOW_VERIFY"] = "storage-commitment" },
			[]string{`DESTINATION_AI_2_STOW_VERIFY="storage-commitment": want off or qido`}},
		{"bad breaker", func(e map[string]string) { e["DESTINATION_AI_2_STOW_BREAKER_FAILURES"] = "5000" },
			[]string{`DESTINATION_AI_2_STOW_BREAKER_FAILURES=5000: want 0 (no breaker) to 1000`}},
		{"bad bandwidth", func(e map[string]string) { e["DESTINATION_ARCHIVE_STOW_MAX_BYTES_PER_SECOND"] = "10" },
			[]string{`DESTINATION_ARCHIVE_STOW_MAX_BYTES_PER_SECOND=10B`}},
		{"bad rule", func(e map[string]string) { e["DESTINATION_AI_2_MATCH"] = "'MR' in study.modality" },
			[]string{"DESTINATION_AI_2_MATCH", "1:14", "undefined field 'modality'"}},
		{"TLS CA not PEM", func(e map[string]string) {
			e["DESTINATION_AI_2_TLS_CA_FILE"] = e["DESTINATION_AI_2_OAUTH_CLIENT_SECRET_FILE"]
		},
			[]string{"DESTINATION_AI_2_TLS_CA_FILE: ", "holds no PEM block"}},
		{"bad instance rule", func(e map[string]string) { e["DESTINATION_AI_2_INSTANCE_MATCH"] = "instance.modality" },
			[]string{"DESTINATION_AI_2_INSTANCE_MATCH", "true or false"}},
		{"bad name", func(e map[string]string) { e["DESTINATIONS"] = "archive,ai.2" }, []string{`"ai.2" is not a destination name`}},
		{"names that share variables", func(e map[string]string) { e["DESTINATIONS"] = "archive,ai-2,ai_2" },
			[]string{`"ai-2" and "ai_2" would both be configured by DESTINATION_AI_2_* variables`}},
		{"names whose variables meet", func(e map[string]string) { e["DESTINATIONS"] = "archive,ai-2,ai-2-instance" },
			[]string{`"ai-2" and "ai-2-instance" would both read DESTINATION_AI_2_INSTANCE_MATCH`}},
		{"names whose variables meet, the longer first", func(e map[string]string) { e["DESTINATIONS"] = "archive-oauth-token,archive,ai-2" },
			[]string{`"archive-oauth-token" and "archive" would both read DESTINATION_ARCHIVE_OAUTH_TOKEN_URL`}},
		{"unknown served destination", func(e map[string]string) { e["FORWARDER_DESTINATIONS"] = "archive,dr" },
			[]string{`FORWARDER_DESTINATIONS: "dr" is not a configured destination`}},
		// Buffer mode reads it for a destination another group serves: a
		// value taken for "off" would let it delete the originals only
		// that destination's de-identified copies hold.
		{"bad de-identification of a destination served elsewhere", func(e map[string]string) {
			e["NATS_URL"] = "nats://nats:4222"
			e["FORWARDER_DESTINATIONS"] = "ai-2"
			e["DESTINATION_ARCHIVE_STOW_DEIDENTIFY"] = "Basic"
		}, []string{`DESTINATION_ARCHIVE_STOW_DEIDENTIFY="Basic": want off or basic`}},
		// Buffer mode would delete the only identified copy; archive is
		// served by other forwarders and still counts.
		{"buffer mode without originals", func(e map[string]string) {
			e["FORWARDER_DELETE_FROM_SOURCE"] = "true"
			e["FORWARDER_DESTINATIONS"] = "ai-2"
			e["DESTINATION_ARCHIVE_STOW_DEIDENTIFY"] = "basic"
			e["DESTINATION_AI_2_STOW_DEIDENTIFY"] = "basic"
			e["DESTINATION_AI_2_DEIDENTIFY_KEY_FILE"] = e["DESTINATION_AI_2_OAUTH_CLIENT_SECRET_FILE"]
		}, []string{"FORWARDER_DELETE_FROM_SOURCE=true: every destination receives de-identified copies"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := destEnv(t)
			tt.edit(e)
			var c SingleHost
			err := Load(mapEnv(e), &c)
			if err == nil {
				t.Fatal("Load accepted the configuration")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "archive-secret") || strings.Contains(err.Error(), "ai-secret-from-file") {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}
