package app

import (
	"bufio"
	"bytes"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryHeadroom is the share of the cgroup's memory limit left outside
// the Go runtime's soft limit: the kernel counts the JetStream store's
// page cache and the binary's own pages against the cgroup too.
const memoryHeadroom = 0.1

// limitMemoryToCgroup sets the Go runtime's soft memory limit to 90 % of
// the memory limit of the cgroup the process runs in (a Kubernetes
// container's limits.memory, systemd's MemoryMax), unless GOMEMLIMIT
// sets one. Without it the garbage collector lets the heap grow to twice
// the live data and a burst of large studies ends in an OOM kill, where
// collecting sooner would have fitted.
func limitMemoryToCgroup(log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		return
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return // not Linux, or no /proc: no cgroup to read
	}
	limit, ok := cgroupMemoryLimit(self, "/sys/fs/cgroup")
	if !ok {
		return
	}
	soft := int64(float64(limit) * (1 - memoryHeadroom))
	debug.SetMemoryLimit(soft)
	log.Info("Go memory limit set from the cgroup's (GOMEMLIMIT overrides it)",
		"cgroup_memory_limit_bytes", limit, "go_memory_limit_bytes", soft)
}

// cgroupMemoryLimit is the lowest memory limit on the way from the
// process's cgroup (as /proc/self/cgroup lists it) up to the hierarchy's
// root under root, cgroup v2's memory.max or v1's memory controller's
// memory.limit_in_bytes; ok is false when none is set. A cgroup path that
// does not exist under root (a container without its own cgroup
// namespace sees the host's path) is skipped: the container's limit is
// then at the root of what it mounts.
func cgroupMemoryLimit(selfCgroup []byte, root string) (limit int64, ok bool) {
	limit = math.MaxInt64
	sc := bufio.NewScanner(bytes.NewReader(selfCgroup))
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir, file = root, "memory.max"
			if _, err := os.Stat(filepath.Join(root, "memory")); err == nil {
				// A hybrid host: v1's controllers, v2's hierarchy
				// at root/unified, which sets no memory limit.
				continue
			}
		case hasController(parts[1], "memory"):
			dir, file = filepath.Join(root, "memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		for p := filepath.Clean("/" + parts[2]); ; p = filepath.Dir(p) {
			if n, set := readMemoryLimit(filepath.Join(dir, p, file)); set && n < limit {
				limit = n
			}
			if p == "/" {
				break
			}
		}
	}
	return limit, limit != math.MaxInt64
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// readMemoryLimit reads one limit file: "max" (v2) or a number at or near
// the largest page-aligned int64 (v1) mean none.
func readMemoryLimit(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= math.MaxInt64-(1<<20) {
		return 0, false
	}
	return n, true
}
