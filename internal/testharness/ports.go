package testharness

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
)

// FreePort returns a loopback port that was free a moment ago, for a
// program under test to listen on later.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := pickPort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// pickPort returns a port that was free on host a moment ago, drawn below
// the kernel's ephemeral range and never twice in this process. A port
// from that range (what listening on :0 gives) is also what the kernel
// hands out to every outgoing connection and every other :0 listener, so
// on a busy machine another test's connection or server took it before
// the program bound it ("address already in use").
func pickPort(host string) (int, error) {
	lo, hi := 20000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first, last int
		if _, err := fmt.Sscan(string(b), &first, &last); err == nil && first > 4096 {
			lo, hi = max(1024, first-12000), first
		}
	}
	pickedMu.Lock()
	defer pickedMu.Unlock()
	for range 1000 {
		p := lo + rand.IntN(hi-lo)
		if picked[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		picked[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free port in %d-%d", lo, hi)
}

// The ports handed out by this test process: a program given one may not
// listen on it yet.
var (
	pickedMu sync.Mutex
	picked   = map[int]bool{}
)
