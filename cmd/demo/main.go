// Command demo runs stowline end to end on this machine, between two
// throwaway Orthanc servers, and reports each study as it goes through;
// see internal/demo. Run it with ./scripts/demo.sh, which installs the
// Debian packages it needs first.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/stowline/stowline/internal/demo"
)

// stopSignals end the demo with its cleanup: Ctrl-C, kill or a service
// manager, and a closed terminal or SSH session.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

func main() {
	ctx, stop := notifyOnce(context.Background(), os.Stderr)
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

// notifyOnce returns a context that ends at the first stop signal, which
// it reports on w; from then on the signals have their default effect, so
// a second Ctrl-C during a slow cleanup kills the process. stop releases
// it without a report.
func notifyOnce(parent context.Context, w io.Writer) (ctx context.Context, stop func()) {
	ctx, stopNotify := signal.NotifyContext(parent, stopSignals...)
	released := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-released: // stop, not a signal, ended ctx
				return
			default:
			}
			stopNotify()
			fmt.Fprintln(w, "demo: stopping everything and cleaning up; press Ctrl-C again to kill it at once (its Orthanc servers and data directory would stay behind)")
		case <-released:
		}
	}()
	return ctx, func() {
		close(released)
		stopNotify()
	}
}
