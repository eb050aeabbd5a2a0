package app

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// A forwarder whose lane FORWARD_WINDOWS limits to half an hour a night,
// with the default EVENTS_RETENTION, warns at start, naming the
// variables: a failing study's 48 deliveries span about two weeks there,
// and JetStream deletes its event after one, with no dead letter. The
// start said nothing.
func TestForwarderStartWarnsOfWindowsPastRetention(t *testing.T) {
	for _, tc := range []struct {
		windows string
		warn    bool
	}{
		{"low=02:00-02:30", true},
		{"low=22:00-07:00", false},
	} {
		t.Run(tc.windows, func(t *testing.T) {
			ns := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = testharness.FreePort(t), false })
			addr := testharness.FreeAddr(t)
			env := map[string]string{"NATS_URL": ns.ClientURL(), "FORWARDER_ADDR": addr,
				"DICOMWEB_URL": "http://127.0.0.1:1/dicomweb", "FORWARD_WINDOWS": tc.windows}
			var c config.ForwarderService
			if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
				t.Fatal(err)
			}
			logs := &testharness.LogBuffer{}
			ctx, stop := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- runForwarder(ctx, &c, 0, slog.New(slog.NewTextHandler(logs, nil))) }()
			t.Cleanup(func() { stop(); <-done })
			// The warning is logged before the forwarder's listener opens,
			// by the same goroutine: once "listening" is logged, a warning
			// not there is none (the windows' Info line is written just
			// before the warning, so reading the log after it could miss it).
			waitFor(t, "the start to open the forwarder's listener", func() bool {
				return strings.Contains(logs.String(), " server=forwarder addr=")
			})
			if !strings.Contains(logs.String(), "lanes are pulled only in their hours") {
				t.Fatalf("the start did not log the forwarding windows:\n%s", logs.String())
			}
			got := strings.Contains(logs.String(), "may outlive the event stream's retention")
			if got != tc.warn {
				t.Fatalf("warned: %v, want %v; log:\n%s", got, tc.warn, logs.String())
			}
			if !tc.warn {
				return
			}
			for _, name := range []string{"EVENTS_RETENTION=168h0m0s", "FORWARD_WINDOWS", "low lane", "FORWARDER_MAX_DELIVERIES=48"} {
				if !strings.Contains(logs.String(), name) {
					t.Errorf("the warning does not name %s:\n%s", name, logs.String())
				}
			}
		})
	}
}
