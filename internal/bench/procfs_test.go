package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports (the kernel ABI fixes it,
// whatever CONFIG_HZ is).
const clockTicks = 100

// cpuTime returns the user+system CPU time a process has used so far
// (all its threads), from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and may
// hold spaces and parentheses itself: fields are counted after the last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat: no ')' in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// machineBusy returns the CPU time all CPUs of the machine have spent
// busy (not idle, not waiting for I/O) so far, from the first line of
// /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b)
}

func parseMachineBusy(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, s := range f[1:] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		// Fields: user nice system idle iowait irq softirq steal guest
		// guest_nice; guest time is already counted in user.
		switch i {
		case 3, 4, 8, 9:
		default:
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}

// memStatus holds the memory figures of /proc/PID/status, in bytes.
type memStatus struct {
	// RSS is VmRSS, the resident set now; HWM is VmHWM, its peak over
	// the process's life. Anon is RssAnon, the part of RSS that is the
	// process's own memory (heap, stacks): the rest is mostly the
	// binary's pages, which the kernel shares and can drop.
	RSS, HWM, Anon int64
}

func readMem(pid int) (memStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, err
	}
	return parseStatus(b)
}

func parseStatus(b []byte) (memStatus, error) {
	var m memStatus
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM" && key != "RssAnon") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("/proc status: %s: unexpected %q", key, val)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("/proc status: %s: %w", key, err)
		}
		switch key {
		case "VmRSS":
			m.RSS = kb << 10
		case "VmHWM":
			m.HWM = kb << 10
		default:
			m.Anon = kb << 10
		}
		found++
	}
	if found != 3 {
		return m, fmt.Errorf("/proc status: VmRSS, VmHWM or RssAnon missing")
	}
	return m, nil
}

// TestProcParsers is the only test in this package: it is cheap and keeps
// the /proc readers the benchmark relies on honest.
func TestProcParsers(t *testing.T) {
	cpu, err := parseStatCPU([]byte("4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 4 0 1234 5678 99"))
	if err != nil || cpu != 3800*time.Millisecond {
		t.Errorf("parseStatCPU = %v, %v; want 3.8s", cpu, err)
	}
	busy, err := parseMachineBusy([]byte("cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	if err != nil || busy != 1610*time.Millisecond {
		t.Errorf("parseMachineBusy = %v, %v; want 1.61s", busy, err)
	}
	m, err := parseStatus([]byte("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t   512 kB\nRssFile:\t   512 kB\nThreads:\t3\n"))
	if err != nil || m.HWM != 2<<20 || m.RSS != 1<<20 || m.Anon != 512<<10 {
		t.Errorf("parseStatus = %+v, %v", m, err)
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return // not Linux: the benchmark cannot run here anyway
	}
	if _, err := cpuTime(os.Getpid()); err != nil {
		t.Error(err)
	}
	if _, err := machineBusy(); err != nil {
		t.Error(err)
	}
	if m, err := readMem(os.Getpid()); err != nil || m.HWM < m.RSS || m.RSS == 0 {
		t.Errorf("readMem(self) = %+v, %v", m, err)
	}
}
