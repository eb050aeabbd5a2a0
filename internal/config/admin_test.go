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
