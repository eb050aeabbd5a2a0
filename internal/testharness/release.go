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
	// ReleasesEnv lists the releases to test, comma-separated, e.g. "1.12".
	// Unset or empty: the host's release (its Orthanc's --version), then
	// the other known one if its Debian tree is present, or always in CI
	// (CI set), where a missing tree fails. Tests that need one Orthanc
	// release only run on the first.
	ReleasesEnv = "STOWLINE_ORTHANC_RELEASES"
	// TrixieRootEnv is the Debian trixie tree holding Orthanc 1.12 and
	// its DICOMweb plugin, for a host whose Orthanc is not 1.12
	// (scripts/orthanc-tree.sh trixie makes it). Unset:
	// /var/cache/stowline/orthanc-trixie, else the same under
	// ${XDG_CACHE_HOME:-$HOME/.cache}/stowline, whichever exists.
	TrixieRootEnv = "STOWLINE_ORTHANC_TRIXIE"
	// BookwormRootEnv is TrixieRootEnv for Debian bookworm's Orthanc
	// 1.10, on a host whose Orthanc is not 1.10 (a trixie host).
	BookwormRootEnv = "STOWLINE_ORTHANC_BOOKWORM"
)

// Release is an Orthanc release the harness starts: the host's installed
// Orthanc when it is that release, else Debian's package of it unpacked in
// a Debian tree of its own and run through that tree's dynamic loader, so
// that its libraries never mix with the host's.
type Release struct {
	// Name is the release's major.minor version: "1.10" or "1.12".
	Name string
	// Root is the Debian tree the release is installed in; empty for the
	// host's own packages.
	Root string
}

// knownRelease is a release the harness can run, and the Debian suite
// whose tree holds it on a host that has another.
type knownRelease struct {
	name, suite, rootEnv string
}

// knownReleases are the names ReleasesEnv accepts.
var knownReleases = []knownRelease{
	{name: "1.10", suite: "bookworm", rootEnv: BookwormRootEnv},
	{name: "1.12", suite: "trixie", rootEnv: TrixieRootEnv},
}

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

// releasesUnderTest parses ReleasesEnv, or makes its default.
func releasesUnderTest() ([]Release, error) {
	list := os.Getenv(ReleasesEnv)
	if strings.TrimSpace(list) == "" {
		return defaultReleases(), nil
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

// defaultReleases is what an unset ReleasesEnv means: the host's release
// first (a bookworm host runs as it always did: 1.10, then 1.12 from its
// tree), then the others whose tree is present. In CI every known release
// is under test, so that a tree .ci/run failed to make fails the tests
// rather than dropping a release. With no release available at all, every
// known one, so that the tests say what is missing instead of running
// nothing.
func defaultReleases() []Release {
	host, _ := hostRelease()
	ci := os.Getenv("CI") != ""
	var rels, all []Release
	for _, k := range knownReleases {
		rel, _ := releaseNamed(k.name)
		all = append(all, rel)
		if k.name == host {
			rels = append([]Release{rel}, rels...)
		} else if ci || treeComplete(rel.Root) {
			rels = append(rels, rel)
		}
	}
	if len(rels) == 0 {
		return all
	}
	return rels
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

// releaseNamed is the host's Orthanc when it is that release, else the
// release's Debian tree.
func releaseNamed(name string) (Release, error) {
	for _, k := range knownReleases {
		if k.name != name {
			continue
		}
		if host, err := hostRelease(); err == nil && host == name {
			return Release{Name: name}, nil
		}
		return Release{Name: name, Root: treeRoot(k)}, nil
	}
	names := make([]string, 0, len(knownReleases))
	for _, k := range knownReleases {
		names = append(names, k.name)
	}
	return Release{}, fmt.Errorf("testharness: %s: unknown Orthanc release %q (known: %s)", ReleasesEnv, name, strings.Join(names, ", "))
}

// hostRelease is the major.minor version of the host's Orthanc (PATH,
// then the sbin directories), e.g. "1.12" for "Orthanc 1.12.7".
func hostRelease() (string, error) {
	bin, err := FindBinary("Orthanc")
	if err != nil {
		return "", err
	}
	v, err := probeVersion([]string{bin, "--version"}, nil)
	if err != nil {
		return "", err
	}
	major, rest, _ := strings.Cut(v, ".")
	minor, _, _ := strings.Cut(rest, ".")
	return major + "." + minor, nil
}

// treeRoot is where the Debian tree of k is: its variable, else the
// system cache if it exists, else the user's if it exists, else the
// system one.
func treeRoot(k knownRelease) string {
	if d := os.Getenv(k.rootEnv); d != "" {
		return d
	}
	dir := "orthanc-" + k.suite
	system := filepath.Join("/var/cache/stowline", dir)
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
	user := filepath.Join(cache, "stowline", dir)
	if _, err := os.Stat(user); err == nil {
		return user
	}
	return system
}

// treeComplete reports whether root holds an Orthanc and its DICOMweb
// plugin, as scripts/orthanc-tree.sh leaves it.
func treeComplete(root string) bool {
	return root != "" && fileExists(filepath.Join(root, "usr/sbin/Orthanc")) && fileExists(filepath.Join(root, DicomWebPlugin))
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
			return nil, nil, fmt.Errorf("orthanc %s: %s: %w (%s)", r.Name, p, ErrMissing, r.installHint())
		}
	}
	libs := filepath.Join(r.Root, "lib", ma.triplet) + ":" + filepath.Join(r.Root, "usr/lib", ma.triplet)
	argv = append([]string{loader, "--library-path", libs, bin}, args...)
	// Orthanc reads DCMTK's dictionaries from a path compiled in, which is
	// the host's; without them it stops with "Inexistent file". Both, as
	// Orthanc loads by default (LoadPrivateDictionary).
	dict := dcmtkDictDir(r.Root)
	env = []string{"DCMDICTPATH=" + filepath.Join(dict, "dicom.dic") + ":" + filepath.Join(dict, "private.dic")}
	return argv, env, nil
}

// dcmtkDictDir is where the tree's DCMTK dictionaries are: trixie's
// dcmtk-data puts them in usr/share/dcmtk, bookworm's libdcmtk17 in
// usr/share/libdcmtk17.
func dcmtkDictDir(root string) string {
	dirs := []string{filepath.Join(root, "usr/share/dcmtk")}
	more, _ := filepath.Glob(filepath.Join(root, "usr/share/libdcmtk*"))
	for _, d := range append(dirs, more...) {
		if fileExists(filepath.Join(d, "dicom.dic")) {
			return d
		}
	}
	return dirs[0]
}

// installHint says how to get the release when its tree is missing, and
// what the host has instead.
func (r Release) installHint() string {
	h, err := hostRelease()
	host := "the host's Orthanc is " + h
	if err != nil {
		host = err.Error()
	}
	for _, k := range knownReleases {
		if k.name == r.Name {
			return fmt.Sprintf("%s: run scripts/orthanc-tree.sh %s, or set %s", host, k.suite, k.rootEnv)
		}
	}
	return host
}

// versions caches --version by command line: each binary runs it once per
// process.
var versions sync.Map // string -> versionResult

type versionResult struct {
	version string
	err     error
}

// version runs the release's Orthanc with --version and checks that it is
// the release it claims to be: a tree (or STOWLINE_ORTHANC_*) holding
// another release does not pass for this one.
func (r Release) version() (string, error) {
	argv, env, err := r.command("--version")
	if err != nil {
		return "", err
	}
	v, err := probeVersion(argv, env)
	if err != nil {
		return "", fmt.Errorf("orthanc %s: %w", r.Name, err)
	}
	if !strings.HasPrefix(v, r.Name+".") {
		return "", fmt.Errorf("orthanc %s: %s is Orthanc %s: %w", r.Name, argv[len(argv)-2], v, ErrMissing)
	}
	return v, nil
}

// probeVersion runs argv (a --version command) once per process and
// returns the version it prints.
func probeVersion(argv, env []string) (string, error) {
	key := strings.Join(append(append([]string{}, argv...), env...), "\x00")
	if v, ok := versions.Load(key); ok {
		res := v.(versionResult)
		return res.version, res.err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	var v string
	if err != nil {
		err = fmt.Errorf("%s --version: %w", argv[0], err)
	} else {
		// "/usr/sbin/Orthanc 1.10.1" on the first line.
		first, _, _ := strings.Cut(string(out), "\n")
		fields := strings.Fields(first)
		if len(fields) < 2 {
			err = fmt.Errorf("%s: unexpected --version output %q", argv[0], first)
		} else {
			v = fields[len(fields)-1]
		}
	}
	versions.Store(key, versionResult{v, err})
	return v, err
}
