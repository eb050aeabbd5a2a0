package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startPerf records the given processes with Linux perf (sampling at
// 999 Hz, with call graphs) into dir/name.perf.data until the returned
// function is called. Read the result with
//
//	perf report -i FILE --sort pid,dso,sym --stdio
func startPerf(dir, name string, pids ...int) (stop func() error, err error) {
	bin, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("%sPERF_DIR is set but perf is not installed: %w", envPrefix, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(pids))
	for _, p := range pids {
		if p != 0 {
			ids = append(ids, strconv.Itoa(p))
		}
	}
	out := filepath.Join(dir, name+".perf.data")
	cmd := exec.Command(bin, "record", "-q", "-F", "999", "-g", "-p", strings.Join(ids, ","), "-o", out)
	log, err := os.Create(filepath.Join(dir, name+".perf.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	// perf attaches asynchronously; give it a moment so the transfer's
	// start is recorded.
	time.Sleep(300 * time.Millisecond)
	return func() error {
		defer log.Close()
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if err != nil && !(errors.As(err, &exit) && exit.ExitCode() <= 0) {
				return fmt.Errorf("perf record: %w (see %s.perf.log)", err, name)
			}
			return nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			return errors.New("perf record did not stop within 30 s of SIGINT")
		}
	}, nil
}
