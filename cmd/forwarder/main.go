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
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/stowline/stowline/internal/app"
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

// run is main with its environment and streams given (the standard
// input is the process's: only `forwarder pseudonym --find` reads it).
func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	return app.ForwarderMain(ctx, args, getenv, environ, os.Stdin, stdout, stderr)
}
