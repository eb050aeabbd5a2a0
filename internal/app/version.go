package app

import (
	"fmt"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version, revision and commitTime are set at link time by builds
// without the git checkout (the image: Dockerfile's STOWLINE_VERSION,
// STOWLINE_REVISION and STOWLINE_COMMIT_TIME build arguments). Empty,
// they are read from what Go records of a build in a git checkout: its
// commit, that commit's time, and whether it had uncommitted changes.
var version, revision, commitTime string

// Build is what a binary says it is: at start in its log, with -version,
// and as stowline_build_info.
type Build struct {
	Version  string // the linked version, else the module's ("(devel)" for a checkout)
	Revision string // the git commit, "" when unknown
	Time     string // the commit's time (RFC 3339), "" when unknown
	Modified bool   // built from a checkout with uncommitted changes
	Go       string
}

// readBuild reads the running binary's Build.
func readBuild() Build {
	b := Build{Version: version, Revision: revision, Time: commitTime}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Go = info.GoVersion
	if b.Version == "" {
		b.Version = info.Main.Version
	}
	if b.Revision != "" {
		// Linked: the checkout Go may have found is not that commit.
		return b
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is the -version line.
func (b Build) String() string {
	s := b.Version
	if s == "" {
		s = "unknown version"
	}
	if b.Revision != "" {
		s += ", commit " + b.Revision
		if b.Time != "" {
			s += " of " + b.Time
		}
		if b.Modified {
			s += " with uncommitted changes"
		}
	}
	return fmt.Sprintf("%s (%s)", s, b.Go)
}

// logAttrs are the start log line's attributes.
func (b Build) logAttrs() []any {
	return []any{"version", b.Version, "revision", b.Revision, "commit_time", b.Time, "modified", b.Modified, "go", b.Go}
}

// collector is stowline_build_info: 1, labelled with the build.
func (b Build) collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "stowline_build_info",
		Help: "The running binary: 1, labelled with its version, git commit and that commit's time (empty when unknown) and Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "commit_time": b.Time,
			"modified": fmt.Sprint(b.Modified), "go_version": b.Go},
	})
	g.Set(1)
	return g
}
