// Command stowline runs ingest and forwarder in one process. With NATS_URL
// empty it also runs an embedded JetStream server (single-host mode).
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
	os.Exit(app.ExitCode("stowline", err, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	return app.Main[config.SingleHost](ctx, "stowline", args, getenv, environ, stdout, stderr, app.RunSingleHost)
}
