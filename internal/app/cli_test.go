package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// A misspelt de-identification variable stops the start, naming it: as
// a warning, the destination received the originals, identified.
func TestMainRefusesUnreadDeidentifyVariables(t *testing.T) {
	tests := []struct {
		name  string
		extra map[string]string
		want  string // "" starts
	}{
		{name: "misspelt STOW_DEIDENTIFY", extra: map[string]string{"STOW_DEIDENTIFIY": "basic"}, want: "STOW_DEIDENTIFIY: set but not read"},
		{name: "misspelt key file, outside the checked families", extra: map[string]string{"DEIDENTIFY_KEYFILE": "/run/secrets/deid"}, want: "DEIDENTIFY_KEYFILE: set but not read"},
		{name: "both, one error", extra: map[string]string{"STOW_DEIDENTIFIY": "basic", "DEIDENTIFY_KEYFILE": "/k"}, want: "DEIDENTIFY_KEYFILE, STOW_DEIDENTIFIY: set but not read"},
		{name: "near miss without DEIDENT", extra: map[string]string{"STOW_DEIDENITFY": "basic"}, want: "STOW_DEIDENITFY: set but not read"},
		{name: "lower case", extra: map[string]string{"stow_deidentify": "basic"}, want: "stow_deidentify: set but not read"},
		{name: "another misspelling is a warning", extra: map[string]string{"STOW_PARALLEL_REQUEST": "8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"INGEST_TOKEN": "0123456789abcdef", "DICOMWEB_URL": "http://archive.invalid/dicom-web"}
			for k, v := range tt.extra {
				env[k] = v
			}
			var environ []string
			for k, v := range env {
				environ = append(environ, k+"="+v)
			}
			started := false
			err := Main[config.SingleHost](t.Context(), "stowline", nil, func(k string) string { return env[k] }, environ, io.Discard, io.Discard,
				func(context.Context, *config.SingleHost, *slog.Logger) error { started = true; return nil })
			if tt.want == "" {
				if err != nil || !started {
					t.Fatalf("Main = %v, started %v", err, started)
				}
				return
			}
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) || started {
				t.Fatalf("Main = %v, started %v; want a usage error naming %q, nothing started", err, started, tt.want)
			}
			if strings.Contains(err.Error(), "/run/secrets/deid") {
				t.Errorf("the value is in the error: %v", err)
			}
		})
	}
}

// A routing rule set but not read stops the start, and `forwarder
// check`, naming the variable and the destination it could be for: as a
// warning, DESTINATION_AI_MATCHES sent the AI vendor every study.
func TestUnreadRoutingRulesStopTheStart(t *testing.T) {
	tests := []struct {
		name  string
		extra map[string]string
		want  string // "" starts
	}{
		{name: "MATCHES", extra: map[string]string{"DESTINATION_AI_MATCHES": "'MR' in study.modalities"}, want: `DESTINATION_AI_MATCHES: set but not read: a misspelt routing rule`},
		{name: "ai-2 without its underscore", extra: map[string]string{"DESTINATION_AI2_MATCH": "'MR' in study.modalities"}, want: `Its destination could be "ai-2" (DESTINATION_AI_2_MATCH, DESTINATION_AI_2_INSTANCE_MATCH)`},
		{name: "INSTANCE_MATCHS", extra: map[string]string{"DESTINATION_AI_2_INSTANCE_MATCHS": "instance.modality == 'MR'"}, want: "DESTINATION_AI_2_INSTANCE_MATCHS: set but not read"},
		{name: "lower case", extra: map[string]string{"destination_ai_2_match": "false"}, want: "destination_ai_2_match: set but not read"},
		{name: "with a misspelt de-identification variable, both named", extra: map[string]string{"DESTINATION_AI2_MATCH": "false", "DESTINATION_AI_2_STOW_DEIDENTIFIY": "basic"},
			want: "DESTINATION_AI2_MATCH: set but not read: a misspelt routing rule, or one of a destination DESTINATIONS does not name (then remove it); " +
				`a destination whose rule is not read takes every study. Its destination could be "ai-2" (DESTINATION_AI_2_MATCH, DESTINATION_AI_2_INSTANCE_MATCH)` +
				"\nDESTINATION_AI_2_STOW_DEIDENTIFIY: set but not read"},
		// A misspelt prefix started silently, and its destination took
		// every study.
		{name: "DESTINATIONS_ prefix", extra: map[string]string{"DESTINATIONS_AI_2_MATCH": "'MR' in study.modalities"}, want: `DESTINATIONS_AI_2_MATCH: set but not read: a misspelt routing rule`},
		{name: "DESTINATON_ prefix", extra: map[string]string{"DESTINATON_AI_2_MATCH": "'MR' in study.modalities"}, want: `Its destination could be "ai-2" (DESTINATION_AI_2_MATCH`},
		{name: "prefix without its underscore", extra: map[string]string{"DESTINATIONAI_2_MATCH": "'MR' in study.modalities"}, want: "DESTINATIONAI_2_MATCH: set but not read"},
		// MATCH with one letter left out or doubled was a warning only.
		{name: "MATH", extra: map[string]string{"DESTINATION_AI_2_MATH": "'MR' in study.modalities"}, want: "DESTINATION_AI_2_MATH: set but not read: a misspelt routing rule"},
		{name: "MATTCH", extra: map[string]string{"DESTINATION_AI_2_INSTANCE_MATTCH": "false"}, want: "DESTINATION_AI_2_INSTANCE_MATTCH: set but not read"},
		{name: "another misspelling is a warning", extra: map[string]string{"DESTINATION_AI_2_STOW_PARALLEL_REQUEST": "8"}},
		{name: "another misspelling under DESTINATIONS_ is a warning", extra: map[string]string{"DESTINATIONS_AI_2_STOW_PARALLEL_REQUEST": "8"}},
	}
	for _, tt := range tests {
		env := map[string]string{
			"INGEST_TOKEN": "0123456789abcdef", "DESTINATIONS": "archive,ai-2",
			"DESTINATION_ARCHIVE_URL": "http://archive.invalid/dicom-web", "DESTINATION_AI_2_URL": "http://ai.invalid/dicom-web",
			"ORTHANC_URL": "http://orthanc.invalid:8042",
		}
		for k, v := range tt.extra {
			env[k] = v
		}
		var environ []string
		for k, v := range env {
			environ = append(environ, k+"="+v)
		}
		getenv := func(k string) string { return env[k] }
		check := func(t *testing.T, err error, started bool) {
			t.Helper()
			if tt.want == "" {
				if err != nil || !started {
					t.Fatalf("err %v, started %v", err, started)
				}
				return
			}
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) || started {
				t.Fatalf("err %v, started %v; want a usage error saying %q, nothing started", err, started, tt.want)
			}
			if strings.Contains(err.Error(), "modalities") {
				t.Errorf("the value is in the error: %v", err)
			}
		}
		t.Run(tt.name, func(t *testing.T) {
			started := false
			err := Main[config.SingleHost](t.Context(), "stowline", nil, getenv, environ, io.Discard, io.Discard,
				func(context.Context, *config.SingleHost, *slog.Logger) error { started = true; return nil })
			check(t, err, started)
		})
		if tt.want == "" {
			continue // check would go on to probe the destinations
		}
		t.Run(tt.name+", forwarder check", func(t *testing.T) {
			var stdout bytes.Buffer
			err := RunCheck(t.Context(), nil, getenv, environ, &stdout, io.Discard)
			check(t, err, stdout.Len() > 0)
		})
	}
}

// A stop (SIGTERM, Ctrl-C) while the process is still starting (the
// embedded store recovering, JetStream being provisioned) is a normal
// stop, exit 0: it returned 'context canceled', exit 1, and systemd or an
// orchestrator counted a failure. A cancellation without a stop, or
// another error during one, still fails.
func TestStopDuringStartIsNoFailure(t *testing.T) {
	env := map[string]string{"INGEST_TOKEN": "0123456789abcdef", "DICOMWEB_URL": "http://archive.invalid/dicom-web"}
	provisioning := fmt.Errorf("provision the event stream: %w", context.Canceled)
	tests := []struct {
		name    string
		stopped bool
		err     error
		want    int
	}{
		{"stopped while provisioning", true, provisioning, 0},
		{"canceled without a stop", false, provisioning, 1},
		{"another error during a stop", true, errors.New("embedded JetStream: store corrupt"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			if tt.stopped {
				stop()
			}
			err := Main[config.SingleHost](ctx, "stowline", nil, func(k string) string { return env[k] }, nil, io.Discard, io.Discard,
				func(context.Context, *config.SingleHost, *slog.Logger) error { return tt.err })
			if got := ExitCode("stowline", err, io.Discard); got != tt.want {
				t.Errorf("exit %d (%v), want %d", got, err, tt.want)
			}
		})
	}
}

// The exit statuses a scheduled job tells apart.
func TestExitCode(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("NATS unreachable"), 1},
		{usagef("bad flag"), 2},
		{fmt.Errorf("3 studies %w (--enqueue queues them)", ErrMissing), 3},
	} {
		var stderr strings.Builder
		if got := ExitCode("forwarder audit", tt.err, &stderr); got != tt.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
		if tt.err != nil && !strings.Contains(stderr.String(), tt.err.Error()) {
			t.Errorf("ExitCode(%v) wrote %q", tt.err, stderr.String())
		}
	}
}
