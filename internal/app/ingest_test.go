package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
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

// TestIngestChecksHMACSignatures: INGEST_HMAC_SECRET reaches the ingest's
// webhook. A post with the right token but no signature is refused (401,
// counted as bad_signature); one signed with the secret is stored (202).
func TestIngestChecksHMACSignatures(t *testing.T) {
	const (
		token  = "ingest-token-0123456789"
		secret = "hmac-secret-0123456789abcdef0123456789"
		body   = `{"type":"orthanc.study.stable","version":1,"source":"orthanc-a",` +
			`"orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988",` +
			`"studyInstanceUid":"1.2.840.113619.2.1.2411.1031152382.365.1.736169244","lastUpdate":"20261126T101500"}`
	)
	ns := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	addr := testharness.FreeAddr(t)
	env := map[string]string{
		"NATS_URL": ns.ClientURL(), "NATS_STORE_DIR": t.TempDir(), "RECONCILE_ENABLED": "false",
		"INGEST_ADDR": addr, "INGEST_TOKEN": token, "INGEST_HMAC_SECRET": secret,
	}
	var c config.IngestService
	if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ended := make(chan struct{})
	var runErr error
	go func() {
		defer close(ended)
		runErr = RunIngest(ctx, &c, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() {
		stop()
		<-ended
		if runErr != nil {
			t.Errorf("RunIngest = %v after its stop, want nil", runErr)
		}
	})
	base := "http://" + addr
	waitFor(t, "the ingest answering /healthz", func() bool {
		select {
		case <-ended:
			t.Fatalf("RunIngest = %v before the test's end", runErr)
		default:
		}
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	post := func(signed bool) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+web.WebhookPath, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		if signed {
			ts, sig := web.Sign([]byte(secret), time.Now(), []byte(body))
			req.Header.Set(web.TimestampHeader, ts)
			req.Header.Set(web.SignatureHeader, sig)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post(false); got != http.StatusUnauthorized {
		t.Errorf("unsigned post: status %d, want 401", got)
	}
	if got := post(true); got != http.StatusAccepted {
		t.Errorf("signed post: status %d, want 202", got)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	metrics := string(b)
	for _, want := range []string{
		`stowline_ingest_events_rejected_total{reason="bad_signature"} 1`,
		`stowline_ingest_events_rejected_total{reason="unauthorized"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.orthanc-a"] != 1 {
		t.Errorf("subjects %v, want the signed post's event in the routine lane", got)
	}
}
