package app

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/stowline/stowline/internal/config"
)

// programIO is what a command is given besides its arguments.
type programIO struct {
	getenv         func(string) string
	environ        []string
	stdin          io.Reader
	stdout, stderr io.Writer
}

// forwarderCommand is one of cmd/forwarder's operator commands.
type forwarderCommand struct {
	name, summary string
	run           func(ctx context.Context, args []string, p programIO) error
}

// forwarderCommands are cmd/forwarder's commands, in the order -h lists
// them: the one list its dispatch, its -h, its unknown-command error and
// the other programs' answer to one of them (Main) read.
var forwarderCommands = []forwarderCommand{
	{"check", "verify each source Orthanc and each destination's credential and reachability with this configuration",
		func(ctx context.Context, args []string, p programIO) error {
			return RunCheck(ctx, args, p.getenv, p.environ, p.stdout, p.stderr)
		}},
	{"audit", "list the stable studies in Orthanc a destination lacks (--enqueue queues them)", withStreams(RunAudit)},
	{"backfill", "queue older studies for one destination", withStreams(RunBackfill)},
	{"destinations", "list the destinations' consumers, or remove one no longer served", withStreams(RunDestinations)},
	{"replay", "list, show, replay or purge dead letters; re-forward studies", withStreams(RunReplay)},
	{"pseudonym", "the pseudonym a de-identified destination received for a value, or its key's fingerprint",
		func(ctx context.Context, args []string, p programIO) error {
			return RunPseudonym(ctx, args, p.getenv, p.stdin, p.stdout, p.stderr)
		}},
}

// withStreams adapts a command that reads no more than the environment,
// standard output and standard error.
func withStreams(run func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error) func(context.Context, []string, programIO) error {
	return func(ctx context.Context, args []string, p programIO) error {
		return run(ctx, args, p.getenv, p.stdout, p.stderr)
	}
}

// isForwarderCommand reports whether name is one of cmd/forwarder's
// commands.
func isForwarderCommand(name string) bool {
	return slices.ContainsFunc(forwarderCommands, func(c forwarderCommand) bool { return c.name == name })
}

// ForwarderMain runs cmd/forwarder: the operator command args[0] names,
// or, without one, the workers (RunForwarder).
func ForwarderMain(ctx context.Context, args []string, getenv func(string) string, environ []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		for _, c := range forwarderCommands {
			if c.name == args[0] {
				return c.run(ctx, args[1:], programIO{getenv: getenv, environ: environ, stdin: stdin, stdout: stdout, stderr: stderr})
			}
		}
		names := make([]string, len(forwarderCommands))
		for i, c := range forwarderCommands {
			names[i] = c.name
		}
		return fmt.Errorf("forwarder: unknown command %q (%w): the commands are %s and %s, and without one it runs the workers; forwarder -h lists them",
			args[0], ErrUsage, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
	}
	err := Main[config.ForwarderService](ctx, "forwarder", args, getenv, environ, stdout, stderr, RunForwarder)
	if err == nil && len(args) > 0 && slices.Contains([]string{"-h", "-help", "--help", "--h"}, args[0]) {
		// The variables' table alone named none of the commands the
		// README and the docs send operators to.
		fmt.Fprint(stderr, "\nCommands (forwarder COMMAND -h for each, -version for the build); without one, forwarder runs the workers:\n")
		for _, c := range forwarderCommands {
			fmt.Fprintf(stderr, "  %-14s %s\n", c.name, c.summary)
		}
	}
	return err
}
