// Command forwarder runs stowline's workers: they pull stable-study events from
// JetStream and send each study from Orthanc to the DICOMweb destination.
// Run any number of replicas; they share one durable consumer.
//
// `forwarder replay ...` lists, replays and purges dead-lettered studies.
// `forwarder audit [--enqueue] [--json]` lists (and enqueues) the studies
// in Orthanc whose current state has no completed forward.
// `forwarder check` verifies the source Orthancs and the destinations'
// credentials and reachability with the live configuration before any
// study flows.
// `forwarder backfill --destination NAME --since T` queues older studies
// for one destination (one added to a running deployment).
// `forwarder destinations [list|remove NAME --yes]` lists the destinations'
// consumers and removes one that is no longer served.
// `forwarder pseudonym [--destination NAME] (--uid|--patient-id|--find|--fingerprint)`
// gives the pseudonym a de-identified destination received for a value,
// finds the original of one among candidates, or prints the key's
// fingerprint.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal starts the drain (the shutdown grace and up to
	// 15 s more); from then on the signals have Go's default effect, so
	// a second Ctrl-C or SIGTERM kills the process instead of being
	// swallowed.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Getenv, os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(app.ExitCode("forwarder", err, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "replay" {
		return app.RunReplay(ctx, args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "audit" {
		return app.RunAudit(ctx, args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "check" {
		return app.RunCheck(ctx, args[1:], getenv, environ, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "backfill" {
		return app.RunBackfill(ctx, args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "pseudonym" {
		return app.RunPseudonym(ctx, args[1:], getenv, os.Stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "destinations" {
		return app.RunDestinations(ctx, args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("forwarder: unknown command %q (%w): the commands are check, audit, backfill, destinations, replay and pseudonym, and without one it runs the workers; forwarder -h lists them", args[0], app.ErrUsage)
	}
	err := app.Main[config.ForwarderService](ctx, "forwarder", args, getenv, environ, stdout, stderr, app.RunForwarder)
	if err == nil && len(args) > 0 && slices.Contains([]string{"-h", "-help", "--help", "--h"}, args[0]) {
		fmt.Fprint(stderr, commandsUsage)
	}
	return err
}

// commandsUsage ends `forwarder -h`: the variables' table alone named
// none of the commands the README and the docs send operators to.
const commandsUsage = `
Commands (forwarder COMMAND -h for each, -version for the build); without one, forwarder runs the workers:
  check          verify each source Orthanc and each destination's credential and reachability with this configuration
  audit          list the stable studies in Orthanc a destination lacks (--enqueue queues them)
  backfill       queue older studies for one destination
  destinations   list the destinations' consumers, or remove one no longer served
  replay         list, show, replay or purge dead letters; re-forward studies
  pseudonym      the pseudonym a de-identified destination received for a value, or its key's fingerprint
`
