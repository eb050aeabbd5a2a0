package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

// ErrUsage matches (errors.Is) the error Main returns for bad flags.
var ErrUsage = errors.New("usage error")

const usage = `Usage: demo [flags]

Runs stowline end to end on this machine: a "hospital" Orthanc with the
Lua script, an "archive" Orthanc (DICOMweb) behind an OAuth2 token gate,
and stowline in single-host mode. It sends sample studies to the
hospital, reports each one stable, queued, forwarded and verified on the
archive, then keeps everything running until Ctrl-C. Needs Orthanc, its
DICOMweb plugin and dcmtk: ./scripts/demo.sh installs them and runs this.

Flags:
`

// Main parses the demo's flags and runs it; the output goes to stdout,
// the usage to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	opts := Options{Out: stdout}
	fs.StringVar(&opts.Dir, "dir", "", "directory for all the demo's data (default: a new temporary directory); an existing one must be empty unless -keep")
	fs.BoolVar(&opts.Keep, "keep", false, "keep the data directory when the demo stops (a failed run always keeps it, for its logs)")
	fs.StringVar(&opts.Samples, "samples", "", "directory of DICOM files to send (default: the shared samples Orthanc accepts, or generated studies)")
	fs.StringVar(&opts.LuaScript, "lua", "", "path of lua/stowline.lua (default: found from the working directory upwards)")
	fs.BoolVar(&opts.Exit, "exit", false, "stop once every study is verified instead of waiting for Ctrl-C (CI)")
	fs.DurationVar(&opts.Timeout, "timeout", DefaultTimeout, "how long to wait for the studies to be verified")
	fs.IntVar(&opts.StableAge, "stable-age", DefaultStableAge, "the hospital's StableAge in seconds (Orthanc's default is 60)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", ErrUsage, fs.Args())
	}
	return Run(ctx, opts)
}
