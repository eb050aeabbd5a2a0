package app

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// DESTINATIONS=DEFAULT,ai, which earlier builds accepted: a deployment
// that forwards through stowline-forwarder-DEFAULT starts, with a
// warning; a new one, without that consumer, is refused (exit 2) before
// any consumer is made. The configuration refused both, stopping every
// forwarder of an existing deployment at the upgrade.
func TestForwarderStartRefusesOnlyANewMiscasedDefault(t *testing.T) {
	tests := []struct {
		name     string
		names    string   // DESTINATIONS
		existing []string // destinations whose consumers exist before the start
		refused  string   // "" starts
		warned   string   // what the start warns of, when it starts
	}{
		{name: "DEFAULT forwarding before the upgrade", names: "DEFAULT,ai", existing: []string{"DEFAULT", "ai"}, warned: "destination=DEFAULT consumer=stowline-"},
		// A new installation, or a stream lost and made again: nothing
		// left behind, and a refusal would stop it at every restart.
		{name: "DEFAULT on an empty stream", names: "DEFAULT,ai", warned: "no case of default has a consumer"},
		{name: "DEFAULT where only ai forwarded", names: "DEFAULT,ai", existing: []string{"ai"}, warned: "no case of default has a consumer"},
		{name: "a new DEFAULT beside an existing default", names: "DEFAULT,ai", existing: []string{natsjs.DefaultDestination, "ai"}, refused: `DESTINATIONS: "DEFAULT" has no consumer on the event stream yet, while "default" does`},
		{name: "Default, where DEFAULT forwarded", names: "ai,Default", existing: []string{"DEFAULT", "ai"}, refused: `write it "DEFAULT"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = testharness.FreePort(t), false })
			if len(tt.existing) > 0 {
				if _, err := natsjs.DefaultTopology().EnsureConsumers(replayCtx(t), ns.JS, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			env := map[string]string{"NATS_URL": ns.ClientURL(), "FORWARDER_ADDR": testharness.FreeAddr(t), "DESTINATIONS": tt.names,
				"DESTINATION_DEFAULT_URL": "http://127.0.0.1:1/dicomweb", "DESTINATION_AI_URL": "http://127.0.0.1:1/dicomweb"}
			var c config.ForwarderService
			if err := config.Load(func(k string) string { return env[k] }, &c); err != nil {
				t.Fatal(err)
			}
			logs := &testharness.LogBuffer{}
			ctx, stop := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- runForwarder(ctx, &c, 0, slog.New(slog.NewTextHandler(logs, nil))) }()
			if tt.refused != "" {
				var err error
				waitFor(t, "the start to end", func() bool {
					select {
					case err = <-done:
						return true
					default:
						if strings.Contains(logs.String(), " server=forwarder addr=") {
							stop()
							t.Fatalf("started: %v; want a usage error saying %q", <-done, tt.refused)
						}
						return false
					}
				})
				stop()
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("start: %v; want a usage error saying %q", err, tt.refused)
				}
				// Refused before the start made the new destination's consumers.
				miscased, _, _ := strings.Cut(strings.TrimPrefix(tt.names, "ai,"), ",")
				if _, err := ns.JS.Consumer(replayCtx(t), natsjs.EventStream, natsjs.ConsumerName(miscased)); !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
					t.Errorf("consumer %s: %v; want none made", natsjs.ConsumerName(miscased), err)
				}
				return
			}
			t.Cleanup(func() { stop(); <-done })
			waitFor(t, "the forwarder's listener", func() bool {
				select {
				case err := <-done:
					done <- err // for the cleanup's wait
					t.Fatalf("start: %v; want it to start", err)
				default:
				}
				return strings.Contains(logs.String(), " server=forwarder addr=")
			})
			for _, want := range []string{"level=WARN msg=\"DESTINATIONS names the default destination in another case", tt.warned} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the log does not say %q:\n%s", want, logs.String())
				}
			}
			// It serves DEFAULT's own consumer, not default's.
			if _, err := ns.JS.Consumer(replayCtx(t), natsjs.EventStream, natsjs.ConsumerName(natsjs.DefaultDestination)); !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Errorf("consumer %s: %v; want none made", natsjs.ConsumerName(natsjs.DefaultDestination), err)
			}
		})
	}
}

// TestRenamedDestinationRefused: DESTINATIONS "tidied" from ai to AI (or
// ai-2 to ai_2) reads the same DESTINATION_AI_ variables, and started a
// new destination with new events and an empty ledger, ai's backlog,
// retries and dead letters left for no forwarder, without a word; only
// the default destination's name was checked. Each name written alike
// but without a consumer of its own is now refused, naming the other;
// one with its own consumer, or with none alike, passes.
func TestRenamedDestinationRefused(t *testing.T) {
	tests := []struct {
		name     string
		names    []string // DESTINATIONS
		existing []string // destinations whose consumers exist
		refused  string   // "" passes
	}{
		{"ai written AI", []string{natsjs.DefaultDestination, "AI"}, []string{natsjs.DefaultDestination, "ai"}, `"AI" has no consumer on the event stream yet, while "ai" does`},
		{"ai-2 written ai_2", []string{"ai_2"}, []string{"ai-2"}, "run `forwarder destinations remove ai-2 --yes` first"},
		{"its own consumer beside one alike", []string{"AI"}, []string{"ai", "AI"}, ""},
		{"a new destination", []string{"ai", "research"}, []string{"ai"}, ""},
		{"no stream yet", []string{"AI"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			if len(tt.existing) > 0 {
				if _, err := natsjs.DefaultTopology().EnsureConsumers(replayCtx(t), ns.JS, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			err := checkRenamedDestinations(replayCtx(t), ns.JS, tt.names, slog.New(slog.DiscardHandler))
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.refused) {
				t.Fatalf("err %v; want a usage error saying %q", err, tt.refused)
			}
		})
	}
}
