package config

import (
	"strings"
	"testing"
)

func TestDestinationProfile(t *testing.T) {
	const hi = "https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2a515ab294163a2d2f4069eed584c"
	tests := []struct {
		name        string
		set         map[string]string
		want        string // substring of the error; "" means valid
		profile     string
		method      string
		reasons     string
		syntaxesAny bool
	}{
		{name: "generic by default", profile: "generic", method: "delete", reasons: "0xB00E,0x0111,0x0110@409,0xA7xx@409", syntaxesAny: true},
		{name: "azure from the provider", set: map[string]string{"OAUTH_PROVIDER": "azure"}, profile: "azure", method: "put", reasons: "0xB00E,0x0111,0x0110@409,0xA7xx@409"},
		{name: "google from the provider", set: map[string]string{"OAUTH_PROVIDER": "google", "GCE_METADATA_HOST": "127.0.0.1:1"}, profile: "google", method: "delete", syntaxesAny: true},
		{name: "aws from the provider", set: map[string]string{"OAUTH_PROVIDER": "aws", "DICOMWEB_URL": hi}, profile: "aws", method: "none"},
		{name: "orthanc set", set: map[string]string{"STOW_PROFILE": "orthanc", "STOW_ON_CONFLICT": "deadletter"}, profile: "orthanc", method: "none", syntaxesAny: true},
		{name: "orthanc cannot replace", set: map[string]string{"STOW_PROFILE": "orthanc", "STOW_ON_CONFLICT": "replace"}, want: "profile orthanc has no way"},
		{name: "overrides", set: map[string]string{"STOW_PROFILE": "azure", "STOW_REPLACE_METHOD": "delete", "STOW_CONFLICT_REASONS": "45070, 0xA9xx"},
			profile: "azure", method: "delete", reasons: "0xB00E,0xA9xx"},
		{name: "unknown profile", set: map[string]string{"STOW_PROFILE": "dcm4chee"}, want: `STOW_PROFILE="dcm4chee"`},
		{name: "unknown action", set: map[string]string{"STOW_ON_CONFLICT": "overwrite"}, want: `STOW_ON_CONFLICT="overwrite"`},
		{name: "unknown method", set: map[string]string{"STOW_REPLACE_METHOD": "patch"}, want: `STOW_REPLACE_METHOD="patch"`},
		{name: "bad reason", set: map[string]string{"STOW_CONFLICT_REASONS": "0x01G0"}, want: "STOW_CONFLICT_REASONS"},
		{name: "aws cannot replace", set: map[string]string{"OAUTH_PROVIDER": "aws", "DICOMWEB_URL": hi, "STOW_ON_CONFLICT": "replace"}, want: "STOW_ON_CONFLICT=replace: destination profile aws has no way"},
		{name: "aws over 1GB per request", set: map[string]string{"OAUTH_PROVIDER": "aws", "DICOMWEB_URL": hi, "STOW_MAX_BYTES": "1GiB"}, want: "STOW_MAX_BYTES=1GiB: destination profile aws"},
		{name: "aws profile on a generic destination", set: map[string]string{"STOW_PROFILE": "aws", "STOW_MAX_BYTES": "2GiB"}, want: "STOW_MAX_BYTES=2GiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["NATS_URL"] = "nats://127.0.0.1:4222"
			for k, v := range tt.set {
				e[k] = v
			}
			var c ForwarderService
			err := Load(mapEnv(e), &c)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			p := c.Forwarder.Destination.Profile()
			if p.Name != tt.profile || p.ReplaceMethod != tt.method || p.Source == "" {
				t.Errorf("profile %s, method %s, source %q; want %s, %s", p.Name, p.ReplaceMethod, p.Source, tt.profile, tt.method)
			}
			if got := ConflictRules(p.ConflictReasons).String(); tt.reasons != "" && got != tt.reasons {
				t.Errorf("conflict reasons %s, want %s", got, tt.reasons)
			}
			// HealthImaging searches instances only within a series.
			if p.SeriesSearch != (p.Name == ProfileAWS) {
				t.Errorf("profile %s: SeriesSearch %v", p.Name, p.SeriesSearch)
			}
			if any := len(p.TransferSyntaxes()) == 0; any != tt.syntaxesAny {
				t.Errorf("transfer syntaxes %v, want any: %v", p.TransferSyntaxes(), tt.syntaxesAny)
			}
		})
	}
}

func TestNamedDestinationConflictVariables(t *testing.T) {
	e := baseEnv()
	e["NATS_URL"] = "nats://127.0.0.1:4222"
	delete(e, "DICOMWEB_URL")
	e["DESTINATIONS"] = "ai"
	e["DESTINATION_AI_URL"] = "https://ai.example.org/dicomweb"
	e["DESTINATION_AI_STOW_ON_CONFLICT"] = "sometimes"
	var c ForwarderService
	err := Load(mapEnv(e), &c)
	if err == nil || !strings.Contains(err.Error(), `DESTINATION_AI_STOW_ON_CONFLICT="sometimes"`) {
		t.Fatalf("err = %v, want it to name DESTINATION_AI_STOW_ON_CONFLICT", err)
	}
	e["DESTINATION_AI_STOW_ON_CONFLICT"] = "deadletter"
	e["DESTINATION_AI_STOW_PROFILE"] = "google"
	c = ForwarderService{}
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	d := c.Forwarder.DestinationList()[0]
	if d.StowOnConflict != "deadletter" || d.Profile().Name != "google" {
		t.Errorf("destination ai: on conflict %q, profile %q", d.StowOnConflict, d.Profile().Name)
	}
}

// Azure accepts every transfer syntax with explicit VR: its profile
// listed only those stowline named, and an ultrasound cine in H.264 was
// refused as lossy before it was sent, a JPEG 2000 Part 2 instance
// converted (with a plugin) or refused.
func TestAzureProfileListsEveryExplicitVRSyntax(t *testing.T) {
	got := profiles[ProfileAzure].TransferSyntaxes()
	if got[0] != "1.2.840.10008.1.2.1" {
		t.Errorf("first syntax %s, want Explicit VR Little Endian (what the others are converted to)", got[0])
	}
	seen := map[string]bool{}
	for _, ts := range got {
		if seen[ts] {
			t.Errorf("%s listed twice", ts)
		}
		seen[ts] = true
	}
	for _, ts := range []string{"1.2.840.10008.1.2", "1.2.840.10008.1.20"} {
		if seen[ts] {
			t.Errorf("implicit VR syntax %s listed", ts)
		}
	}
	for _, ts := range []string{"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.92",
		"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.8.1", "1.2.840.10008.1.2.4.64"} {
		if !seen[ts] {
			t.Errorf("explicit VR syntax %s not listed", ts)
		}
	}
}
