package config

import (
	"strings"
	"testing"
)

// ADMIN_TOKEN is one credential for every command: the forwarder's admin
// API and the ingest's status page.
func TestAdminTokenIsReadByEveryCommand(t *testing.T) {
	e := baseEnv()
	e["NATS_URL"] = "nats://127.0.0.1:4222"
	e["ADMIN_TOKEN"] = "an-admin-token-0123456789"
	cfgs := map[string]interface{ adminToken() string }{
		"ingest": &IngestService{}, "forwarder": &ForwarderService{}, "single host": &SingleHost{},
	}
	for name, c := range cfgs {
		if err := Load(mapEnv(e), c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := c.adminToken(); got != e["ADMIN_TOKEN"] {
			t.Errorf("%s: admin token %q", name, got)
		}
	}
	for _, bad := range []string{"short", "changeme-admin-token-0123"} {
		e["ADMIN_TOKEN"] = bad
		for name, c := range cfgs {
			if err := Load(mapEnv(e), c); err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN") {
				t.Errorf("%s with ADMIN_TOKEN %q: err = %v", name, bad, err)
			} else if strings.Contains(err.Error(), bad) {
				t.Errorf("%s: the error shows the token: %v", name, err)
			}
		}
	}
}

func (a *Admin) adminToken() string { return a.AdminToken }

// An ADMIN_TOKEN equal to INGEST_TOKEN is refused where both are read:
// Orthanc's configuration holds the ingest token.
func TestAdminTokenDiffersFromIngestToken(t *testing.T) {
	e := baseEnv()
	e["NATS_URL"] = "nats://127.0.0.1:4222"
	e["ADMIN_TOKEN"] = e["INGEST_TOKEN"]
	for name, c := range map[string]any{"ingest": &IngestService{}, "single host": &SingleHost{}} {
		err := Load(mapEnv(e), c)
		if err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN must differ from INGEST_TOKEN") || strings.Contains(err.Error(), e["INGEST_TOKEN"]) {
			t.Errorf("%s: err = %v, want the refusal without the token", name, err)
		}
	}
	// Nor the token being rotated out, still in some Orthanc's.
	e["INGEST_TOKEN_PREVIOUS"] = e["INGEST_TOKEN"]
	e["INGEST_TOKEN"] = "fedcba9876543210fedc"
	err := Load(mapEnv(e), &IngestService{})
	if err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN must differ from INGEST_TOKEN_PREVIOUS") || strings.Contains(err.Error(), e["ADMIN_TOKEN"]) {
		t.Errorf("err = %v, want the refusal without the token", err)
	}
}

// TestRandomCredentialsAccepted: random values the documentation's
// commands make pass, short ones included (openssl rand -hex 8 may
// repeat most of its 16 digits).
func TestRandomCredentialsAccepted(t *testing.T) {
	for _, v := range []string{"a3f0a3f0c19ca3a1", "0a1b0a1b0a1b0a1c", "q83vR1zAqJk7c0nGm2yTLw9dXp4eHs6B"} {
		if err := checkCredential("INGEST_TOKEN", v, 16); err != nil {
			t.Errorf("%s refused: %v", v, err)
		}
	}
}
