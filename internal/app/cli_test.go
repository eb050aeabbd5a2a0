package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
)

// A misspelt variable is named in a warning at start-up, its value never.
func TestMainWarnsAboutUnreadVariables(t *testing.T) {
	env := map[string]string{
		"INGEST_TOKEN":            "0123456789abcdef",
		"DICOMWEB_URL":            "http://archive.invalid/dicom-web",
		"OAUTH_CLIENT_SECRET_FIL": "/run/secrets/value-not-logged",
	}
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	var out bytes.Buffer
	started := false
	err := Main[config.SingleHost](t.Context(), "stowline", nil, func(k string) string { return env[k] }, environ, &out, io.Discard,
		func(context.Context, *config.SingleHost, *slog.Logger) error { started = true; return nil })
	if err != nil || !started {
		t.Fatalf("Main = %v, started %v: a warning must not stop the start", err, started)
	}
	logs := out.String()
	if !strings.Contains(logs, `"level":"WARN"`) || !strings.Contains(logs, `"variable":"OAUTH_CLIENT_SECRET_FIL"`) {
		t.Errorf("no warning naming OAUTH_CLIENT_SECRET_FIL in %s", logs)
	}
	if strings.Contains(logs, "value-not-logged") {
		t.Errorf("the value was logged: %s", logs)
	}
}
