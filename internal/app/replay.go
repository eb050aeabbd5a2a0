package app

import (
	"context"
	"fmt"
	"io"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deadletter"
)

// RunReplay runs `forwarder replay ARGS`: dead letters and re-forwarding,
// against the NATS server of a running deployment.
func RunReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, replayUsage)
		return nil
	}
	if versionAsked(args) {
		printVersion(stdout, "forwarder replay")
		return nil
	}
	// The command line first: a typo is told without NATS, and on a
	// single host without stopping stowline for its store.
	cmd, err := parseReplay(args)
	if err != nil {
		return err
	}
	var cfg config.ReplayCommand
	if err := config.Load(getenv, &cfg); err != nil {
		return &usageError{fmt.Errorf("forwarder replay: invalid configuration:\n%w", err)}
	}
	// Logs go to stderr: stdout carries the command's output (tables, JSON).
	log := newLogger(stderr, cfg.Log)
	js, err := connectTool(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer js.Close()
	store, err := deadletter.Open(ctx, js.JS)
	if err != nil {
		return err
	}
	return cmd(ctx, &replayCLI{Store: store, JS: js.JS, Stdout: stdout, Log: log})
}
