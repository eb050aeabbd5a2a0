package testharness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Environment variables that choose the Orthanc releases under test.
const (
	// ReleasesEnv lists the releases to test, comma-separated, e.g. "1.12";
	// unset or empty means DefaultReleases. Tests that need one Orthanc
	// release only run on the first.
	ReleasesEnv = "STOWLINE_ORTHANC_RELEASES"
	// TrixieRootEnv is the Debian trixie tree holding Orthanc 1.12 and
	// its DICOMweb plugin (scripts/orthanc-trixie.sh makes it). Unset:
	// /var/cache/stowline/orthanc-trixie, else the same under
	// ${XDG_CACHE_HOME:-$HOME/.cache}/stowline, whichever exists.
	TrixieRootEnv = "STOWLINE_ORTHANC_TRIXIE"
	// DefaultReleases is what ReleasesEnv defaults to.
	DefaultReleases = "1.10,1.12"
)

// Release is an Orthanc release the harness starts: Debian bookworm's
// (1.10), installed on the host, or Debian trixie's (1.12), unpacked in a
// Debian tree of its own and run through that tree's dynamic loader, so
// that its libraries never mix with the host's.
type Release struct {
	// Name is the release's major.minor version: "1.10" or "1.12".
	Name string
	// Root is the Debian tree the release is installed in; empty for the
	// host's own packages.
	Root string
}

// knownReleases are the names ReleasesEnv accepts.
var knownReleases = []string{"1.10", "1.12"}

// ForEachRelease runs f as a subtest named after each Orthanc release
// under test (ReleasesEnv), one after the other. A release that is not
// installed skips its subtest, or fails it in CI.
func ForEachRelease(t *testing.T, f func(t *testing.T, rel Release)) {
	t.Helper()
	rels, err := releasesUnderTest()
	if err != nil {
		t.Fatal(err)
	}
	for _, rel := range rels {
		t.Run(rel.Name, func(t *testing.T) {
			if _, err := rel.version(); err != nil {
				missing(t, err)
			}
			f(t, rel)
		})
	}
}

// releasesUnderTest parses ReleasesEnv.
func releasesUnderTest() ([]Release, error) {
	list := os.Getenv(ReleasesEnv)
	if strings.TrimSpace(list) == "" {
		list = DefaultReleases
	}
	var rels []Release
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		rel, err := releaseNamed(name)
		if err != nil {
			return nil, err
		}
		rels = append(rels, rel)
	}
	return rels, nil
}

// defaultRelease is the release a test that needs only one runs on: the
// first under test.
func defaultRelease() (Release, error) {
	rels, err := releasesUnderTest()
	if err != nil {
		return Release{}, err
	}
	return rels[0], nil
}

func releaseNamed(name string) (Release, error) {
	switch name {
	case "1.10":
		return Release{Name: name}, nil
	case "1.12":
		return Release{Name: name, Root: trixieRoot()}, nil
	}
	return Release{}, fmt.Errorf("testharness: %s: unknown Orthanc release %q (known: %s)", ReleasesEnv, name, strings.Join(knownReleases, ", "))
}

func trixieRoot() string {
	if d := os.Getenv(TrixieRootEnv); d != "" {
		return d
	}
	const system = "/var/cache/stowline/orthanc-trixie"
	if _, err := os.Stat(system); err == nil {
		return system
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return system
		}
		cache = filepath.Join(home, ".cache")
	}
	user := filepath.Join(cache, "stowline", "orthanc-trixie")
	if _, err := os.Stat(user); err == nil {
		return user
	}
	return system
}

// DicomWebPlugin returns the path of the release's DICOMweb plugin.
func (r Release) DicomWebPlugin() string {
	return filepath.Join(r.rootDir(), DicomWebPlugin)
}

func (r Release) rootDir() string {
	if r.Root == "" {
		return "/"
	}
	return r.Root
}

// multiarch names the dynamic loader and the library directory of a
// Debian tree for the architecture this test binary runs on.
var multiarch = map[string]struct{ loader, triplet string }{
	"amd64": {"lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu"},
	"arm64": {"lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu"},
}

// command returns the argv and the extra environment that run the
// release's Orthanc with args.
func (r Release) command(args ...string) (argv, env []string, err error) {
	if r.Root == "" {
		bin, err := FindBinary("Orthanc")
		if err != nil {
			return nil, nil, err
		}
		return append([]string{bin}, args...), nil, nil
	}
	// No chroot (that needs root): the tree's own loader runs its Orthanc
	// with the tree's libraries. The loader maps Orthanc into its own
	// process, so the PID, signals and Pdeathsig are Orthanc's.
	ma, ok := multiarch[runtime.GOARCH]
	if !ok {
		return nil, nil, fmt.Errorf("orthanc %s in %s: %w (no loader known for %s)", r.Name, r.Root, ErrMissing, runtime.GOARCH)
	}
	loader := filepath.Join(r.Root, ma.loader)
	bin := filepath.Join(r.Root, "usr/sbin/Orthanc")
	for _, p := range []string{loader, bin} {
		if _, err := os.Stat(p); err != nil {
			return nil, nil, fmt.Errorf("orthanc %s: %s: %w (run scripts/orthanc-trixie.sh, or set %s)", r.Name, p, ErrMissing, TrixieRootEnv)
		}
	}
	libs := filepath.Join(r.Root, "lib", ma.triplet) + ":" + filepath.Join(r.Root, "usr/lib", ma.triplet)
	argv = append([]string{loader, "--library-path", libs, bin}, args...)
	// Orthanc reads DCMTK's dictionaries from a path compiled in, which is
	// the host's; without them it stops with "Inexistent file". Both, as
	// Orthanc loads by default (LoadPrivateDictionary).
	dict := filepath.Join(r.Root, "usr/share/dcmtk")
	env = []string{"DCMDICTPATH=" + filepath.Join(dict, "dicom.dic") + ":" + filepath.Join(dict, "private.dic")}
	return argv, env, nil
}

var versions sync.Map // Release -> versionResult

type versionResult struct {
	version string
	err     error
}

// version runs the release's Orthanc with --version (once per process)
// and checks that it is the release it claims to be: a host whose Orthanc
// package is not 1.10 does not pass for 1.10.
func (r Release) version() (string, error) {
	if v, ok := versions.Load(r); ok {
		res := v.(versionResult)
		return res.version, res.err
	}
	v, err := r.probeVersion()
	versions.Store(r, versionResult{v, err})
	return v, err
}

func (r Release) probeVersion() (string, error) {
	argv, env, err := r.command("--version")
	if err != nil {
		return "", err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("orthanc %s: %s --version: %w", r.Name, argv[0], err)
	}
	// "/usr/sbin/Orthanc 1.10.1" on the first line.
	first, _, _ := strings.Cut(string(out), "\n")
	fields := strings.Fields(first)
	if len(fields) < 2 {
		return "", fmt.Errorf("orthanc %s: unexpected --version output %q", r.Name, first)
	}
	v := fields[len(fields)-1]
	if !strings.HasPrefix(v, r.Name+".") {
		return "", fmt.Errorf("orthanc %s: %s is Orthanc %s: %w", r.Name, argv[len(argv)-2], v, ErrMissing)
	}
	return v, nil
}
