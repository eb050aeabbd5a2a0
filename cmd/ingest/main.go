// Command ingest runs stowline's webhook service: Orthanc's Lua script posts
// stable-study events to it, and it stores them in NATS JetStream.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
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
	os.Exit(app.ExitCode("ingest", err, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	return app.Main[config.IngestService](ctx, "ingest", args, getenv, environ, stdout, stderr, app.RunIngest)
}
