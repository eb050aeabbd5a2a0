package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
)

// TestWarnWebhookAuth: with INGEST_HMAC_SECRET set the ingest says once
// at start that Orthanc's Lua script cannot sign (its posts are refused
// unless a signing proxy adds the signature), and logs neither secret
// nor token; with neither setting it says nothing.
func TestWarnWebhookAuth(t *testing.T) {
	const (
		secret   = "hmac-secret-0123456789abcdef0123456789"
		previous = "previous-token-0123456789"
	)
	for _, tc := range []struct {
		name string
		cfg  config.Ingest
		want []string // one Warn line starting with each
	}{
		{"neither", config.Ingest{Token: "token-0123456789"}, nil},
		{"previous token", config.Ingest{Token: "token-0123456789", PreviousToken: previous}, []string{"INGEST_TOKEN_PREVIOUS is accepted too"}},
		{"hmac secret", config.Ingest{Token: "token-0123456789", WebhookSecurity: config.WebhookSecurity{HMACSecret: secret}},
			[]string{"INGEST_HMAC_SECRET is set: Orthanc's Lua script cannot sign"}},
		{"both", config.Ingest{Token: "token-0123456789", PreviousToken: previous, WebhookSecurity: config.WebhookSecurity{HMACSecret: secret}},
			[]string{"INGEST_TOKEN_PREVIOUS is accepted too", "INGEST_HMAC_SECRET is set: Orthanc's Lua script cannot sign"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			warnWebhookAuth(slog.New(slog.NewTextHandler(&buf, nil)), &tc.cfg)
			out := buf.String()
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if out == "" {
				lines = nil
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(tc.want), out)
			}
			for i, want := range tc.want {
				if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], `msg="`+want) {
					t.Errorf("line %d = %s, want a Warn starting %q", i, lines[i], want)
				}
			}
			for _, s := range []string{secret, previous, tc.cfg.Token} {
				if strings.Contains(out, s) {
					t.Errorf("the log holds a secret %q:\n%s", s, out)
				}
			}
		})
	}
}
