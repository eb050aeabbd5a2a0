package testharness_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// The process handling works the same for each release, the one running
// under its tree's dynamic loader included: the release is the
// one asked for, SIGTERM stops it cleanly, and it restarts on the same
// ports and storage.
func TestOrthancReleaseLifecycle(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "lifecycle", DicomWeb: true, Release: rel})
		var sys struct{ Version string }
		o.GetJSON(t, "/system", &sys)
		if !strings.HasPrefix(sys.Version, rel.Name+".") {
			t.Fatalf("release %s answers as Orthanc %s", rel.Name, sys.Version)
		}
		var plugins []string
		o.GetJSON(t, "/plugins", &plugins)
		if !strings.Contains(strings.Join(plugins, ","), "dicom-web") {
			t.Errorf("plugins %v: no dicom-web", plugins)
		}
		t.Logf("Orthanc %s, PID %d, plugins %v", sys.Version, o.PID(), plugins)

		pid := o.PID()
		if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && !strings.Contains(string(cmdline), "Orthanc") {
			t.Errorf("PID %d is not Orthanc: %q", pid, cmdline)
		}
		o.Stop(t) // fails on a non-zero exit or a SIGKILL after the grace time
		if o.Running() || o.PID() != 0 {
			t.Fatal("running after Stop")
		}
		if testharness.ProcessAlive(pid) {
			t.Errorf("PID %d still alive after Stop", pid)
		}
		o.Start(t)
		if o.PID() == pid {
			t.Errorf("same PID %d after a restart", pid)
		}
	})
}

// orphanEnv makes the test binary a helper process that starts Orthanc
// and waits to be killed.
const orphanEnv = "STOWLINE_TEST_ORPHAN"

// When the test binary dies (a test timeout, a kill), Orthanc dies with it
// (Pdeathsig), also when the PID is a tree's loader.
func TestOrthancDiesWithTheTestBinary(t *testing.T) {
	if spec := os.Getenv(orphanEnv); spec != "" {
		runOrphanHelper(spec)
		return
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		helper := exec.Command(os.Args[0], "-test.run=^TestOrthancDiesWithTheTestBinary$", "-test.count=1")
		helper.Env = append(os.Environ(), orphanEnv+"="+rel.Name+"|"+rel.Root+"|"+t.TempDir())
		out, err := helper.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		helper.Stderr = os.Stderr
		if err := helper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = helper.Process.Kill(); _ = helper.Wait() })
		var pid int
		var url string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if _, err := fmt.Sscanf(sc.Text(), "orthanc %d %s", &pid, &url); err == nil {
				break
			}
		}
		if pid == 0 {
			t.Fatal("the helper did not start Orthanc")
		}
		if resp, err := http.Get(url + "/system"); err != nil {
			t.Fatalf("orthanc of the helper: %v", err)
		} else {
			resp.Body.Close()
		}
		if err := helper.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = helper.Wait()
		// A zombie leader can still have threads holding the ports: wait
		// for the port too.
		u := strings.TrimPrefix(url, "http://")
		deadline := time.Now().Add(10 * time.Second)
		for testharness.ProcessAlive(pid) || accepts(u) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("Orthanc (PID %d, %s) outlived the process that started it", pid, u)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// runOrphanHelper starts Orthanc as spec ("name|root|dir") says, prints
// its PID and URL, and blocks until it is killed.
func runOrphanHelper(spec string) {
	parts := strings.SplitN(spec, "|", 3)
	rel := testharness.Release{Name: parts[0], Root: parts[1]}
	o, err := testharness.LaunchOrthanc(context.Background(), parts[2], testharness.OrthancOptions{Name: "orphan", Release: rel})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("orthanc %d %s\n", o.PID(), o.URL)
	time.Sleep(time.Hour)
}

func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}
