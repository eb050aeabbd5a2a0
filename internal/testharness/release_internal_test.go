package testharness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeHostOrthanc puts an Orthanc first on PATH that prints version for
// --version and otherwise writes its arguments to the returned file and
// exits 3 (it serves nothing).
func fakeHostOrthanc(t *testing.T, version string) (argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = --version ]; then echo \"/usr/sbin/Orthanc " + version + "\"; echo 'Copyright (C) 2012-2016'; exit 0; fi\n" +
		"printf '%s\\n' \"$@\" > '" + argsFile + "'\n" +
		"exit 3\n"
	if err := os.WriteFile(filepath.Join(dir, "Orthanc"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return argsFile
}

// fakeTree makes root look like a tree scripts/orthanc-tree.sh made, as
// far as choosing the releases goes (nothing in it runs).
func fakeTree(t *testing.T, root string) {
	t.Helper()
	for _, p := range []string{"usr/sbin/Orthanc", DicomWebPlugin} {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// The releases under test follow the host's Orthanc: its release first,
// run from the host, the other from its tree when that is present (or
// always in CI, where a missing tree must fail).
func TestReleasesUnderTest(t *testing.T) {
	tests := []struct {
		name, host, env string
		ci              bool
		trees           []string // "bookworm", "trixie": present
		want            []string // name, or name@suite for a tree's
		wantErr         bool
	}{
		{name: "bookworm host, trixie tree (CI here)", host: "1.10.1", trees: []string{"trixie"}, want: []string{"1.10", "1.12@trixie"}},
		{name: "bookworm host in CI", host: "1.10.1", ci: true, want: []string{"1.10", "1.12@trixie"}},
		{name: "bookworm host alone", host: "1.10.1", want: []string{"1.10"}},
		{name: "bookworm host, unneeded bookworm tree", host: "1.10.1", trees: []string{"bookworm"}, want: []string{"1.10"}},
		{name: "trixie host alone", host: "1.12.7", want: []string{"1.12"}},
		{name: "trixie host, bookworm tree", host: "1.12.7", trees: []string{"bookworm"}, want: []string{"1.12", "1.10@bookworm"}},
		{name: "trixie host in CI", host: "1.12.7", ci: true, want: []string{"1.12", "1.10@bookworm"}},
		{name: "trixie host, 1.12 asked", host: "1.12.7", env: "1.12", want: []string{"1.12"}},
		{name: "trixie host, 1.10 asked", host: "1.12.7", env: "1.10", want: []string{"1.10@bookworm"}},
		{name: "bookworm host, both asked", host: "1.10.1", env: " 1.12 , 1.10", want: []string{"1.12@trixie", "1.10"}},
		{name: "unknown host release, trixie tree", host: "1.9.7", trees: []string{"trixie"}, want: []string{"1.12@trixie"}},
		{name: "unknown host release, nothing", host: "1.9.7", want: []string{"1.10@bookworm", "1.12@trixie"}},
		{name: "unknown release asked", host: "1.10.1", env: "1.11", wantErr: true},
		{name: "empty name", host: "1.10.1", env: "1.10,", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakeHostOrthanc(t, tc.host)
			base := t.TempDir()
			roots := map[string]string{"bookworm": filepath.Join(base, "bookworm"), "trixie": filepath.Join(base, "trixie")}
			t.Setenv(BookwormRootEnv, roots["bookworm"])
			t.Setenv(TrixieRootEnv, roots["trixie"])
			for _, suite := range tc.trees {
				fakeTree(t, roots[suite])
			}
			ci := ""
			if tc.ci {
				ci = "true"
			}
			t.Setenv("CI", ci)
			t.Setenv(ReleasesEnv, tc.env)
			var want []Release
			for _, w := range tc.want {
				name, suite, _ := strings.Cut(w, "@")
				want = append(want, Release{Name: name, Root: roots[suite]})
			}
			got, err := releasesUnderTest()
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, want) {
				t.Errorf("releasesUnderTest() = %v, %v; want %v (error: %v)", got, err, want, tc.wantErr)
			}
		})
	}
}

// LaunchOrthanc runs the host's Orthanc as the release its --version
// names: the default release, or that release asked by name; another
// release without its tree is missing, and the host's binary is not run.
func TestLaunchOrthancRunsTheHostRelease(t *testing.T) {
	tests := []struct {
		name, host, env string
		release         string // "": the zero Release
		wantMissing     bool
	}{
		{name: "trixie host, default release", host: "1.12.7"},
		{name: "trixie host, 1.12", host: "1.12.7", release: "1.12"},
		{name: "trixie host, 1.12 listed", host: "1.12.7", env: "1.12"},
		{name: "bookworm host, default release", host: "1.10.1"},
		{name: "bookworm host, 1.10", host: "1.10.1", release: "1.10"},
		{name: "trixie host, 1.10 without its tree", host: "1.12.7", release: "1.10", wantMissing: true},
		{name: "bookworm host, 1.12 listed without its tree", host: "1.10.1", env: "1.12", wantMissing: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			argsFile := fakeHostOrthanc(t, tc.host)
			t.Setenv(BookwormRootEnv, filepath.Join(t.TempDir(), "none"))
			t.Setenv(TrixieRootEnv, filepath.Join(t.TempDir(), "none"))
			t.Setenv("CI", "")
			t.Setenv(ReleasesEnv, tc.env)
			var opts OrthancOptions
			if tc.release != "" {
				rel, err := releaseNamed(tc.release)
				if err != nil {
					t.Fatal(err)
				}
				opts.Release = rel
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			o, err := LaunchOrthanc(ctx, dir, opts)
			if err == nil {
				_ = o.Close()
				t.Fatal("LaunchOrthanc of a fake Orthanc that serves nothing succeeded")
			}
			args, readErr := os.ReadFile(argsFile)
			if tc.wantMissing {
				if !errors.Is(err, ErrMissing) {
					t.Errorf("LaunchOrthanc: %v, want ErrMissing", err)
				}
				if readErr == nil {
					t.Errorf("the host's Orthanc %s was run for another release, with %q", tc.host, args)
				}
				return
			}
			// It got as far as running the host's binary on its
			// configuration, which then exited.
			if errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "exited during startup") {
				t.Errorf("LaunchOrthanc: %v, want the fake's exit during startup", err)
			}
			if readErr != nil {
				t.Fatalf("the host's Orthanc %s was not run: %v", tc.host, readErr)
			}
			if want := filepath.Join(dir, "orthanc.json"); strings.TrimSpace(string(args)) != want {
				t.Errorf("host Orthanc run with %q, want %q", args, want)
			}
		})
	}
}

// A tree that is not there is "not installed": the test skips, or fails
// in CI.
func TestTrixieTreeMissing(t *testing.T) {
	rel := Release{Name: "1.12", Root: t.TempDir()}
	if _, err := rel.version(); !errors.Is(err, ErrMissing) {
		t.Errorf("version() of an empty tree: %v, want ErrMissing", err)
	}
}

// A tree's Orthanc gets its own DCMTK dictionaries, wherever its suite's
// libdcmtk puts them; without them it stops at once ("Inexistent file").
func TestTreeDicomDictionaries(t *testing.T) {
	ma, ok := multiarch[runtime.GOARCH]
	if !ok {
		t.Skipf("no loader known for %s", runtime.GOARCH)
	}
	tests := []struct{ suite, dictDir string }{
		{suite: "trixie", dictDir: "usr/share/dcmtk"},        // libdcmtk19
		{suite: "bookworm", dictDir: "usr/share/libdcmtk17"}, // libdcmtk17
	}
	for _, tc := range tests {
		t.Run(tc.suite, func(t *testing.T) {
			root := t.TempDir()
			for _, p := range []string{ma.loader, "usr/sbin/Orthanc", filepath.Join(tc.dictDir, "dicom.dic"), filepath.Join(tc.dictDir, "private.dic")} {
				p = filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			_, env, err := Release{Name: "1.10", Root: root}.command("--version")
			if err != nil {
				t.Fatal(err)
			}
			dict := filepath.Join(root, tc.dictDir)
			want := "DCMDICTPATH=" + filepath.Join(dict, "dicom.dic") + ":" + filepath.Join(dict, "private.dic")
			if !slices.Contains(env, want) {
				t.Errorf("environment %q, want %q", env, want)
			}
		})
	}
}
