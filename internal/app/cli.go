package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/stowline/stowline/internal/config"
)

// ErrUsage matches (errors.Is) the error returned for bad flags or bad
// configuration: the command exits non-zero with a message that says
// what to fix.
var ErrUsage = errors.New("usage error")

type usageError struct{ err error }

func (e *usageError) Error() string        { return e.err.Error() }
func (e *usageError) Unwrap() error        { return e.err }
func (e *usageError) Is(target error) bool { return target == ErrUsage }

// Main parses flags and configuration into cfg and calls start. Bad
// configuration fails here, before anything starts, naming the variable.
// environ lists the variables getenv reads (os.Environ()), to warn about
// misspelt ones (config.Unread), or refuse them for de-identification
// (config.StopsStart); nil skips that check.
func Main[T any, P interface {
	*T
	LogConfig() config.Log
}](ctx context.Context, program string, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer,
	start func(ctx context.Context, cfg P, log *slog.Logger) error) error {
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg T
	fs.Usage = func() {
		config.Usage(stderr, program, P(&cfg))
		fmt.Fprintf(stderr, "\n%s -version prints the version (release, git commit and its time) and exits.\n", program)
	}
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &usageError{err}
	}
	if *showVersion {
		printVersion(stdout, program)
		return nil
	}
	if fs.NArg() > 0 {
		if program != "forwarder" && isForwarderCommand(fs.Arg(0)) {
			// A single host installs stowline alone, and operations.md
			// once wrote "stowline replay": the answer names the binary.
			return &usageError{fmt.Errorf("%s has no commands: `forwarder %s` is the operator's command (build it with `go build -o forwarder ./cmd/forwarder`; on a single host run it as the service's user, docs/operations.md)", program, fs.Arg(0))}
		}
		return &usageError{fmt.Errorf("unexpected arguments %q (all configuration comes from the environment; see -h)", fs.Args())}
	}
	if err := config.Load(getenv, P(&cfg)); err != nil {
		return &usageError{fmt.Errorf("%s: invalid configuration:\n%w\n(run %s -h for the list of variables)", program, err, program)}
	}
	log := newLogger(stdout, P(&cfg).LogConfig())
	log.Info("starting "+program, readBuild().logAttrs()...)
	warn, err := unreadVariables(program, environ, P(&cfg))
	for _, name := range warn {
		log.Warn("variable set but not read: misspelt, or for a destination DESTINATIONS does not name (run "+program+" -h for the list)", "variable", name)
	}
	if err != nil {
		return err
	}
	err = start(ctx, P(&cfg), log)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Stopped (SIGTERM) before the start was done: a normal stop,
		// not a failure for systemd or an orchestrator to count.
		log.Info("stopped while starting", "err", err)
		return nil
	}
	return err
}

// unreadVariables returns the variables of environ that cfg does not read
// (config.Unread), to warn about, and a usage error naming those that
// stop the start: a de-identification setting not read
// (config.StopsStart) may send a destination the originals, a routing
// rule not read (config.UnreadRule) every study. `forwarder check`
// refuses the same names as the forwarder.
func unreadVariables(program string, environ []string, cfg any) (warn []string, err error) {
	var refused []string
	var errs []error
	for _, name := range config.Unread(environ, cfg) {
		if config.StopsStart(name) {
			refused = append(refused, name)
			continue
		}
		if err := config.UnreadRule(name, cfg); err != nil {
			errs = append(errs, err)
			continue
		}
		warn = append(warn, name)
	}
	if len(refused) > 0 {
		errs = append(errs, fmt.Errorf("%s: set but not read: misspelt, or for a destination DESTINATIONS does not name; "+
			"a de-identification setting not read may send a destination the originals, identified", strings.Join(refused, ", ")))
	}
	if len(errs) > 0 {
		return warn, &usageError{fmt.Errorf("%s: invalid configuration:\n%w\n(run %s -h for the list of variables)", program, errors.Join(errs...), program)}
	}
	return warn, nil
}

// printVersion is -version's answer, for the services and the commands.
func printVersion(stdout io.Writer, program string) {
	fmt.Fprintf(stdout, "%s %s\n", program, readBuild())
}

// versionAsked reports whether a command that reads its own arguments
// (replay, destinations) was asked for its version alone.
func versionAsked(args []string) bool {
	return len(args) == 1 && (args[0] == "-version" || args[0] == "--version")
}

// ErrMissing is the audit's finding of studies or instances a
// destination lacks, not queued (--enqueue): exit status 3, so that a
// scheduled audit can alert on it.
var ErrMissing = errors.New("missing at a destination")

// ExitCode reports err on stderr, if any, and returns the process exit
// status: 0 done, 2 bad arguments or configuration, 3 the audit found
// what a destination lacks, 1 any other failure.
func ExitCode(program string, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, ErrUsage) {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if errors.Is(err, ErrMissing) {
		fmt.Fprintf(stderr, "%s: %v\n", program, err)
		return 3
	}
	fmt.Fprintf(stderr, "%s: %v\n", program, err)
	return 1
}

// parseCommand parses a subcommand's flags (defined on fs, named after the
// command) and its configuration into cfg. With -h it prints usage, with
// -version the build, and returns done. Bad flags or configuration are
// usage errors.
func parseCommand(fs *flag.FlagSet, usage string, args []string, getenv func(string) string, stdout, stderr io.Writer, cfg any) (done bool, err error) {
	program := fs.Name()
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprintln(stderr)
		config.Usage(stderr, program, cfg)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, &usageError{err}
	}
	if *showVersion {
		printVersion(stdout, program)
		return true, nil
	}
	if fs.NArg() > 0 {
		return false, &usageError{fmt.Errorf("%s: unexpected arguments %q", program, fs.Args())}
	}
	if err := config.Load(getenv, cfg); err != nil {
		return false, &usageError{fmt.Errorf("%s: invalid configuration:\n%w\n(run %s -h for the list of variables)", program, err, program)}
	}
	return false, nil
}
