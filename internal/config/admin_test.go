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
	e["ADMIN_TOKEN"] = "short"
	for name, c := range cfgs {
		if err := Load(mapEnv(e), c); err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN") {
			t.Errorf("%s with a short ADMIN_TOKEN: err = %v", name, err)
		}
	}
}

func (a *Admin) adminToken() string { return a.AdminToken }
