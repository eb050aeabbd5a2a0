// Command demo runs stowline end to end on this machine, between two
// throwaway Orthanc servers, and reports each study as it goes through;
// see internal/demo. Run it with ./scripts/demo.sh, which installs the
// Debian packages it needs first.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stowline/stowline/internal/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := demo.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		if errors.Is(err, demo.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
