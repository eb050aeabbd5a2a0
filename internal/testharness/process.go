package testharness

import (
	"context"
	"io"
	"os"
	"strconv"
	"strings"
)

// ProcessAlive reports whether pid runs (a zombie waiting for its
// reaper does not): tests that kill a process's parent wait for it to go.
func ProcessAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) state ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// PID returns the process ID of the running Orthanc, or 0 while it is
// stopped. Benchmarks read its CPU time and memory from /proc/PID.
func (o *Orthanc) PID() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.proc == nil || o.proc.cmd.Process == nil {
		return 0
	}
	return o.proc.cmd.Process.Pid
}

// Do sends a request to Orthanc's REST API (with the harness's basic auth,
// if any) and decodes a JSON answer into out when out is non-nil. path may
// hold a query string. A non-2xx answer is an error naming the method,
// path, status and the start of the body. It is the error-returning core of
// GetJSON, for programs and benchmarks that are not tests.
func (o *Orthanc) Do(ctx context.Context, method, path string, body io.Reader, out any) error {
	return o.do(ctx, method, path, body, out)
}
