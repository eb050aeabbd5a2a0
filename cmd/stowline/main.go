// Command stowline runs ingest and forwarder in one process. With NATS_URL
// empty it also runs an embedded JetStream server (single-host mode).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/stowline/stowline/app"
	"github.com/stowline/stowline/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		code := 1
		if errors.Is(err, app.ErrUsage) {
			code = 2 // bad arguments or configuration
		} else {
			err = fmt.Errorf("stowline: %w", err)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(code)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return app.Main[config.SingleHost](ctx, "stowline", args, getenv, stdout, stderr, app.RunSingleHost)
}
